//! What every model of this crate is: a map from a batch of inputs to class logits, trained
//! with cross-entropy and measured by accuracy.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};

/// A classifier: `logits` gives one row of class scores per input row.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::{Int, Tensor};
/// use dp_model::{Classifier, MlpConfig};
///
/// let device = Default::default();
/// let model = MlpConfig::new(4, vec![8], 3).init::<NdArray>(&device);
/// let x = Tensor::<NdArray, 2>::zeros([5, 4], &device);
/// let y = Tensor::<NdArray, 1, Int>::zeros([5], &device);
/// assert_eq!(model.logits(x.clone()).dims(), [5, 3]);
/// let [correct, loss_sum] = model.correct_and_loss_sum(x, y);
/// assert!(correct <= 5.0 && loss_sum > 0.0);
/// ```
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

    /// A class-weighted cross-entropy (a row of class `c` weighs `1 + c`, as PyTorch's
    /// `CrossEntropyLoss(weight=...)` weighs classes): the weighted sum over the rows and the
    /// sum of their weights. The weighted mean loss is their ratio, whose denominator depends
    /// on the classes each batch holds.
    fn weighted_loss_sum(
        &self,
        input: Self::Input,
        targets: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let rows = targets.dims()[0];
        let log_probs = burn::tensor::activation::log_softmax(self.logits(input), 1);
        let picked = log_probs.gather(1, targets.clone().reshape([rows, 1]));
        let weights = targets.float().add_scalar(1.0).reshape([rows, 1]);
        ((picked * weights.clone()).sum().neg(), weights.sum())
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
