//! The optimizer step spread across the replicas of one process
//! ([`DataParallelTrainer::with_sharded_step`](super::DataParallelTrainer::with_sharded_step)):
//! each replica's worker steps the tensors it owns ([`Owners`]) with an optimizer holding their
//! state only, and every replica then gets the new values from their owners.
//!
//! The result is the step one optimizer takes on the whole module: the optimizer's state is
//! split by tensor before the step and put back together after it, and every tensor is stepped
//! whole, by the same optimizer code, with the same gradient. Each tensor and each piece of
//! state has one holder while it is stepped (the other owners' modules hold stand-ins in its
//! place), so backends that update a tensor in place when it has a single owner still do.

use super::owners::Owners;
use super::record::ShardableRecord;
use crate::by_id::ById;
use crate::replicas::Replicate;
use crate::workers::Workers;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
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
    /// The summed gradients, one set per owner, each on its owner's device.
    pub grads: Vec<GradientsParams>,
    pub owners: &'a Owners,
    pub workers: &'a Workers,
    pub devices: &'a [B::Device],
    pub lr: f64,
}

/// The stepped module, on the first device, and its replicas on the other devices, each made
/// from the owners' new values.
pub(crate) struct Stepped<M> {
    pub module: M,
    pub replicas: Vec<M>,
}

/// Steps each owner's tensors on its worker, with its share of `optimizer`'s state, and puts
/// the module, its replicas and the optimizer's state back together.
pub(crate) fn sharded_step<B, M, O>(shards: Shards<'_, B, M>, optimizer: &mut O) -> Stepped<M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B> + Clone + Send,
    O::Record: ShardableRecord<B>,
{
    let Shards {
        module,
        grads,
        owners,
        workers,
        devices,
        lr,
    } = shards;
    let n = owners.replicas();
    let owned: Vec<HashSet<ParamId>> = (0..n).map(|k| owners.owned_by(k)).collect();

    // The state goes to the owners: `optimizer` keeps none of it meanwhile, so each piece has
    // one holder.
    let mut optimizers: Vec<O> = owned
        .iter()
        .map(|own| {
            let state = optimizer.to_record().retain_params(own);
            optimizer.clone().load_record(state)
        })
        .collect();
    let none = optimizer.to_record().retain_params(&HashSet::new());
    *optimizer = optimizer.clone().load_record(none);

    // Each owner's module holds its own tensors and stand-ins for the others'.
    let mut modules: Vec<M> = (1..n).map(|_| module.clone()).collect();
    modules.insert(0, module);
    let modules: Vec<M> = modules
        .into_iter()
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
        false,
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

    // The owners' new values, each from the module that stepped it.
    let mut values = ById::default();
    for (owner, module) in stepped.iter().enumerate() {
        module.visit(&mut Owned::<B> {
            owners,
            owner,
            values: &mut values,
            _backend: std::marker::PhantomData,
        });
    }
    let mut stepped = stepped.into_iter();
    let first = stepped.next().expect("at least one owner");
    drop(stepped);
    // On the first device: the values move there from their owners' devices.
    let module = first.map(&mut values);
    let rest = ById::of(&module);
    let replicas = devices[1..n]
        .iter()
        .map(|device| {
            // Fresh buffers, the owners' values moved straight to this replica's device (not
            // through the first device), then leaves of its own.
            module
                .unaliased()
                .map(&mut OnDevice::<B> {
                    values: &values,
                    rest: &rest,
                    device,
                })
                .fork(device)
        })
        .collect();
    Stepped { module, replicas }
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
        if self.owners.owns_trainable(&param.id, self.owner) {
            self.values.insert(param.id, param.val());
        }
    }
}

/// Gives each trainable tensor its owner's new value on `device`, and every other tensor the
/// module's own (which `fork` then moves).
struct OnDevice<'a, B: AutodiffBackend> {
    values: &'a ById,
    rest: &'a ById,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleMapper<B> for OnDevice<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let id = param.id;
        if let Some(value) = self.values.get::<B, D>(&id).cloned() {
            let device = self.device;
            return param.map(|_| {
                if &value.device() == device {
                    value
                } else {
                    value.to_device(device)
                }
            });
        }
        match self.rest.get::<B, D>(&id).cloned() {
            Some(value) => param.map(|_| value),
            None => param,
        }
    }
}
