//! NCCL, the GPU data plane for CUDA ranks (features `cuda` and `mpi`): one communicator per
//! rank, bootstrapped by broadcasting NCCL's id over MPI, summing the flattened gradients in
//! place in GPU memory.
//!
//! `libnccl` is opened at run time, as `libcuda` is, so the build needs neither.

use super::Mpi;
use crate::{DataParallelError, Result};
use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result, sys};
use std::any::Any;
use std::sync::Arc;

/// Length of NCCL's unique id (`ncclUniqueId`).
const ID_BYTES: usize = 128;

/// The CUDA ordinal of `device` when `B` is Burn's CUDA backend and NCCL can be loaded.
pub(crate) fn ordinal<B: Backend>(device: &B::Device) -> std::result::Result<usize, String> {
    let device = (device as &dyn Any)
        .downcast_ref::<CudaDevice>()
        .filter(|_| std::any::TypeId::of::<B>() == std::any::TypeId::of::<Cuda>())
        .ok_or_else(|| {
            format!(
                "the gradients are on {}, not on burn::backend::Cuda",
                std::any::type_name::<B>()
            )
        })?;
    if crate::cuda_device_count() <= device.index {
        return Err(format!("no CUDA device {}", device.index));
    }
    // SAFETY: only tries to open the library by its known names.
    if !unsafe { sys::is_culib_present() } {
        return Err("libnccl is not installed (or not on the library path)".into());
    }
    Ok(device.index)
}

/// One rank's NCCL communicator, on its own stream of the rank's GPU.
pub(crate) struct NcclComm {
    comm: sys::ncclComm_t,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl NcclComm {
    /// Joins every rank's communicator on GPU `ordinal`. Collective over MPI; returns why this
    /// rank could not join.
    pub(crate) fn join(mpi: &Mpi, ordinal: usize) -> std::result::Result<Self, String> {
        // Byte 0 says whether rank 0 could make an id; the others follow it either way.
        let mut message = [0u8; 1 + ID_BYTES];
        if mpi.rank() == 0
            && let Ok(id) = result::get_uniqueid()
        {
            message[0] = 1;
            for (byte, &c) in message[1..].iter_mut().zip(id.internal.iter()) {
                *byte = c as u8;
            }
        }
        mpi.broadcast_bytes_from_0(&mut message);
        if message[0] == 0 {
            return Err("rank 0 could not create an NCCL id".into());
        }
        let mut id = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        for (c, &byte) in id.internal.iter_mut().zip(&message[1..]) {
            *c = byte as core::ffi::c_char;
        }

        let context = CudaContext::new(ordinal).map_err(|err| format!("CUDA: {err:?}"))?;
        context
            .bind_to_thread()
            .map_err(|err| format!("CUDA: {err:?}"))?;
        let stream = context
            .new_stream()
            .map_err(|err| format!("CUDA: {err:?}"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; the id came from rank 0.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), mpi.size() as i32, id, mpi.rank() as i32)
                .map_err(|err| format!("NCCL: {err:?}"))?;
            comm.assume_init()
        };
        Ok(Self {
            comm,
            context,
            stream,
        })
    }

    /// Sums every rank's `flat` in place on the GPU.
    pub(crate) fn all_reduce_sum<B: Backend>(&self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let fail = |what: String| DataParallelError::Distributed {
            message: format!("NCCL all-reduce: {what}"),
        };
        // `open` chose NCCL only for this backend, so the downcast holds.
        let flat = *(Box::new(flat) as Box<dyn Any>)
            .downcast::<Tensor<Cuda, 1>>()
            .map_err(|_| fail("the gradients are not on burn::backend::Cuda".into()))?;
        let device = flat.device();
        let count = flat.shape().num_elements();
        let mut tensor = flat.into_primitive().tensor();
        if tensor.dtype != DType::F32 {
            return Err(fail(format!(
                "the gradients are {:?}, not f32",
                tensor.dtype
            )));
        }
        // NCCL writes the sum over the buffer: it must be one contiguous block that no other
        // tensor shares (a concatenation of one part may be a view of a gradient).
        if !(tensor.can_mut() && tensor.is_contiguous()) {
            tensor = Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(tensor))
                .mul_scalar(1.0)
                .into_primitive()
                .tensor();
        }
        // The buffer was written by Burn on its own stream: it must be complete before NCCL,
        // on another stream, reads it.
        <Cuda as Backend>::sync(&device).map_err(|err| fail(format!("{err:?}")))?;
        let resource = tensor
            .client
            .get_resource(tensor.handle.clone())
            .map_err(|err| fail(format!("{err:?}")))?;
        if resource.resource().size < (count * size_of::<f32>()) as u64 {
            return Err(fail(format!(
                "the buffer holds {} bytes, not the {count} f32 of the gradients",
                resource.resource().size
            )));
        }
        let pointer = resource.resource().ptr as *mut core::ffi::c_void;
        self.context
            .bind_to_thread()
            .map_err(|err| fail(format!("{err:?}")))?;
        // SAFETY: `pointer` is `count` contiguous f32 owned by `tensor` (a fresh buffer from
        // the concatenation, shared with nothing), kept alive by `resource` until the stream
        // is synchronised below.
        unsafe {
            result::all_reduce(
                pointer,
                pointer,
                count,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|err| fail(format!("{err:?}")))?;
        self.stream
            .synchronize()
            .map_err(|err| fail(format!("{err:?}")))?;
        drop(resource);
        let summed = Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(tensor));
        Ok(*(Box::new(summed) as Box<dyn Any>)
            .downcast::<Tensor<B, 1>>()
            .expect("B is Cuda"))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `comm` was initialised by `join` and is not used after this.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
