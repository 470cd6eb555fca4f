//! Optimizer records as bytes, and the record operations a sharded optimizer state needs.

use crate::{DataParallelError, Result};
use burn::module::ParamId;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use hashbrown::HashMap;
use std::collections::HashSet;

/// An optimizer record kept per parameter, which can be cut into shards and put back together:
/// the record of every optimizer Burn builds with `OptimizerAdaptor` (SGD, Adam, AdamW, ...),
/// a map from parameter id to that parameter's state.
pub trait ShardableRecord<B: Backend>: Record<B> {
    /// The state of the parameters in `keep` only.
    fn retain_params(self, keep: &HashSet<ParamId>) -> Self;
    /// The state of every parameter but those in `drop`.
    fn without_params(self, drop: &HashSet<ParamId>) -> Self;
    /// The state of both records' parameters (`other`'s where both have one).
    fn merge(self, other: Self) -> Self;
}

impl<B: Backend, T: Record<B>> ShardableRecord<B> for HashMap<ParamId, T> {
    fn retain_params(mut self, keep: &HashSet<ParamId>) -> Self {
        self.retain(|id, _| keep.contains(id));
        self
    }

    fn without_params(mut self, drop: &HashSet<ParamId>) -> Self {
        self.retain(|id, _| !drop.contains(id));
        self
    }

    fn merge(mut self, other: Self) -> Self {
        self.extend(other);
        self
    }
}

fn recorder() -> BinBytesRecorder<FullPrecisionSettings> {
    BinBytesRecorder::default()
}

/// `record` in Burn's binary format, at full precision.
pub(crate) fn to_bytes<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>> {
    Recorder::<B>::record(&recorder(), record, ()).map_err(|err| {
        DataParallelError::OptimizerRecord {
            reason: err.to_string(),
        }
    })
}

/// A record written by [`to_bytes`], with its tensors on `device`.
pub(crate) fn from_bytes<B: Backend, R: Record<B>>(
    bytes: Vec<u8>,
    device: &B::Device,
) -> Result<R> {
    Recorder::<B>::load(&recorder(), bytes, device).map_err(|err| {
        DataParallelError::OptimizerRecord {
            reason: err.to_string(),
        }
    })
}
