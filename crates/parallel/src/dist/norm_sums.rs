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

use crate::SyncNormError;
use crate::sync_norm::{Finish, RankSum};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The header's fields, each reduced by maximum.
const COMPUTING: usize = 0;
const FAILED: usize = 1;
const DONE_WITH_ROWS: usize = 2;
const LEN: usize = 3;
/// Minus the length (`i64::MIN` from a rank not computing): its maximum is minus the smallest.
const NEG_LEN: usize = 4;

/// [`RankSum`] over MPI's world.
pub(crate) struct MpiNormSums {
    /// Whether MPI lets replica threads call it (one at a time).
    threads: bool,
}

impl MpiNormSums {
    pub(crate) fn new(threads: bool) -> Self {
        Self { threads }
    }

    fn header(&self, mine: [i64; 5]) -> [i64; 5] {
        let mut all = [0i64; 5];
        SimpleCommunicator::world().all_reduce_into(
            &mine[..],
            &mut all[..],
            SystemOperation::max(),
        );
        all
    }

    fn values(&self, values: &mut [f64]) {
        let send = values.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::sum());
    }
}

/// Whether the values follow the header `all`, and if not, why.
fn verdict(all: &[i64; 5]) -> Result<(), SyncNormError> {
    if all[FAILED] > 0 {
        return Err(SyncNormError::PeerFailed {
            who: "another rank".to_owned(),
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
        let all = self.header([1, 0, 0, len, -len]);
        verdict(&all)?;
        self.values(values);
        Ok(())
    }

    fn finish(&self, how: Finish) {
        if !self.threads {
            return;
        }
        let mine = [
            0,
            (how == Finish::Failed) as i64,
            (how == Finish::Done) as i64,
            0,
            i64::MIN,
        ];
        loop {
            let all = self.header(mine);
            if all[COMPUTING] == 0 {
                return;
            }
            if verdict(&all).is_ok() {
                self.values(&mut vec![0.0; all[LEN] as usize]);
            }
        }
    }
}
