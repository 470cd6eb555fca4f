//! Data-parallel training: every replica runs forward and backward on its part of the global
//! batch, the gradients are combined on the first device weighted by rows, and one optimizer
//! step is taken there.

mod reduce;
mod step;

pub use step::{BatchStats, DataParallelTrainer, LossReduction, ReplicaTiming};
