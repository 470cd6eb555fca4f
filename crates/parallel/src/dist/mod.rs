//! Data-parallel training across processes and machines, on MPI (feature `mpi`).
//!
//! One process per rank, started by `mpirun`. Each rank trains on its shard of every global
//! batch (see `ShardedSampler` in the dataset crate), on one or several devices of its own.
//! Every optimizer step, the ranks' gradients are summed by one all-reduce over a single
//! flattened buffer, weighted by rows (or reduce-scattered, and the parameters all-gathered,
//! with the optimizer state sharded), so every rank takes the step single-process training
//! takes on the whole global batch. Besides that gradient collective, each micro-batch and
//! each step make small all-gathers through which the ranks agree on the call, the rows and
//! the losses, and learn of any rank's failure. At the start, rank 0's parameters are broadcast
//! to every rank, after a check that all ranks hold the same model.
//!
//! The gradients cross processes through host memory with MPI, or, for CUDA ranks (features
//! `cuda` and `mpi`) where `libnccl.so` can be loaded and each rank has a GPU of its own,
//! through NCCL in GPU memory: see [`GradientTransport`]. [`Mpi::share_of`] gives the ranks of
//! one machine their share of its GPUs. On a slow network, MPI can sum the gradients in 16 bits
//! instead, at the price of exactness: see [`GradientPrecision`].

mod agree;
mod communicator;
mod compress;
mod exchange;
mod flat;
#[cfg(feature = "cuda")]
mod nccl;
mod norm_sums;
mod ranks;
mod trainer;
#[cfg(feature = "mpi")]
mod world;

#[cfg(feature = "burn-train")]
pub(crate) use ranks::Ranks;

pub use communicator::{Communicator, ThreadCollectives};
pub use compress::GradientPrecision;
pub use exchange::{CollectiveOp, ExchangeStats, GradientTransport};
pub use trainer::DistributedTrainer;
#[cfg(feature = "mpi")]
pub use world::Mpi;
