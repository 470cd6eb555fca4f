//! Evaluation metrics, combined over the parts of a held-out set: sums are added, means are
//! weighted by their own weights, so that no mean is silently summed or averaged unweighted.

use crate::{DataParallelError, Result};

/// One value a metric function returns for the rows it is given, in
/// [`Trainer::evaluate`](crate::Trainer::evaluate). A plain `f64` is a [`Metric::Sum`].
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::{DataParallelTrainer, Metric, Trainer};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(2, 1).init::<B>(&device);
/// let trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 3])?;
/// let x = Tensor::<NdArray, 2>::ones([10, 2], &device);
/// // Parts of 4, 4 and 2 rows: the mean is weighted by rows, the sum added up.
/// let [mean, rows] = trainer.evaluate(x, |m, x| {
///     let rows = x.dims()[0] as f64;
///     let mean: f32 = m.forward(x).mean().into_scalar();
///     [Metric::mean(f64::from(mean), rows), Metric::Sum(rows)]
/// })?;
/// assert_eq!(rows, 10.0);
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A sum over the rows given (correct predictions, a summed loss): the parts' sums are
    /// added.
    Sum(f64),
    /// A mean over `weight` (the rows given, valid tokens): the result is the mean of every
    /// part's values weighted by their weights, `sum(value * weight) / sum(weight)`.
    Mean {
        /// The part's mean.
        value: f64,
        /// What the mean is over: rows, tokens, a sum of sample weights (finite, not negative).
        weight: f64,
    },
}

impl Metric {
    /// A mean over `weight` (rows, tokens).
    pub fn mean(value: f64, weight: f64) -> Self {
        Self::Mean { value, weight }
    }
}

impl From<f64> for Metric {
    fn from(sum: f64) -> Self {
        Self::Sum(sum)
    }
}

/// Metrics added up over parts (and, across ranks, summed element-wise): per metric, the sum of
/// the values (weighted, for means), the sum of the weights, how many parts gave a sum and how
/// many a mean.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Partial(pub(crate) Vec<f64>);

impl Partial {
    const WORDS: usize = 4;

    pub(crate) fn empty(metrics: usize) -> Self {
        Self(vec![0.0; metrics * Self::WORDS])
    }

    /// Adds one part's metrics; an error where a mean's weight is negative or not finite.
    pub(crate) fn add(&mut self, part: impl IntoIterator<Item = Metric>) -> Result<()> {
        for (index, (words, metric)) in self.0.chunks_exact_mut(Self::WORDS).zip(part).enumerate() {
            match metric {
                Metric::Sum(value) => {
                    words[0] += value;
                    words[2] += 1.0;
                }
                Metric::Mean { value, weight } => {
                    if !(weight.is_finite() && weight >= 0.0) {
                        return Err(DataParallelError::MetricMismatch {
                            index,
                            reason: format!("a part's mean has the weight {weight}"),
                        });
                    }
                    // A part of weight 0 adds nothing, even a NaN mean over no rows.
                    if weight > 0.0 {
                        words[0] += value * weight;
                        words[1] += weight;
                    }
                    words[3] += 1.0;
                }
            }
        }
        Ok(())
    }

    /// The combined values: sums added, means weighted.
    pub(crate) fn finish<const K: usize>(&self) -> Result<[f64; K]> {
        let mut out = [0.0; K];
        for (index, (words, out)) in self.0.chunks_exact(Self::WORDS).zip(&mut out).enumerate() {
            let (sum, weight, sums, means) = (words[0], words[1], words[2], words[3]);
            *out = match (sums > 0.0, means > 0.0) {
                (true, true) => {
                    return Err(DataParallelError::MetricMismatch {
                        index,
                        reason: format!(
                            "{sums} parts returned a sum and {means} a mean; return the same \
                             kind from every part"
                        ),
                    });
                }
                (false, true) if weight <= 0.0 => {
                    return Err(DataParallelError::MetricMismatch {
                        index,
                        reason: "the parts' means have a total weight of 0".into(),
                    });
                }
                (false, true) => sum / weight,
                _ => sum,
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_are_weighted_and_sums_added() {
        let mut partial = Partial::empty(2);
        partial
            .add([Metric::mean(1.0, 3.0), Metric::Sum(3.0)])
            .unwrap();
        partial
            .add([Metric::mean(5.0, 1.0), Metric::Sum(1.0)])
            .unwrap();
        // A part with no rows may return a NaN mean: it weighs nothing.
        partial
            .add([Metric::mean(f64::NAN, 0.0), Metric::Sum(0.0)])
            .unwrap();
        assert_eq!(partial.finish::<2>().unwrap(), [2.0, 4.0]);
    }

    #[test]
    fn mixed_kinds_and_weightless_means_are_errors() {
        let mut mixed = Partial::empty(1);
        mixed.add([Metric::Sum(1.0)]).unwrap();
        mixed.add([Metric::mean(1.0, 1.0)]).unwrap();
        assert!(matches!(
            mixed.finish::<1>(),
            Err(DataParallelError::MetricMismatch { index: 0, .. })
        ));
        let mut weightless = Partial::empty(1);
        weightless.add([Metric::mean(1.0, 0.0)]).unwrap();
        assert!(weightless.finish::<1>().is_err());
        let mut negative = Partial::empty(1);
        assert!(negative.add([Metric::mean(1.0, -1.0)]).is_err());
    }
}
