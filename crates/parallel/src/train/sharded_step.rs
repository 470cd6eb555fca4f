//! The optimizer step spread across the replicas of one process
//! ([`DataParallelTrainer::with_sharded_step`](super::DataParallelTrainer::with_sharded_step)):
//! each replica's worker steps the tensors it owns ([`Owners`]), in its own replica, on its own
//! device, with an optimizer holding their state only; then the module and every replica take
//! the other owners' new values, moved straight from their owners' devices.
//!
//! The result is the step one optimizer takes on the whole module: the optimizer's state is
//! split by tensor before the step and put back together after it, and every tensor is stepped
//! whole, by the same optimizer code, with the same gradient. Each tensor and each piece of
//! state has one holder while it is stepped (the other modules hold stand-ins in its place), so
//! backends that update a tensor in place when it has a single owner still do.

use super::owners::Owners;
use super::record::ShardableRecord;
use crate::by_id::ById;
use crate::replicas::{Link, Replicate, replica};
use crate::workers::Workers;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::collections::HashSet;

/// A sharded step, chosen where the trainer learns that its optimizer can be split (the bounds
/// of `with_sharded_step`), and called where it steps.
pub(crate) type ShardedStep<B, M, O> = fn(Shards<'_, B, M>, &mut O) -> Stepped<M>;

/// What a sharded step works on.
pub(crate) struct Shards<'a, B: AutodiffBackend, M> {
    pub module: M,
    /// The replicas kept for devices `1..` (those the last call used; any missing is made).
    pub kept: Vec<M>,
    /// The summed gradients, one set per owner, each on its owner's device.
    pub grads: Vec<GradientsParams>,
    pub owners: &'a Owners,
    pub workers: &'a Workers,
    pub devices: &'a [B::Device],
    pub lr: f64,
}

/// The stepped module, on the first device, and its replicas on the other devices.
pub(crate) struct Stepped<M> {
    pub module: M,
    pub replicas: Vec<M>,
}

/// Steps each owner's tensors on its worker, in its replica, with its share of `optimizer`'s
/// state, then gives every replica the others' new values and puts the optimizer's state back
/// together.
pub(crate) fn sharded_step<B, M, O>(shards: Shards<'_, B, M>, optimizer: &mut O) -> Stepped<M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B> + Clone + Send,
    O::Record: ShardableRecord<B>,
{
    let Shards {
        module,
        mut kept,
        grads,
        owners,
        workers,
        devices,
        lr,
    } = shards;
    let n = owners.replicas();

    // The state goes to the owners (the first one also keeps the state of any tensor no one
    // owns), and `optimizer` keeps none of it meanwhile, so each piece has one holder.
    let mut optimizers: Vec<O> = (0..n)
        .map(|k| {
            let state = match k {
                0 => (1..n).fold(optimizer.to_record(), |state, other| {
                    state.without_params(owners.owned_by(other))
                }),
                _ => optimizer.to_record().retain_params(owners.owned_by(k)),
            };
            optimizer.clone().load_record(state)
        })
        .collect();
    let none = optimizer.to_record().retain_params(&HashSet::new());
    *optimizer = optimizer.clone().load_record(none);

    // Each owner steps in its own replica, where its tensors already are (a replica the last
    // call did not use is made now); the others' tensors are stand-ins there.
    kept.truncate(n - 1);
    while kept.len() < n - 1 {
        kept.push(replica(&module, &devices[kept.len() + 1], Link::Detached));
    }
    let modules: Vec<M> = std::iter::once(module)
        .chain(kept)
        .enumerate()
        .map(|(owner, module)| {
            module.map(&mut StandIns::<B> {
                owners,
                owner,
                _backend: std::marker::PhantomData,
            })
        })
        .collect();

    let mut stepped: Vec<Option<M>> = (0..n).map(|_| None).collect();
    workers.run(
        optimizers
            .iter_mut()
            .zip(modules)
            .zip(grads)
            .zip(stepped.iter_mut())
            .map(|(((optimizer, module), grads), out)| {
                move || *out = Some(optimizer.step(lr, module, grads))
            }),
        crate::workers::Order::Concurrent,
    );
    let stepped: Vec<M> = stepped
        .into_iter()
        .map(|module| module.expect("every owner stepped (a panic would have unwound here)"))
        .collect();

    let merged = optimizers
        .iter()
        .map(Optimizer::to_record)
        .reduce(ShardableRecord::merge)
        .expect("at least one owner");
    let template = optimizers.swap_remove(0);
    drop(optimizers);
    *optimizer = template.load_record(merged);

    // The owners' new values, each from the module that stepped it (the first place it holds
    // it, as Burn's optimizer steps a tensor met twice at its first place only).
    let mut values = ById::default();
    for (owner, module) in stepped.iter().enumerate() {
        module.visit(&mut Owned::<B> {
            owners,
            owner,
            values: &mut values,
            _backend: std::marker::PhantomData,
        });
    }
    let mut all: Vec<M> = stepped
        .into_iter()
        .enumerate()
        .map(|(me, module)| {
            module.map(&mut Gathered::<B> {
                owners,
                me,
                values: &values,
                device: &devices[me],
            })
        })
        .collect();
    let module = all.remove(0);
    Stepped {
        module,
        replicas: all,
    }
}

/// Replaces each trainable tensor another replica owns by a stand-in of its shape that holds
/// no memory of its own (one value, broadcast): the optimizer does not touch it (it has no
/// gradient there), and the tensor itself keeps a single holder, its owner's module.
struct StandIns<'a, B> {
    owners: &'a Owners,
    owner: usize,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StandIns<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !self.owners.is_trainable(&param.id) || self.owners.owns_trainable(&param.id, self.owner)
        {
            return param;
        }
        param.map(|tensor| {
            let shape = tensor.shape();
            let device = tensor.device();
            Tensor::<B, D>::zeros([1; D], &device).expand(shape)
        })
    }
}

/// Collects the trainable tensors `owner` owns.
struct Owned<'a, B> {
    owners: &'a Owners,
    owner: usize,
    values: &'a mut ById,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Owned<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.owners.owns_trainable(&param.id, self.owner)
            && self.values.get::<B, D>(&param.id).is_none()
        {
            self.values.insert(param.id, param.val());
        }
    }
}

/// Gives replica `me` the trainable tensors the other replicas own (in place of its
/// stand-ins): their owners' new values, moved to `me`'s device, each a leaf of its own that
/// requires a gradient, as a replica's parameters are (`fork`).
struct Gathered<'a, B: AutodiffBackend> {
    owners: &'a Owners,
    me: usize,
    values: &'a ById,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Gathered<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let id = param.id;
        if !self.owners.is_trainable(&id) || self.owners.owns_trainable(&id, self.me) {
            return param;
        }
        let Some(value) = self.values.get::<B, D>(&id) else {
            return param;
        };
        let required = value.is_require_grad();
        // Through the inner backend: a move of the autodiff tensor would be a step of its graph,
        // and its result no leaf (no gradient of its own).
        let moved = Tensor::<B, D>::from_inner(value.clone().inner().to_device(self.device));
        param.map(|_| {
            if required {
                moved.require_grad()
            } else {
                moved
            }
        })
    }
}
