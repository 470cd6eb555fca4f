//! What ranks check before each collective: that every rank is making the same call (the same
//! kind, at the same step, over as many micro-batches or values). A rank that is not gets an
//! error on every rank instead of a collective that pairs with the wrong one and hangs or
//! mixes data.

use super::Mpi;
use crate::{DataParallelError, Result};

/// The calls ranks make together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `accumulate`: `count` is the micro-batch's index in the step, `value` the rank's rows.
    MicroBatch = 1,
    /// `apply`: `count` is the micro-batches accumulated, `value` the rank's rows.
    Apply = 2,
    /// `evaluate`: `count` is the number of metrics summed.
    Evaluate = 3,
    /// Gathering the sharded optimizer state on rank 0.
    Record = 4,
    /// Sharding the optimizer state.
    Shard = 5,
    /// `finish`.
    Finish = 6,
}

impl Phase {
    fn from(code: u64) -> Option<Self> {
        use Phase::*;
        [MicroBatch, Apply, Evaluate, Record, Shard, Finish]
            .into_iter()
            .find(|&p| p as u64 == code)
    }
}

/// One rank's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub phase: Phase,
    pub step: usize,
    pub count: usize,
    pub value: u64,
}

impl Call {
    fn describe(&self) -> String {
        match self.phase {
            Phase::MicroBatch => format!("accumulates micro-batch {}", self.count + 1),
            Phase::Apply => format!("applies {} accumulated micro-batches", self.count),
            Phase::Evaluate => format!("evaluates {} metrics", self.count),
            Phase::Record => "gathers the optimizer state".into(),
            Phase::Shard => "shards its optimizer state (`with_sharded_optimizer`)".into(),
            Phase::Finish => "finishes".into(),
        }
    }
}

/// Every rank's call, once checked to be the same as `call`; on every rank, an error naming
/// the first rank that differs otherwise. Collective.
pub(crate) fn agree(mpi: &Mpi, call: Call) -> Result<Vec<Call>> {
    let sent = [
        call.phase as u64,
        call.step as u64,
        call.count as u64,
        call.value,
    ];
    let all = mpi.all_gather_u64(&sent);
    let mut calls = Vec::with_capacity(mpi.size());
    for (rank, words) in all.chunks_exact(4).enumerate() {
        let Some(phase) = Phase::from(words[0]) else {
            return Err(DataParallelError::Collective {
                operation: super::CollectiveOp::Agreement,
                reason: format!("rank {rank} sent an unknown call ({})", words[0]),
            });
        };
        let other = Call {
            phase,
            step: words[1] as usize,
            count: words[2] as usize,
            value: words[3],
        };
        check(rank, &call, &other)?;
        calls.push(other);
    }
    Ok(calls)
}

fn check(rank: usize, mine: &Call, other: &Call) -> Result<()> {
    use Phase::Finish;
    let same = mine.phase == other.phase && mine.step == other.step && mine.count == other.count;
    match (mine.phase, other.phase) {
        _ if same => Ok(()),
        (Finish, Finish) | (_, Finish) => Err(DataParallelError::RankFinished {
            rank,
            step: other.step,
        }),
        (Finish, _) => Err(DataParallelError::StillTraining {
            rank,
            step: other.step,
            finished_after: mine.step,
        }),
        _ if mine.step != other.step => Err(DataParallelError::StepMismatch {
            rank,
            expected: mine.step,
            found: other.step,
        }),
        _ => Err(DataParallelError::OutOfStep {
            rank,
            step: mine.step,
            expected: mine.describe(),
            found: other.describe(),
        }),
    }
}

/// What ranks compare instead of whole values (FNV-1a): equal on two ranks exactly when their bytes are (up to a 2^-64 chance).
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(phase: Phase, step: usize, count: usize) -> Call {
        Call {
            phase,
            step,
            count,
            value: 7,
        }
    }

    #[test]
    fn the_same_call_with_other_values_agrees() {
        let mine = call(Phase::MicroBatch, 3, 1);
        let other = Call { value: 0, ..mine };
        assert!(check(1, &mine, &other).is_ok());
    }

    #[test]
    fn each_disagreement_has_its_error() {
        let micro = call(Phase::MicroBatch, 3, 1);
        let apply = call(Phase::Apply, 3, 1);
        let err = check(2, &micro, &apply).unwrap_err();
        assert!(
            matches!(
                &err,
                DataParallelError::OutOfStep {
                    rank: 2,
                    step: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("applies 1 accumulated"), "{err}");
        assert!(matches!(
            check(1, &micro, &call(Phase::MicroBatch, 4, 1)),
            Err(DataParallelError::StepMismatch {
                rank: 1,
                expected: 3,
                found: 4
            })
        ));
        assert!(matches!(
            check(1, &micro, &call(Phase::Finish, 3, 0)),
            Err(DataParallelError::RankFinished { rank: 1, step: 3 })
        ));
        assert!(matches!(
            check(1, &call(Phase::Finish, 3, 0), &micro),
            Err(DataParallelError::StillTraining {
                rank: 1,
                step: 3,
                finished_after: 3
            })
        ));
        assert!(matches!(
            check(1, &call(Phase::Finish, 3, 0), &call(Phase::Finish, 4, 0)),
            Err(DataParallelError::RankFinished { rank: 1, step: 4 })
        ));
        assert!(matches!(
            check(1, &call(Phase::Shard, 0, 0), &call(Phase::MicroBatch, 0, 0)),
            Err(DataParallelError::OutOfStep { .. })
        ));
    }
}
