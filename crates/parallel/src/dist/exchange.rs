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

/// What the gradient exchange has carried: an optimizer step makes one all-reduce over every
/// parameter at once (never one per parameter, nor one per micro-batch), or, with the optimizer
/// state sharded, one reduce-scatter of the gradients and one all-gather of the parameters.
/// Counted where each collective is made, once it has succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeStats {
    /// All-reduces of gradients completed.
    pub all_reduces: usize,
    /// Reduce-scatters of gradients completed (sharded optimizer state).
    pub reduce_scatters: usize,
    /// All-gathers of updated parameters completed (sharded optimizer state).
    pub all_gathers: usize,
    /// Values these collectives carried, from this rank, all together (the length of the
    /// buffer each was given).
    pub values: usize,
    /// Time spent in them, copies to and from the host included: waiting for the slowest
    /// rank to arrive counts here too.
    pub time: std::time::Duration,
    /// Sums of synchronized batch norms' statistics across the ranks: per micro-batch, two
    /// per layer in the forward pass and two in the backward pass, each a small all-reduce of
    /// a header then one of the values, and one header alone that ends the micro-batch
    /// (`4 · layers + 1`).
    pub norm_sums: usize,
    /// Values those sums carried from this rank, all together.
    pub norm_values: usize,
    /// Time spent in them, waits for the other ranks included.
    pub norm_time: std::time::Duration,
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
            let of = |code: u64| {
                use GradientTransport::*;
                [Auto, Mpi, Nccl]
                    .into_iter()
                    .find(|&t| t as u64 == code)
                    .unwrap_or(Auto)
            };
            return Err(DataParallelError::TransportMismatch {
                rank,
                asked: of(asked[rank]),
                rank_0: of(asked[0]),
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
        self.run(mpi, flat, Collective::AllReduce)
    }

    /// `flat`, cut into blocks of `counts` values (one per rank), with block `rank` replaced
    /// by the sum of every rank's block `rank`. Collective.
    pub(crate) fn reduce_scatter_sum<B: Backend>(
        &mut self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
        counts: &[usize],
    ) -> Result<Tensor<B, 1>> {
        self.run(mpi, flat, Collective::ReduceScatter(counts))
    }

    /// `flat`, cut into blocks of `counts` values, with every block `r` replaced by rank `r`'s.
    /// Collective.
    pub(crate) fn all_gather<B: Backend>(
        &mut self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
        counts: &[usize],
    ) -> Result<Tensor<B, 1>> {
        self.run(mpi, flat, Collective::AllGather(counts))
    }

    /// Whether the engine needs blocks of one size (NCCL); MPI takes any.
    pub(crate) fn needs_equal_blocks(&self) -> bool {
        self.kind() == GradientTransport::Nccl
    }

    fn run<B: Backend>(
        &mut self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
        collective: Collective<'_>,
    ) -> Result<Tensor<B, 1>> {
        let values = flat.dims()[0];
        if let Collective::ReduceScatter(counts) | Collective::AllGather(counts) = collective
            && (counts.len() != mpi.size() || counts.iter().sum::<usize>() != values)
        {
            return Err(DataParallelError::Collective {
                operation: collective.op(),
                reason: format!("a buffer of {values} values is not {counts:?}"),
            });
        }
        let start = std::time::Instant::now();
        let out = self.engine.run(mpi, flat, collective)?;
        self.stats.time += start.elapsed();
        match collective {
            Collective::AllReduce => self.stats.all_reduces += 1,
            Collective::ReduceScatter(_) => self.stats.reduce_scatters += 1,
            Collective::AllGather(_) => self.stats.all_gathers += 1,
        }
        self.stats.values += values;
        Ok(out)
    }
}

/// A collective over one flat `f32` buffer, in place: every rank passes the whole buffer, cut
/// for the last two into one block per rank, of the given lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Collective<'a> {
    /// Every value summed over the ranks.
    AllReduce,
    /// Rank `r`'s block `r` summed over the ranks; the other blocks are left as they were.
    ReduceScatter(&'a [usize]),
    /// Every rank's block `r` from rank `r`.
    AllGather(&'a [usize]),
}

impl Collective<'_> {
    /// Which operation this is, for errors.
    pub(crate) fn op(&self) -> CollectiveOp {
        match self {
            Self::AllReduce => CollectiveOp::AllReduce,
            Self::ReduceScatter(_) => CollectiveOp::ReduceScatter,
            Self::AllGather(_) => CollectiveOp::AllGather,
        }
    }
}

/// The step of a gradient exchange that failed ([`DataParallelError::Collective`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectiveOp {
    /// The all-reduce of the gradients.
    AllReduce,
    /// The reduce-scatter of the gradients (sharded optimizer state).
    ReduceScatter,
    /// The all-gather of the parameters (sharded optimizer state).
    AllGather,
    /// The copy of the buffer to the host, for MPI.
    HostCopy,
    /// The ranks' agreement on the next call.
    Agreement,
}

impl Engine {
    fn run<B: Backend>(
        &self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
        collective: Collective<'_>,
    ) -> Result<Tensor<B, 1>> {
        match self {
            Self::Host => {
                let device = flat.device();
                let values = flat.into_data().convert::<f32>().into_vec::<f32>();
                // A rank that cannot read its buffer says so before anyone waits in MPI.
                let ready = mpi.all_gather_u64(&[u64::from(values.is_ok())]);
                let mut values = values.map_err(|err| DataParallelError::Collective {
                    operation: CollectiveOp::HostCopy,
                    reason: format!("{err:?}"),
                })?;
                if let Some(rank) = ready.iter().position(|&r| r == 0) {
                    return Err(DataParallelError::Collective {
                        operation: CollectiveOp::HostCopy,
                        reason: format!("rank {rank} could not read its buffer"),
                    });
                }
                match collective {
                    // Into a new buffer: the values are not copied once more to be sent.
                    Collective::AllReduce => values = mpi.all_reduce_sum_f32(&values),
                    Collective::ReduceScatter(counts) => {
                        mpi.reduce_scatter_sum_f32(&mut values, counts)
                    }
                    Collective::AllGather(counts) => mpi.all_gather_f32(&mut values, counts),
                }
                let count = values.len();
                Ok(Tensor::from_data(TensorData::new(values, [count]), &device))
            }
            #[cfg(feature = "cuda")]
            Self::Nccl(comm) => comm.run(mpi, flat, collective),
        }
    }
}
