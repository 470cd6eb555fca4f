//! `--split`: the split policies a user picks from the command line.

use burn_data_parallel::{Adaptive, Balanced, Chunk, SplitPolicy};
use serde::{Deserialize, Serialize};

/// How each batch is split between the devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// PyTorch's `torch.chunk` rule: chunks of `ceil(rows / devices)` rows.
    #[default]
    Chunk,
    /// As even as possible: sizes differ by at most one row.
    Balanced,
    /// Rows in proportion to each device's measured speed.
    Adaptive,
}

impl Split {
    pub fn policy(self) -> Box<dyn SplitPolicy> {
        match self {
            Self::Chunk => Box::new(Chunk),
            Self::Balanced => Box::new(Balanced),
            Self::Adaptive => Box::new(Adaptive::new()),
        }
    }
}
