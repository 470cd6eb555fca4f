//! Everything a training run depends on, saved as JSON with every checkpoint and report.

use anyhow::Context;
use burn::config::Config;
use burn::optim::lr_scheduler::composed::{
    ComposedLrScheduler, ComposedLrSchedulerConfig, SchedulerReduction,
};
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
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

/// How the learning rate moves over the optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `lr` at every step.
    Constant,
    /// From `lr` down to `min_lr` in a straight line over `steps`, then `min_lr`.
    Linear,
    /// From `lr` down to `min_lr` along a half cosine over `steps`, then again from `lr`
    /// (Burn's cosine annealing restarts: SGDR).
    Cosine,
}

/// The learning-rate schedule: `lr` times a factor that Burn's schedulers
/// (`burn::optim::lr_scheduler`), composed, give at each optimizer step.
#[derive(Config, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// The shape after the warm-up.
    #[config(default = "ScheduleKind::Constant")]
    pub kind: ScheduleKind,
    /// Steps over which a factor rising in a straight line from `1 / (warmup_steps + 1)` to 1
    /// multiplies the schedule's rate (0: no warm-up). Both start at the first step: the decay
    /// does not wait for the warm-up to end.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// Where `linear` and `cosine` end.
    #[config(default = 0.0)]
    pub min_lr: f64,
    /// Optimizer steps `linear` and `cosine` take to go from `lr` to `min_lr`, which they reach
    /// at step `steps + 1` (Burn's schedulers give their start at the first step); by default
    /// the whole run as its first start counts it (epochs x steps per epoch, less one: its
    /// last step is at `min_lr`), kept by its checkpoints so that a resumed run follows the
    /// same schedule, whatever its epochs.
    #[config(default = "None")]
    pub steps: Option<usize>,
}

impl ScheduleConfig {
    /// Burn's scheduler of the factor the learning rate is multiplied by at each step (1 at
    /// the start, `min_lr / lr` at the end of a decay), for a decay lasting `steps` optimizer
    /// steps; a constant schedule composes no scheduler (a factor of 1).
    pub fn scheduler(&self, lr: f64, steps: usize) -> anyhow::Result<ComposedLrScheduler> {
        let steps = steps.max(1);
        let floor = self.min_lr / lr;
        let mut composed =
            ComposedLrSchedulerConfig::new().with_reduction(SchedulerReduction::Prod);
        composed = match self.kind {
            ScheduleKind::Constant => composed,
            ScheduleKind::Linear => {
                composed.linear(LinearLrSchedulerConfig::new(1.0, floor, steps))
            }
            ScheduleKind::Cosine => composed
                .cosine(CosineAnnealingLrSchedulerConfig::new(1.0, steps).with_min_lr(floor)),
        };
        if self.warmup_steps > 0 {
            // From 1/(w+1) up to 1.
            let start = 1.0 / (self.warmup_steps + 1) as f64;
            composed = composed.linear(LinearLrSchedulerConfig::new(start, 1.0, self.warmup_steps));
        }
        composed
            .init()
            .map_err(|why| anyhow::anyhow!("schedule: {why}"))
    }
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
    /// The CNN normalizes over the whole global batch (`SyncBatchNorm`) instead of over each
    /// device's part.
    #[config(default = false)]
    pub sync_batch_norm: bool,
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
    /// Adam's learning rate (where the schedule starts).
    #[config(default = 0.005)]
    pub lr: f64,
    /// How the learning rate moves over the steps.
    #[config(default = "ScheduleConfig::new()")]
    pub schedule: ScheduleConfig,
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
        CnnConfig::new(self.images.channels, self.images.classes)
            .with_widths(self.widths.clone())
            .with_sync_batch_norm(self.sync_batch_norm)
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

    /// Refuses settings that cannot train, naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.epochs > 0, "epochs must be at least 1");
        anyhow::ensure!(self.batch_size > 0, "batch_size must be at least 1");
        anyhow::ensure!(
            self.accumulate > 0,
            "accumulate must be at least 1 micro-batch"
        );
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr (the learning rate) must be a positive number"
        );
        let schedule = &self.schedule;
        anyhow::ensure!(
            schedule.min_lr.is_finite() && schedule.min_lr >= 0.0 && schedule.min_lr <= self.lr,
            "schedule.min_lr must be between 0 and lr"
        );
        anyhow::ensure!(
            schedule.steps != Some(0),
            "schedule.steps must be at least 1 (or left out: the whole run)"
        );

        let positive = |key: &str, values: &[usize]| -> anyhow::Result<()> {
            match values.iter().position(|&v| v == 0) {
                Some(i) => anyhow::bail!("{key}[{i}] is 0: every layer needs at least 1 unit"),
                None => Ok(()),
            }
        };
        // Every epoch ends with the held-out figures: a run without held-out rows would
        // report an accuracy of 0 that means nothing.
        let split = |key: &str, train: usize, test: usize| -> anyhow::Result<()> {
            anyhow::ensure!(
                train > 0,
                "{key}.train_size is 0: the training split is empty"
            );
            anyhow::ensure!(
                test > 0,
                "{key}.test_size is 0: every epoch is evaluated on held-out rows, so the \
                 held-out split needs at least 1"
            );
            Ok(())
        };
        match self.model {
            ModelKind::Mlp => {
                split("data", self.data.train_size, self.data.test_size)?;
                anyhow::ensure!(
                    self.data.features > 0 && self.data.classes > 1,
                    "data.features must be at least 1 and data.classes at least 2"
                );
                positive("hidden_sizes", &self.hidden_sizes)?;
            }
            ModelKind::Cnn => {
                let i = &self.images;
                split("images", i.train_size, i.test_size)?;
                anyhow::ensure!(
                    i.channels > 0 && i.classes > 1,
                    "images.channels must be at least 1 and images.classes at least 2"
                );
                anyhow::ensure!(
                    !self.widths.is_empty(),
                    "widths: the CNN needs a convolution block"
                );
                positive("widths", &self.widths)?;
                // Each block halves the image (2x2 pooling): it must keep at least one pixel.
                let smallest = 1usize
                    .checked_shl(self.widths.len() as u32)
                    .unwrap_or(usize::MAX);
                anyhow::ensure!(
                    i.size >= smallest,
                    "images.size is {}: {} convolution blocks (widths) each halve the image, \
                     so it must be at least {smallest} pixels",
                    i.size,
                    self.widths.len()
                );
            }
            ModelKind::Transformer => {
                let s = &self.sequences;
                split("sequences", s.train_size, s.test_size)?;
                anyhow::ensure!(
                    s.classes > 1 && s.vocab > 2 * s.classes + 1,
                    "sequences.classes must be at least 2 and sequences.vocab above \
                     2 * classes + 1 (neutral tokens)"
                );
                anyhow::ensure!(
                    s.min_len >= 1 && s.min_len <= s.max_len,
                    "sequences.min_len and max_len must satisfy 1 <= min_len <= max_len"
                );
                let t = &self.transformer;
                anyhow::ensure!(
                    t.d_model > 0 && t.d_ff > 0 && t.layers > 0,
                    "transformer.d_model, d_ff and layers must be at least 1"
                );
                anyhow::ensure!(
                    t.heads > 0 && t.d_model.is_multiple_of(t.heads),
                    "transformer.heads must divide transformer.d_model"
                );
            }
        }
        Ok(())
    }

    /// The settings that differ from `other`'s, as `key: this -> other` lines (nested keys
    /// joined by dots), leaving out the keys in `allowed`.
    pub fn differences(&self, other: &Self, allowed: &[String]) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(other).unwrap_or_default(),
        );
        let mut out = Vec::new();
        diff(&a, &b, "", &mut out);
        out.retain(|(key, _)| {
            !allowed
                .iter()
                .any(|a| key == a || key.starts_with(&format!("{a}.")))
        });
        out.into_iter().map(|(_, line)| line).collect()
    }
}

/// Appends, for every leaf that differs between `a` and `b`, its key and a line saying how.
fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let path = format!("{at}{key}");
                diff(
                    value,
                    b.get(key).unwrap_or(&Value::Null),
                    &format!("{path}."),
                    out,
                );
            }
        }
        (a, b) if a != b => {
            let key = at.trim_end_matches('.').to_owned();
            out.push((key.clone(), format!("{key}: {a} -> {b}")));
        }
        _ => {}
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
