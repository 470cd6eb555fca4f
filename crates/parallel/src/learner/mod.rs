//! burn-train's `SupervisedTraining` on every device (feature `burn-train`): a training
//! strategy ([`DataParallelStrategy`]) that a burn-train program adds in one line, and the
//! trait its step outputs implement to be merged ([`StepOutput`]).

mod epoch;
mod optimizer;
mod output;
mod participants;
mod ranks;
mod strategy;

pub use epoch::ParallelComponents;
pub use output::{RowTensor, StepOutput, merged_loss, merged_rows};
pub use strategy::DataParallelStrategy;
