//! `DistributedTrainer`: the data-parallel training step across MPI ranks.

use super::Mpi;
use super::exchange::{Exchange, ExchangeStats, GradientTransport};
use super::flat::Layout;
use crate::train::{BatchStats, DataParallelTrainer, LossReduction};
use crate::{DataParallelError, Replicate, Result, Scatter};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::time::Instant;

/// Sent in place of a step number by a rank that has finished training.
const FINISHED: u64 = u64::MAX;

/// Sent in place of its row count by a rank whose batch cannot be split.
const UNREADABLE: u64 = u64::MAX;

/// Trains one model over several MPI ranks, each on its own devices, with the exact step of
/// single-process training on the union of the ranks' batches.
///
/// Every rank builds the same model and a [`DataParallelTrainer`] over its local devices, then
/// wraps it: the ranks check that their models match and take rank 0's parameters. Each
/// [`step`](Self::step) takes this rank's shard of the global batch; the gradients of all ranks
/// are summed by one all-reduce over one flattened buffer, weighted by rows, and every rank takes
/// the same optimizer step. Call [`finish`](Self::finish) at the end: a rank that stops early
/// is then reported to the others as an error instead of leaving them waiting.
pub struct DistributedTrainer<'a, B: AutodiffBackend, M, O> {
    mpi: &'a Mpi,
    local: DataParallelTrainer<B, M, O>,
    reduction: LossReduction,
    exchange: Exchange,
    layout: Layout,
}

impl<'a, B, M, O> DistributedTrainer<'a, B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// Joins the ranks: refuses a model whose parameter shapes differ from rank 0's (on every
    /// rank, before any step), then gives every rank rank 0's parameters. Gradients go through
    /// NCCL where every rank can use it, else through MPI ([`GradientTransport::Auto`]).
    /// Collective: every rank must call it.
    pub fn new(
        mpi: &'a Mpi,
        local: DataParallelTrainer<B, M, O>,
        reduction: LossReduction,
    ) -> Result<Self> {
        Self::with_transport(mpi, local, reduction, GradientTransport::Auto)
    }

    /// [`new`](Self::new), with the engine that sums the gradients chosen by `transport`.
    /// Collective; a rank asking for another transport than the others is an error on every
    /// rank.
    pub fn with_transport(
        mpi: &'a Mpi,
        mut local: DataParallelTrainer<B, M, O>,
        reduction: LossReduction,
        transport: GradientTransport,
    ) -> Result<Self> {
        let buffers = local.buffers().clone();
        let layout = Layout::of::<B, M>(local.module(), &buffers);
        let count = layout.values();
        let signature = [super::world::fnv1a(&layout.signature()), count as u64];
        let all = mpi.all_gather_u64(&signature);
        if let Some(rank) = (1..mpi.size()).find(|&r| all[2 * r..2 * r + 2] != all[0..2]) {
            return Err(DataParallelError::ModelMismatch {
                rank,
                expected: all[1] as usize,
                found: all[2 * rank + 1] as usize,
            });
        }
        let mut buffer = if mpi.rank() == 0 {
            layout.params::<B, M>(local.module())
        } else {
            vec![0.0; count]
        };
        mpi.broadcast_f32_from_0(&mut buffer);
        let module = layout.with_params::<B, M>(local.module().clone(), &buffer);
        local.replace_module(module);
        // The gradients are gathered where the module's first parameter lives.
        let device = local
            .module()
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(|| local.devices()[0].clone());
        let exchange = Exchange::open::<B::InnerBackend>(mpi, &device, transport)?;
        Ok(Self {
            mpi,
            local: local.with_loss_reduction(reduction),
            reduction,
            exchange,
            layout,
        })
    }

    /// The engine summing the gradients: [`GradientTransport::Mpi`] or
    /// [`GradientTransport::Nccl`], the same on every rank.
    pub fn transport(&self) -> GradientTransport {
        self.exchange.kind()
    }

    /// What the gradient exchange has carried on this rank since this trainer was made (steps
    /// counted by [`DataParallelTrainer::with_steps_taken`] are not included): one all-reduce
    /// per step.
    pub fn exchange_stats(&self) -> ExchangeStats {
        self.exchange.stats()
    }

    /// The module, the same on every rank after each step.
    pub fn module(&self) -> &M {
        self.local.module()
    }

    /// The optimizer (for checkpoints, written by rank 0).
    pub fn optimizer(&self) -> &O {
        self.local.optimizer()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.local.steps()
    }

    /// One step on this rank's shard `batch` of the global batch (it may be empty on some
    /// ranks). Returns the loss over the whole global batch and this rank's timings.
    /// Collective: every rank must call it for every step.
    pub fn step<I, F>(&mut self, lr: f64, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        F: Fn(&M, I) -> Tensor<B, 1> + Sync,
    {
        // A batch that cannot be read is reported after the gather, not before: the other
        // ranks must not be left waiting in it.
        let local_rows = batch.rows(self.local.dim()).map(|rows| rows.unwrap_or(0));
        let step = self.local.steps() as u64;
        let sent_rows = local_rows.as_ref().map_or(UNREADABLE, |&rows| rows as u64);
        let all = self.mpi.all_gather_u64(&[step, sent_rows]);
        if let Some(rank) = (0..self.mpi.size()).find(|&r| all[2 * r + 1] == UNREADABLE) {
            return Err(self.peer_failed(rank, step, local_rows.err()));
        }
        let local_rows = local_rows?;
        for rank in 0..self.mpi.size() {
            match all[2 * rank] {
                FINISHED => {
                    return Err(DataParallelError::RankFinished {
                        rank,
                        step: step as usize,
                    });
                }
                other if other != step => {
                    return Err(DataParallelError::StepMismatch {
                        rank,
                        expected: step as usize,
                        found: other as usize,
                    });
                }
                _ => {}
            }
        }
        let total_rows: usize = all.iter().skip(1).step_by(2).map(|&r| r as usize).sum();
        if total_rows == 0 {
            return Err(DataParallelError::EmptyInput {
                dim: self.local.dim(),
            });
        }

        let local = if local_rows > 0 {
            self.local.accumulate_over(batch, loss, total_rows)
        } else {
            Ok(BatchStats {
                loss: 0.0,
                rows: 0,
                replicas: Vec::new(),
                reduce: Default::default(),
            })
        };
        // Every rank learns whether any failed before anyone waits on the gradients.
        let failed = self.mpi.all_gather_u64(&[u64::from(local.is_err())]);
        if let Some(rank) = failed.iter().position(|&f| f != 0) {
            return Err(self.peer_failed(rank, step, local.err()));
        }
        let mut stats = local?;

        let weighted = match self.reduction {
            LossReduction::Mean => stats.loss * stats.rows as f64,
            LossReduction::Sum => stats.loss,
        };
        let global = self.mpi.all_reduce_sum_f64(weighted);
        stats.loss = match self.reduction {
            LossReduction::Mean => global / total_rows as f64,
            LossReduction::Sum => global,
        };
        stats.rows = total_rows;

        let start = Instant::now();
        let (mpi, exchange, layout) = (self.mpi, &mut self.exchange, &self.layout);
        // Buffers are weighted by this rank's share of the rows: summed, every rank holds
        // their row-weighted mean.
        let share = local_rows as f64 / total_rows as f64;
        self.local.apply_reduced(lr, |module, grads| {
            let flat = layout.pack::<B, M>(module, &grads, share);
            let summed = exchange.all_reduce_sum(mpi, flat)?;
            Ok(layout.unpack::<B, M>(module, summed))
        })?;
        stats.reduce += start.elapsed();
        Ok(stats)
    }

    /// The error of a step that `rank` (the lowest failing one) could not take: this rank's
    /// own error where it failed too, otherwise `rank`'s, whose message every rank receives
    /// (Open MPI may end the job before `rank` has printed it). Collective.
    fn peer_failed(
        &self,
        rank: usize,
        step: u64,
        own: Option<DataParallelError>,
    ) -> DataParallelError {
        let reason = self
            .mpi
            .share_text_from(rank, own.as_ref().map(ToString::to_string));
        own.unwrap_or(DataParallelError::PeerFailed {
            rank,
            step: step as usize,
            reason,
        })
    }

    /// Ends training on this rank: checks that every rank ends after the same number of steps,
    /// and returns the module and the optimizer. Collective.
    pub fn finish(self) -> Result<(M, O)> {
        let all = self
            .mpi
            .all_gather_u64(&[FINISHED, self.local.steps() as u64]);
        for rank in 0..self.mpi.size() {
            if all[2 * rank] != FINISHED {
                return Err(DataParallelError::StillTraining {
                    rank,
                    step: all[2 * rank] as usize,
                    finished_after: self.local.steps(),
                });
            }
            if all[2 * rank + 1] as usize != self.local.steps() {
                return Err(DataParallelError::RankFinished {
                    rank,
                    step: all[2 * rank + 1] as usize,
                });
            }
        }
        Ok(self.local.into_parts())
    }
}
