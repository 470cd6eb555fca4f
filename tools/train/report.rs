//! The JSON report a run leaves behind.

use crate::config::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's rows.
    pub train_loss: f64,
    /// Fraction of the held-out rows classified correctly after the epoch.
    pub test_accuracy: f64,
    /// Mean cross-entropy over the held-out rows after the epoch.
    #[serde(default)]
    pub test_loss: f64,
    /// Training rows per second (forward, backward, reduction and step).
    pub samples_per_second: f64,
    /// Wall time of the epoch's training, in seconds.
    pub seconds: f64,
    /// Wall time of the held-out evaluation, in seconds (shared among the ranks).
    #[serde(default)]
    pub evaluation_seconds: f64,
    /// The fraction of each batch each device received at the end of the epoch, where the
    /// split policy learns it (`--split adaptive`).
    #[serde(default)]
    pub shares: Option<Vec<f64>>,
    /// The fraction of each global batch each rank received at the end of the epoch, with
    /// `--balance-ranks`.
    #[serde(default)]
    pub rank_shares: Option<Vec<f64>>,
    /// The learning rate of the epoch's last optimizer step (from the schedule).
    #[serde(default)]
    pub lr: Option<f64>,
    /// The settings this epoch ran with (a resume may change those it was allowed to).
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

/// Everything a run did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub config: TrainConfig,
    pub backend: String,
    pub devices: Vec<String>,
    pub epochs: Vec<EpochReport>,
    /// Over the epochs this process trained.
    pub samples_per_second: f64,
    pub final_test_accuracy: f64,
    /// This process's peak resident memory (Linux's `VmHWM`), in bytes, when the report was
    /// written; `None` where the system does not say.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
}

/// This process's peak resident memory so far, from `/proc/self/status` (Linux).
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl RunReport {
    /// Writes the report as JSON, through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
