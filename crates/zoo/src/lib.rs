//! The model zoo the exactness checks run on: the library's tests (`crates/parallel/tests`)
//! and the `check` tool, on the CPU and on GPUs; `dist_check` across MPI ranks takes its
//! models' configurations, its seeded data and its comparisons from here (it builds its models
//! itself, deliberately mismatched ones on
//! some ranks, from the zoo's configurations).
//!
//! One place says, for each model of `dp-model` (a kind of model people train):
//! - its tiny configuration ([`models`]), parameters created once so that copies share them;
//! - its seeded data ([`data`]): the same seed gives the same batch on every rank and backend;
//! - its single-device reference ([`reference`](mod@reference)): plain training on the whole batch, or, for
//!   a model whose training forward pass depends on the batch it is given (BatchNorm), "ghost
//!   batch" training on the same parts, their mean losses weighted by rows;
//! - how results are compared ([`compare`]).
//!
//! [`for_each_model!`] lists them: adding a model is its file in `dp-model`, its tiny
//! constructor in [`models`] and one line in the macro, which every suite that iterates over
//! the zoo then runs.

pub mod compare;
pub mod data;
pub mod models;
pub mod reference;

/// Features of the rows the MLP and the branch model take.
pub const FEATURES: usize = 8;
/// Classes of every zoo model (the tied model predicts one of [`VOCAB`] tokens).
pub const CLASSES: usize = 3;
/// Tokens of the sequence models' vocabulary (0 is padding).
pub const VOCAB: usize = 12;
/// Tokens of each sequence, padding included.
pub const LENGTH: usize = 6;

/// Calls `$callback!(name, constructor, data, ghost: bool, buffers: fn)` for every model of
/// the zoo. `constructor` names a function of [`models`] (`constructor::<B>()` makes the
/// model), `data` one of [`data`] (`data::<B>(rows, seed)` makes a batch for it): the caller
/// imports both modules. `ghost` says whether the model's reference is per part (batch norm),
/// and `buffers(&model)` gives the ids of its running statistics, which follow their own rule.
///
/// ```
/// use dp_zoo::{data::*, models::*};
///
/// let mut names: Vec<&str> = Vec::new();
/// macro_rules! collect {
///     ($name:ident, $make:ident, $data:ident, ghost: $ghost:expr, buffers: $buffers:path) => {
///         let model = $make::<burn::backend::NdArray>();
///         let (x, y) = $data::<burn::backend::NdArray>(4, 1);
///         assert_eq!(dp_model::Classifier::logits(&model, x).dims()[0], 4);
///         names.push(stringify!($name));
///     };
/// }
/// dp_zoo::for_each_model!(collect);
/// assert!(names.contains(&"cnn") && names.contains(&"tied"));
/// ```
#[macro_export]
macro_rules! for_each_model {
    ($callback:ident) => {
        $callback!(mlp, mlp, rows, ghost: false, buffers: no_buffers);
        $callback!(cnn, cnn, images, ghost: true, buffers: cnn_buffers);
        $callback!(transformer, transformer, tokens, ghost: false, buffers: no_buffers);
        $callback!(finetune_transformer, frozen_transformer, tokens, ghost: false, buffers: no_buffers);
        $callback!(finetune_cnn, frozen_cnn, images, ghost: true, buffers: cnn_buffers);
        $callback!(tied, tied, tokens, ghost: false, buffers: no_buffers);
        $callback!(branchy, branchy, rows, ghost: false, buffers: no_buffers);
    };
}
