//! The replicas of one process meeting at each synchronized layer.
//!
//! Each replica brings its partial sums to a numbered meeting (the `k`-th synchronized layer of
//! its forward pass, or that layer's backward step); the last to arrive adds them up in replica
//! order (so every run adds in the same order), takes the total across ranks where there are
//! several, and every replica leaves with it. A replica that fails, or that ends a pass without
//! coming to a meeting the others wait in, ends the meeting with an error instead of leaving
//! them waiting.

use super::SyncNormError;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The sum across ranks of what the replicas of each rank added up.
pub(crate) trait RankSum: Send + Sync {
    /// Replaces `values` by every rank's `values` summed, element-wise. An error on every rank
    /// if any rank failed or brought values of another size.
    fn sum(&self, values: &mut Vec<f64>) -> Result<(), SyncNormError>;

    /// This rank is done with its micro-batch (`how`): it takes part in the other ranks'
    /// remaining sums, adding nothing, until every rank is done.
    fn finish(&self, how: Finish);
}

/// How a rank ended its part of a micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// It ran its rows.
    Done,
    /// It had no rows.
    Idle,
    /// It failed.
    Failed,
}

/// The pass a meeting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    Forward,
    Backward,
}

/// How far a replica has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Forward,
    Backward,
    Done,
}

/// One micro-batch's meetings of the replicas of this process.
pub(crate) struct Group {
    replicas: usize,
    ranks: Option<Arc<dyn RankSum>>,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    meetings: HashMap<(Pass, usize), Meeting>,
    failed: Option<SyncNormError>,
    stage: Vec<Stage>,
}

struct Meeting {
    parts: Vec<Option<Vec<f64>>>,
    total: Option<Arc<Vec<f64>>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("replicas", &self.replicas)
            .field("ranks", &self.ranks.is_some())
            .finish()
    }
}

impl Group {
    /// The meetings of `replicas` replicas, their totals summed across ranks by `ranks`.
    pub(crate) fn new(replicas: usize, ranks: Option<Arc<dyn RankSum>>) -> Self {
        Self {
            replicas,
            ranks,
            state: Mutex::new(State {
                meetings: HashMap::new(),
                failed: None,
                stage: vec![Stage::Forward; replicas],
            }),
            changed: Condvar::new(),
        }
    }

    /// One replica and no other process: nothing to meet.
    pub(crate) fn alone(&self) -> bool {
        self.replicas == 1 && self.ranks.is_none()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replica `index`'s `values` summed with every other replica's (and rank's) at meeting
    /// `at`.
    pub(crate) fn sum(
        &self,
        at: (Pass, usize),
        index: usize,
        values: Vec<f64>,
    ) -> Result<Arc<Vec<f64>>, SyncNormError> {
        // Time here is spent waiting for the others (and their ranks), not computing: a
        // split that learns speeds from timings must not see it.
        let _waiting = crate::parallel_apply::Waiting::start();
        let mut state = self.lock();
        if let Some(err) = &state.failed {
            return Err(err.clone());
        }
        let replicas = self.replicas;
        let meeting = state.meetings.entry(at).or_insert_with(|| Meeting {
            parts: vec![None; replicas],
            total: None,
        });
        meeting.parts[index] = Some(values);
        if meeting.parts.iter().all(Option::is_some) {
            let total = add_up(&meeting.parts).and_then(|mut total| {
                if let Some(ranks) = &self.ranks {
                    ranks.sum(&mut total)?;
                }
                Ok(Arc::new(total))
            });
            let meeting = state
                .meetings
                .get_mut(&at)
                .expect("the meeting just joined");
            meeting.parts.iter_mut().for_each(|part| *part = None);
            match total {
                Ok(total) => meeting.total = Some(total),
                Err(err) => state.failed = Some(err),
            }
            self.changed.notify_all();
        }
        loop {
            if let Some(total) = state.meetings.get(&at).and_then(|m| m.total.clone()) {
                return Ok(total);
            }
            if let Some(err) = &state.failed {
                return Err(err.clone());
            }
            if let Some(absent) = absent(&state, at) {
                let err = SyncNormError::Mismatch {
                    what: format!(
                        "replica {absent} ended its {} pass without reaching a synchronized \
                         batch norm that replica {index} reached",
                        match at.0 {
                            Pass::Forward => "forward",
                            Pass::Backward => "backward",
                        }
                    ),
                };
                state.failed = Some(err.clone());
                self.changed.notify_all();
                return Err(err);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Replica `index` ended its forward pass.
    pub(crate) fn forward_done(&self, index: usize) {
        self.advance(index, Stage::Backward);
    }

    /// Replica `index` is done with the micro-batch.
    pub(crate) fn done(&self, index: usize) {
        self.advance(index, Stage::Done);
    }

    /// Replica `index` failed: every meeting still open fails.
    pub(crate) fn abandon(&self, index: usize) {
        let mut state = self.lock();
        state.failed.get_or_insert(SyncNormError::PeerFailed {
            who: format!("replica {index}"),
        });
        state.stage[index] = Stage::Done;
        self.changed.notify_all();
    }

    fn advance(&self, index: usize, stage: Stage) {
        let mut state = self.lock();
        // Never back: a replica that failed stays done.
        state.stage[index] = state.stage[index].max(stage);
        self.changed.notify_all();
    }
}

/// The replicas' parts added in replica order; an error if their sizes differ.
fn add_up(parts: &[Option<Vec<f64>>]) -> Result<Vec<f64>, SyncNormError> {
    let mut parts = parts.iter().flatten();
    let mut total = parts.next().cloned().unwrap_or_default();
    for part in parts {
        if part.len() != total.len() {
            return Err(SyncNormError::Mismatch {
                what: format!(
                    "statistics of {} and of {} values at the same layer",
                    total.len(),
                    part.len()
                ),
            });
        }
        total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    }
    Ok(total)
}

/// A replica that will never come to meeting `at`: it has not brought its part, and is past
/// the pass the meeting belongs to.
fn absent(state: &State, at: (Pass, usize)) -> Option<usize> {
    let meeting = state.meetings.get(&at)?;
    (0..meeting.parts.len()).find(|&r| {
        meeting.parts[r].is_none()
            && meeting.total.is_none()
            && match at.0 {
                Pass::Forward => state.stage[r] != Stage::Forward,
                Pass::Backward => state.stage[r] == Stage::Done,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_leaves_with_the_sum_of_all_parts() {
        let group = Group::new(3, None);
        let totals: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|r| {
                    let group = &group;
                    scope.spawn(move || group.sum((Pass::Forward, 0), r, vec![r as f64, 1.0]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for total in totals {
            assert_eq!(*total.unwrap(), vec![3.0, 3.0]);
        }
    }

    #[test]
    fn a_failed_replica_ends_the_meeting_instead_of_leaving_the_others_waiting() {
        let group = Group::new(2, None);
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| group.sum((Pass::Forward, 0), 0, vec![1.0]));
            group.abandon(1);
            assert!(matches!(
                waiting.join().unwrap(),
                Err(SyncNormError::PeerFailed { .. })
            ));
        });
    }

    #[test]
    fn a_replica_ending_its_pass_without_the_layer_is_a_mismatch() {
        let group = Group::new(2, None);
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| group.sum((Pass::Forward, 1), 0, vec![1.0]));
            group.forward_done(1);
            assert!(matches!(
                waiting.join().unwrap(),
                Err(SyncNormError::Mismatch { .. })
            ));
        });
    }

    #[test]
    fn parts_of_different_sizes_are_a_mismatch() {
        let group = Group::new(2, None);
        std::thread::scope(|scope| {
            let a = scope.spawn(|| group.sum((Pass::Backward, 0), 0, vec![1.0]));
            let b = scope.spawn(|| group.sum((Pass::Backward, 0), 1, vec![1.0, 2.0]));
            assert!(a.join().unwrap().is_err());
            assert!(b.join().unwrap().is_err());
        });
    }
}
