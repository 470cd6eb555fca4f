//! NCCL, the GPU data plane for CUDA ranks (features `cuda` and `mpi`): one communicator per
//! rank, bootstrapped by broadcasting NCCL's id over MPI, summing the flattened gradients in
//! place in GPU memory.
//!
//! `libnccl` is opened at run time, as `libcuda` is, so the build needs neither. The buffer is
//! reached through the tensor's cubecl handle, which assumes `burn::backend::Cuda` without
//! Burn's `fusion` feature (the workspace does not enable it); with fusion this module would
//! fail to compile rather than misbehave.
//!
//! NCCL calls block with no timeout when a peer does not join them, so every decision that
//! could differ between ranks (can this rank use NCCL, is its buffer ready) is first shared
//! over MPI, and all ranks go the same way.

use super::Communicator;
use super::exchange::Collective;
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

/// Why NCCL cannot be used: the lowest rank that cannot, and its reason (shared with every
/// rank).
pub(crate) type Refusal = (usize, String);

/// One rank's NCCL communicator, on its own stream of the rank's GPU.
pub(crate) struct NcclComm {
    comm: sys::ncclComm_t,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// A rank's GPU, ready for NCCL.
struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    uuid: [u64; 2],
}

impl NcclComm {
    /// Opens one communicator per rank where every rank can, on the GPU of `device`.
    /// Collective over MPI: the first call is an all-gather of one flag, as a build without
    /// NCCL makes.
    pub(crate) fn negotiate<B: Backend>(
        group: &dyn Communicator,
        device: &B::Device,
    ) -> std::result::Result<Self, Refusal> {
        let gpu = ordinal::<B>(device).and_then(Gpu::open);
        let ready = group.all_gather_u64(&[u64::from(gpu.is_ok())]);
        if let Some(rank) = ready.iter().position(|&r| r == 0) {
            return Err((
                rank,
                super::communicator::share_text_from(group, rank, gpu.err()),
            ));
        }
        let gpu = gpu.expect("this rank said it was ready");

        // NCCL refuses two ranks on one GPU, on those ranks only: the others would wait.
        let uuids = group.all_gather_u64(&gpu.uuid);
        for rank in 1..group.size() {
            if let Some(other) =
                (0..rank).find(|&o| uuids[2 * o..2 * o + 2] == uuids[2 * rank..2 * rank + 2])
            {
                return Err((
                    rank,
                    format!(
                        "it is on the same GPU as rank {other}, and NCCL needs one GPU per rank"
                    ),
                ));
            }
        }

        let comm = Self::join(group, gpu);
        let joined = group.all_gather_u64(&[u64::from(comm.is_ok())]);
        match joined.iter().position(|&j| j == 0) {
            None => Ok(comm.expect("this rank said it joined")),
            Some(rank) => Err((
                rank,
                super::communicator::share_text_from(group, rank, comm.err()),
            )),
        }
    }

    /// Rank 0 makes NCCL's id and broadcasts it; every rank then joins. Collective.
    fn join(group: &dyn Communicator, gpu: Gpu) -> std::result::Result<Self, String> {
        // Byte 0 says whether rank 0 could make an id; the others follow it either way.
        let mut message = [0u8; 1 + ID_BYTES];
        if group.rank() == 0
            && let Ok(id) = result::get_uniqueid()
        {
            message[0] = 1;
            for (byte, &c) in message[1..].iter_mut().zip(id.internal.iter()) {
                *byte = c as u8;
            }
        }
        group.broadcast_bytes_from(0, &mut message);
        if message[0] == 0 {
            return Err("rank 0 could not create an NCCL id".into());
        }
        let mut id = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        for (c, &byte) in id.internal.iter_mut().zip(&message[1..]) {
            *c = byte as core::ffi::c_char;
        }
        gpu.context
            .bind_to_thread()
            .map_err(|err| format!("CUDA: {err:?}"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; the id came from rank 0, and
        // every rank reaches this call (a failure before it was shared above).
        let comm = unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                group.size() as i32,
                id,
                group.rank() as i32,
            )
            .map_err(|err| format!("NCCL: {err:?}"))?;
            comm.assume_init()
        };
        Ok(Self {
            comm,
            context: gpu.context,
            stream: gpu.stream,
        })
    }

    /// Runs `collective` in place on `flat` on the GPU. Collective over MPI and NCCL.
    pub(crate) fn run<B: Backend>(
        &self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
        collective: Collective<'_>,
    ) -> Result<Tensor<B, 1>> {
        let fail = |reason: String| DataParallelError::Collective {
            operation: collective.op(),
            reason: format!("NCCL: {reason}"),
        };
        // `negotiate` chose NCCL only for this backend, so the downcast holds.
        let flat = *(Box::new(flat) as Box<dyn Any>)
            .downcast::<Tensor<Cuda, 1>>()
            .map_err(|_| fail("the gradients are not on burn::backend::Cuda".into()))?;
        let device = flat.device();
        let count = flat.shape().num_elements();
        let tensor = flat.into_primitive().tensor();
        let buffer = (|| {
            if tensor.dtype != DType::F32 {
                return Err(fail(format!(
                    "the gradients are {:?}, not f32",
                    tensor.dtype
                )));
            }
            // NCCL writes the sum over the buffer: one contiguous block that no other tensor
            // shares. Burn 0.21's `cat` always allocates a fresh one; checked all the same.
            if !(tensor.can_mut() && tensor.is_contiguous()) {
                return Err(fail("the flattened gradients share their buffer".into()));
            }
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
            // The buffer was written by Burn on its own stream: it must be complete before
            // NCCL, on another stream, reads it.
            <Cuda as Backend>::sync(&device).map_err(|err| fail(format!("{err:?}")))?;
            self.context
                .bind_to_thread()
                .map_err(|err| fail(format!("{err:?}")))?;
            Ok(resource)
        })();
        // A rank that cannot take part says so before anyone waits in NCCL.
        let ready = group.all_gather_u64(&[u64::from(buffer.is_ok())]);
        let resource = buffer?;
        if let Some(rank) = ready.iter().position(|&r| r == 0) {
            return Err(fail(format!(
                "rank {rank} could not hand over its gradients"
            )));
        }
        let pointer = resource.resource().ptr as *mut f32;
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        let (f32s, sum) = (sys::ncclDataType_t::ncclFloat32, sys::ncclRedOp_t::ncclSum);
        // NCCL's block collectives take blocks of one size: the layout pads them so.
        let block = match collective {
            Collective::AllReduce => 0,
            Collective::ReduceScatter(counts) | Collective::AllGather(counts) => {
                if counts.iter().any(|&c| c != counts[0]) {
                    return Err(fail(format!("blocks of unequal sizes {counts:?}")));
                }
                counts[0]
            }
        };
        // SAFETY: `pointer` is `count` contiguous f32 owned by `tensor` alone, kept alive by
        // `resource` until the stream is synchronised below; every rank makes this call. The
        // block operations are NCCL's in-place forms: this rank's block is at
        // `pointer + rank * block`, inside the buffer since `count` is `size * block`.
        let outcome = unsafe {
            match collective {
                Collective::AllReduce => {
                    let p = pointer.cast::<core::ffi::c_void>();
                    result::all_reduce(p, p, count, f32s, sum, self.comm, stream)
                }
                Collective::ReduceScatter(_) => {
                    let mine = pointer
                        .wrapping_add(group.rank() * block)
                        .cast::<core::ffi::c_void>();
                    let all = pointer.cast::<core::ffi::c_void>();
                    result::reduce_scatter(all, mine, block, f32s, sum, self.comm, stream)
                }
                Collective::AllGather(_) => {
                    let mine = pointer
                        .wrapping_add(group.rank() * block)
                        .cast::<core::ffi::c_void>();
                    let all = pointer.cast::<core::ffi::c_void>();
                    result::all_gather(mine, all, block, f32s, self.comm, stream)
                }
            }
        }
        .map_err(|err| fail(format!("{err:?}")))
        .and_then(|_| {
            self.stream
                .synchronize()
                .map_err(|err| fail(format!("{err:?}")))
        });
        // A rank whose NCCL call failed says so before the others go on to the next call.
        let done = group.all_gather_u64(&[u64::from(outcome.is_ok())]);
        outcome?;
        if let Some(rank) = done.iter().position(|&d| d == 0) {
            return Err(fail(format!("rank {rank} could not complete it")));
        }
        drop(resource);
        let summed = Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(tensor));
        Ok(*(Box::new(summed) as Box<dyn Any>)
            .downcast::<Tensor<B, 1>>()
            .expect("B is Cuda"))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than destroy: it waits for no peer (a rank may drop its trainer
        // alone, on an error), and nothing is pending since every call is synchronised.
        // SAFETY: `comm` was initialised by `join` and is not used after this.
        let _ = unsafe { result::comm_abort(self.comm) };
    }
}

impl Gpu {
    /// Binds GPU `ordinal` to this thread and makes the stream NCCL runs on.
    fn open(ordinal: usize) -> std::result::Result<Self, String> {
        let cuda = |err| format!("CUDA: {err:?}");
        let context = CudaContext::new(ordinal).map_err(cuda)?;
        context.bind_to_thread().map_err(cuda)?;
        let stream = context.new_stream().map_err(cuda)?;
        let bytes = context.uuid().map_err(cuda)?.bytes.map(|b| b as u8);
        let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8 bytes"));
        Ok(Self {
            uuid: [word(&bytes[..8]), word(&bytes[8..])],
            context,
            stream,
        })
    }
}

/// The CUDA ordinal of `device` when `B` is Burn's CUDA backend and NCCL can be loaded.
fn ordinal<B: Backend>(device: &B::Device) -> std::result::Result<usize, String> {
    let device = (device as &dyn Any)
        .downcast_ref::<CudaDevice>()
        .filter(|_| std::any::TypeId::of::<B>() == std::any::TypeId::of::<Cuda>())
        .ok_or_else(|| {
            format!(
                "the gradients are on {}, not on burn::backend::Cuda",
                std::any::type_name::<B>()
            )
        })?;
    if crate::cuda_availability().unwrap_or(0) <= device.index {
        return Err(format!("there is no CUDA device {}", device.index));
    }
    // SAFETY: only tries to open the library by its known names.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "libnccl.so was not found: cudarc opens `libnccl.so`, not `libnccl.so.2`, \
                    so install libnccl-dev or put a `libnccl.so` link on LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(device.index)
}
