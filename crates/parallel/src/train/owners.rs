//! Which replica combines and steps each parameter when the optimizer step is sharded across
//! the replicas of one process ([`DataParallelTrainer::with_sharded_step`]), and what that
//! moves between them.
//!
//! Each trainable tensor has one owner. Its owner adds up every replica's gradient of it (the
//! reduce-scatter), takes its optimizer step and hands the new value to the other replicas (the
//! all-gather). Tensors stay whole, so any optimizer, per-tensor gradient clipping included,
//! steps them exactly as it would on one device. They are dealt largest first, each to the
//! owner with the fewest values so far, so a model of many tensors splits about evenly; a
//! model dominated by one tensor cannot (see [`StepTraffic`]).
//!
//! [`DataParallelTrainer::with_sharded_step`]: super::DataParallelTrainer::with_sharded_step

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::collections::{HashMap, HashSet};

/// The owner of each trainable tensor, by id.
#[derive(Debug, Clone)]
pub(crate) struct Owners {
    owner: HashMap<ParamId, usize>,
    /// The tensors each replica owns (what `owner` says, by replica: asked every step).
    owned: Vec<HashSet<ParamId>>,
    /// Values owned by each replica.
    values: Vec<usize>,
}

impl Owners {
    /// `module`'s trainable tensors dealt to `replicas` owners, largest first, each to the owner
    /// holding the fewest values so far (the lowest index on a tie); the same module always
    /// gets the same owners.
    pub(crate) fn balanced<B: AutodiffBackend, M: AutodiffModule<B>>(
        module: &M,
        replicas: usize,
    ) -> Self {
        let mut tensors = trainable::<B, M>(module);
        // Stable: tensors of one size keep the module's order.
        tensors.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
        let mut values = vec![0; replicas.max(1)];
        let mut owner = HashMap::with_capacity(tensors.len());
        for &(id, len) in &tensors {
            let (least, _) = values
                .iter()
                .enumerate()
                .min_by_key(|&(index, held)| (*held, index))
                .expect("at least one owner");
            values[least] += len;
            owner.insert(id, least);
        }
        Self::new(owner, values)
    }

    fn new(owner: HashMap<ParamId, usize>, values: Vec<usize>) -> Self {
        let mut owned = vec![HashSet::new(); values.len()];
        for (&id, &replica) in &owner {
            owned[replica].insert(id);
        }
        Self {
            owner,
            owned,
            values,
        }
    }

    /// Every trainable tensor owned by replica 0: what combining on the first device does.
    pub(crate) fn first<B: AutodiffBackend, M: AutodiffModule<B>>(
        module: &M,
        replicas: usize,
    ) -> Self {
        let tensors = trainable::<B, M>(module);
        let mut values = vec![0; replicas.max(1)];
        values[0] = tensors.iter().map(|(_, len)| len).sum();
        Self::new(tensors.iter().map(|&(id, _)| (id, 0)).collect(), values)
    }

    /// How many owners there are.
    pub(crate) fn replicas(&self) -> usize {
        self.values.len()
    }

    /// The owner of tensor `id` (replica 0 for a tensor that is not trainable).
    pub(crate) fn of(&self, id: &ParamId) -> usize {
        self.owner.get(id).copied().unwrap_or(0)
    }

    /// Whether tensor `id` is trainable (frozen tensors and buffers have no owner).
    pub(crate) fn is_trainable(&self, id: &ParamId) -> bool {
        self.owner.contains_key(id)
    }

    /// Whether tensor `id` is trainable and owned by replica `replica`.
    pub(crate) fn owns_trainable(&self, id: &ParamId, replica: usize) -> bool {
        self.owner.get(id) == Some(&replica)
    }

    /// The tensors replica `replica` owns.
    pub(crate) fn owned_by(&self, replica: usize) -> &HashSet<ParamId> {
        &self.owned[replica]
    }

    /// What an optimizer step moves between the replicas when every replica has a gradient for
    /// every trainable tensor: each replica sends its gradients of the tensors it does not own
    /// to their owners and receives the others' gradients of its own, then sends the new values
    /// of its own to every other replica and receives the rest.
    pub(crate) fn traffic(&self) -> StepTraffic {
        let n = self.replicas();
        let total: usize = self.values.iter().sum();
        let per_replica: Vec<usize> = self
            .values
            .iter()
            .map(|&own| (total - own) + (n - 1) * own)
            .collect();
        StepTraffic {
            sent: per_replica.clone(),
            received: per_replica,
            trainable_values: total,
        }
    }

    /// Splits each replica's gradients by owner: `result[owner][replica]`.
    pub(crate) fn partition<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        parts: Vec<GradientsParams>,
    ) -> Vec<Vec<GradientsParams>> {
        let mut split = Split::<B> {
            owners: self,
            parts,
            shards: (0..self.replicas()).map(|_| Vec::new()).collect(),
            seen: HashSet::new(),
            _backend: std::marker::PhantomData,
        };
        for shard in &mut split.shards {
            shard.resize_with(split.parts.len(), GradientsParams::new);
        }
        module.visit(&mut split);
        split.shards
    }
}

/// What the replicas of one process send and receive for an optimizer step on one micro-batch,
/// counted in values
/// (gradients and parameters of trainable tensors; frozen tensors and buffers are not counted),
/// per replica index, so that the count means the same on a CPU, where nothing moves, as
/// between GPUs.
///
/// A ring all-reduce, the bound no exchange of every gradient can beat, moves
/// `2 (n - 1) / n` of the trainable values in and out of each of `n` replicas
/// ([`ring_bound`](Self::ring_bound)). Combining on the first device moves `(n - 1)` times them
/// in and out of replica 0. With [`DataParallelTrainer::with_sharded_step`], replica `r`, owning
/// `v_r` values, sends and receives `(total - v_r) + (n - 1) v_r`: the ring bound when the
/// owners hold equal shares, more where one tensor outweighs a fair share (tensors stay whole).
/// The count assumes every device ran a replica in the step's last call; a device it left out
/// gets its replica copied from the first device (the whole model) before the step. With
/// accumulation, the gradients travel to their owners after every micro-batch (the sum is kept
/// there), the new values once per step.
///
/// [`DataParallelTrainer::with_sharded_step`]: super::DataParallelTrainer::with_sharded_step
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTraffic {
    /// Values replica `i` sends.
    pub sent: Vec<usize>,
    /// Values replica `i` receives.
    pub received: Vec<usize>,
    /// The module's trainable values.
    pub trainable_values: usize,
}

impl StepTraffic {
    /// What a ring all-reduce moves in and out of each replica: `2 (n - 1) / n` of the
    /// trainable values.
    pub fn ring_bound(&self) -> f64 {
        let n = self.sent.len() as f64;
        2.0 * (n - 1.0) / n * self.trainable_values as f64
    }

    /// The most any replica sends or receives, over [`ring_bound`](Self::ring_bound) (1.0 with
    /// one replica, where nothing moves).
    pub fn over_ring_bound(&self) -> f64 {
        let most = self.sent.iter().chain(&self.received).copied().max();
        match most {
            Some(most) if self.ring_bound() > 0.0 => most as f64 / self.ring_bound(),
            _ => 1.0,
        }
    }
}

/// The trainable tensors of `module`, each once, in visiting order, with their values.
fn trainable<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<(ParamId, usize)> {
    struct Collect(Vec<(ParamId, usize)>, HashSet<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() && self.1.insert(param.id) {
                self.0.push((param.id, value.shape().num_elements()));
            }
        }
    }
    let mut collect = Collect(Vec::new(), HashSet::new());
    module.visit(&mut collect);
    collect.0
}

/// Moves each part's gradients into its owner's shard.
struct Split<'a, B> {
    owners: &'a Owners,
    parts: Vec<GradientsParams>,
    shards: Vec<Vec<GradientsParams>>,
    seen: HashSet<ParamId>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        let owner = self.owners.of(&param.id);
        for (part, shard) in self.parts.iter_mut().zip(&mut self.shards[owner]) {
            if let Some(grad) = part.remove::<B::InnerBackend, D>(param.id) {
                shard.register(param.id, grad);
            }
        }
    }
}

/// The shards' gradients in one set.
pub(crate) fn merge<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut shards: Vec<GradientsParams>,
) -> GradientsParams {
    if shards.len() == 1 {
        return shards.pop().unwrap_or_default();
    }
    struct Merge<B> {
        shards: Vec<GradientsParams>,
        merged: GradientsParams,
        _backend: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Merge<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            for shard in &mut self.shards {
                if let Some(grad) = shard.remove::<B::InnerBackend, D>(param.id) {
                    self.merged.register(param.id, grad);
                }
            }
        }
    }
    let mut merge = Merge::<B> {
        shards,
        merged: GradientsParams::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut merge);
    merge.merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<NdArray>;

    #[derive(burn::module::Module, Debug)]
    struct Net<B: burn::tensor::backend::Backend> {
        big: Linear<B>,
        small: Linear<B>,
        frozen: Linear<B>,
    }

    fn net() -> Net<B> {
        let device = Default::default();
        Net {
            big: LinearConfig::new(64, 64).init(&device),
            small: LinearConfig::new(64, 4).init(&device),
            frozen: LinearConfig::new(4, 4).init::<B>(&device).no_grad(),
        }
    }

    #[test]
    fn owners_split_about_evenly_largest_first_and_skip_frozen_tensors() {
        let net = net();
        let owners = Owners::balanced::<B, _>(&net, 2);
        // 4096 + 64 (big) and 256 + 4 (small): the big weight alone on one owner.
        assert_eq!(owners.owner.len(), 4);
        assert_eq!(owners.of(&net.big.weight.id), 0);
        assert_eq!(owners.values, vec![4096, 64 + 256 + 4]);
        assert!(!owners.is_trainable(&net.frozen.weight.id));
        assert!(owners.owns_trainable(&net.small.bias.as_ref().unwrap().id, 1));
        let traffic = owners.traffic();
        // Two replicas: each sends what it does not own and its own once, the ring bound.
        assert_eq!(traffic.sent, vec![4420, 4420]);
        assert_eq!(traffic.ring_bound(), 4420.0);
        assert_eq!(traffic.over_ring_bound(), 1.0);
        // On the first device: replica 0 sends and receives (n - 1) times everything.
        let first = Owners::first::<B, _>(&net, 3).traffic();
        assert_eq!(first.sent, vec![2 * 4420, 4420, 4420]);
        assert!((first.over_ring_bound() - 1.5).abs() < 1e-12);
    }

    #[test]
    fn partition_then_merge_gives_back_every_gradient() {
        let net = net();
        let owners = Owners::balanced::<B, _>(&net, 2);
        let device = Default::default();
        let x = Tensor::<B, 2>::ones([3, 64], &device);
        let grads = || {
            let y = net.small.forward(net.big.forward(x.clone())).sum();
            GradientsParams::from_grads(y.backward(), &net)
        };
        let shards = owners.partition::<B, _>(&net, vec![grads(), grads()]);
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0][0].len(), 1); // the big weight
        assert_eq!(shards[1][1].len(), 3);
        let merged = merge::<B, _>(&net, shards.into_iter().map(|mut s| s.remove(0)).collect());
        assert_eq!(merged.len(), 4);
    }
}
