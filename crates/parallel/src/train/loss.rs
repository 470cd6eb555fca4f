//! What a loss function hands a trainer, and how its denominator is kept exact across
//! replicas, ranks and micro-batches.
//!
//! A plain one-element tensor is a loss over the rows it was given, reduced as the trainer's
//! [`LossReduction`] says: each replica's is scaled by its share of the rows before its
//! backward pass. A [`WeightedMean`] states its own denominator (valid tokens, sample weights):
//! each replica's backward pass runs on its sum, and the step's summed gradient is divided by
//! the sum of every replica's, rank's and micro-batch's weights, which only exists once all of
//! them have run. (PyTorch's DDP instead averages each replica's own mean, which re-weights
//! tokens by the rows they came in.)

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// How the loss over the rows a replica is given is reduced.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::{DataParallelTrainer, LossReduction};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(2, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 2])?
///     .with_loss_reduction(LossReduction::Sum);
/// let (x, y) = (Tensor::<B, 2>::ones([6, 2], &device), Tensor::<B, 2>::zeros([6, 1], &device));
/// // The loss of each part is a sum over its rows; the step is that of the sum over all 6.
/// trainer.step(0.01, (x, y), |m, (x, y)| (m.forward(x) - y).powi_scalar(2).sum())?;
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LossReduction {
    /// The mean over the rows (the default, like Burn's and PyTorch's losses): the step equals
    /// the single-device step on the mean over the whole global batch.
    #[default]
    Mean,
    /// The sum over the rows: the step equals the single-device step on the sum over the whole
    /// global batch.
    Sum,
}

/// A loss that is a weighted mean with its own denominator: the sum of its terms (already
/// weighted) and the sum of their weights. The step is the single-device step on
/// `sum / weight` over the whole global batch, every micro-batch of the step and every rank
/// included: a loss averaged over valid tokens stays averaged over valid tokens, however the
/// rows were split. The weight is any non-negative value: a count of tokens, a sum of sample
/// weights.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::{DataParallelTrainer, WeightedMean};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(3, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 3])?;
/// let x = Tensor::<B, 2>::ones([10, 3], &device);
/// // Which rows count (a padding mask): the mean is over the 6 that do.
/// let mask = Tensor::<B, 1>::from_floats([1., 1., 0., 1., 0., 1., 1., 0., 0., 1.], &device);
/// let stats = trainer.step(0.1, (x, mask), |m, (x, mask)| {
///     let rows = x.dims()[0];
///     let errors = m.forward(x).reshape([rows]).powi_scalar(2);
///     WeightedMean::new((errors * mask.clone()).sum(), mask.sum())
/// })?;
/// assert_eq!(stats.weight, 6.0);
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WeightedMean<B: AutodiffBackend> {
    sum: Tensor<B, 1>,
    weight: Tensor<B, 1>,
}

impl<B: AutodiffBackend> WeightedMean<B> {
    /// The loss `sum / weight`, from the sum of its (weighted) terms and the sum of their
    /// weights over the rows given. Only `sum` is differentiated.
    pub fn new(sum: Tensor<B, 1>, weight: Tensor<B, 1>) -> Self {
        Self { sum, weight }
    }
}

/// What a loss function returns to a trainer: a one-element [`Tensor`] (reduced over its rows
/// as the trainer's [`LossReduction`] says) or a [`WeightedMean`]. Not meant to be implemented
/// outside this crate.
pub trait TrainLoss<B: AutodiffBackend>: Send {
    /// Whether the loss states its own denominator.
    #[doc(hidden)]
    const WEIGHTED: bool;

    /// The tensor to differentiate, and the weight where the loss states one.
    #[doc(hidden)]
    fn into_parts(self) -> (Tensor<B, 1>, Option<Tensor<B, 1>>);
}

impl<B: AutodiffBackend> TrainLoss<B> for Tensor<B, 1> {
    const WEIGHTED: bool = false;

    fn into_parts(self) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
        (self, None)
    }
}

impl<B: AutodiffBackend> TrainLoss<B> for WeightedMean<B> {
    const WEIGHTED: bool = true;

    fn into_parts(self) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
        (self.sum, Some(self.weight.detach()))
    }
}

/// What a step's gradients are divided by, for a loss of type `L` under `reduction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denominator {
    /// The rows (a mean over rows): weights applied before each backward pass.
    Rows = 1,
    /// Nothing (a sum).
    One = 2,
    /// The losses' stated weights, known once every replica has run.
    Weights = 3,
    /// Each micro-batch's own mean over its rows, the micro-batches' gradients added up (a
    /// step that runs its own backward pass, as burn-train's `TrainStep` and its gradient
    /// accumulation do).
    //
    // Made by burn-train's steps only; the reduction and the loss's recombination match on
    // them in every build, so they stay (without burn-train, nothing makes them).
    #[cfg_attr(not(feature = "burn-train"), allow(dead_code))]
    StepRows = 4,
    /// Each micro-batch's own mean over its stated weights, added up likewise.
    #[cfg_attr(not(feature = "burn-train"), allow(dead_code))]
    StepWeights = 5,
}

impl Denominator {
    pub(crate) fn of<B: AutodiffBackend, L: TrainLoss<B>>(reduction: LossReduction) -> Self {
        match (L::WEIGHTED, reduction) {
            (true, _) => Self::Weights,
            (false, LossReduction::Mean) => Self::Rows,
            (false, LossReduction::Sum) => Self::One,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Rows => "a mean over rows (a tensor, `LossReduction::Mean`)",
            Self::One => "a sum over rows (a tensor, `LossReduction::Sum`)",
            Self::Weights => "a `WeightedMean`",
            Self::StepRows => "a step's own mean over rows (burn-train's `TrainStep`)",
            Self::StepWeights => "a step's own mean over stated weights (burn-train's `TrainStep`)",
        }
    }
}

/// Names a [`Denominator`]'s code, for errors across ranks.
pub(crate) fn describe_loss_kind(code: u64) -> String {
    [
        Denominator::Rows,
        Denominator::One,
        Denominator::Weights,
        Denominator::StepRows,
        Denominator::StepWeights,
    ]
    .into_iter()
    .find(|&d| d as u64 == code)
    .map_or_else(
        || format!("an unknown loss ({code})"),
        |d| d.describe().into(),
    )
}
