//! Synchronized batch norms across ranks: the totals of each rank's replicas summed over MPI.
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
//! while the thread that started MPI waits for the replicas: hence MPI's `Serialized` threading.

use super::ExchangeStats;
use crate::SyncNormError;
use crate::sync_norm::{Finish, RankSum};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
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
pub(crate) struct MpiNormSums {
    /// Whether MPI lets replica threads call it (one at a time).
    threads: bool,
    counts: NormCounts,
}

impl MpiNormSums {
    pub(crate) fn new(threads: bool) -> Self {
        Self {
            threads,
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
    fn exchange(&self, mine: [i64; 5], values: &mut Vec<f64>) -> [i64; 5] {
        let start = Instant::now();
        let world = SimpleCommunicator::world();
        let mut all = [0i64; 5];
        world.all_reduce_into(&mine[..], &mut all[..], SystemOperation::max());
        if all[COMPUTING] > 0 && verdict(&all).is_ok() {
            // A rank not computing adds zeros of the computing ranks' length.
            values.resize(all[LEN] as usize, 0.0);
            let send = values.clone();
            world.all_reduce_into(&send[..], &mut values[..], SystemOperation::sum());
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

impl RankSum for MpiNormSums {
    fn sum(&self, values: &mut Vec<f64>) -> Result<(), SyncNormError> {
        if !self.threads {
            return Err(SyncNormError::Transport(
                "this MPI library gives no MPI_THREAD_SERIALIZED support".to_owned(),
            ));
        }
        let len = values.len() as i64;
        verdict(&self.exchange([1, 0, 0, len, -len], values))
    }

    fn finish(&self, how: Finish) {
        if !self.threads {
            return;
        }
        let rank = SimpleCommunicator::world().rank() as i64;
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
            if self.exchange(mine, &mut zeros)[COMPUTING] == 0 {
                return;
            }
        }
    }
}
