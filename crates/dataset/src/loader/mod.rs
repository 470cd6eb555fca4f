//! `ShardedLoader`: a user's Burn `Dataset` and `Batcher` as a trainer's source, each rank
//! reading its part of every global batch, batches prepared ahead on worker threads in a fixed
//! order.

mod pool;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, OnceLock};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;

use crate::{SamplerError, ShardedSampler};
use pool::Pool;

/// Why a batch could not be loaded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoaderError {
    /// The dataset had no item at an index below its length.
    #[error("the dataset has no item {index} (its length is {len})")]
    MissingItem {
        /// The index asked for.
        index: usize,
        /// The dataset's length when the batch was loaded.
        len: usize,
    },
    /// The dataset or the batcher panicked while loading a batch. (In an MPI job whose panic
    /// hook ends the job, as `burn_data_parallel::dist` installs, the job ends instead.)
    #[error("loading the batch of rows from {first:?} panicked: {message}")]
    Panicked {
        /// The batch's first row (`None` for no row).
        first: Option<usize>,
        /// The panic's message.
        message: String,
    },
    /// The loader's threads could not be started, or stopped before sending a batch.
    #[error("the loader's worker threads {0}")]
    Workers(String),
}

/// Loads a user's [`Dataset`] through a [`Batcher`] by global batches that are the same at any
/// number of ranks ([`ShardedSampler::global_batches`]: a seeded shuffle by epoch, every row
/// once per epoch, no padding, a short last batch kept), each rank loading only its part of
/// each (micro-)batch.
///
/// With [`with_prefetch`](Self::with_prefetch), the parts of the next batches are read and
/// batched on worker threads while the current step computes. The batch handed out for a list
/// of rows is always the batcher's output for exactly those rows, in that order, so a run with
/// prefetch gives the numbers of a run without (a batcher that draws random numbers, such as
/// random augmentation, should seed itself from the rows it is given). Batches are made on
/// the loader's device; a trainer's step then moves each device's part to its device.
///
/// Rows whose part a rank takes are predicted by the equal split of
/// [`ShardedSampler::part`] (what `Trainer::part` answers without a rank split). A part asked
/// for that differs from the prediction (a rank split that learns the ranks' speeds) is loaded
/// when asked, and prefetch stops for the rest of that epoch (the parts already queued are
/// cancelled, unless a worker has begun one).
///
/// Across MPI ranks, a part that fails to load fails on its rank only: agree on the outcome
/// before the step's collectives (the `train` example gathers one flag per micro-batch), or
/// the other ranks wait for that rank in the step.
///
/// ```
/// use burn::backend::NdArray;
/// use dp_dataset::{RandomDataset, RowBatcher, ShardedLoader};
///
/// // Rank 1 of 2 reads its half of each global batch of 8 rows, two batches ahead.
/// let loader = ShardedLoader::<NdArray, _, _>::new(
///     RandomDataset::new(5, 20, 42),
///     RowBatcher,
///     Default::default(),
///     8,
/// )
/// .with_ranks(2, 1)?
/// .with_seed(7)
/// .with_prefetch(2);
/// let parts: Vec<[usize; 2]> = loader
///     .epoch(0)
///     .map(|part| part.map(|rows| rows.dims()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(parts, [[4, 5], [4, 5], [2, 5]]); // 20 rows: global batches of 8, 8 and 4
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ShardedLoader<B: Backend, I, O> {
    dataset: Arc<dyn Dataset<I>>,
    batcher: Arc<dyn Batcher<B, I, O>>,
    device: B::Device,
    batch_size: usize,
    micro_batches: usize,
    sampler: ShardedSampler,
    prefetch: usize,
    threads: usize,
    pool: OnceLock<std::io::Result<Arc<Pool>>>,
}

impl<B, I, O> ShardedLoader<B, I, O>
where
    B: Backend,
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    /// Global batches of `batch_size` rows of `dataset` (at least 1), made by `batcher` on
    /// `device`; one rank, shuffled with seed 0, no prefetch.
    pub fn new(
        dataset: impl Dataset<I> + 'static,
        batcher: impl Batcher<B, I, O> + 'static,
        device: B::Device,
        batch_size: usize,
    ) -> Self {
        let len = dataset.len();
        Self {
            dataset: Arc::new(dataset),
            batcher: Arc::new(batcher),
            device,
            batch_size: batch_size.max(1),
            micro_batches: 1,
            sampler: ShardedSampler::new(len, 1, 0).expect("rank 0 of 1 is valid"),
            prefetch: 0,
            threads: 1,
            pool: OnceLock::new(),
        }
    }

    /// This process is `rank` of `world_size` ranks (a trainer's `rank()` and `world_size()`).
    pub fn with_ranks(mut self, world_size: usize, rank: usize) -> Result<Self, SamplerError> {
        let sampler = ShardedSampler::new(self.dataset.len(), world_size, rank)?;
        self.sampler = sampler.with_shuffle(self.shuffled()).with_seed(self.seed());
        Ok(self)
    }

    /// The seed of the shuffle (the same on every rank); epoch `e` is shuffled by `seed + e`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.sampler = self.sampler.with_seed(seed);
        self
    }

    /// Shuffles (the default) or keeps the dataset's order (a held-out set).
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.sampler = self.sampler.with_shuffle(shuffle);
        self
    }

    /// Cuts every global batch into `count` micro-batches (at least 1, at most its rows), rows
    /// `i * n / count .. (i + 1) * n / count` each, of which each rank takes its part: one
    /// optimizer step accumulated over `count` calls.
    pub fn with_micro_batches(mut self, count: usize) -> Self {
        self.micro_batches = count.max(1);
        self
    }

    /// Prepares `batches` parts ahead on worker threads (0, the default: each part is loaded on
    /// the caller's thread when asked). The part being taken is one more: the next one is
    /// queued before it is received, so that the workers never wait.
    pub fn with_prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches;
        self
    }

    /// How many worker threads prepare parts ahead (default 1, at least 1), where decoding a
    /// part takes longer than a step. Parts come back in order whatever their number.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self.pool = OnceLock::new();
        self
    }

    /// Rows in the dataset.
    pub fn len(&self) -> usize {
        self.dataset.len()
    }

    /// Whether the dataset has no rows.
    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty()
    }

    /// Optimizer steps (global batches) in an epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.dataset.len().div_ceil(self.batch_size)
    }

    /// The device batches are made on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    fn shuffled(&self) -> bool {
        self.sampler.shuffle()
    }

    fn seed(&self) -> u64 {
        self.sampler.seed()
    }

    /// Epoch `epoch`'s global batches, from the first.
    pub fn epoch(&self, epoch: usize) -> Epoch<'_, B, I, O> {
        self.epoch_from(epoch, 0)
    }

    /// Epoch `epoch`'s global batches from step `step` on: a run resumed after `step` steps of
    /// this epoch reads what the uninterrupted run would have read.
    pub fn epoch_from(&self, epoch: usize, step: usize) -> Epoch<'_, B, I, O> {
        let mut sampler = self.sampler.clone();
        sampler.set_epoch(epoch as u64);
        let steps: Vec<Vec<Vec<usize>>> = sampler
            .global_batches(self.batch_size)
            .into_iter()
            .skip(step)
            .map(|global| {
                let count = self.micro_batches.min(global.len()).max(1);
                let n = global.len();
                (0..count)
                    .map(|i| global[i * n / count..(i + 1) * n / count].to_vec())
                    .collect()
            })
            .collect();
        // This rank's predicted parts, in the order they will be asked for; a rank with no row
        // of a micro-batch asks for nothing.
        let predicted: VecDeque<Vec<usize>> = steps
            .iter()
            .flatten()
            .map(|piece| sampler.part(piece).to_vec())
            .filter(|part| !part.is_empty())
            .collect();
        let (pool, failed) = match self.prefetch {
            0 => (None, None),
            _ => match self
                .pool
                .get_or_init(|| Pool::new(self.threads).map(Arc::new))
            {
                Ok(pool) => (Some(Arc::clone(pool)), None),
                Err(error) => (
                    None,
                    Some(LoaderError::Workers(format!("could not start: {error}"))),
                ),
            },
        };
        let mut epoch = Epoch {
            loader: self,
            steps: steps.into(),
            predicted,
            pending: VecDeque::new(),
            pool,
            cancelled: Arc::new(AtomicBool::new(false)),
            failed,
        };
        epoch.refill();
        epoch
    }

    /// Loads `rows` now, on the caller's thread. No rows give the batcher an empty list (a
    /// rank with no row of a micro-batch still takes part in the step).
    pub fn load(&self, rows: &[usize]) -> Result<O, LoaderError> {
        load(&*self.dataset, &*self.batcher, &self.device, rows)
    }
}

/// Items `rows` of `dataset`, batched.
fn load<B: Backend, I, O>(
    dataset: &dyn Dataset<I>,
    batcher: &dyn Batcher<B, I, O>,
    device: &B::Device,
    rows: &[usize],
) -> Result<O, LoaderError> {
    let first = rows.first().copied();
    catch_unwind(AssertUnwindSafe(|| {
        let len = dataset.len();
        let items = rows
            .iter()
            .map(|&index| {
                dataset
                    .get(index)
                    .ok_or(LoaderError::MissingItem { index, len })
            })
            .collect::<Result<Vec<I>, _>>()?;
        Ok(batcher.batch(items, device))
    }))
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Err(LoaderError::Panicked { first, message })
    })
}

/// Where a part being prepared on a worker arrives.
type Ready<O> = Receiver<Result<O, LoaderError>>;

/// One epoch of a [`ShardedLoader`]: its global batches, one step each, and this rank's parts
/// of them, prepared ahead when the loader prefetches.
///
/// Iterating it yields this rank's part of every (micro-)batch in order, by the equal split.
/// A training loop whose parts come from a trainer asks for them one by one instead:
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn_data_parallel::{DataParallelTrainer, Trainer};
/// use dp_dataset::{RandomDataset, RowBatcher, ShardedLoader};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(5, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 2])?;
/// let loader = ShardedLoader::<B, _, _>::new(RandomDataset::new(5, 50, 1), RowBatcher, device, 16)
///     .with_ranks(trainer.world_size(), trainer.rank())?
///     .with_micro_batches(2)
///     .with_prefetch(2);
/// let mut epoch = loader.epoch(0);
/// while let Some(step) = epoch.next_step() {
///     for micro_batch in &step {
///         let part = &micro_batch[trainer.part(micro_batch.len())?];
///         let rows = epoch.load(part)?;
///         trainer.accumulate(rows, |m, x| m.forward(x).powi_scalar(2).mean())?;
///     }
///     trainer.apply(1e-2)?;
/// }
/// assert_eq!(trainer.steps(), 4); // 16, 16, 16 and 2 rows
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Epoch<'a, B: Backend, I, O> {
    loader: &'a ShardedLoader<B, I, O>,
    steps: VecDeque<Vec<Vec<usize>>>,
    predicted: VecDeque<Vec<usize>>,
    pending: VecDeque<(Vec<usize>, Ready<O>)>,
    pool: Option<Arc<Pool>>,
    cancelled: Arc<AtomicBool>,
    failed: Option<LoaderError>,
}

impl<'a, B, I, O> Epoch<'a, B, I, O>
where
    B: Backend,
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    /// The next global batch's micro-batches (dataset rows, the whole global batch's), or
    /// `None` at the end of the epoch.
    pub fn next_step(&mut self) -> Option<Vec<Vec<usize>>> {
        self.steps.pop_front()
    }

    /// Parts queued on the workers and not yet taken.
    pub fn prepared(&self) -> usize {
        self.pending.len()
    }

    /// Global batches not yet taken with [`next_step`](Self::next_step).
    pub fn steps_left(&self) -> usize {
        self.steps.len()
    }

    /// The batch of `rows`, in that order: prepared ahead when they are the part expected
    /// next, loaded now otherwise (no rows: an empty batch, from the batcher).
    pub fn load(&mut self, rows: &[usize]) -> Result<O, LoaderError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if rows.is_empty() {
            return self.loader.load(rows);
        }
        let next = match self.pending.front() {
            Some((next, _)) => Some(next),
            None => self.predicted.front(),
        };
        let expected = next.map(Vec::as_slice) == Some(rows);
        if !expected {
            // Parts are not the equal split: stop preparing parts nobody will ask for.
            self.predicted.clear();
            self.pending.clear();
            self.cancelled.store(true, Ordering::Relaxed);
            self.cancelled = Arc::new(AtomicBool::new(false));
            return self.loader.load(rows);
        }
        let ready = match self.pending.pop_front() {
            Some((_, ready)) => Some(ready),
            None => {
                self.predicted.pop_front();
                None
            }
        };
        self.refill();
        match ready {
            Some(ready) => ready.recv().unwrap_or_else(|_| {
                Err(LoaderError::Workers(
                    "stopped before sending a batch".into(),
                ))
            }),
            None => self.loader.load(rows),
        }
    }

    /// Queues predicted parts until `prefetch` are being prepared.
    fn refill(&mut self) {
        let Some(pool) = &self.pool else { return };
        while self.pending.len() < self.loader.prefetch {
            let Some(rows) = self.predicted.pop_front() else {
                return;
            };
            let (send, ready) = channel();
            let (dataset, batcher) = (
                Arc::clone(&self.loader.dataset),
                Arc::clone(&self.loader.batcher),
            );
            let device = self.loader.device.clone();
            let cancelled = Arc::clone(&self.cancelled);
            let job_rows = rows.clone();
            let queued = pool.submit(Box::new(move || {
                if !cancelled.load(Ordering::Relaxed) {
                    let _ = send.send(load(&*dataset, &*batcher, &device, &job_rows));
                }
            }));
            if !queued {
                // No worker: the part is loaded when asked.
                self.predicted.push_front(rows);
                self.pool = None;
                return;
            }
            self.pending.push_back((rows, ready));
        }
    }
}

impl<B, I, O> Iterator for Epoch<'_, B, I, O>
where
    B: Backend,
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    type Item = Result<O, LoaderError>;

    /// This rank's part of the next micro-batch, by the equal split. Every rank gets as many
    /// items: a rank with no row of a micro-batch gets the batcher's empty batch (with one
    /// rank, every micro-batch has rows).
    fn next(&mut self) -> Option<Self::Item> {
        let step = self.steps.front_mut()?;
        let piece = step.remove(0);
        if step.is_empty() {
            self.steps.pop_front();
        }
        let part = self.loader.sampler.part(&piece).to_vec();
        Some(self.load(&part))
    }
}

impl<B: Backend, I, O> Drop for Epoch<'_, B, I, O> {
    fn drop(&mut self) {
        // Parts still queued are not prepared for nobody.
        self.cancelled.store(true, Ordering::Relaxed);
    }
}
