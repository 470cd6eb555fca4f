//! Models for the data-parallel examples, tests and benchmarks.
//!
//! - [`TutorialModel`]: the PyTorch "Data Parallelism" tutorial's model, one `Linear`, which
//!   reports the shapes it sees in every call to a [`ShapeObserver`] the caller chooses.
//! - [`Mlp`]: a multilayer perceptron classifier whose sizes come from an [`MlpConfig`]
//!   (JSON through Burn's `Config`), used by training and benchmarks.

mod mlp;
mod tutorial;

pub use mlp::{Mlp, MlpConfig};
pub use tutorial::{ShapeObserver, TutorialModel, TutorialModelConfig};
