//! Buffers: the state a module changes in its own forward pass instead of through gradients,
//! BatchNorm's running mean and variance (Burn's `RunningState`).
//!
//! In a data-parallel training forward every replica updates its own copy from its part of the
//! batch. Afterwards the module's buffers become the **row-weighted mean** of the replicas'
//! (replica `k` weighing `rows_k / rows`), and every replica kept for the next call receives
//! that value too. Each replica's update is `(1 - m) * old + m * mean_k`, and the row-weighted
//! mean of the `mean_k` is the mean over the whole batch: a running mean equals single-device
//! training's wherever the batch norm's input does not itself depend on batch statistics (a
//! first batch norm; later ones see the outputs of per-part normalization). A running variance
//! gets the row-weighted mean of the replicas' variances, which leaves out the spread between
//! the parts' means (see the crate docs).
//! PyTorch's `DataParallel` instead keeps replica 0's update alone.

use crate::by_id::ById;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::collections::HashSet;

/// The ids of a module's buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Buffers {
    ids: HashSet<ParamId>,
}

impl Buffers {
    /// Finds the buffers of `module`, leaving it as it was.
    ///
    /// Burn 0.21 shows a buffer to visitors and mappers exactly as it shows a parameter. What
    /// tells them apart is that every clone of a module shares its `RunningState`s: mapping a
    /// clone changes the module's buffers and none of its parameters. So each tensor of a clone
    /// is swapped for a small one of another shape, the buffers are those whose shape changed
    /// in the module, and their values are put back.
    pub(crate) fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut saved = Swap(ById::default());
        let _ = module.clone().map(&mut saved);
        let mut found = FindChanged(&saved.0, HashSet::new());
        module.visit(&mut found);
        let found = found.1;
        if !found.is_empty() {
            saved.0.retain(|id| found.contains(id));
            let _ = module.clone().map(&mut saved.0);
        }
        Self { ids: found }
    }

    /// Sets the buffers of every replica (the module first) to the row-weighted mean of their
    /// values, `rows[k]` being the rows replica `k` ran on. The mean is computed on `device`.
    pub(crate) fn combine<B: Backend, M: Module<B>>(
        &self,
        replicas: &[&M],
        rows: &[usize],
        device: &B::Device,
    ) {
        if self.ids.is_empty() || replicas.len() < 2 {
            return;
        }
        let total = rows.iter().sum::<usize>().max(1) as f64;
        let mut sum = WeightedSum {
            ids: &self.ids,
            device,
            weight: 0.0,
            sums: ById::default(),
        };
        for (replica, &rows) in replicas.iter().zip(rows) {
            crate::replicas::settle(*replica);
            sum.weight = rows as f64 / total;
            replica.visit(&mut sum);
        }
        for replica in replicas {
            // A clone shares the replica's buffers: mapping it writes into them.
            let _ = (*replica).clone().map(&mut sum.sums);
        }
    }

    /// Whether `id` is a buffer's (the exchange across processes sends buffers apart).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn contains(&self, id: &ParamId) -> bool {
        self.ids.contains(id)
    }
}

/// Replaces every float tensor by one of another shape (all ones, or all twos for a tensor
/// already of ones), keeping the originals.
struct Swap(ById);

impl<B: Backend> ModuleMapper<B> for Swap {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let id = param.id;
        param.map(|tensor| {
            let side = if tensor.dims() == [1; D] { 2 } else { 1 };
            let marker = Tensor::zeros([side; D], &tensor.device());
            self.0.insert(id, tensor);
            marker
        })
    }
}

/// Ids of the float tensors whose shape is no longer the one saved.
struct FindChanged<'a>(&'a ById, HashSet<ParamId>);

impl<B: Backend> ModuleVisitor<B> for FindChanged<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let saved = self.0.get::<B, D>(&param.id).map(Tensor::dims);
        if saved.is_some_and(|dims| dims != param.val().dims()) {
            self.1.insert(param.id);
        }
    }
}

/// Adds `weight` times each buffer it visits into `sums`, on `device`.
struct WeightedSum<'a, B: Backend> {
    ids: &'a HashSet<ParamId>,
    device: &'a B::Device,
    weight: f64,
    sums: ById,
}

impl<B: Backend> ModuleVisitor<B> for WeightedSum<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.ids.contains(&param.id) {
            return;
        }
        let part = param
            .val()
            .detach()
            .to_device(self.device)
            .mul_scalar(self.weight);
        let total = match self.sums.get::<B, D>(&param.id) {
            Some(sum) => sum.clone() + part,
            None => part,
        };
        self.sums.insert(param.id, total);
    }
}
