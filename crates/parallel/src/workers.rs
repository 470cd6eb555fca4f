//! The long-lived threads that run the replicas: one per device, started the first time the
//! device is used and kept for the life of the [`DataParallel`](crate::DataParallel), so that a
//! call starts no thread (PyTorch's `parallel_apply` starts one per replica per call).
//!
//! Each worker is a rayon pool of its own, as many threads wide as [`Threads`] says: compute that the
//! backend parallelises with rayon inside a replica (Flex's matrix products, burn-ndarray's
//! element-wise operations) stays on that replica's threads and runs there without a hand-off.
//! With several replicas, replica 0 gets a worker too: on the caller's thread its rayon work
//! would go to the global pool, one hand-off to another thread per operation, and compete with
//! the other replicas for the cores. With one replica, it runs on the caller's thread, exactly
//! as the plain model would.
//!
//! `in_place_scope` lets a call hand borrowed closures to the pools and returns only once they
//! have all run, so no `unsafe` is needed to lend them the replicas and inputs.

use crate::{DataParallelError, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// How many threads each replica's worker has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Threads {
    /// The same for every replica.
    Each(usize),
    /// `counts[i]` for replica `i` (one per device, checked when set).
    PerDevice(Vec<usize>),
}

impl Threads {
    fn of(&self, replica: usize) -> usize {
        match self {
            Self::Each(threads) => *threads,
            Self::PerDevice(counts) => counts.get(replica).copied().unwrap_or(1),
        }
        .max(1)
    }
}

/// Worker pools; `pools[i]` runs replica `i`.
#[derive(Debug)]
pub(crate) struct Workers {
    pools: Vec<ThreadPool>,
    threads: Threads,
}

impl Workers {
    pub(crate) fn new(threads: Threads) -> Self {
        Self {
            pools: Vec::new(),
            threads,
        }
    }

    /// The threads each worker gets.
    pub(crate) fn threads(&self) -> &Threads {
        &self.threads
    }

    /// Starts workers so that `replicas` replicas can run (one replica needs none).
    pub(crate) fn ensure(&mut self, replicas: usize) -> Result<()> {
        while replicas > 1 && self.pools.len() < replicas {
            let replica = self.pools.len();
            let pool = ThreadPoolBuilder::new()
                .num_threads(self.threads.of(replica))
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

    /// Runs task `i` on worker `i`, in `order`, and returns when all are done; a single task
    /// runs on the caller's thread. Needs one started worker per task (see
    /// [`ensure`](Self::ensure)).
    pub(crate) fn run<T>(&self, tasks: T, order: Order)
    where
        T: IntoIterator,
        T::Item: FnOnce() + Send,
    {
        let mut tasks = tasks.into_iter().peekable();
        let Some(first) = tasks.next() else { return };
        if tasks.peek().is_none() {
            return first();
        }
        let mut tasks = std::iter::once(first).chain(tasks);
        match order {
            Order::InTurn => {
                for (pool, task) in self.pools.iter().zip(tasks) {
                    pool.install(task);
                }
            }
            Order::Concurrent => fan_out(&self.pools, &mut tasks),
        }
    }
}

/// How the workers run a call's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// All at the same time.
    Concurrent,
    /// Each once the one before has returned, still each on its own worker (where its
    /// backend's rayon work stays).
    InTurn,
}

/// Hands one task to each pool, nesting the scopes so that every task is spawned before any is
/// waited for; the caller's thread then waits in the innermost scope.
fn fan_out<I>(pools: &[ThreadPool], tasks: &mut I)
where
    I: Iterator,
    I::Item: FnOnce() + Send,
{
    if let (Some((pool, rest)), Some(task)) = (pools.split_first(), tasks.next()) {
        pool.in_place_scope(|scope| {
            scope.spawn(move |_| task());
            fan_out(rest, tasks);
        });
    }
}
