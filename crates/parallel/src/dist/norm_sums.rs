//! Synchronized batch norms across ranks: the totals of each rank's replicas summed through
//! the communicator's [`ThreadCollectives`].
//!
//! Each sum is two collectives: a small all-reduce (maximum) of a header saying whether each
//! rank is still computing, has failed, or is done, and the size of its values, then, only if
//! every rank still computing brought values of one size and none has failed or finished
//! early, the all-reduce (sum) of the values. A rank done with its micro-batch keeps taking
//! part (adding zeros, or nothing once all are done) until every rank is done, so a rank without
//! rows, or one that failed, never leaves the others waiting, and every rank decides from the
//! same header whether the values follow.
//!
//! The calls come from replica threads (the last replica of the process to bring its part),
//! while the thread owning the communicator waits for the replicas (MPI: `Serialized`
//! threading).

use super::ExchangeStats;
use super::ThreadCollectives;
use crate::SyncNormError;
use crate::sync_norm::{Finish, RankSum};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The header's fields, each reduced by maximum.
const COMPUTING: usize = 0;
const FAILED: usize = 1;
const DONE_WITH_ROWS: usize = 2;
const LEN: usize = 3;
/// Minus the length (`i64::MIN` from a rank not computing): its maximum is minus the smallest.
const NEG_LEN: usize = 4;

/// What the sums have carried (see `ExchangeStats`).
#[derive(Debug, Default)]
struct NormCounts {
    sums: AtomicUsize,
    values: AtomicUsize,
    nanos: AtomicU64,
}

/// [`RankSum`] over MPI's world, one per trainer.
pub(crate) struct RankNormSums {
    /// The ranks' collectives, from a replica thread; `None` where the communicator has none.
    threads: Option<Box<dyn ThreadCollectives>>,
    /// This process's rank.
    rank: usize,
    counts: NormCounts,
}

impl RankNormSums {
    pub(crate) fn new(threads: Option<Box<dyn ThreadCollectives>>, rank: usize) -> Self {
        Self {
            threads,
            rank,
            counts: NormCounts::default(),
        }
    }

    /// Adds what these sums carried to `stats`.
    pub(crate) fn add_to(&self, stats: &mut ExchangeStats) {
        stats.norm_sums += self.counts.sums.load(Ordering::Relaxed);
        stats.norm_values += self.counts.values.load(Ordering::Relaxed);
        stats.norm_time += Duration::from_nanos(self.counts.nanos.load(Ordering::Relaxed));
    }

    /// One sum: the header `mine`, every rank's maximum of which comes back, and `values`
    /// summed over the ranks where every header says they follow.
    fn exchange(
        &self,
        threads: &dyn ThreadCollectives,
        mine: [i64; 5],
        values: &mut Vec<f64>,
    ) -> [i64; 5] {
        let start = Instant::now();
        let mut all = mine;
        threads.all_reduce_max_i64(&mut all);
        if all[COMPUTING] > 0 && verdict(&all).is_ok() {
            // A rank not computing adds zeros of the computing ranks' length.
            values.resize(all[LEN] as usize, 0.0);
            threads.all_reduce_sum_f64(values);
            self.counts
                .values
                .fetch_add(values.len(), Ordering::Relaxed);
        }
        self.counts.sums.fetch_add(1, Ordering::Relaxed);
        let nanos = start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.counts.nanos.fetch_add(nanos, Ordering::Relaxed);
        all
    }
}

/// Whether the values follow the header `all`, and if not, why.
fn verdict(all: &[i64; 5]) -> Result<(), SyncNormError> {
    if all[FAILED] > 0 {
        // The highest failed rank, as `rank + 1`.
        return Err(SyncNormError::PeerFailed {
            who: format!("rank {}", all[FAILED] - 1),
        });
    }
    if all[DONE_WITH_ROWS] > 0 {
        return Err(SyncNormError::Mismatch {
            what: "a rank ended its micro-batch while others were still in a synchronized \
                   batch norm"
                .to_owned(),
        });
    }
    if all[LEN] != -all[NEG_LEN] {
        return Err(SyncNormError::Mismatch {
            what: format!(
                "ranks brought statistics of {} and of {} values to the same layer",
                -all[NEG_LEN], all[LEN]
            ),
        });
    }
    Ok(())
}

impl RankSum for RankNormSums {
    fn sum(&self, values: &mut Vec<f64>) -> Result<(), SyncNormError> {
        let Some(threads) = &self.threads else {
            return Err(SyncNormError::Transport(
                "the communicator cannot be called from replica threads (MPI: this library \
                 gives no MPI_THREAD_SERIALIZED support)"
                    .to_owned(),
            ));
        };
        let len = values.len() as i64;
        verdict(&self.exchange(threads.as_ref(), [1, 0, 0, len, -len], values))
    }

    fn finish(&self, how: Finish) {
        let Some(threads) = &self.threads else {
            return;
        };
        let rank = self.rank as i64;
        let mine = [
            0,
            if how == Finish::Failed { rank + 1 } else { 0 },
            (how == Finish::Done) as i64,
            0,
            i64::MIN,
        ];
        // Waiting for the other ranks, not computing: not in this rank's busy time.
        let _waiting = crate::parallel_apply::Waiting::start();
        let mut zeros = Vec::new();
        loop {
            zeros.clear();
            if self.exchange(threads.as_ref(), mine, &mut zeros)[COMPUTING] == 0 {
                return;
            }
        }
    }
}
