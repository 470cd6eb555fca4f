//! What every model of this crate is: a map from a batch of inputs to class logits, trained
//! with cross-entropy and measured by accuracy.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};

/// A classifier: `logits` gives one row of class scores per input row.
pub trait Classifier<B: Backend>: Module<B> {
    /// One batch of inputs (a tensor whose first dimension is the rows, or several).
    type Input: Clone + Send;

    /// Class scores, `[rows, classes]`.
    fn logits(&self, input: Self::Input) -> Tensor<B, 2>;

    /// Mean cross-entropy of the logits against `targets` (class indices).
    fn loss(&self, input: Self::Input, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let logits = self.logits(input);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets)
    }

    /// `[rows whose predicted class equals the target, the cross-entropy summed over the rows]`
    /// from one forward pass: sums, so that the figures of several parts add up (a metric for
    /// `Trainer::evaluate`).
    fn correct_and_loss_sum(&self, input: Self::Input, targets: Tensor<B, 1, Int>) -> [f64; 2] {
        let logits = self.logits(input);
        let rows = targets.dims()[0];
        let loss: f64 = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone())
            .into_scalar()
            .elem();
        let predicted = logits.argmax(1).squeeze_dim::<1>(1);
        let correct = predicted
            .equal(targets)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>();
        [correct as f64, loss * rows as f64]
    }

    /// Rows whose predicted class (highest score) equals the target.
    fn correct(&self, input: Self::Input, targets: Tensor<B, 1, Int>) -> usize {
        let predicted = self.logits(input).argmax(1).squeeze_dim::<1>(1);
        predicted
            .equal(targets)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize
    }
}
