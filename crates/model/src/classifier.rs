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
