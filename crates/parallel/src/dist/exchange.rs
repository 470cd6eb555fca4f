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
    /// backend, `libnccl` installed, one GPU per rank), MPI otherwise.
    #[default]
    Auto,
    /// MPI's all-reduce on a host copy of the buffer: any backend, any machine.
    Mpi,
    /// NCCL's all-reduce in GPU memory, bootstrapped over MPI; refused with
    /// [`DataParallelError::NcclUnavailable`] where a rank cannot use it.
    Nccl,
}

pub(crate) enum Exchange {
    Host,
    #[cfg(feature = "cuda")]
    Nccl(super::nccl::NcclComm),
}

impl Exchange {
    /// Picks the transport for gradients that live on `device`. Collective.
    pub(crate) fn open<B: Backend>(
        mpi: &Mpi,
        device: &B::Device,
        wanted: GradientTransport,
    ) -> Result<Self> {
        if wanted == GradientTransport::Mpi {
            return Ok(Self::Host);
        }
        let refuse = |rank: usize, own: Option<String>| match wanted {
            GradientTransport::Nccl => Err(DataParallelError::NcclUnavailable {
                rank,
                reason: own
                    .filter(|_| rank == mpi.rank())
                    .unwrap_or_else(|| format!("see rank {rank}'s own error")),
            }),
            _ => Ok(Self::Host),
        };

        let local = nccl_device::<B>(device);
        let ready = mpi.all_gather_u64(&[u64::from(local.is_ok())]);
        let ordinal = match (ready.iter().position(|&r| r == 0), local) {
            (None, Ok(ordinal)) => ordinal,
            (Some(rank), local) => return refuse(rank, local.err()),
            (None, Err(_)) => unreachable!("this rank said it was ready"),
        };
        #[cfg(feature = "cuda")]
        {
            let comm = super::nccl::NcclComm::join(mpi, ordinal);
            let joined = mpi.all_gather_u64(&[u64::from(comm.is_ok())]);
            match joined.iter().position(|&j| j == 0) {
                None => Ok(Self::Nccl(comm.expect("this rank said it joined"))),
                Some(rank) => refuse(rank, comm.err()),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            unreachable!("without the cuda feature no rank is ready for NCCL")
        }
    }

    /// Which transport this is.
    pub(crate) fn kind(&self) -> GradientTransport {
        match self {
            Self::Host => GradientTransport::Mpi,
            #[cfg(feature = "cuda")]
            Self::Nccl(_) => GradientTransport::Nccl,
        }
    }

    /// The element-wise sum of every rank's `flat`. Collective.
    pub(crate) fn all_reduce_sum<B: Backend>(
        &self,
        mpi: &Mpi,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>> {
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
            Self::Nccl(comm) => comm.all_reduce_sum(flat),
        }
    }
}

/// The CUDA ordinal NCCL would use on this rank, or why it cannot.
fn nccl_device<B: Backend>(device: &B::Device) -> std::result::Result<usize, String> {
    #[cfg(feature = "cuda")]
    return super::nccl::ordinal::<B>(device);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Err("this build has no `cuda` feature".into())
    }
}
