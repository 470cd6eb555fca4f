//! Data-parallel training across processes and machines: [`DistributedTrainer`] over a
//! [`Communicator`], the group of processes ("ranks") it trains with. `Mpi` (feature `mpi`)
//! is the communicator this crate brings; another transport implements the trait.
//!
//! One process per rank (with MPI, started by `mpirun`). Each rank trains on its part of every
//! global batch (see `ShardedSampler` in the dataset crate), on one or several devices of its
//! own. The protocol, for every transport:
//! - at the start, the ranks check that they hold the same model (shapes and the values'
//!   count), then rank 0's parameters (and their ids) are broadcast to every rank;
//! - each micro-batch, two small all-gathers: the call, its settings (learning rate, kind of
//!   loss, seed) and the row counts, or that a rank cannot read its batch (`agree.rs`); then,
//!   once the replicas have run, failure, loss and weight, the time the rank spent on its rows,
//!   a fingerprint of how it splits global batches between the ranks
//!   ([`SplitPolicy::fingerprint`](crate::SplitPolicy::fingerprint)), the global batch it asked
//!   its part of, and its running statistics, which every rank then averages (`ranks.rs`); any
//!   difference or failure is an error on every rank;
//! - each optimizer step, however many micro-batches it accumulated: one small all-gather (the
//!   call and row counts), then the gradient exchange, the only collective that carries
//!   gradients (with their presence flags): one all-reduce of every gradient in one flattened
//!   buffer, weighted by rows (`flat.rs`, `exchange.rs`), or, with the optimizer state
//!   sharded, a reduce-scatter and an all-gather of the parameters; every rank then takes the
//!   step single-process training takes on the whole global batch.
//!
//! Host round trips: over MPI, the exchanged buffer goes to the host and back around each
//! gradient collective, followed by one small all-gather that tells every rank whether any
//! rank failed; the presence flags (which parameters received a gradient on some rank) are
//! read on the host. Over NCCL, for CUDA ranks (features `cuda` and `mpi`) where `libnccl.so`
//! can be loaded and each rank has a GPU of its own, the buffer stays on the GPU: each
//! gradient collective waits for Burn's queue to finish, makes one small all-gather before
//! (every rank's buffer ready) and one after (every rank's call succeeded), and synchronizes
//! NCCL's stream. See [`GradientTransport`]. `Mpi::share_of` gives the ranks of one machine
//! their share of its GPUs. On a slow network the gradients can be summed in 16 bits instead,
//! at the price of exactness: see [`GradientPrecision`].

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

pub(crate) use agree::fingerprint;
#[cfg(feature = "burn-train")]
pub(crate) use ranks::RankPeers;

pub use communicator::{Communicator, ThreadCollectives};
pub use compress::GradientPrecision;
pub use exchange::{CollectiveOp, ExchangeStats, GradientTransport};
pub use trainer::DistributedTrainer;
#[cfg(feature = "mpi")]
pub use world::Mpi;
