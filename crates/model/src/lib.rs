//! Models for the data-parallel examples, tests and benchmarks, each built from `burn::nn`
//! with a [`Config`](burn::config::Config) (JSON through serde).
//!
//! - [`TutorialModel`]: the PyTorch "Data Parallelism" tutorial's model, one `Linear`, which
//!   reports the shapes it sees in every call to a [`ShapeObserver`] the caller chooses.
//! - The [`Classifier`]s that training and the exactness checks use, one per kind of model
//!   people train:
//!   - [`Mlp`]: `Linear` layers and ReLUs, optionally dropout;
//!   - [`Cnn`]: convolutions, batch normalization (running statistics), pooling;
//!   - [`TextClassifier`]: token and position embeddings, a transformer encoder (multi-head
//!     attention with a padding mask, layer norms, residuals); [`TextClassifier::freeze_encoder`]
//!     and [`Cnn::freeze_features`] make fine-tuning models with a frozen backbone;
//!   - [`TiedEmbeddings`]: one parameter used twice (input embedding and output projection);
//!   - [`Branchy`]: a layer only some rows go through, so some steps give it no gradient.
//!
//! With feature `burn-train`, every classifier implements burn-train's `TrainStep` and
//! `InferenceStep` on `(inputs, targets)` batches (mean cross-entropy, `ClassificationOutput`),
//! so the same models run under `SupervisedTraining`.

#![warn(missing_docs)]

mod branch;
mod classifier;
mod cnn;
mod mlp;
mod tied;
#[cfg(feature = "burn-train")]
mod train_step;
mod transformer;
mod tutorial;

pub use branch::{Branchy, BranchyConfig};
pub use classifier::Classifier;
pub use cnn::{Cnn, CnnConfig, ConvBlock, Norm};
pub use mlp::{Mlp, MlpConfig};
pub use tied::{TiedEmbeddings, TiedEmbeddingsConfig};
pub use transformer::{PAD, TextClassifier, TextClassifierConfig, TextEncoder};
pub use tutorial::{ShapeObserver, TutorialModel, TutorialModelConfig};

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
