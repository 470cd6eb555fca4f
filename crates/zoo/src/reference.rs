//! What data parallelism must reproduce: single-device Burn on the same batch.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::Scatter;
use dp_model::Classifier;

/// An independent copy of a trainable module: same parameter ids and values, parameters and
/// buffers of its own.
pub fn copy<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> M {
    M::from_inner(module.valid())
}

/// Mean cross-entropy of `logits` against `targets`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets)
}

/// The single-device loss that data parallelism must reproduce when it splits `batch` into
/// parts of `sizes` rows: for `ghost` models (batch norm), each part's mean loss weighted by
/// its rows, every part normalized with its own statistics; otherwise the mean loss over the
/// whole batch.
pub fn reference_loss<B, M>(
    model: &M,
    batch: (M::Input, Tensor<B, 1, Int>),
    sizes: &[usize],
    ghost: bool,
) -> Tensor<B, 1>
where
    B: Backend,
    M: Classifier<B>,
    M::Input: Scatter<B>,
{
    if !ghost {
        return model.loss(batch.0, batch.1);
    }
    let total: usize = sizes.iter().sum();
    let device = batch.1.device();
    batch
        .scatter(0, sizes, &vec![device; sizes.len()])
        .into_iter()
        .zip(sizes)
        .map(|((x, y), &rows)| model.loss(x, y).mul_scalar(rows as f64 / total as f64))
        .reduce(|a, b| a + b)
        .expect("at least one part")
}
