//! The one autodiff operation of a synchronized batch norm: a sum over every replica and rank,
//! whose backward step is the same sum of the gradients (the adjoint of a sum that every
//! participant receives is the sum of what every participant sends back).
//!
//! Burn 0.21 has no hook inside a backward pass, so the sum is an operation of Burn's
//! `Autodiff` backend, written against its public `Backward` trait as Burn's own custom-kernel
//! example does. Every replica's backward pass runs on its own thread, and each stops at this
//! step until every replica has brought its gradient.

use super::SyncNormError;
use super::context::{Meeting, Summed};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use std::any::Any;

/// [`SumOp`](super::context::SumOp) for the trainer's backend `B`.
pub(crate) fn sum<B: AutodiffBackend>(
    values: Box<dyn Any>,
    extra: &[f64],
    meeting: Meeting,
) -> Result<Summed<Box<dyn Any>>, SyncNormError> {
    let tensor = *values
        .downcast::<FloatTensor<Autodiff<B::InnerBackend>>>()
        .map_err(|_| SyncNormError::UnsupportedBackend)?;
    let dtype = tensor.primitive.dtype();
    let (mut host, device) = to_host::<B::InnerBackend>(tensor.primitive.clone());
    let len = host.len();
    host.extend_from_slice(extra);
    let total = meeting.forward(host)?;
    let output = from_host::<B::InnerBackend>(&total[..len], dtype, &device);
    let state = SumState::<B::InnerBackend> {
        meeting,
        device,
        dtype,
    };
    let output = match SumBackward
        .prepare::<NoCheckpointing>([tensor.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Ok((Box::new(output), total))
}

#[derive(Debug)]
struct SumBackward;

#[derive(Clone, Debug)]
struct SumState<B: Backend> {
    meeting: Meeting,
    device: B::Device,
    dtype: DType,
}

impl<B: Backend> Backward<B, 1> for SumBackward {
    type State = SumState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Ops {
            parents,
            node,
            state,
        } = ops;
        unary::<B, _>(parents, node, grads, |grad| {
            let (host, _) = to_host::<B>(grad);
            match state.meeting.backward(host) {
                Ok(total) => from_host::<B>(&total, state.dtype, &state.device),
                // Raised inside the replica's backward pass; the call returns it as an error.
                Err(err) => std::panic::panic_any(err),
            }
        });
    }
}

fn to_host<B: Backend>(tensor: FloatTensor<B>) -> (Vec<f64>, B::Device) {
    let tensor = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(tensor));
    let device = tensor.device();
    (tensor.into_data().iter::<f64>().collect(), device)
}

fn from_host<B: Backend>(values: &[f64], dtype: DType, device: &B::Device) -> FloatTensor<B> {
    let data = TensorData::new(values.to_vec(), [values.len()]);
    Tensor::<B, 1>::from_data(data, (device, dtype))
        .into_primitive()
        .tensor()
}
