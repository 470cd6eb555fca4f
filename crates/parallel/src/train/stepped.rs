//! Micro-batches whose replicas run a step that computes its own gradients: forward and
//! backward fused in one call, as burn-train's `TrainStep::step` is.
//!
//! Such a step hands back the gradients of its part's own loss, a mean over the part's rows (or
//! over a weight the output states). Each replica's gradients are multiplied by its rows (or
//! weight), and the micro-batch's sum divided by the rows (or weights) of every replica and
//! rank: the gradient of the micro-batch's mean, as one device on the whole micro-batch has it.
//! Micro-batches accumulated for one optimizer step are *added*, as burn-train's gradient
//! accumulation adds them (`GradientsAccumulator`).
//!
//! The backward pass cannot be held back until every replica's forward pass is done, which is
//! how [`DataParallelTrainer`] keeps a `backward()` from meeting another thread's graph
//! recording (tracel-ai/burn#5573, Burn 0.21). Here the replicas' steps take turns instead, in
//! replica order: no two of them ever run at once. On a GPU a step queues its kernels and
//! returns, so the devices should still compute at the same time (not measured yet); on the
//! CPU the steps run one after another (see `BENCHMARKS.md`). Each replica reads its loss
//! after its turn.

use super::loss::Denominator;
use super::peers::Peers;
use super::reduce::scaled;
use super::{BatchStats, DataParallelTrainer};
use crate::parallel_apply::ReplicaTiming;
use crate::replicas::Link;
use crate::seed::{Turns, derive};
use crate::{DataParallelError, Part, Replicate, Result, Scatter};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use std::convert::Infallible;
use std::time::Instant;

/// What a replica's step gave, once its turn is over.
struct Stepped<T> {
    loss: f64,
    weight: f64,
    /// Multiplied by the part's rows or weight; `None` where the loss is not finite.
    grads: Option<GradientsParams>,
    output: T,
}

/// A replica's output, with the weight its loss is a mean over.
pub(crate) type Weighed<T> = (Part<T>, f64);

/// How a step's output is read: its loss over the part, and the weight that loss is a mean
/// over where it states one.
pub(crate) trait ReadLoss<T>: Fn(&T) -> (f64, Option<f64>) + Sync {}
impl<T, F: Fn(&T) -> (f64, Option<f64>) + Sync> ReadLoss<T> for F {}

impl<B, M, O> DataParallelTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// One micro-batch of steps that compute their own gradients, with `peers` taking part
    /// (`batch` is this process's part of it, `None` where it has no row):
    /// `step` runs on every replica's part (in turns), `read` reads each output's loss and,
    /// where `weighted`, the weight its loss is a mean over. The micro-batch's mean gradient
    /// over every replica and rank is added to those pending since the last
    /// [`apply`](Self::apply). Returns the micro-batch's loss (over every rank) and this
    /// process's outputs, in replica order, each with the weight its loss is a mean over (its
    /// rows, or the weight it stated).
    pub(crate) fn accumulate_steps_with<I, T, F, R>(
        &mut self,
        peers: &mut impl Peers<B, M, O>,
        batch: Option<I>,
        weighted: bool,
        step: F,
        read: R,
    ) -> Result<(BatchStats, Vec<Weighed<T>>)>
    where
        I: Scatter<B>,
        T: Send,
        F: Fn(&M, I) -> (GradientsParams, T) + Sync,
        R: ReadLoss<T>,
    {
        let dim = self.parallel.dim();
        let denominator = if weighted {
            Denominator::StepWeights
        } else {
            Denominator::StepRows
        };
        let local = batch
            .as_ref()
            .map_or(Ok(Some(0)), |batch| batch.rows(dim))
            .map(|rows| rows.unwrap_or(0));
        let (rows, micro_batch) = self.agree_micro_batch(peers, local, denominator)?;
        let (outcome, local) = self.share_micro_batch(
            peers,
            |this| match batch {
                Some(batch) if rows.local > 0 => {
                    this.run_steps(batch, weighted, micro_batch, step, read)
                }
                _ => Ok((Vec::new(), Vec::new())),
            },
            |(parts, _)| {
                let weight: f64 = parts.iter().map(|(_, _, weight)| weight).sum();
                let loss: f64 = parts.iter().map(|(_, loss, weight)| loss * weight).sum();
                (loss, weight)
            },
        )?;
        let (parts, grads) = local.unwrap_or_default();
        let start = Instant::now();
        self.add_to_pending(false, grads, denominator, outcome.weight)?;
        let loss = if outcome.weight > 0.0 {
            outcome.loss / outcome.weight
        } else {
            0.0
        };
        let stats = BatchStats {
            loss,
            rows: rows.total,
            weight: outcome.weight,
            replicas: parts
                .iter()
                .map(|((timing, _), ..)| timing.clone())
                .collect(),
            reduce: start.elapsed(),
        };
        let outputs = parts
            .into_iter()
            .map(|((timing, output), _, weight)| {
                let part = Part {
                    replica: timing.replica,
                    rows: timing.rows,
                    value: output,
                };
                (part, weight)
            })
            .collect();
        Ok((stats, outputs))
    }

    /// Every replica's step on its part, in turns: per replica its timing and output, its loss
    /// and the weight of that loss (rows or stated), and its gradients weighted by it.
    #[allow(clippy::type_complexity)]
    fn run_steps<I, T, F, R>(
        &mut self,
        batch: I,
        weighted: bool,
        micro_batch: usize,
        step: F,
        read: R,
    ) -> Result<(Vec<((ReplicaTiming, T), f64, f64)>, Vec<GradientsParams>)>
    where
        I: Scatter<B>,
        T: Send,
        F: Fn(&M, I) -> (GradientsParams, T) + Sync,
        R: ReadLoss<T>,
    {
        let dim = self.parallel.dim();
        let turns = Turns::default();
        let seed = self.micro_batch_seed(micro_batch);
        let devices = self.parallel.devices().to_vec();
        let (results, timings) = self.parallel.run(
            batch,
            |replica: &M, part: I| {
                let rows = part.rows(dim).ok().flatten().unwrap_or(0);
                let index = crate::current_replica().map_or(0, |info| info.index);
                // Steps in turns cannot meet inside a layer: a synchronized batch norm fails.
                let _refused = crate::sync_norm::refuse("a step that runs its own backward pass");
                // One step at a time: a fused forward and backward cannot wait for the other
                // replicas' forward passes (tracel-ai/burn#5573).
                let (grads, output) = turns.take(index, || {
                    if let Some(seed) = seed {
                        B::seed(&devices[index], derive(seed, &[index as u64]));
                    }
                    step(replica, part)
                });
                let (loss, stated) = read(&output);
                let weight = match stated {
                    Some(weight) if weighted => weight,
                    _ => rows as f64,
                };
                // A part of weight 0 (all padding) is a mean over nothing: it adds nothing, as
                // its rows add nothing on one device.
                if weighted && weight == 0.0 {
                    return Ok(Stepped {
                        loss: 0.0,
                        weight,
                        grads: Some(GradientsParams::new()),
                        output,
                    });
                }
                // Divided by every rank's rows or weights once they are known. A weight that is
                // not a count is refused below.
                let grads = (loss.is_finite() && weight.is_finite() && weight >= 0.0)
                    .then(|| scaled::<B, M>(replica, grads, weight));
                Ok::<_, Infallible>(Stepped {
                    loss,
                    weight,
                    grads,
                    output,
                })
            },
            Some(Link::Detached),
        )?;
        let mut parts = Vec::with_capacity(results.len());
        let mut grads = Vec::with_capacity(results.len());
        for (timing, result) in timings.into_iter().zip(results) {
            if !(result.weight.is_finite() && result.weight >= 0.0) {
                return Err(DataParallelError::InvalidLossWeight {
                    step: self.steps,
                    replica: timing.replica,
                    weight: result.weight,
                });
            }
            let Some(g) = result.grads else {
                return Err(DataParallelError::NonFiniteLoss {
                    step: self.steps,
                    replica: timing.replica,
                    loss: result.loss,
                });
            };
            grads.push(g);
            parts.push(((timing, result.output), result.loss, result.weight));
        }
        Ok((parts, grads))
    }
}
