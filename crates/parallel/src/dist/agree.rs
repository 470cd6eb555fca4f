//! What ranks check before each collective: that every rank is making the same call (the same
//! kind, at the same step, over as many micro-batches or values) with the same settings (the
//! kind of loss and the seed of a micro-batch, the learning rate of a step, the rows of a
//! held-out set). A rank that is not gets an error on every rank instead of a collective that
//! pairs with the wrong one and hangs, mixes data or returns a wrong number.

use super::Communicator;
use crate::{DataParallelError, Result};

/// The calls ranks make together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `accumulate`: `count` is the micro-batch's index in the step, `value` the rank's rows.
    MicroBatch = 1,
    /// `apply`: `count` is the micro-batches accumulated, `value` the rank's gradient tensors.
    Apply = 2,
    /// `evaluate`: `count` is the number of metrics summed.
    Evaluate = 3,
    /// Gathering the sharded optimizer state on rank 0.
    Record = 4,
    /// Sharding the optimizer state.
    Shard = 5,
    /// `finish`.
    Finish = 6,
    /// Choosing the precision of the gradient sums: `value` is the rank's choice.
    Precision = 7,
}

impl Phase {
    fn from(code: u64) -> Option<Self> {
        use Phase::*;
        [
            MicroBatch, Apply, Evaluate, Record, Shard, Finish, Precision,
        ]
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
    /// This rank's own value (its rows, whether it failed): ranks may differ.
    pub value: u64,
    /// What defines the call (see [`Setting`]): every rank must send the same.
    pub settings: [u64; SETTINGS],
}

/// Settings a call carries.
pub(crate) const SETTINGS: usize = 2;

/// How a call's settings are named and shown in errors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Setting {
    /// Not used by this call (always 0).
    Unused,
    /// A count, shown as a number.
    Count(&'static str),
    /// An `f64`'s bits.
    Real(&'static str),
    /// A code named by the given function.
    Named(&'static str, fn(u64) -> String),
}

impl Call {
    /// A call with no settings and a value of 0.
    pub(crate) fn new(phase: Phase, step: usize, count: usize) -> Self {
        Self {
            phase,
            step,
            count,
            value: 0,
            settings: [0; SETTINGS],
        }
    }

    /// This call with `value`.
    pub(crate) fn with_value(self, value: u64) -> Self {
        Self { value, ..self }
    }

    /// This call with `settings`.
    pub(crate) fn with_settings(self, settings: [u64; SETTINGS]) -> Self {
        Self { settings, ..self }
    }

    /// What each setting of this phase is.
    fn setting_kinds(&self) -> [Setting; SETTINGS] {
        match self.phase {
            Phase::MicroBatch => [
                Setting::Named("loss", crate::train::describe_loss_kind),
                Setting::Named("seed", |code| match code {
                    0 => "no seed (`with_seed`)".into(),
                    _ => format!("seed fingerprint {code:#x}"),
                }),
            ],
            Phase::Apply => [Setting::Real("learning rate"), Setting::Unused],
            Phase::Evaluate => [Setting::Count("held-out rows"), Setting::Unused],
            _ => [Setting::Unused; SETTINGS],
        }
    }
}

impl Setting {
    fn show(self, value: u64) -> (String, String) {
        match self {
            Self::Unused => ("setting".into(), value.to_string()),
            Self::Count(name) if value == u64::MAX => (name.into(), "none (unreadable)".into()),
            Self::Count(name) => (name.into(), value.to_string()),
            Self::Real(name) => (name.into(), f64::from_bits(value).to_string()),
            Self::Named(name, describe) => (name.into(), describe(value)),
        }
    }
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
            Phase::Precision => {
                "chooses the precision of its gradient sums (`with_gradient_precision`)".into()
            }
        }
    }
}

/// Every rank's call, once checked to be the same as `call`; on every rank, an error naming
/// the first rank that differs otherwise. Collective.
pub(crate) fn agree(comm: &dyn Communicator, call: Call) -> Result<Vec<Call>> {
    let mut sent = vec![
        call.phase as u64,
        call.step as u64,
        call.count as u64,
        call.value,
    ];
    sent.extend(call.settings);
    let all = comm.all_gather_u64(&sent);
    let mut calls = Vec::with_capacity(comm.size());
    for (rank, words) in all.chunks_exact(4 + SETTINGS).enumerate() {
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
            settings: std::array::from_fn(|i| words[4 + i]),
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
        _ if same => {
            let differs = (0..SETTINGS).find(|&i| mine.settings[i] != other.settings[i]);
            let Some(i) = differs else { return Ok(()) };
            let kind = mine.setting_kinds()[i];
            let (setting, this_rank) = kind.show(mine.settings[i]);
            let (_, found) = kind.show(other.settings[i]);
            Err(DataParallelError::SettingMismatch {
                rank,
                step: mine.step,
                call: mine.describe(),
                setting,
                this_rank,
                found,
            })
        }
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
        Call::new(phase, step, count).with_value(7)
    }

    #[test]
    fn a_call_with_other_settings_is_refused_naming_the_setting() {
        let lr = |v: f64| call(Phase::Apply, 2, 1).with_settings([v.to_bits(), 0]);
        let err = check(1, &lr(0.1), &lr(0.2)).unwrap_err();
        assert!(
            matches!(&err, DataParallelError::SettingMismatch { rank: 1, step: 2, setting, .. }
                if setting == "learning rate"),
            "{err}"
        );
        assert!(err.to_string().contains("0.2"), "{err}");
        let rows = |n: u64| call(Phase::Evaluate, 0, 2).with_settings([n, 0]);
        let err = check(1, &rows(37), &rows(30)).unwrap_err();
        assert!(err.to_string().contains("held-out rows"), "{err}");
        assert!(err.to_string().contains("30"), "{err}");
        let seeded = |s: u64| call(Phase::MicroBatch, 0, 0).with_settings([0, s]);
        let err = check(1, &seeded(0), &seeded(99)).unwrap_err();
        assert!(err.to_string().contains("seed"), "{err}");
        assert!(check(1, &seeded(5), &seeded(5)).is_ok());
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
