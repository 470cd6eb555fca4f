//! Data-parallel training: every replica runs forward and backward on its part of the global
//! batch, the gradients are combined weighted by rows (on the first device, or spread over the
//! replicas with the step sharded: `owners`, `sharded_step`; across ranks through the [`peers`]
//! seam), and one optimizer step is taken.

mod data_parallel_trainer;
mod evaluate;
mod loss;
mod metric;
mod owners;
mod peers;
pub(crate) mod record;
mod reduce;
mod sharded_step;
#[cfg(feature = "burn-train")]
mod stepped;
mod trainer;

pub use data_parallel_trainer::{BatchStats, DataParallelTrainer};
pub(crate) use evaluate::part_of;
pub(crate) use loss::describe_loss_kind;
pub use loss::{LossReduction, TrainLoss, WeightedMean};
pub use metric::Metric;
pub(crate) use metric::Partial;
pub use owners::StepTraffic;
#[cfg(feature = "burn-train")]
pub(crate) use peers::Alone;
pub(crate) use peers::{Accumulated, Contribution, MicroBatch, Outcome, Peers, Rows};
pub use record::ShardableRecord;
pub use trainer::Trainer;
