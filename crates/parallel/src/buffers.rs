//! Buffers: the state a module changes in its own forward pass instead of through gradients,
//! BatchNorm's running mean and variance (Burn's `RunningState`). The rule, and what it keeps
//! exact, is the crate documentation's "Running statistics": after a training call the
//! module's buffers become the row-weighted mean of the replicas'. Here is how: a kept replica
//! receives the module's values before it runs ([`Buffers::refresh`]), each replica's update
//! is read back on the thread that made it ([`Buffers::settle`]), the mean is taken
//! ([`Buffers::combine`]), and a failed call puts the module's values back
//! ([`Buffers::restore`]).

use crate::by_id::ById;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::collections::HashSet;

/// Buffer values taken from a module, to put back.
pub(crate) struct Snapshot(ById);

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

    /// Folds every replica's pending per-thread updates into its values, a single replica's
    /// too: left pending under the thread that ran it, Burn 0.21 would later average that
    /// update with the next one made on another thread.
    pub(crate) fn settle<B: Backend, M: Module<B>>(&self, replicas: &[&M]) {
        if !self.ids.is_empty() {
            replicas.iter().for_each(|r| crate::replicas::settle(*r));
        }
    }

    /// Sets the module's buffers (`replicas[0]`) to the row-weighted mean of every replica's
    /// (settled first, see [`settle`](Self::settle)), `rows[k]` being the rows replica `k` ran
    /// on. The mean is computed on `device`. The other replicas are not written: kept ones
    /// receive the module's values before they next run ([`refresh`](Self::refresh)), so one
    /// that sits a call out never runs on stale statistics.
    pub(crate) fn combine<B: Backend, M: Module<B>>(
        &self,
        replicas: &[&M],
        rows: &[usize],
        device: &B::Device,
    ) {
        let Some(module) = replicas.first() else {
            return;
        };
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
            sum.weight = rows as f64 / total;
            replica.visit(&mut sum);
        }
        // A clone shares the module's buffers: mapping it writes into them.
        let _ = (*module).clone().map(&mut sum.sums);
    }

    /// Gives every one of `copies` (settled at the end of the call before, see
    /// [`settle`](Self::settle)) the module's buffer values in `module`, each on the copy's
    /// device.
    pub(crate) fn refresh<B: Backend, M: Module<B>>(&self, module: &mut Snapshot, copies: &[&M]) {
        if self.ids.is_empty() {
            return;
        }
        for copy in copies {
            // A clone shares the copy's buffers: mapping it writes into them.
            let _ = (*copy).clone().map(&mut module.0);
        }
    }

    /// The module's buffer values as they are now, to put back with
    /// [`restore`](Self::restore).
    pub(crate) fn snapshot<B: Backend, M: Module<B>>(&self, module: &M) -> Snapshot {
        if self.ids.is_empty() {
            return Snapshot(ById::default());
        }
        crate::replicas::settle(module);
        let mut values = ById::of(module);
        values.retain(|id| self.ids.contains(id));
        Snapshot(values)
    }

    /// Puts back the buffer values of `snapshot`, dropping any update made since (and any
    /// still pending on some thread).
    pub(crate) fn restore<B: Backend, M: Module<B>>(&self, module: &M, mut snapshot: Snapshot) {
        if self.ids.is_empty() {
            return;
        }
        crate::replicas::settle(module);
        let _ = module.clone().map(&mut snapshot.0);
    }

    /// The module's buffer values on the host, one after another in visiting order: what ranks
    /// exchange to combine their statistics.
    pub(crate) fn read<B: Backend, M: Module<B>>(&self, module: &M) -> Vec<f32> {
        struct Read<'a>(&'a HashSet<ParamId>, HashSet<ParamId>, Vec<f32>);
        impl<B: Backend> ModuleVisitor<B> for Read<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if self.0.contains(&param.id) && self.1.insert(param.id) {
                    let data = param.val().into_data().convert::<f32>();
                    self.2.extend(data.iter::<f32>());
                }
            }
        }
        if self.ids.is_empty() {
            return Vec::new();
        }
        crate::replicas::settle(module);
        let mut read = Read(&self.ids, HashSet::new(), Vec::new());
        module.visit(&mut read);
        read.2
    }

    /// Writes `values` (laid out as [`read`](Self::read) reads them) into the module's buffers.
    pub(crate) fn write<B: Backend, M: Module<B>>(&self, module: &M, values: &[f32]) {
        struct Write<'a>(&'a HashSet<ParamId>, HashSet<ParamId>, &'a [f32]);
        impl<B: Backend> ModuleMapper<B> for Write<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                if !self.0.contains(&param.id) || !self.1.insert(param.id) {
                    return param;
                }
                param.map(|old| {
                    let shape = old.shape();
                    let count = shape.num_elements().min(self.2.len());
                    let (mine, rest) = self.2.split_at(count);
                    self.2 = rest;
                    let data = burn::tensor::TensorData::new(mine.to_vec(), shape);
                    Tensor::from_data(data, &old.device())
                })
            }
        }
        if self.ids.is_empty() {
            return;
        }
        crate::replicas::settle(module);
        let _ = module
            .clone()
            .map(&mut Write(&self.ids, HashSet::new(), values));
    }

    /// Whether the module has no buffer.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is a buffer's (the exchange across processes sends buffers apart).
    pub(crate) fn contains(&self, id: &ParamId) -> bool {
        self.ids.contains(id)
    }
}

/// Replaces every float tensor by zeros of another shape (`[1; D]`, or `[2; D]` for a tensor
/// already of that shape), keeping the originals.
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
