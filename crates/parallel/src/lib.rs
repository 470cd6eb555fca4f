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
//! Where each piece lives:
//! - [`split`](crate::SplitPolicy): how many rows each device gets ([`Chunk`], [`Balanced`]);
//! - [`Scatter`] / [`Gather`]: how inputs are split and outputs merged (tensors of any rank and
//!   kind, tuples, `Vec`s, and [`Whole`] values every replica receives entire);
//! - replicas: made once per device, refreshed only when the module changes;
//! - parallel apply: one thread per replica, panics caught and reported as
//!   [`DataParallelError`]s, [`current_replica`] visible from inside the model;
//! - [`DataParallel`]: the four steps together;
//! - devices: `cuda_device_count` / `cuda_devices` (feature `cuda`) count GPUs without the panic
//!   Burn gives where there is no CUDA driver.
//!
//! Unlike PyTorch, inputs whose tensors disagree on their rows are an error rather than silently
//! truncated, a replica's panic is an error naming the replica and its device, and replicas are
//! not re-copied on every call.

mod data_parallel;
mod devices;
mod error;
mod parallel_apply;
mod replicas;
mod shard;
mod split;
mod train;

pub use data_parallel::DataParallel;
#[cfg(feature = "cuda")]
pub use devices::{cuda_device_count, cuda_devices};
pub use error::{DataParallelError, Result};
pub use parallel_apply::{ReplicaInfo, current_replica};
pub use shard::{Gather, Scatter, ToDevice, Whole};
pub use split::{Balanced, Chunk, SplitPolicy, chunk_sizes};
pub use train::{BatchStats, DataParallelTrainer, LossReduction, ReplicaTiming};
