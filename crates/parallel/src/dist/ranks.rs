//! The MPI side of a training step: the ranks agree on each micro-batch and combine their
//! gradients once per optimizer step, with one all-reduce, or with a reduce-scatter and an
//! all-gather when each rank keeps the optimizer state of its shard only (ZeRO stage 1).

use super::Mpi;
use super::agree::{Call, Phase, agree};
use super::exchange::Exchange;
use super::flat::Layout;
use crate::split::checked_sizes;
use crate::train::{Accumulated, Peers, Rows};
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
pub(crate) struct Ranks<'a> {
    pub(crate) mpi: &'a Mpi,
    pub(crate) exchange: Exchange,
    pub(crate) layout: Layout,
    /// Each rank steps only the parameters of its block of `layout`.
    pub(crate) sharded: bool,
    /// How a global batch is split between the ranks; `None`: rank `r` takes rows
    /// `r * n / ranks .. (r + 1) * n / ranks`, as `ShardedSampler::part` does.
    pub(crate) split: Option<Box<dyn SplitPolicy>>,
    /// Every rank's rows in the current micro-batch, in rank order.
    pub(crate) rows: Vec<usize>,
    /// The rows of the last global batch this rank asked its part of (`NOT_ASKED` if none
    /// since the last micro-batch).
    pub(crate) asked: AtomicU64,
}

/// No part asked for.
pub(crate) const NOT_ASKED: u64 = u64::MAX;

impl Ranks<'_> {
    /// This rank's rows of a global batch of `rows` rows.
    pub(crate) fn part(&self, rows: usize) -> Result<Range<usize>> {
        let (rank, ranks) = (self.mpi.rank(), self.mpi.size());
        self.asked.store(rows as u64, Ordering::Relaxed);
        let Some(policy) = &self.split else {
            return Ok(rank * rows / ranks..(rank + 1) * rows / ranks);
        };
        if rows == 0 {
            return Ok(0..0);
        }
        let sizes = checked_sizes(policy.as_ref(), rows, ranks)?;
        let start: usize = sizes.iter().take(rank).sum();
        Ok(start..start + sizes.get(rank).copied().unwrap_or(0))
    }

    /// What ranks compare to know they split global batches alike: the split policy's `Debug`
    /// form, which holds what it has learnt (the same on every rank, since every rank shows it
    /// the same timings).
    fn split_fingerprint(&self) -> u64 {
        self.split.as_ref().map_or(0, |policy| {
            super::agree::fingerprint(format!("{policy:?}").as_bytes())
        })
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
        let reason = self
            .mpi
            .share_text_from(rank, own.as_ref().map(ToString::to_string));
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
        let call = Call {
            phase: Phase::Apply,
            step: accumulated.step,
            count: accumulated.micro_batches,
            value: accumulated.rows as u64,
        };
        let calls = match agree(self.mpi, call) {
            Ok(calls) => calls,
            Err(err) => return Err((module, err)),
        };
        let total: u64 = calls.iter().map(|c| c.value).sum();
        // Buffers are weighted by this rank's share of the step's rows: summed, every rank
        // holds their row-weighted mean.
        let share = accumulated.rows as f64 / total.max(1) as f64;
        let (mpi, layout) = (self.mpi, &self.layout);
        let flat = layout.pack::<B, M>(&module, &accumulated.grads, share);
        drop(accumulated);
        // One rank owns every block: sharding would only add a second collective.
        if !self.sharded || mpi.size() == 1 {
            let summed = match self.exchange.all_reduce_sum(mpi, flat) {
                Ok(summed) => summed,
                Err(err) => return Err((module, err)),
            };
            let grads = layout.unpack::<B, M>(&module, summed, 0);
            return Ok(optimizer.step(lr, module, grads));
        }
        let counts = layout.counts();
        let rank = mpi.rank();
        let mine = match self.exchange.reduce_scatter_sum(mpi, flat, &counts) {
            Ok(mine) => mine,
            Err(err) => return Err((module, err)),
        };
        // The optimizer steps the parameters it has gradients for: this rank's block only, so
        // its state holds those parameters only.
        let grads = layout.unpack::<B, M>(&module, mine, rank);
        let module = optimizer.step(lr, module, grads);
        let values = layout.pack_values::<B, M>(&module, rank);
        match self.exchange.all_gather(mpi, values, &counts) {
            Ok(all) => Ok(layout.with_values::<B, M>(module, all)),
            Err(err) => Err((module, err)),
        }
    }
}

impl<B, M, O> Peers<B, M, O> for Ranks<'_>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    fn rows(&mut self, step: usize, micro_batch: usize, local: Result<usize>) -> Result<Rows> {
        // A batch that cannot be read is reported after the gather, not before: the other
        // ranks must not be left waiting in it.
        let call = Call {
            phase: Phase::MicroBatch,
            step,
            count: micro_batch,
            value: local.as_ref().map_or(UNREADABLE, |&rows| rows as u64),
        };
        let calls = agree(self.mpi, call)?;
        if let Some(rank) = calls.iter().position(|c| c.value == UNREADABLE) {
            return Err(self.peer_failed(rank, step, local.err()));
        }
        self.rows = calls.iter().map(|c| c.value as usize).collect();
        Ok(Rows {
            local: local?,
            total: self.rows.iter().sum(),
        })
    }

    fn outcome(&mut self, step: usize, weighted_loss: Result<f64>, busy: Duration) -> Result<f64> {
        // Every rank learns whether any failed before anyone waits on the gradients; the losses
        // travel in the same gather and are summed in rank order, the same on every rank, with
        // each rank's time for its rows and its split between the ranks.
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        let split = self.split_fingerprint();
        let asked = self.asked.swap(NOT_ASKED, Ordering::Relaxed);
        let sent = match &weighted_loss {
            Ok(loss) => [0, loss.to_bits(), nanos, split, asked],
            Err(_) => [1, 0, nanos, split, asked],
        };
        let all = self.mpi.all_gather_u64(&sent);
        if let Some(rank) = all.chunks_exact(5).position(|w| w[0] != 0) {
            return Err(self.peer_failed(rank, step, weighted_loss.err()));
        }
        if let Some(rank) = all.chunks_exact(5).position(|w| w[3] != split) {
            return Err(DataParallelError::RankSplitMismatch { rank, step });
        }
        if let Some(policy) = &self.split {
            // Every rank's policy is the same (above), so every rank reaches the same verdict:
            // every rank must have asked for its part of the same global batch, and taken the
            // policy's part of it, or some rows were counted twice or not at all.
            let total: usize = self.rows.iter().sum();
            let mut expected = checked_sizes(policy.as_ref(), total, self.rows.len())?;
            expected.resize(self.rows.len(), 0);
            let asked: Vec<Option<usize>> = all
                .chunks_exact(5)
                .map(|w| (w[4] != NOT_ASKED).then_some(w[4] as usize))
                .collect();
            if expected != self.rows || asked.iter().any(|&a| a != Some(total)) {
                return Err(DataParallelError::RankPartsMismatch {
                    step,
                    rows: self.rows.clone(),
                    asked,
                    expected,
                });
            }
            let timings: Vec<ReplicaTiming> = all
                .chunks_exact(5)
                .zip(&self.rows)
                .enumerate()
                .map(|(rank, (w, &rows))| ReplicaTiming {
                    replica: rank,
                    rows,
                    compute: Duration::from_nanos(w[2]),
                })
                .collect();
            policy.observe(&timings);
        }
        Ok(all.chunks_exact(5).map(|w| f64::from_bits(w[1])).sum())
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
