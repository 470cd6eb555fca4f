//! Data parallelism for [Burn](https://burn.dev): what PyTorch's `nn.DataParallel` is to
//! PyTorch, generic over Burn's [`Backend`](burn::tensor::backend::Backend), so the same code runs
//! on CUDA GPUs and on the CPU.
//!
//! [`DataParallel`] splits a batch across devices, runs one replica of the module per device at
//! the same time, and gathers the outputs back in order. This is PyTorch's "Data Parallelism"
//! tutorial: a `Linear(5, 2)` over a batch of 30 rows on 4 devices, split 8, 8, 8, 6.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Distribution, Tensor};
//! use burn_data_parallel::DataParallel;
//!
//! let device = Default::default();
//! let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
//! // Four "devices": on the CPU, four threads; with CUDA, list four GPUs instead.
//! let mut model = DataParallel::new(model, vec![device; 4])?;
//!
//! let input = Tensor::<NdArray, 2>::random([30, 5], Distribution::Normal(0.0, 1.0), &device);
//! let output = model.forward(input, |replica, x| {
//!     let input_dims = x.dims();
//!     let y = replica.forward(x);
//!     println!("\tIn Model: input size {input_dims:?} output size {:?}", y.dims());
//!     y
//! })?;
//! assert_eq!(output.dims(), [30, 2]);
//! # Ok::<(), burn_data_parallel::DataParallelError>(())
//! ```
//!
//! Training takes the exact step of single-device training on the whole batch, the gradients
//! of uneven parts weighted by their rows:
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::nn::LinearConfig;
//! use burn::optim::AdamConfig;
//! use burn::tensor::{Distribution, Tensor};
//! use burn_data_parallel::{DataParallelTrainer, Trainer};
//!
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let model = LinearConfig::new(5, 1).init::<B>(&device);
//! let mut trainer = DataParallelTrainer::new(model, AdamConfig::new().init(), vec![device; 4])?;
//! let x = Tensor::<B, 2>::random([30, 5], Distribution::Default, &device);
//! let y = Tensor::<B, 2>::random([30, 1], Distribution::Default, &device);
//! let stats = trainer.step(1e-3, (x, y), |m, (x, y)| (m.forward(x) - y).powi_scalar(2).mean())?;
//! assert_eq!(stats.replicas.len(), 4); // 8, 8, 8 and 6 rows
//! # Ok::<(), burn_data_parallel::DataParallelError>(())
//! ```
//!
//! The same loop runs across processes and machines with [`dist::DistributedTrainer`], which
//! implements [`Trainer`] too, over MPI (`dist::Mpi`, feature `mpi`) or any transport that
//! implements [`dist::Communicator`].
//!
//! A burn-train program keeps its `SupervisedTraining` (metrics, checkpointer, scheduler,
//! early stopping) and changes its training strategy to `DataParallelStrategy` (feature
//! `burn-train`): every batch of its loader split across the devices (and MPI ranks), exactly
//! as one device runs it.
//!
//! Where each piece lives:
//! - [`split`](crate::SplitPolicy): how many rows each device gets ([`Chunk`], [`Balanced`],
//!   and [`Adaptive`], which learns each device's speed from its [`ReplicaTiming`]s and gives
//!   it rows in proportion);
//! - [`Scatter`] / [`Gather`]: how inputs are split and outputs merged (tensors of any rank and
//!   kind, tuples, `Vec`s, and [`Whole`] values every replica receives entire);
//! - replicas ([`Replicate`]): each with buffers of its own; for inference made once per device
//!   and refreshed only when the module changes, for training through [`DataParallel`] linked
//!   to the module's autodiff graph on every call;
//! - buffers: BatchNorm's running statistics, combined row-weighted after a training call,
//!   every replica starting a call from the module's, and put back when a batch is refused;
//! - seeded runs: replicas' random draws from seeds derived from the position, in turn;
//! - parallel apply: one long-lived worker per device (none with a single device, which runs
//!   on the caller's thread); panics caught and reported as [`DataParallelError`]s,
//!   [`current_replica`] visible from inside the model;
//! - [`DataParallel`]: the steps together (split, replicate, scatter, apply, gather);
//! - [`DataParallelTrainer`]: the training step, gradients combined weighted by rows, with
//!   micro-batch accumulation and evaluation; the gradient sum and the optimizer step on the
//!   first device, or spread over the replicas (`with_sharded_step`: the crate's
//!   `train::owners` says which replica owns each tensor, `train::sharded_step` steps them);
//! - [`Trainer`]: the interface a training loop is written against, implemented by
//!   [`DataParallelTrainer`] and by [`dist::DistributedTrainer`]; behind it, one seam (the
//!   crate's `train::peers`) says what the other processes of a step contribute: nothing in
//!   one process, collectives across ranks;
//! - [`dist`]: the same step across ranks, over a [`dist::Communicator`] (MPI's with feature
//!   `mpi`, or your own transport): one gradient all-reduce per optimizer step however many
//!   micro-batches (or NCCL for CUDA ranks with features `cuda` and `mpi`), or a
//!   reduce-scatter and an all-gather with the optimizer state sharded (ZeRO stage 1);
//! - `DataParallelStrategy` (feature `burn-train`, module `learner`): burn-train's epoch loop
//!   on a trainer whose optimizer is burn-train's `Learner`, fused `TrainStep` steps run in
//!   turns (the crate's `train::stepped`), outputs merged for the metrics (`StepOutput`
//!   where the feature is on), and, across ranks, rank 0 feeding the metrics;
//! - devices: `cuda_availability` / `cuda_devices` (feature `cuda`) count GPUs without the
//!   panic Burn gives where there is no CUDA driver or NVRTC, and say why there are none.
//!
//! # What stays exact
//!
//! Every entry point is checked against single-device Burn on the same batch, on the models
//! of the `dp-model` crate (tolerance 1e-5):
//!
//! | model feature | evaluation forward | training (`backward()` through [`DataParallel`], [`DataParallelTrainer`], `DistributedTrainer`) |
//! |---|---|---|
//! | `Linear`, `Conv2d`, pooling, ReLU | exact | exact |
//! | `Embedding`, attention with a padding mask, `LayerNorm`, residuals | exact | exact |
//! | one parameter used in two places (tied embeddings) | exact | exact: both uses' gradients |
//! | frozen parameters (`no_grad`) | exact | exact: never changed, weight decay included; across processes they never travel |
//! | a layer some rows skip | exact | exact: no gradient where one device would have none, across processes too |
//! | `BatchNorm` | exact (running statistics) | each replica normalizes its part with the part's statistics, as PyTorch's `DataParallel` without `SyncBatchNorm`: exact against single-device training on the same parts; running statistics below |
//! | [`SyncBatchNorm`] | exact (running statistics) | exact against single-device training on the whole (micro-)batch: statistics summed over replicas and ranks in the forward pass, gradient terms in the backward pass; refused (a typed error) where replicas cannot meet |
//! | `Dropout` | exact (off) | random: every replica draws its own masks; repeatable with `with_seed` (below) |
//! | a loss over valid tokens or weighted samples | | exact when the loss returns a [`WeightedMean`] |
//!
//! **Running statistics** (BatchNorm's, and any `RunningState`): each replica starts a call from
//! the module's values and updates its own copy from its part; after every training call (every
//! micro-batch of a trainer) the module's become the row-weighted mean of the replicas' (replica
//! `k` weighing `rows_k / rows`), and across processes the same over every rank's replicas, after
//! every micro-batch too. A running mean then equals single-device training's wherever the batch
//! norm's input does not itself depend on batch statistics (a first batch norm), however many
//! replicas each call uses; a running variance leaves out the spread between the parts' means.
//! Replicas never move or share the module's statistics. A refused batch (a non-finite loss, a
//! failed replica or rank) leaves them as they were. (PyTorch's `DataParallel` keeps replica
//! 0's update alone.)
//!
//! **Losses**: a loss function returns a one-element tensor, a mean over its rows
//! ([`LossReduction::Mean`]) or a sum ([`LossReduction::Sum`]), or a [`WeightedMean`] that
//! states its own denominator (valid tokens, sample weights), divided by the weights of every
//! replica, rank and micro-batch of the step. Every micro-batch of a step returns the same
//! kind ([`DataParallelError::MixedLosses`]). [`Trainer::evaluate`] adds up sums and weights
//! [`Metric::Mean`]s.
//!
//! **Seeded runs**: Burn's backends draw random numbers from one generator per process. With
//! `with_seed` ([`DataParallel::with_seed`], [`DataParallelTrainer::with_seed`]), replicas run
//! their forward passes one after another, each after reseeding it from the seed and the
//! position (rank, step, micro-batch, replica): a run repeats at a fixed configuration
//! (devices, ranks, split, seed), and a resumed one draws what the uninterrupted one drew. It
//! costs the forward passes' concurrency on the CPU (see `BENCHMARKS.md`). Without it, replicas
//! draw in whatever order their threads run. Not reproducible either way: another number of
//! devices or ranks, a split that learns from timings ([`Adaptive`]), and burn-ndarray's `simd`
//! rounding on AVX-512 CPUs, which varies with where buffers sit in memory (the tests' 1e-5
//! tolerance covers a few steps of it).
//!
//! **Across ranks** (`DistributedTrainer`): the same step as one process on the union of the
//! ranks' rows, micro-batches accumulated or not, optimizer state sharded or not (checked with
//! Adam over 20 steps on 2 and 3 ranks), global batches split equally or by the ranks'
//! measured speed (`with_rank_split`); [`Trainer::evaluate`] counts every held-out row once.
//! A rank whose call fails, that makes another call, or that disagrees on the model, the
//! transport, the sharding, or a call's settings (learning rate, kind of loss, seed, held-out
//! rows, the global batch whose part it took) is an error on every rank rather than a hang or a
//! wrong number (a rank that returns
//! without `finish` still leaves the others waiting, as in any MPI program).
//!
//! **Host round trips in a training step**: each replica reads its loss once, after its
//! backward pass is queued (the non-finite check needs the value). Across ranks, the
//! collectives of each micro-batch and step are the [`dist`] module's protocol.
//!
//! **Devices**: where the devices are not all the same, the first call that uses a device
//! checks once that a tensor goes there, is computed on and comes back intact, and returns
//! [`DataParallelError::DeviceTransfer`] otherwise: Burn 0.21 copies between devices on CUDA
//! and the CPU backends, not on wgpu or ROCm.
//!
//! **Errors**: bad input (no device, rows that disagree, an empty batch, a split policy that
//! loses rows), outputs without one row per input row ([`DataParallelError::OutputRows`]; per-part
//! values come with their rows from [`DataParallel::forward_parts`]), a replica that panics or
//! fails, a non-finite loss, a step in which no trainable parameter received a gradient
//! ([`DataParallelError::NoGradient`]), devices that cannot exchange tensors, and, across
//! ranks, any rank that fails or disagrees: each is a [`DataParallelError`] naming what and
//! where, never a silent truncation or a step that moves nothing. (PyTorch's `DataParallel`
//! truncates inputs whose tensors disagree on their rows, and concatenates per-replica losses.) What panics: an
//! optimizer step that panics inside a trainer loses the module it was given, so the trainer's
//! [`module`](DataParallelTrainer::module) and later calls panic; across ranks a panic outside a
//! replica ends the whole MPI job, naming the rank.
//!
//! # Threads on the CPU
//!
//! With N CPU "devices", N replicas compute at once, each on a long-lived worker that is a
//! rayon pool [`DataParallel::with_threads_per_replica`] threads wide (default 1, or
//! [`DataParallel::with_threads_per_device`] for replicas of different widths), where the
//! rayon work of Burn's Flex backend and of burn-ndarray stays. burn-ndarray multiplies
//! matrices on a process-wide pool of its own instead: call [`share_cpu_cores`] first thing in
//! `main` so that the replicas (and the MPI ranks of one machine) do not queue on it. The
//! README's Performance section and `BENCHMARKS.md` have the measured effect of the thread
//! settings, of the backend (Flex or burn-ndarray) and of the program's allocator.

#![warn(missing_docs)]

mod buffers;
mod by_id;
mod cpu_threads;
mod data_parallel;
mod devices;
pub mod dist;
mod error;
#[cfg(feature = "burn-train")]
mod learner;
mod parallel_apply;
mod replicas;
mod round_trip;
mod scatter;
mod seed;
mod split;
mod sync_norm;
mod train;
mod workers;

// The integration tests' helpers name the crate; its internal tests reuse them.
#[cfg(test)]
extern crate self as burn_data_parallel;
#[cfg(test)]
mod tests;

pub use cpu_threads::share_cpu_cores;
pub use data_parallel::{DataParallel, Part};
#[cfg(feature = "cuda")]
pub use devices::{CudaUnavailable, cuda_availability, cuda_devices};
pub use error::{DataParallelError, Result};
#[cfg(feature = "burn-train")]
pub use learner::{
    DataParallelStrategy, ParallelComponents, RowTensor, StepOutput, merged_loss, merged_rows,
};
pub use parallel_apply::{ReplicaInfo, ReplicaTiming, current_replica};
pub use replicas::Replicate;
pub use scatter::{Gather, Scatter, ToDevice, Whole};
pub use split::{Adaptive, Balanced, Chunk, SplitPolicy, machine_share, rank_rows};
pub use sync_norm::{SyncBatchNorm, SyncNormError};
pub use train::{
    BatchStats, DataParallelTrainer, LossReduction, Metric, ShardableRecord, StepTraffic,
    TrainLoss, Trainer, WeightedMean,
};

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
