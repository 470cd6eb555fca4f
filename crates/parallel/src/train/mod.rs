//! Data-parallel training: every replica runs forward and backward on its part of the global
//! batch, the gradients are combined on the first device weighted by rows (and across ranks
//! through the [`peers`] seam), and one optimizer step is taken.

mod evaluate;
mod loss;
mod metric;
mod peers;
pub(crate) mod record;
mod reduce;
mod step;
#[cfg(feature = "burn-train")]
mod stepped;
mod trainer;

#[cfg_attr(not(feature = "mpi"), allow(unused_imports))]
pub(crate) use evaluate::part_of;
#[cfg_attr(not(feature = "mpi"), allow(unused_imports))]
pub(crate) use loss::describe_loss_kind;
pub use loss::{LossReduction, TrainLoss, WeightedMean};
pub use metric::Metric;
#[cfg_attr(not(feature = "mpi"), allow(unused_imports))]
pub(crate) use metric::Partial;
#[cfg(feature = "burn-train")]
pub(crate) use peers::Alone;
#[cfg_attr(not(feature = "mpi"), allow(unused_imports))]
pub(crate) use peers::{Accumulated, Contribution, MicroBatch, Outcome, Peers, Rows};
pub use record::ShardableRecord;
pub use step::{BatchStats, DataParallelTrainer};
pub use trainer::Trainer;
