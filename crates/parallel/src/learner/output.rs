//! What a burn-train model's steps return, as the strategy reads and merges it: the loss of
//! a replica's part, and the parts put back together into the output of the whole batch, so
//! that every metric sees what a single-device run shows.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use burn::train::{
    ClassificationOutput, MultiLabelClassificationOutput, RegressionOutput, SequenceOutput,
};

/// The output of a `TrainStep` or `InferenceStep` (burn-train's `ClassificationOutput`,
/// `RegressionOutput`, ...), which [`DataParallelStrategy`](crate::DataParallelStrategy) runs
/// on every replica's part of a batch and merges back into one output per batch.
///
/// Implemented for burn-train's `ClassificationOutput`, `MultiLabelClassificationOutput`,
/// `RegressionOutput` and `SequenceOutput`. Implement it for your own output type: its loss,
/// and how parts are put back together.
///
/// ```
/// use burn::tensor::backend::Backend;
/// use burn::tensor::{ElementConversion, Tensor};
/// use burn_data_parallel::StepOutput;
///
/// /// A regression over the rows a mask keeps, its loss a mean over those rows.
/// struct MaskedOutput<B: Backend> {
///     loss: Tensor<B, 1>,
///     mask: Tensor<B, 1>,
///     output: Tensor<B, 2>,
/// }
///
/// impl<B: Backend> StepOutput<B> for MaskedOutput<B> {
///     const WEIGHTED: bool = true;
///
///     fn loss(&self) -> Tensor<B, 1> {
///         self.loss.clone()
///     }
///
///     fn loss_weight(&self) -> f64 {
///         self.mask.clone().sum().into_scalar().elem()
///     }
///
///     fn merge(parts: Vec<(Self, f64)>, device: &B::Device) -> Self {
///         let loss = burn_data_parallel::merged_loss(
///             parts.iter().map(|(part, weight)| (part.loss.clone(), *weight)),
///             device,
///         );
///         let (masks, outputs): (Vec<_>, Vec<_>) = parts
///             .into_iter()
///             .map(|(part, _)| (part.mask, part.output))
///             .unzip();
///         MaskedOutput {
///             loss,
///             mask: burn_data_parallel::merged_rows(masks, device),
///             output: burn_data_parallel::merged_rows(outputs, device),
///         }
///     }
/// }
/// ```
pub trait StepOutput<B: Backend>: Sized + Send {
    /// Whether the loss is a mean over [`loss_weight`](Self::loss_weight) (valid tokens,
    /// sample weights) rather than over the part's rows.
    const WEIGHTED: bool = false;

    /// The part's loss: a one-element tensor, the mean over its rows (or over its
    /// [`loss_weight`](Self::loss_weight)).
    fn loss(&self) -> Tensor<B, 1>;

    /// What the loss is a mean over, where [`WEIGHTED`](Self::WEIGHTED) says it states it. A
    /// part of weight 0 (all padding) adds nothing to the step or to the merged loss. The
    /// default, for types that are not [`WEIGHTED`](Self::WEIGHTED), is not a weight: a
    /// weighted type that keeps it is refused
    /// ([`DataParallelError::InvalidLossWeight`](crate::DataParallelError::InvalidLossWeight)).
    fn loss_weight(&self) -> f64 {
        f64::NAN
    }

    /// The output of the whole batch, on `device`, from the parts in replica order (row `i`
    /// of the result from row `i` of the batch), each with the weight its loss is a mean
    /// over (its rows, or its [`loss_weight`](Self::loss_weight)). The merged loss is the
    /// weighted mean of the parts' ([`merged_loss`]); tensors are detached from the autodiff
    /// graph ([`merged_rows`]).
    fn merge(parts: Vec<(Self, f64)>, device: &B::Device) -> Self;

    /// The output's tensors as data, in a fixed order, to send it to rank 0 when training
    /// across MPI ranks (where rank 0 alone feeds the metrics). `None`, the default, for a type
    /// that cannot travel: training across ranks then stops with
    /// [`DataParallelError::OutputCannotTravel`](crate::DataParallelError::OutputCannotTravel).
    fn into_data(self) -> Option<Vec<TensorData>> {
        None
    }

    /// The output back from [`into_data`](Self::into_data)'s tensors, on `device`.
    fn from_data(data: Vec<TensorData>, device: &B::Device) -> Option<Self> {
        let _ = (data, device);
        None
    }
}

/// The weighted mean of the parts' losses (`(loss, weight)` each), on `device`, detached; parts
/// of weight 0 are left out, and the result is 0 if every part's weight is 0.
pub fn merged_loss<B: Backend>(
    parts: impl IntoIterator<Item = (Tensor<B, 1>, f64)>,
    device: &B::Device,
) -> Tensor<B, 1> {
    // A part of weight 0 is left out: its loss is 0/0 where it is a mean over nothing.
    let parts: Vec<(Tensor<B, 1>, f64)> = parts
        .into_iter()
        .filter(|(_, weight)| *weight > 0.0)
        .collect();
    let total: f64 = parts.iter().map(|(_, weight)| weight).sum();
    parts
        .into_iter()
        .map(|(loss, weight)| {
            let share = if total > 0.0 { weight / total } else { 0.0 };
            loss.detach().to_device(device).mul_scalar(share)
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([1], device))
}

/// The parts' tensors concatenated along their first dimension on `device`, detached from the
/// autodiff graph (metrics only read them).
pub fn merged_rows<B: Backend, T: RowTensor<B>>(parts: Vec<T>, device: &B::Device) -> T {
    let mut parts: Vec<T> = parts
        .into_iter()
        .map(|part| part.detached_on(device))
        .collect();
    if parts.len() == 1 {
        return parts.remove(0);
    }
    T::cat_rows(parts)
}

/// A tensor of an output that [`merged_rows`] concatenates: float, int and bool tensors of any
/// rank.
pub trait RowTensor<B: Backend>: Sized {
    /// On `device`, without an autodiff graph.
    fn detached_on(self, device: &B::Device) -> Self;
    /// Concatenated along the first dimension.
    fn cat_rows(parts: Vec<Self>) -> Self;
}

impl<B: Backend, const D: usize> RowTensor<B> for Tensor<B, D> {
    fn detached_on(self, device: &B::Device) -> Self {
        self.detach().to_device(device)
    }

    fn cat_rows(parts: Vec<Self>) -> Self {
        Tensor::cat(parts, 0)
    }
}

impl<B: Backend, const D: usize> RowTensor<B> for Tensor<B, D, Int> {
    fn detached_on(self, device: &B::Device) -> Self {
        self.to_device(device)
    }

    fn cat_rows(parts: Vec<Self>) -> Self {
        Tensor::cat(parts, 0)
    }
}

impl<B: Backend, const D: usize> RowTensor<B> for Tensor<B, D, Bool> {
    fn detached_on(self, device: &B::Device) -> Self {
        self.to_device(device)
    }

    fn cat_rows(parts: Vec<Self>) -> Self {
        Tensor::cat(parts, 0)
    }
}

/// Implements [`StepOutput`] for a burn-train output whose tensors besides the loss all have a
/// row per row of the batch.
macro_rules! rows_output {
    ($output:ident { $($field:ident),* }) => {
        impl<B: Backend> StepOutput<B> for $output<B> {
            fn loss(&self) -> Tensor<B, 1> {
                self.loss.clone()
            }

            fn merge(parts: Vec<(Self, f64)>, device: &B::Device) -> Self {
                let loss = merged_loss(
                    parts.iter().map(|(part, weight)| (part.loss.clone(), *weight)),
                    device,
                );
                $(let mut $field = Vec::with_capacity(parts.len());)*
                for (part, _) in parts {
                    $($field.push(part.$field);)*
                }
                Self {
                    loss,
                    $($field: merged_rows($field, device),)*
                }
            }

            fn into_data(self) -> Option<Vec<TensorData>> {
                Some(vec![self.loss.into_data() $(, self.$field.into_data())*])
            }

            fn from_data(data: Vec<TensorData>, device: &B::Device) -> Option<Self> {
                let mut data = data.into_iter();
                Some(Self {
                    loss: Tensor::from_data(data.next()?, device),
                    $($field: Tensor::from_data(data.next()?, device),)*
                })
            }
        }
    };
}

rows_output!(ClassificationOutput { output, targets });
rows_output!(MultiLabelClassificationOutput { output, targets });
rows_output!(RegressionOutput { output, targets });

/// Its loss is taken as a mean over its rows (sequences). A loss averaged over tokens, whose
/// parts hold different numbers of real tokens, needs an output type of your own with
/// [`WEIGHTED`](StepOutput::WEIGHTED) and the tokens as [`loss_weight`](StepOutput::loss_weight).
impl<B: Backend> StepOutput<B> for SequenceOutput<B> {
    fn loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn merge(parts: Vec<(Self, f64)>, device: &B::Device) -> Self {
        let loss = merged_loss(
            parts
                .iter()
                .map(|(part, weight)| (part.loss.clone(), *weight)),
            device,
        );
        let predicted = parts.iter().all(|(part, _)| part.predictions.is_some());
        let mut logits = Vec::with_capacity(parts.len());
        let mut targets = Vec::with_capacity(parts.len());
        let mut predictions: Vec<Tensor<B, 2, Int>> = Vec::with_capacity(parts.len());
        for (part, _) in parts {
            logits.push(part.logits);
            targets.push(part.targets);
            predictions.extend(part.predictions);
        }
        Self {
            loss,
            logits: merged_rows(logits, device),
            // Where some part has none, every part's predictions default to the logits' argmax.
            predictions: predicted.then(|| merged_rows(predictions, device)),
            targets: merged_rows(targets, device),
        }
    }

    fn into_data(self) -> Option<Vec<TensorData>> {
        let mut data = vec![
            self.loss.into_data(),
            self.logits.into_data(),
            self.targets.into_data(),
        ];
        data.extend(self.predictions.map(Tensor::into_data));
        Some(data)
    }

    fn from_data(data: Vec<TensorData>, device: &B::Device) -> Option<Self> {
        let mut data = data.into_iter();
        Some(Self {
            loss: Tensor::from_data(data.next()?, device),
            logits: Tensor::from_data(data.next()?, device),
            targets: Tensor::from_data(data.next()?, device),
            predictions: data.next().map(|d| Tensor::from_data(d, device)),
        })
    }
}
