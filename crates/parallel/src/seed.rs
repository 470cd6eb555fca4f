//! Seeded runs: the random draws of replicas made in a fixed order from fixed seeds.
//!
//! Burn 0.21's backends draw every random tensor (dropout's masks) from one generator per
//! process, so replicas that run at once draw in whatever order their threads reach it. A
//! seeded call instead runs the replicas' forward passes one after another, in replica order,
//! each after reseeding the backend's generator with a seed derived from the run's seed and
//! the position of the draw (rank, step, micro-batch, replica). A replica that must wait for
//! the others inside its forward pass (a synchronized batch norm) passes its turn on and
//! takes it back in the next round ([`Turns::pass_during`]), reseeding from the round. A run is then a function of its
//! seed and its configuration, and a resumed run draws what the uninterrupted one would have.

use std::sync::{Condvar, Mutex};

/// A seed derived from `seed` and the position `stream` (SplitMix64's finalizer over each
/// word in turn): distinct positions give unrelated seeds.
pub(crate) fn derive(seed: u64, stream: &[u64]) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    stream
        .iter()
        .fold(mix(seed), |state, &word| mix(state ^ mix(word)))
}

/// Lets replicas run a piece of their work one at a time, in replica order: replica `k` starts
/// once replica `k - 1` has finished (or panicked).
#[derive(Default)]
pub(crate) struct Turns {
    next: Mutex<usize>,
    changed: Condvar,
}

impl Turns {
    /// Runs `f` as replica `index`'s turn. Every replica `0..index` must take its turn too.
    pub(crate) fn take<T>(&self, index: usize, f: impl FnOnce() -> T) -> T {
        self.wait_for(index);
        // Passed on even if `f` panics: the replicas after this one must not wait forever.
        struct Pass<'a>(&'a Turns);
        impl Drop for Pass<'_> {
            fn drop(&mut self) {
                self.0.pass_on();
            }
        }
        let _pass = Pass(self);
        f()
    }

    /// Inside a turn: lets the next replica take its turn while `f` runs (a wait for the
    /// others, which would otherwise never come), then, if `f` succeeded, waits for turn
    /// `ticket` (the replica's place in the next round) to go on. A failed `f` goes on at once:
    /// the call is failing, and its turns may never come.
    pub(crate) fn pass_during<T, E>(
        &self,
        ticket: usize,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.pass_on();
        let out = f()?;
        let _waiting = crate::parallel_apply::Waiting::start();
        self.wait_for(ticket);
        Ok(out)
    }

    /// The next turn comes (saturating: after [`release_all`](Self::release_all) every turn
    /// has come).
    fn pass_on(&self) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        *next = next.saturating_add(1);
        self.changed.notify_all();
    }

    /// Every turn has come: a replica failed, and the others must not wait for turns it
    /// will not pass on.
    pub(crate) fn release_all(&self) {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = usize::MAX;
        self.changed.notify_all();
    }

    /// Waits until turn `ticket` has come (or gone: a failed replica may pass on twice).
    fn wait_for(&self, ticket: usize) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        while *next < ticket {
            next = self.changed.wait(next).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_give_distinct_seeds_and_the_same_position_the_same() {
        let a = derive(7, &[0, 1, 2]);
        assert_eq!(a, derive(7, &[0, 1, 2]));
        assert_ne!(a, derive(7, &[0, 2, 1]));
        assert_ne!(a, derive(8, &[0, 1, 2]));
        assert_ne!(derive(7, &[0]), derive(7, &[0, 0]));
    }

    #[test]
    fn turns_run_in_replica_order_whatever_the_threads_do() {
        let turns = Turns::default();
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for index in (0..4).rev() {
                let (turns, order) = (&turns, &order);
                scope.spawn(move || turns.take(index, || order.lock().unwrap().push(index)));
            }
        });
        assert_eq!(order.into_inner().unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_turn_passed_during_a_wait_comes_back_in_the_next_round() {
        let turns = Turns::default();
        let order = Mutex::new(Vec::new());
        let met = std::sync::Barrier::new(3);
        std::thread::scope(|scope| {
            for index in (0..3).rev() {
                let (turns, order, met) = (&turns, &order, &met);
                scope.spawn(move || {
                    turns.take(index, || {
                        order.lock().unwrap().push(index);
                        turns
                            .pass_during(3 + index, || Ok::<_, ()>(met.wait()))
                            .unwrap();
                        order.lock().unwrap().push(10 + index);
                    })
                });
            }
        });
        assert_eq!(order.into_inner().unwrap(), [0, 1, 2, 10, 11, 12]);
    }

    #[test]
    fn a_panicking_turn_still_lets_the_next_one_run() {
        let turns = Turns::default();
        std::thread::scope(|scope| {
            let first = scope.spawn(|| turns.take(0, || panic!("replica 0 failed")));
            let second = scope.spawn(|| turns.take(1, || 1));
            assert!(first.join().is_err());
            assert_eq!(second.join().unwrap(), 1);
        });
    }
}
