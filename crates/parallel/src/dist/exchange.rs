//! How the ranks sum their flattened gradients: MPI on a host copy, or NCCL on the GPU.
//!
//! The choice is made once, collectively, when the trainer joins the ranks: every rank must
//! take part in the same calls whatever it finds locally, so each says whether it could use
//! NCCL and they go the same way.

use super::Mpi;
use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The engine that sums gradients across ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientTransport {
    /// NCCL where every rank can use it (features `cuda` and `mpi`, the `burn::backend::Cuda`
    /// backend, `libnccl.so` on the library path, one GPU per rank), MPI otherwise.
    #[default]
    Auto,
    /// MPI's all-reduce on a host copy of the buffer: any backend, any machine.
    Mpi,
    /// NCCL's all-reduce in GPU memory, bootstrapped over MPI; refused with
    /// [`DataParallelError::NcclUnavailable`] where a rank cannot use it.
    Nccl,
}

/// What the gradient exchange has carried: a step makes one all-reduce over every parameter at
/// once, never one per parameter. Counted where the all-reduce is made, once it has succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeStats {
    /// All-reduces of gradients completed.
    pub all_reduces: usize,
    /// Gradient values they carried, from this rank, all together.
    pub values: usize,
}

/// The engine chosen for this run, and what it has carried.
pub(crate) struct Exchange {
    engine: Engine,
    stats: ExchangeStats,
}

enum Engine {
    Host,
    #[cfg(feature = "cuda")]
    Nccl(super::nccl::NcclComm),
}

impl Exchange {
    fn new(engine: Engine) -> Self {
        Self {
            engine,
            stats: ExchangeStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Picks the transport for gradients that live on `device`. Collective.
    pub(crate) fn open<B: Backend>(
        mpi: &Mpi,
        device: &B::Device,
        wanted: GradientTransport,
    ) -> Result<Self> {
        // The same message on every rank, whichever rank's Open MPI lets print.
        let asked = mpi.all_gather_u64(&[wanted as u64]);
        if let Some(rank) = asked.iter().position(|&a| a != asked[0]) {
            let name = |code: u64| {
                use GradientTransport::*;
                [Auto, Mpi, Nccl]
                    .into_iter()
                    .find(|&t| t as u64 == code)
                    .map_or_else(|| "unknown".to_owned(), |t| format!("{t:?}"))
            };
            return Err(DataParallelError::Distributed {
                message: format!(
                    "rank {rank} asks for the {} gradient transport and rank 0 for {}: every \
                     rank must ask for the same",
                    name(asked[rank]),
                    name(asked[0])
                ),
            });
        }
        if wanted == GradientTransport::Mpi {
            return Ok(Self::new(Engine::Host));
        }
        let refuse = |(rank, reason): (usize, String)| match wanted {
            GradientTransport::Nccl => Err(DataParallelError::NcclUnavailable { rank, reason }),
            _ => Ok(Self::new(Engine::Host)),
        };
        #[cfg(feature = "cuda")]
        {
            match super::nccl::NcclComm::negotiate::<B>(mpi, device) {
                Ok(comm) => Ok(Self::new(Engine::Nccl(comm))),
                Err(refusal) => refuse(refusal),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            // The first calls of `NcclComm::negotiate`, so that ranks of both builds agree.
            let ready = mpi.all_gather_u64(&[0]);
            let rank = ready.iter().position(|&r| r == 0).unwrap_or(0);
            let reason = "this build has no `cuda` feature".to_string();
            refuse((rank, mpi.share_text_from(rank, Some(reason))))
        }
    }

    /// Which transport this is.
    pub(crate) fn kind(&self) -> GradientTransport {
        match self.engine {
            Engine::Host => GradientTransport::Mpi,
            #[cfg(feature = "cuda")]
            Engine::Nccl(_) => GradientTransport::Nccl,
        }
    }

    /// The element-wise sum of every rank's `flat`. Collective.
    pub(crate) fn all_reduce_sum<B: Backend>(
        &mut self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>> {
        let values = flat.dims()[0];
        let summed = self.engine.all_reduce_sum(mpi, flat)?;
        self.stats.all_reduces += 1;
        self.stats.values += values;
        Ok(summed)
    }
}

impl Engine {
    fn all_reduce_sum<B: Backend>(&self, mpi: &Mpi, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        match self {
            Self::Host => {
                let device = flat.device();
                let mut values = flat
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|err| DataParallelError::Distributed {
                        message: format!("cannot read the gradients: {err:?}"),
                    })?;
                mpi.all_reduce_sum_f32(&mut values);
                let count = values.len();
                Ok(Tensor::from_data(TensorData::new(values, [count]), &device))
            }
            #[cfg(feature = "cuda")]
            Self::Nccl(comm) => comm.all_reduce_sum(mpi, flat),
        }
    }
}
