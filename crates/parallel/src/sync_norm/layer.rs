//! The layer: Burn's `BatchNorm` (same fields, same record), normalizing over the whole
//! global batch inside a data-parallel training step.

use super::SyncNormError;
use super::context::{sum_over_batch, synchronized};
use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Batch normalization over the whole global batch: every replica's part and every rank's,
/// exactly as one device normalizes the whole batch.
///
/// Its fields, config ([`BatchNormConfig`]) and record are those of Burn's [`BatchNorm`], so a
/// record saved from one loads into the other (and [`From`] converts between them). Trained
/// inside [`DataParallelTrainer`](crate::DataParallelTrainer) or
/// `dist::DistributedTrainer` (feature `mpi`), its forward pass normalizes with
/// the mean and variance over every row of the (micro-)batch across all replicas and ranks,
/// its backward pass sums the matching gradient terms over them, and its running statistics
/// take the whole batch's mean and variance, as one device's would. Each layer makes two
/// exchanges in the forward pass (`C + 1` numbers for `C` channels, then `C`) and two in the
/// backward pass (`C` each), through host memory; a step of one device in one process makes
/// none.
///
/// Outside a data-parallel call it is a plain batch norm, and in evaluation (a backend
/// without autodiff) it uses its running statistics, as always. Inside a call whose replicas
/// cannot meet while they run ([`DataParallel::forward`](crate::DataParallel::forward) with
/// several devices on an autodiff backend, or the burn-train strategy), training with it is
/// refused: the call returns
/// [`DataParallelError::SyncBatchNorm`](crate::DataParallelError::SyncBatchNorm) instead of
/// normalizing each part on its own.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::BatchNormConfig;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::SyncBatchNorm;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let norm = SyncBatchNorm::<B>::new(&BatchNormConfig::new(3), &device);
/// // Outside a data-parallel call: Burn's BatchNorm.
/// let x = Tensor::<B, 4>::ones([2, 3, 4, 4], &device);
/// assert_eq!(norm.forward(x).dims(), [2, 3, 4, 4]);
/// ```
#[derive(Module, Debug)]
pub struct SyncBatchNorm<B: Backend> {
    /// The learnable weight gamma.
    pub gamma: Param<Tensor<B, 1>>,
    /// The learnable weight beta.
    pub beta: Param<Tensor<B, 1>>,
    /// The running mean.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// The running variance.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Momentum used to update the running statistics.
    pub momentum: f64,
    /// A value required for numerical stability.
    pub epsilon: f64,
}

impl<B: Backend> From<BatchNorm<B>> for SyncBatchNorm<B> {
    fn from(norm: BatchNorm<B>) -> Self {
        Self {
            gamma: norm.gamma,
            beta: norm.beta,
            running_mean: norm.running_mean,
            running_var: norm.running_var,
            momentum: norm.momentum,
            epsilon: norm.epsilon,
        }
    }
}

impl<B: Backend> From<SyncBatchNorm<B>> for BatchNorm<B> {
    fn from(norm: SyncBatchNorm<B>) -> Self {
        Self {
            gamma: norm.gamma,
            beta: norm.beta,
            running_mean: norm.running_mean,
            running_var: norm.running_var,
            momentum: norm.momentum,
            epsilon: norm.epsilon,
        }
    }
}

impl<B: Backend> SyncBatchNorm<B> {
    /// A new layer, initialized as [`BatchNormConfig::init`] initializes a `BatchNorm`.
    pub fn new(config: &BatchNormConfig, device: &B::Device) -> Self {
        config.init(device).into()
    }

    /// Applies the forward pass on `input`, of shape `[batch_size, channels, ...]`.
    ///
    /// # Panics
    ///
    /// If `input` has rank < 2, as `BatchNorm` does; inside a call that refuses synchronized
    /// layers (see the type's docs), with a [`SyncNormError`] that the call returns as an error.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        match self.try_forward(input) {
            Ok(output) => output,
            Err(err) => std::panic::panic_any(err),
        }
    }

    fn try_forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, SyncNormError> {
        if D < 2 || !B::ad_enabled(&input.device()) || !synchronized()? {
            return Ok(self.plain().forward(input));
        }
        let device = input.device();
        let dims = input.dims();
        let channels = dims[1];
        let values = dims.iter().product::<usize>() / channels.max(1);
        let flat = input.clone().swap_dims(0, 1).reshape([channels, values]);
        let sums = flat.clone().sum_dim(1).reshape([channels]);
        let (sums, numbers) = sum_over_batch(sums, &[values as f64])?;
        let count = numbers[channels];
        let mean = sums.div_scalar(count);
        let squares = flat
            .sub(mean.clone().reshape([channels, 1]))
            .square()
            .sum_dim(1)
            .reshape([channels]);
        let (squares, _) = sum_over_batch(squares, &[])?;
        let var = squares.div_scalar(count);

        let update = |state: &RunningState<Tensor<B, 1>>, batch: &Tensor<B, 1>| {
            let running = state.value_sync().to_device(&device);
            let running = running
                .mul_scalar(1.0 - self.momentum)
                .add(batch.clone().detach().mul_scalar(self.momentum));
            state.update(running.detach());
        };
        update(&self.running_mean, &mean);
        update(&self.running_var, &var);

        let mut shape = [1; D];
        shape[1] = channels;
        let std = var.reshape(shape).add_scalar(self.epsilon).sqrt();
        let x = input.sub(mean.reshape(shape)).div(std);
        Ok(x.mul(self.gamma.val().reshape(shape))
            .add(self.beta.val().reshape(shape)))
    }

    /// This layer as Burn's `BatchNorm`, sharing its parameters and running statistics.
    fn plain(&self) -> BatchNorm<B> {
        self.clone().into()
    }
}
