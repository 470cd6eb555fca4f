//! The MPI side of a training step: the ranks agree on each micro-batch and combine their
//! gradients once per optimizer step, with one all-reduce, or with a reduce-scatter and an
//! all-gather when each rank keeps the optimizer state of its shard only (ZeRO stage 1).

use super::Communicator;
use super::agree::{Call, Phase, agree};
use super::exchange::Exchange;
use super::flat::Layout;
use crate::split::checked_sizes;
use crate::train::{Accumulated, Contribution, MicroBatch, Outcome, Peers, Rows};
use crate::{DataParallelError, ReplicaTiming, Result, SplitPolicy};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sent in place of its row count by a rank whose batch cannot be read.
const UNREADABLE: u64 = u64::MAX;

/// This rank among the others, for the life of a trainer.
pub(crate) struct RankPeers {
    pub(crate) comm: std::rc::Rc<dyn Communicator>,
    pub(crate) exchange: Exchange,
    pub(crate) layout: Layout,
    /// Each rank steps only the parameters of its block of `layout`.
    pub(crate) sharded: bool,
    /// How a global batch is split between the ranks; `None`: rank `r` takes rows
    /// `r * n / ranks .. (r + 1) * n / ranks`, as `ShardedSampler::part` does.
    pub(crate) split: Option<Box<dyn SplitPolicy>>,
    /// Every rank's rows in the current micro-batch, in rank order.
    pub(crate) rows: Vec<usize>,
    /// Whether the module has buffers, which the ranks combine after each micro-batch.
    pub(crate) buffers: bool,
    /// The rows of the last global batch this rank asked its part of (`NOT_ASKED` if none
    /// since the last micro-batch).
    pub(crate) asked: AtomicU64,
    /// Where the module's synchronized batch norms sum their statistics across the ranks
    /// (with what those sums carried); `None` without such a layer or with one rank.
    pub(crate) norm: Option<std::sync::Arc<super::norm_sums::RankNormSums>>,
}

/// No part asked for.
pub(crate) const NOT_ASKED: u64 = u64::MAX;

impl RankPeers {
    /// This rank's rows of a global batch of `rows` rows.
    pub(crate) fn part(&self, rows: usize) -> Result<Range<usize>> {
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        self.asked.store(rows as u64, Ordering::Relaxed);
        let Some(policy) = &self.split else {
            return Ok(crate::rank_rows(rows, rank, ranks));
        };
        if rows == 0 {
            return Ok(0..0);
        }
        let sizes = checked_sizes(policy.as_ref(), rows, ranks)?;
        let start: usize = sizes.iter().take(rank).sum();
        Ok(start..start + sizes.get(rank).copied().unwrap_or(0))
    }

    /// What ranks compare to know they split global batches alike (see
    /// [`SplitPolicy::fingerprint`]).
    fn split_fingerprint(&self) -> u64 {
        self.split.as_ref().map_or(0, |policy| policy.fingerprint())
    }

    /// The error of a call that `rank` (the lowest failing one) could not make: this rank's
    /// own error where it failed too, otherwise `rank`'s, whose message every rank receives
    /// (Open MPI may end the job before `rank` has printed it). Collective.
    pub(crate) fn peer_failed(
        &self,
        rank: usize,
        step: usize,
        own: Option<DataParallelError>,
    ) -> DataParallelError {
        let own_text = own.as_ref().map(ToString::to_string);
        let reason = super::communicator::share_text_from(self.comm.as_ref(), rank, own_text);
        own.unwrap_or(DataParallelError::PeerFailed { rank, step, reason })
    }

    fn combine<B, M, O>(
        &mut self,
        module: M,
        optimizer: &mut O,
        lr: f64,
        accumulated: Accumulated,
    ) -> std::result::Result<M, (M, DataParallelError)>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        // Every rank takes the same step: the same learning rate. Each tells how many gradient
        // tensors it holds: where no rank holds any, no parameter would move.
        let call = Call::new(Phase::Apply, accumulated.step, accumulated.micro_batches)
            .with_value(accumulated.grads.len() as u64)
            .with_settings([lr.to_bits(), 0]);
        let calls = match agree(self.comm.as_ref(), call) {
            Ok(calls) => calls,
            Err(err) => return Err((module, err)),
        };
        if calls.iter().all(|c| c.value == 0) {
            let step = accumulated.step;
            return Err((module, DataParallelError::NoGradient { step }));
        }
        let (comm, layout) = (self.comm.as_ref(), &self.layout);
        let flat = layout.pack::<B, M>(&module, &accumulated.grads);
        drop(accumulated);
        // One rank owns every block: sharding would only add a second collective.
        if !self.sharded || comm.size() == 1 {
            let summed = match self.exchange.all_reduce_sum(comm, flat) {
                Ok(summed) => summed,
                Err(err) => return Err((module, err)),
            };
            let grads = layout.unpack::<B, M>(&module, summed, 0);
            return Ok(optimizer.step(lr, module, grads));
        }
        let counts = layout.counts();
        let rank = comm.rank();
        let mine = match self.exchange.reduce_scatter_sum(comm, flat, &counts) {
            Ok(mine) => mine,
            Err(err) => return Err((module, err)),
        };
        // The optimizer steps the parameters it has gradients for: this rank's block only, so
        // its state holds those parameters only.
        let grads = layout.unpack::<B, M>(&module, mine, rank);
        let module = optimizer.step(lr, module, grads);
        let values = layout.pack_values::<B, M>(&module, rank);
        match self.exchange.all_gather(comm, values, &counts) {
            Ok(all) => Ok(layout.with_values::<B, M>(module, all)),
            Err(err) => Err((module, err)),
        }
    }
}

impl<B, M, O> Peers<B, M, O> for RankPeers
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    fn rows(
        &mut self,
        step: usize,
        micro_batch: usize,
        local: Result<usize>,
        settings: MicroBatch,
    ) -> Result<Rows> {
        // A batch that cannot be read is reported after the gather, not before: the other
        // ranks must not be left waiting in it.
        let call = Call::new(Phase::MicroBatch, step, micro_batch)
            .with_value(local.as_ref().map_or(UNREADABLE, |&rows| rows as u64))
            .with_settings([settings.loss, settings.seed]);
        let calls = agree(self.comm.as_ref(), call)?;
        if let Some(rank) = calls.iter().position(|c| c.value == UNREADABLE) {
            return Err(self.peer_failed(rank, step, local.err()));
        }
        self.rows = calls.iter().map(|c| c.value as usize).collect();
        Ok(Rows {
            local: local?,
            total: self.rows.iter().sum(),
        })
    }

    fn norm_sums(&mut self) -> Option<std::sync::Arc<dyn crate::sync_norm::RankSum>> {
        self.norm
            .clone()
            .map(|sums| sums as std::sync::Arc<dyn crate::sync_norm::RankSum>)
    }

    fn combines_buffers(&self) -> bool {
        self.buffers && self.comm.size() > 1
    }

    fn outcome(&mut self, step: usize, contribution: Contribution) -> Result<Outcome> {
        // Every rank learns whether any failed before anyone waits on the gradients; the losses
        // and weights travel in the same gather and are summed in rank order, the same on every
        // rank, with each rank's time for its rows, its split between the ranks, the global
        // batch it asked its part of, and its running statistics.
        let Contribution {
            sums,
            busy,
            buffers,
        } = contribution;
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        let split = self.split_fingerprint();
        let asked = self.asked.swap(NOT_ASKED, Ordering::Relaxed);
        let mut sent = match &sums {
            Ok((loss, weight)) => vec![0, loss.to_bits(), weight.to_bits(), nanos, split, asked],
            Err(_) => vec![1, 0, 0, nanos, split, asked],
        };
        // Every rank sends as many values: the models match, and a failed rank sends its
        // statistics as they were.
        let shared = self.buffers && self.comm.size() > 1;
        let rank = self.comm.rank();
        let total: usize = self.rows.iter().sum();
        let share = self.rows.get(rank).copied().unwrap_or(0) as f64 / total.max(1) as f64;
        if shared {
            let count = buffers.len();
            sent.push(count as u64);
            sent.extend(buffers.iter().map(|&v| (f64::from(v) * share).to_bits()));
        }
        let all = self.comm.all_gather_u64(&sent);
        let words = sent.len();
        let ranks: Vec<&[u64]> = all.chunks_exact(words).collect();
        if let Some(rank) = ranks.iter().position(|w| w[0] != 0) {
            return Err(self.peer_failed(rank, step, sums.err()));
        }
        if let Some(rank) = ranks.iter().position(|w| w[4] != split) {
            return Err(DataParallelError::RankSplitMismatch { rank, step });
        }
        // Every rank reaches the same verdict: where a split policy is set or any rank asked
        // `part`, every rank must have asked for its part of the same global batch and taken
        // its part of it, or some rows were counted twice or not at all.
        let asked: Vec<Option<usize>> = ranks
            .iter()
            .map(|w| (w[5] != NOT_ASKED).then_some(w[5] as usize))
            .collect();
        if self.split.is_some() || asked.iter().any(Option::is_some) {
            let count = self.rows.len();
            let expected = match &self.split {
                Some(policy) => {
                    let mut sizes = checked_sizes(policy.as_ref(), total, count)?;
                    sizes.resize(count, 0);
                    sizes
                }
                None => (0..count)
                    .map(|r| (r + 1) * total / count - r * total / count)
                    .collect(),
            };
            if expected != self.rows || asked.iter().any(|&a| a != Some(total)) {
                return Err(DataParallelError::RankPartsMismatch {
                    step,
                    rows: self.rows.clone(),
                    asked,
                    expected,
                });
            }
        }
        if let Some(policy) = &self.split {
            let timings: Vec<ReplicaTiming> = ranks
                .iter()
                .zip(&self.rows)
                .enumerate()
                .map(|(rank, (w, &rows))| ReplicaTiming {
                    replica: rank,
                    rows,
                    compute: Duration::from_nanos(w[3]),
                })
                .collect();
            policy.observe(&timings);
        }
        let loss = ranks.iter().map(|w| f64::from_bits(w[1])).sum();
        let weight = ranks.iter().map(|w| f64::from_bits(w[2])).sum();
        // Each rank's buffers weighted by its share of the micro-batch's rows, summed in rank
        // order: their row-weighted mean over every rank's replicas, as one process would hold.
        let buffers = shared.then(|| {
            let mut mean = vec![0.0f64; buffers.len()];
            for w in &ranks {
                for (sum, &bits) in mean.iter_mut().zip(&w[7..]) {
                    *sum += f64::from_bits(bits);
                }
            }
            mean.into_iter().map(|v| v as f32).collect()
        });
        Ok(Outcome {
            loss,
            weight,
            buffers,
        })
    }

    fn update(
        &mut self,
        module: M,
        optimizer: &mut O,
        lr: f64,
        accumulated: Accumulated,
    ) -> std::result::Result<M, (M, DataParallelError)> {
        self.combine::<B, M, O>(module, optimizer, lr, accumulated)
    }
}
