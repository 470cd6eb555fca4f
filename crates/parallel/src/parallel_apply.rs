//! Runs one replica per device at the same time, and reports how each one ended.
//!
//! With several devices, every replica runs on its device's long-lived worker (see `workers`);
//! with one, it runs on the caller's thread and no other thread is involved. A panic is caught
//! on the thread where it happens, and no result is returned before every replica has
//! finished, so a failing replica never leaves work behind or a caller waiting forever.

use crate::workers::Workers;
use crate::{DataParallelError, Result};
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which replica the current thread is running, as seen from inside a model's `forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Index of the replica, which is also the index of its device in the device list the
    /// wrapper was given.
    pub index: usize,
    /// How many replicas run this call.
    pub replicas: usize,
}

/// Time one replica spent on its part of a call: what split policies learn speeds from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaTiming {
    /// Index of the replica, and of its device in the device list.
    pub replica: usize,
    /// Rows of its part.
    pub rows: usize,
    /// Time on the replica's thread: the forward pass (and the backward pass, in a trainer),
    /// not counting the time it waited for the other replicas between the two.
    pub compute: Duration,
}

thread_local! {
    static CURRENT: RefCell<Option<ReplicaInfo>> = const { RefCell::new(None) };
    /// Time this thread spent waiting at rendezvous during the replica it runs.
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The replica being run on this thread, or `None` outside of a data-parallel call.
///
/// Lets a model (or an observer it calls) tell which replica it runs in without any change to
/// its signature.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::nn::LinearConfig;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::{DataParallel, current_replica};
/// use std::sync::Mutex;
///
/// let device = Default::default();
/// let linear = LinearConfig::new(3, 1).init::<NdArray>(&device);
/// let mut dp = DataParallel::new(linear, vec![device; 2]).unwrap();
/// let seen = Mutex::new(Vec::new());
/// let x = Tensor::<NdArray, 2>::ones([4, 3], &device);
/// dp.forward(x, |m, x| {
///     seen.lock().unwrap().push(current_replica().unwrap().index);
///     m.forward(x)
/// })
/// .unwrap();
/// let mut seen = seen.into_inner().unwrap();
/// seen.sort();
/// assert_eq!(seen, [0, 1]);
/// assert_eq!(current_replica(), None);
/// ```
pub fn current_replica() -> Option<ReplicaInfo> {
    CURRENT.with(|current| current.borrow().clone())
}

/// How one replica ended.
enum Outcome<O> {
    Done(O),
    Failed(BoxError),
    Unsynchronized(crate::SyncNormError),
    Panicked(String),
}

/// Runs `f(replicas[i], inputs[i])` for every `i`, in `order`; `devices[i]`
/// names replica `i`. `workers` must have a started worker for every replica when there are
/// several.
///
/// Returns the outputs in replica order with the time each replica was busy (see
/// [`ReplicaTiming::compute`]), or the error of the lowest failing replica.
pub(crate) fn parallel_apply<M, I, O, E, F, D>(
    workers: &Workers,
    replicas: Vec<&M>,
    inputs: Vec<I>,
    devices: &[D],
    f: &F,
    order: crate::workers::Order,
) -> Result<Vec<(O, Duration)>>
where
    M: Sync,
    I: Send,
    O: Send,
    E: Into<BoxError>,
    F: Fn(&M, I) -> Result<O, E> + Sync,
    D: Debug + Sync,
{
    let count = replicas.len();
    let mut outcomes: Vec<Option<(Outcome<O>, Duration)>> = replicas.iter().map(|_| None).collect();
    let tasks = replicas
        .into_iter()
        .zip(inputs)
        .zip(outcomes.iter_mut())
        .enumerate()
        .map(|(i, ((replica, input), slot))| {
            move || *slot = Some(run_replica(replica_info(i, count), replica, input, f))
        });
    workers.run(tasks, order);

    // A replica that waited for a failed one reports that; the failed one's own error says why.
    let waited = |outcome: &Option<(Outcome<O>, Duration)>| {
        matches!(
            outcome,
            Some((
                Outcome::Unsynchronized(crate::SyncNormError::PeerFailed { .. }),
                _
            ))
        )
    };
    let skip_waiters = outcomes
        .iter()
        .any(|o| !waited(o) && !matches!(o, Some((Outcome::Done(_), _))));
    outcomes
        .into_iter()
        .enumerate()
        .filter(|(_, outcome)| !(skip_waiters && waited(outcome)))
        .map(|(replica, outcome)| match outcome {
            Some((Outcome::Done(output), busy)) => Ok((output, busy)),
            Some((Outcome::Failed(source), _)) => Err(DataParallelError::ReplicaFailed {
                replica,
                device: device_name(replica, devices),
                source,
            }),
            Some((Outcome::Unsynchronized(source), _)) => Err(DataParallelError::SyncBatchNorm {
                replica,
                device: device_name(replica, devices),
                source,
            }),
            Some((Outcome::Panicked(message), _)) => Err(DataParallelError::ReplicaPanicked {
                replica,
                device: device_name(replica, devices),
                message,
            }),
            None => Err(DataParallelError::ReplicaPanicked {
                replica,
                device: device_name(replica, devices),
                message: "the replica's worker did not run it".to_owned(),
            }),
        })
        .collect()
}

/// Runs one replica; also returns the time it was busy (its run less its waits at a
/// [`Rendezvous`]).
fn run_replica<M, I, O, E, F>(
    info: ReplicaInfo,
    replica: &M,
    input: I,
    f: &F,
) -> (Outcome<O>, Duration)
where
    E: Into<BoxError>,
    F: Fn(&M, I) -> Result<O, E>,
{
    let previous = CURRENT.with(|current| current.replace(Some(info)));
    // Tensors are not `UnwindSafe`; nothing observes the replica's state after a panic except
    // the error message, and the replica itself is never mutated.
    let (result, busy) = busy(|| catch_unwind(AssertUnwindSafe(|| f(replica, input))));
    CURRENT.with(|current| current.replace(previous));
    let outcome = match result {
        Ok(Ok(output)) => Outcome::Done(output),
        Ok(Err(error)) => Outcome::Failed(error.into()),
        Err(payload) => match payload.downcast::<crate::SyncNormError>() {
            Ok(err) => Outcome::Unsynchronized(*err),
            Err(payload) => Outcome::Panicked(crate::error::panic_message(payload.as_ref())),
        },
    };
    (outcome, busy)
}

fn replica_info(index: usize, replicas: usize) -> ReplicaInfo {
    ReplicaInfo { index, replicas }
}

/// Time the current thread spends waiting for others from now until dropped: not counted in a
/// replica's [`compute`](ReplicaTiming::compute) time, nor in a process's busy time.
pub(crate) struct Waiting(Instant);

impl Waiting {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let waited = self.0.elapsed();
        WAITED.with(|w| w.set(w.get() + waited));
    }
}

/// Runs `f`, returning also how long it ran less the time it spent [`Waiting`].
pub(crate) fn busy<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let before = WAITED.with(|waited| waited.replace(Duration::ZERO));
    let start = Instant::now();
    let out = f();
    let busy = start
        .elapsed()
        .saturating_sub(WAITED.with(|waited| waited.replace(before)));
    (out, busy)
}

/// A point that every replica of a call reaches before any goes past it. Usable once per call.
#[derive(Default)]
pub(crate) struct Rendezvous(OnceLock<Barrier>);

impl Rendezvous {
    /// Waits, inside a replica, for every replica of the call to get here (at once outside one).
    /// Every replica must call it exactly once, whatever happens before.
    /// The time spent waiting is not counted in the replica's
    /// [`compute`](ReplicaTiming::compute) time: it measures the other replicas, not this one.
    pub(crate) fn wait(&self) {
        let replicas = current_replica().map_or(1, |info| info.replicas);
        let _waiting = Waiting::start();
        self.0.get_or_init(|| Barrier::new(replicas)).wait();
    }
}

fn device_name<D: Debug>(index: usize, devices: &[D]) -> String {
    devices
        .get(index)
        .map_or_else(|| "?".to_owned(), |device| format!("{device:?}"))
}
