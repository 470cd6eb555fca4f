//! The synchronized-batch-norm meetings the current thread takes part in, if any.
//!
//! A training call whose replicas run at the same time ([`DataParallelTrainer`]'s steps, and
//! so [`DistributedTrainer`]'s) makes each replica thread a member of the micro-batch's
//! [`Group`]; calls whose replicas cannot meet refuse synchronized layers, so that they fail
//! instead of normalizing each part on its own. Outside any call a synchronized layer is a
//! plain batch norm.
//!
//! [`DataParallelTrainer`]: crate::DataParallelTrainer
//! [`DistributedTrainer`]: crate::dist::DistributedTrainer

use super::SyncNormError;
use super::group::{Group, Pass};
use crate::seed::Turns;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

/// The autodiff operation summing a layer's statistics over the meeting, for the trainer's
/// backend: it takes and gives that backend's float tensor primitive, type-erased so that a
/// layer generic over any backend can call it.
pub(crate) type SumOp =
    fn(Box<dyn Any>, &[f64], Meeting) -> Result<Summed<Box<dyn Any>>, SyncNormError>;

/// A sum as a tensor `T` of the graph, and its values on the host (the extra numbers summed
/// with it after them).
pub(crate) type Summed<T> = (T, Arc<Vec<f64>>);

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

enum Context {
    Member(Member),
    #[cfg(feature = "burn-train")]
    Refused(&'static str),
}

struct Member {
    group: Arc<Group>,
    index: usize,
    replicas: usize,
    op: SumOp,
    turns: Option<(Arc<Turns>, Reseed)>,
    meetings: usize,
}

/// One synchronized layer's meeting, as one replica sees it: where its forward pass and its
/// backward step meet the other replicas.
#[derive(Clone)]
pub(crate) struct Meeting {
    group: Arc<Group>,
    index: usize,
    number: usize,
    /// In a seeded call, the forward passes run in turns.
    turn: Option<Turn>,
}

/// A replica's place in seeded turns: the turns to pass on while waiting, its next one, and
/// how it reseeds the backend's generator when its turn comes back (given the round).
#[derive(Clone)]
pub(crate) struct Turn {
    turns: Arc<Turns>,
    ticket: usize,
    reseed: Reseed,
}

/// Reseeds the backend's generator for a replica's round of turns.
pub(crate) type Reseed = Arc<dyn Fn(usize) + Send + Sync>;

impl std::fmt::Debug for Meeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meeting")
            .field("replica", &self.index)
            .field("number", &self.number)
            .finish()
    }
}

impl Meeting {
    /// The forward pass's sum.
    pub(crate) fn forward(&self, values: Vec<f64>) -> Result<Arc<Vec<f64>>, SyncNormError> {
        let sum = || {
            self.group
                .sum((Pass::Forward, self.number), self.index, values)
        };
        match &self.turn {
            Some(turn) => {
                let total = turn.turns.pass_during(turn.ticket, sum)?;
                // Back in turn after the others' draws: this replica's own generator again.
                (turn.reseed)(self.number + 1);
                Ok(total)
            }
            None => sum(),
        }
    }

    /// The backward step's sum.
    pub(crate) fn backward(&self, values: Vec<f64>) -> Result<Arc<Vec<f64>>, SyncNormError> {
        self.group
            .sum((Pass::Backward, self.number), self.index, values)
    }
}

/// Makes the current thread replica `index` of `group` until the guard is dropped, `op`
/// being the trainer backend's sum; `turns` where the forward passes run in turns, with how
/// the replica reseeds when its turn comes back.
pub(crate) fn join(
    group: Arc<Group>,
    index: usize,
    replicas: usize,
    op: SumOp,
    turns: Option<(Arc<Turns>, Reseed)>,
) -> Joined {
    let member = Member {
        group: group.clone(),
        index,
        replicas,
        op,
        turns,
        meetings: 0,
    };
    let previous = CURRENT.with(|c| c.replace(Some(Context::Member(member))));
    Joined {
        previous,
        member: Some((group, index)),
    }
}

/// Makes synchronized layers on the current thread fail (inside `call`, in words) until the
/// guard is dropped.
#[cfg(feature = "burn-train")]
pub(crate) fn refuse(call: &'static str) -> Joined {
    let previous = CURRENT.with(|c| c.replace(Some(Context::Refused(call))));
    Joined {
        previous,
        member: None,
    }
}

/// The current replica's forward pass is over (it takes no more turns).
pub(crate) fn forward_done() {
    with_member(|member| {
        member.turns = None;
        member.group.forward_done(member.index);
    });
}

/// The current replica failed: the meetings it would have come to fail too, and no replica
/// waits for a turn it would have passed on.
pub(crate) fn abandon() {
    with_member(|member| {
        member.group.abandon(member.index);
        if let Some((turns, _)) = &member.turns {
            turns.release_all();
        }
    });
}

fn with_member(f: impl FnOnce(&mut Member)) {
    CURRENT.with(|c| {
        if let Some(Context::Member(member)) = c.borrow_mut().as_mut() {
            f(member)
        }
    })
}

/// Guard of [`join`] and [`refuse`].
pub(crate) struct Joined {
    previous: Option<Context>,
    member: Option<(Arc<Group>, usize)>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some((group, index)) = &self.member {
            if std::thread::panicking() {
                group.abandon(*index);
            } else {
                group.done(*index);
            }
        }
        CURRENT.with(|c| c.replace(self.previous.take()));
    }
}

/// Whether a synchronized layer running now normalizes over the whole batch: `false` outside
/// any call, in a call of one replica that is not a trainer's step, or in a trainer's step of
/// one replica and one process (its part is the whole batch); an error in a call that refuses
/// it. Asked before the layer computes anything, so that a plain batch norm does no extra work.
pub(crate) fn synchronized() -> Result<bool, SyncNormError> {
    CURRENT.with(|c| match c.borrow().as_ref() {
        #[cfg(feature = "burn-train")]
        Some(Context::Refused(call)) => Err(SyncNormError::NotSynchronized { call }),
        Some(Context::Member(member)) => Ok(!member.group.alone()),
        None => match crate::current_replica() {
            Some(info) if info.replicas > 1 => Err(SyncNormError::NotSynchronized {
                call: "a DataParallel call",
            }),
            _ => Ok(false),
        },
    })
}

/// `values` summed over every replica and rank of the call, with the total as numbers, `extra`
/// numbers summed after them (counts, kept out of the tensor's precision). Only where
/// [`synchronized`] says so.
pub(crate) fn sum_over_batch<B: Backend>(
    values: Tensor<B, 1>,
    extra: &[f64],
) -> Result<Summed<Tensor<B, 1>>, SyncNormError> {
    let found = CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(Context::Member(member)) if !member.group.alone() => {
            let number = member.meetings;
            member.meetings += 1;
            let turn = member.turns.as_ref().map(|(turns, reseed)| Turn {
                turns: turns.clone(),
                // Round `number + 1` of the turns, this replica's place in it.
                ticket: (number + 1) * member.replicas + member.index,
                reseed: reseed.clone(),
            });
            let meeting = Meeting {
                group: member.group.clone(),
                index: member.index,
                number,
                turn,
            };
            Some((member.op, meeting))
        }
        _ => None,
    });
    let Some((op, meeting)) = found else {
        return Err(SyncNormError::Mismatch {
            what: "a synchronized layer left its call between its exchanges".to_owned(),
        });
    };
    let primitive: B::FloatTensorPrimitive = values.into_primitive().tensor();
    let (total, numbers) = op(Box::new(primitive), extra, meeting)?;
    let total = *total
        .downcast::<B::FloatTensorPrimitive>()
        .map_err(|_| SyncNormError::UnsupportedBackend)?;
    Ok((
        Tensor::from_primitive(TensorPrimitive::Float(total)),
        numbers,
    ))
}
