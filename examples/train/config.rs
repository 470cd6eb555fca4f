//! Everything a training run depends on, saved as JSON with every checkpoint and report.

use anyhow::Context;
use burn::config::Config;
use dp_dataset::{ImageConfig, SequenceConfig, SyntheticConfig};
use dp_model::{CnnConfig, MlpConfig, TextClassifierConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Which model a run trains, each on synthetic data of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// An MLP on Gaussian clusters (`data`, `hidden_sizes`).
    Mlp,
    /// A convolutional network with batch normalization on small images (`images`, `widths`).
    Cnn,
    /// A transformer encoder on token sequences (`sequences`, `transformer`).
    Transformer,
}

/// Sizes of the transformer encoder (the vocabulary, length and classes come from the data).
#[derive(Config, Debug, PartialEq)]
pub struct TransformerSizes {
    /// Width of the token representations.
    #[config(default = 32)]
    pub d_model: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub heads: usize,
    /// Encoder layers.
    #[config(default = 2)]
    pub layers: usize,
    /// Width of each layer's feed-forward part.
    #[config(default = 64)]
    pub d_ff: usize,
}

/// A training run: which model, its data and sizes, and optimisation.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model to train.
    #[config(default = "ModelKind::Mlp")]
    pub model: ModelKind,
    /// The MLP's data (features and classes also size the model).
    #[config(default = "SyntheticConfig::new()")]
    pub data: SyntheticConfig,
    /// Widths of the MLP's hidden layers.
    #[config(default = "vec![64]")]
    pub hidden_sizes: Vec<usize>,
    /// The CNN's images (channels and classes also size the model).
    #[config(default = "ImageConfig::new()")]
    pub images: ImageConfig,
    /// Output channels of the CNN's convolution blocks.
    #[config(default = "vec![16, 32]")]
    pub widths: Vec<usize>,
    /// The transformer's sequences (vocabulary, length and classes also size the model).
    #[config(default = "SequenceConfig::new()")]
    pub sequences: SequenceConfig,
    /// The transformer's sizes.
    #[config(default = "TransformerSizes::new()")]
    pub transformer: TransformerSizes,
    /// Passes over the training split.
    #[config(default = 5)]
    pub epochs: usize,
    /// Rows per global batch, split across the devices (and the ranks).
    #[config(default = 128)]
    pub batch_size: usize,
    /// Micro-batches each global batch is cut into; one optimizer step per global batch.
    #[config(default = 1)]
    pub accumulate: usize,
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

    /// The MLP these settings train.
    pub fn mlp(&self) -> MlpConfig {
        MlpConfig::new(
            self.data.features,
            self.hidden_sizes.clone(),
            self.data.classes,
        )
    }

    /// The CNN these settings train.
    pub fn cnn(&self) -> CnnConfig {
        CnnConfig::new(self.images.channels, self.images.classes).with_widths(self.widths.clone())
    }

    /// The transformer these settings train.
    pub fn transformer(&self) -> TextClassifierConfig {
        let t = &self.transformer;
        TextClassifierConfig::new(
            self.sequences.vocab,
            self.sequences.max_len,
            self.sequences.classes,
        )
        .with_d_model(t.d_model)
        .with_heads(t.heads)
        .with_layers(t.layers)
        .with_d_ff(t.d_ff)
    }

    /// The model these settings train, as one line of JSON: a checkpoint is resumed only by
    /// settings that describe the same model.
    pub fn model_description(&self) -> String {
        let sizes = match self.model {
            ModelKind::Mlp => self.mlp().to_string(),
            ModelKind::Cnn => self.cnn().to_string(),
            ModelKind::Transformer => self.transformer().to_string(),
        };
        let kind = serde_json::to_string(&self.model).unwrap_or_default();
        let sizes = sizes.split_whitespace().collect::<Vec<_>>().join(" ");
        format!("{kind} {sizes}")
    }

    /// Refuses settings that cannot train.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.epochs > 0, "epochs must be at least 1");
        anyhow::ensure!(self.batch_size > 0, "batch size must be at least 1");
        anyhow::ensure!(
            self.accumulate > 0,
            "accumulate must be at least 1 micro-batch"
        );
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "the learning rate must be a positive number"
        );
        match self.model {
            ModelKind::Mlp => {
                anyhow::ensure!(self.data.train_size > 0, "the training split is empty");
                anyhow::ensure!(
                    self.data.features > 0 && self.data.classes > 1,
                    "the data needs at least one feature and two classes"
                );
            }
            ModelKind::Cnn => {
                let i = &self.images;
                anyhow::ensure!(i.train_size > 0, "the training split is empty");
                anyhow::ensure!(
                    i.channels > 0 && i.size > 0 && i.classes > 1,
                    "the images need a channel, a pixel and two classes"
                );
                anyhow::ensure!(!self.widths.is_empty(), "the CNN needs a convolution block");
            }
            ModelKind::Transformer => {
                let s = &self.sequences;
                anyhow::ensure!(s.train_size > 0, "the training split is empty");
                anyhow::ensure!(
                    s.classes > 1 && s.vocab > 2 * s.classes + 1,
                    "the sequences need two classes and a vocabulary with neutral tokens \
                     (more than 2 * classes + 1)"
                );
                anyhow::ensure!(
                    s.min_len >= 1 && s.min_len <= s.max_len,
                    "sequence lengths must satisfy 1 <= min_len <= max_len"
                );
                let t = &self.transformer;
                anyhow::ensure!(
                    t.heads > 0 && t.d_model.is_multiple_of(t.heads),
                    "the attention heads must divide d_model"
                );
            }
        }
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
