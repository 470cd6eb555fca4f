//! Everything a training run depends on, saved as JSON with every checkpoint and report.

use anyhow::Context;
use burn::config::Config;
use dp_dataset::SyntheticConfig;
use dp_model::MlpConfig;
use serde_json::Value;
use std::path::Path;

/// A training run: data, model sizes and optimisation.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The synthetic data (features and classes also size the model).
    #[config(default = "SyntheticConfig::new()")]
    pub data: SyntheticConfig,
    /// Widths of the MLP's hidden layers.
    #[config(default = "vec![64]")]
    pub hidden_sizes: Vec<usize>,
    /// Passes over the training split.
    #[config(default = 5)]
    pub epochs: usize,
    /// Rows per global batch, split across the devices.
    #[config(default = 128)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[config(default = 0.005)]
    pub lr: f64,
    /// Seed of the weights and of the shuffling.
    #[config(default = 42)]
    pub seed: u64,
}

impl TrainConfig {
    /// Reads a JSON config; keys it leaves out keep their defaults, and a key the config does not
    /// have is an error rather than silently ignored.
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config {}", path.display()))?;
        let given: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let mut merged = serde_json::to_value(Self::new())?;
        merge(&mut merged, given, "").with_context(|| format!("in {}", path.display()))?;
        serde_json::from_value(merged).with_context(|| format!("in {}", path.display()))
    }

    /// The model these settings train.
    pub fn model(&self) -> MlpConfig {
        MlpConfig::new(
            self.data.features,
            self.hidden_sizes.clone(),
            self.data.classes,
        )
    }

    /// Refuses settings that cannot train.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.epochs > 0, "epochs must be at least 1");
        anyhow::ensure!(self.batch_size > 0, "batch size must be at least 1");
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "the learning rate must be a positive number"
        );
        anyhow::ensure!(self.data.train_size > 0, "the training split is empty");
        anyhow::ensure!(
            self.data.features > 0 && self.data.classes > 1,
            "the data needs at least one feature and two classes"
        );
        Ok(())
    }
}

/// Overwrites `base` with `given`, key by key, refusing keys that `base` does not have.
fn merge(base: &mut Value, given: Value, at: &str) -> anyhow::Result<()> {
    match (base, given) {
        (Value::Object(base), Value::Object(given)) => {
            for (key, value) in given {
                let path = format!("{at}{key}");
                let Some(slot) = base.get_mut(&key) else {
                    let known: Vec<&str> = base.keys().map(String::as_str).collect();
                    anyhow::bail!("unknown key `{path}` (known here: {})", known.join(", "));
                };
                merge(slot, value, &format!("{path}."))?;
            }
            Ok(())
        }
        (base, given) => {
            *base = given;
            Ok(())
        }
    }
}
