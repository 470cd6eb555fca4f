//! Gradient combination, weighted by rows: on the first device, or, with the optimizer step
//! sharded, each tensor's on its owner's device and worker (see `owners`).
//!
//! For a mean loss, each replica's loss is scaled before its backward pass by its share of the
//! rows, `n_i / N`, so that the plain sum of the replicas' gradients is the gradient of the mean
//! over all `N` rows, however unevenly they were split (DDP's plain average of per-replica means
//! is off whenever the parts differ in size). The scaling rides on the backward pass, so a step
//! costs one addition per extra replica and no pass over the gradients. When micro-batches are
//! accumulated, `N` counts the rows so far and the earlier sum is rescaled once per micro-batch.
//!
//! A loss with its own denominator (`WeightedMean`) cannot be weighted before its backward pass:
//! the replicas' weights are known only once every replica (and rank) has run. Its sum is
//! differentiated as it is, and the micro-batch's summed gradient is divided by the weight so
//! far, the earlier sum rescaled as for rows: one more pass over the gradients per micro-batch.

use super::loss::Denominator;
use super::owners::Owners;
use crate::workers::Workers;
use crate::{DataParallelError, Result};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Where a micro-batch's gradients are added up.
pub(crate) struct Combine<'a, B: AutodiffBackend> {
    /// The owners of a sharded step (each adds its tensors' gradients on its own device and
    /// worker), or `None`: all on the first device, on the caller's thread.
    pub owners: Option<&'a Owners>,
    /// One started worker per owner.
    pub workers: &'a Workers,
    pub devices: &'a [B::Device],
}

/// Gradients summed since the last optimizer step: one set per owner (one set, on the first
/// device, unless the step is sharded).
#[derive(Default)]
pub(crate) struct GradientSum {
    shards: Vec<GradientsParams>,
    parts: usize,
    micro_batches: usize,
    /// What the sum is currently divided by: rows or weights of all processes so far (0 while
    /// there are none: the sum is then not divided).
    weighted_for: f64,
    /// The kind of loss of the micro-batches summed.
    denominator: Option<Denominator>,
}

impl GradientSum {
    /// Micro-batches added since the last [`take`](Self::take), this process's parts empty or
    /// not.
    pub(crate) fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    pub(crate) fn weighted_for(&self) -> f64 {
        self.weighted_for
    }

    /// Refuses a micro-batch whose loss is of another kind than those accumulated since the
    /// last [`take`](Self::take): their gradients have no common denominator.
    pub(crate) fn check_kind(&self, step: usize, denominator: Denominator) -> Result<()> {
        match self.denominator {
            Some(earlier) if earlier != denominator => Err(DataParallelError::MixedLosses {
                step,
                earlier: earlier.describe(),
                now: denominator.describe(),
            }),
            _ => Ok(()),
        }
    }

    /// Adds a micro-batch whose rows or weights over every process are `weight`: the earlier
    /// sum is rescaled to the new denominator, and `parts` (see [`add`](Self::add)) are divided
    /// by it where they were not weighted before their backward pass.
    pub(crate) fn add_micro_batch<B, M>(
        &mut self,
        module: &M,
        parts: Vec<GradientsParams>,
        denominator: Denominator,
        weight: f64,
        combine: Combine<'_, B>,
    ) where
        B: AutodiffBackend,
        M: AutodiffModule<B> + Sync,
    {
        let earlier = self.weighted_for;
        let now = earlier + weight;
        let (rescale, scale) = match denominator {
            Denominator::One => (1.0, 1.0),
            // Weighted by `rows_k / now` before the backward pass.
            Denominator::Rows if earlier > 0.0 => (earlier / now, 1.0),
            Denominator::Rows => (1.0, 1.0),
            Denominator::Weights if now == 0.0 => (1.0, 1.0),
            Denominator::Weights if earlier > 0.0 => (earlier / now, 1.0 / now),
            Denominator::Weights => (1.0 / now, 1.0 / now),
            // Each part weighted by its rows or weight before it arrives: the micro-batch's
            // mean is added to the earlier ones', which stay as they are.
            Denominator::StepRows | Denominator::StepWeights if weight > 0.0 => (1.0, 1.0 / weight),
            Denominator::StepRows | Denominator::StepWeights => (1.0, 1.0),
        };
        let rescale = if self.parts > 0 { rescale } else { 1.0 };
        self.denominator = Some(denominator);
        self.weighted_for = now;
        self.parts += parts.len();
        self.micro_batches += 1;
        // Each set: the earlier sum rescaled, then `parts` (one per replica, in replica order,
        // none where this process had no rows) added in replica order, times `scale`.
        let Combine {
            owners,
            workers,
            devices,
        } = combine;
        let owners = owners.filter(|owners| owners.replicas() > 1);
        self.regroup::<B, M>(module, owners);
        let Some(owners) = owners else {
            add::<B, M>(
                module,
                &mut self.shards[0],
                parts,
                rescale,
                scale,
                &devices[0],
            );
            return;
        };
        let split = owners.partition::<B, M>(module, parts);
        workers.run(
            self.shards
                .iter_mut()
                .zip(split)
                .zip(devices)
                .map(|((sum, parts), device)| {
                    move || add::<B, M>(module, sum, parts, rescale, scale, device)
                }),
            crate::workers::Order::Concurrent,
        );
    }

    /// Makes the sum one set per owner (one set without owners), moving what was summed so far
    /// where the sharding was switched on or off between two micro-batches of a step.
    fn regroup<B, M>(&mut self, module: &M, owners: Option<&Owners>)
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        let wanted = owners.map_or(1, Owners::replicas);
        if self.shards.len() == wanted {
            return;
        }
        if self.shards.iter().all(GradientsParams::is_empty) {
            self.shards = (0..wanted).map(|_| GradientsParams::new()).collect();
            return;
        }
        let merged = super::owners::merge::<B, M>(module, std::mem::take(&mut self.shards));
        self.shards = match owners {
            Some(owners) => owners
                .partition::<B, M>(module, vec![merged])
                .into_iter()
                .map(|mut parts| parts.pop().unwrap_or_default())
                .collect(),
            None => vec![merged],
        };
    }

    /// The sum, one set per owner, leaving the accumulator empty; an error (the accumulator
    /// emptied all the same) where the losses stated weights that add up to zero, leaving
    /// nothing to divide by.
    pub(crate) fn take(&mut self, step: usize) -> Result<Vec<GradientsParams>> {
        let weightless = matches!(
            self.denominator,
            Some(Denominator::Weights | Denominator::StepWeights)
        ) && self.weighted_for <= 0.0;
        self.parts = 0;
        self.micro_batches = 0;
        self.weighted_for = 0.0;
        self.denominator = None;
        let shards = std::mem::take(&mut self.shards);
        if weightless {
            return Err(DataParallelError::NoLossWeight { step });
        }
        Ok(shards)
    }
}

/// Multiplies `sum` by `rescale`, then adds `parts` times `scale` to it, on `device`.
fn add<B, M>(
    module: &M,
    sum: &mut GradientsParams,
    parts: Vec<GradientsParams>,
    rescale: f64,
    scale: f64,
    device: &B::Device,
) where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    if rescale != 1.0 && !sum.is_empty() {
        module.visit(&mut Scale::<B> {
            grads: sum,
            scale: rescale,
            seen: Default::default(),
            _backend: std::marker::PhantomData,
        });
    }
    module.visit(&mut Add::<B> {
        sum,
        parts,
        scale,
        device,
    });
}

/// Adds every part's gradient of each parameter into the sum, moving it to `device`.
struct Add<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    parts: Vec<GradientsParams>,
    scale: f64,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let mut added: Option<Tensor<B::InnerBackend, D>> = None;
        for part in &mut self.parts {
            // A parameter the loss did not reach has no gradient in that part.
            if let Some(grad) = part.remove::<B::InnerBackend, D>(param.id) {
                let grad = grad.to_device(self.device);
                added = Some(match added {
                    Some(added) => added + grad,
                    None => grad,
                });
            }
        }
        if self.scale != 1.0 {
            added = added.map(|added| added.mul_scalar(self.scale));
        }
        // What was summed so far sits on another device where the sharding changed in the step.
        let earlier = self
            .sum
            .remove::<B::InnerBackend, D>(param.id)
            .map(|total| {
                if &total.device() == self.device {
                    total
                } else {
                    total.to_device(self.device)
                }
            });
        let total = match (earlier, added) {
            (Some(total), Some(added)) => Some(total + added),
            (total, added) => total.or(added),
        };
        if let Some(total) = total {
            self.sum.register(param.id, total);
        }
    }
}

/// `grads` multiplied by `scale` (a replica's share of its micro-batch).
#[cfg(feature = "burn-train")]
pub(crate) fn scaled<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    scale: f64,
) -> GradientsParams {
    if scale != 1.0 {
        module.visit(&mut Scale::<B> {
            grads: &mut grads,
            scale,
            seen: Default::default(),
            _backend: std::marker::PhantomData,
        });
    }
    grads
}

/// Multiplies every gradient by `scale`.
struct Scale<'a, B> {
    grads: &'a mut GradientsParams,
    scale: f64,
    /// A parameter met twice (one layer used in two places) is scaled once.
    seen: std::collections::HashSet<burn::module::ParamId>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.scale));
        }
    }
}
