//! The long-lived threads that run replicas `1..`: one per device, started the first time the
//! device is used and kept for the life of the [`DataParallel`](crate::DataParallel), so that a
//! call starts no thread (PyTorch's `parallel_apply` starts one per replica per call).
//!
//! Each worker is a rayon pool of its own, `threads_per_replica` threads wide: compute that the
//! backend parallelises with rayon inside a replica (burn-ndarray does for some operations) stays
//! on that replica's threads instead of every replica competing for the global pool.
//! `in_place_scope` lets a call hand borrowed closures to the pools and returns only once they
//! have all run, so no `unsafe` is needed to lend them the replicas and inputs.

use crate::{DataParallelError, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// Worker pools; `pools[i]` runs replica `i + 1`.
#[derive(Debug)]
pub(crate) struct Workers {
    pools: Vec<ThreadPool>,
    threads_per_replica: usize,
}

impl Workers {
    pub(crate) fn new(threads_per_replica: usize) -> Self {
        Self {
            pools: Vec::new(),
            threads_per_replica: threads_per_replica.max(1),
        }
    }

    /// Starts workers so that `replicas` replicas can run (replica 0 needs none).
    pub(crate) fn ensure(&mut self, replicas: usize) -> Result<()> {
        while self.pools.len() + 1 < replicas {
            let replica = self.pools.len() + 1;
            let pool = ThreadPoolBuilder::new()
                .num_threads(self.threads_per_replica)
                .thread_name(move |i| format!("dp-replica-{replica}.{i}"))
                .build()
                .map_err(|e| DataParallelError::WorkerStart {
                    replica,
                    message: e.to_string(),
                })?;
            self.pools.push(pool);
        }
        Ok(())
    }

    /// Runs `first` on the caller's thread and task `i` on worker `i` at the same time, and
    /// returns when all are done. Needs one started worker per task.
    pub(crate) fn run<T, F>(&self, tasks: T, first: F)
    where
        T: IntoIterator,
        T::Item: FnOnce() + Send,
        F: FnOnce(),
    {
        fan_out(&self.pools, &mut tasks.into_iter(), first);
    }
}

/// Hands one task to each pool, nesting the scopes so that every task is spawned before any is
/// waited for, then runs `first` in the innermost scope.
fn fan_out<I, F>(pools: &[ThreadPool], tasks: &mut I, first: F)
where
    I: Iterator,
    I::Item: FnOnce() + Send,
    F: FnOnce(),
{
    match (pools.split_first(), tasks.next()) {
        (Some((pool, rest)), Some(task)) => pool.in_place_scope(|scope| {
            scope.spawn(move |_| task());
            fan_out(rest, tasks, first);
        }),
        _ => first(),
    }
}
