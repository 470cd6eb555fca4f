//! A small convolutional image classifier: convolutions, batch normalization, pooling.

use crate::Classifier;
use burn::config::Config;
use burn::module::Module;
use burn::module::RunningState;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_data_parallel::SyncBatchNorm;

/// Sizes of a [`Cnn`]: blocks of `Conv2d(3x3) -> BatchNorm -> ReLU -> MaxPool(2x2)`, one per
/// width, then a global average pool and a `Linear` head.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use dp_model::{Classifier, CnnConfig};
///
/// let model = CnnConfig::new(1, 4).init::<NdArray>(&Default::default());
/// let logits = model.logits(Tensor::zeros([2, 1, 8, 8], &Default::default()));
/// assert_eq!(logits.dims(), [2, 4]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct CnnConfig {
    /// Channels of the input images.
    pub channels: usize,
    /// Classes, the width of the output.
    pub classes: usize,
    /// Output channels of each convolution block.
    #[config(default = "vec![8, 16]")]
    pub widths: Vec<usize>,
    /// BatchNorm's momentum: how much of each batch's statistics its running ones take.
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Batch norms over the whole global batch in data-parallel training
    /// ([`SyncBatchNorm`]) instead of over each replica's part (Burn's `BatchNorm`).
    #[config(default = false)]
    pub sync_batch_norm: bool,
}

impl CnnConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Cnn<B> {
        let mut blocks = Vec::with_capacity(self.widths.len());
        let mut input = self.channels;
        for &width in &self.widths {
            blocks.push(ConvBlock {
                conv: Conv2dConfig::new([input, width], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                norm: {
                    let config = BatchNormConfig::new(width).with_momentum(self.momentum);
                    match self.sync_batch_norm {
                        true => Norm::Sync(SyncBatchNorm::new(&config, device)),
                        false => Norm::Batch(config.init(device)),
                    }
                },
                pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                activation: Relu::new(),
            });
            input = width;
        }
        Cnn {
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(input, self.classes).init(device),
        }
    }
}

/// A block's batch normalization: over each replica's part in data-parallel training (Burn's
/// `BatchNorm`, as PyTorch's `DataParallel` does), or over the whole global batch
/// ([`SyncBatchNorm`]). The same on one device.
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// Burn's `BatchNorm`.
    Batch(BatchNorm<B>),
    /// This library's `SyncBatchNorm`.
    Sync(SyncBatchNorm<B>),
}

impl<B: Backend> Norm<B> {
    /// Normalizes `x`, of shape `[rows, channels, ...]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Norm::Batch(norm) => norm.forward(x),
            Norm::Sync(norm) => norm.forward(x),
        }
    }

    /// The running mean.
    pub fn running_mean(&self) -> &RunningState<Tensor<B, 1>> {
        match self {
            Norm::Batch(norm) => &norm.running_mean,
            Norm::Sync(norm) => &norm.running_mean,
        }
    }

    /// The running variance.
    pub fn running_var(&self) -> &RunningState<Tensor<B, 1>> {
        match self {
            Norm::Batch(norm) => &norm.running_var,
            Norm::Sync(norm) => &norm.running_var,
        }
    }

    /// Both running statistics, to replace.
    pub fn running_mut(
        &mut self,
    ) -> (
        &mut RunningState<Tensor<B, 1>>,
        &mut RunningState<Tensor<B, 1>>,
    ) {
        match self {
            Norm::Batch(norm) => (&mut norm.running_mean, &mut norm.running_var),
            Norm::Sync(norm) => (&mut norm.running_mean, &mut norm.running_var),
        }
    }
}

/// `Conv2d -> BatchNorm -> ReLU -> MaxPool`.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    /// The 3x3 convolution.
    pub conv: Conv2d<B>,
    /// Its batch normalization, with running statistics.
    pub norm: Norm<B>,
    pool: MaxPool2d,
    activation: Relu,
}

impl<B: Backend> ConvBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.norm.forward(self.conv.forward(x));
        self.pool.forward(self.activation.forward(x))
    }
}

/// A convolutional classifier of `[rows, channels, height, width]` images.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    /// The convolution blocks, the feature extractor.
    pub blocks: Vec<ConvBlock<B>>,
    pool: AdaptiveAvgPool2d,
    /// The classification head.
    pub head: Linear<B>,
}

impl<B: Backend> Cnn<B> {
    /// The same model with its convolution blocks frozen (no gradient, never changed by an
    /// optimizer): fine-tuning the head alone. Their batch normalization still updates its
    /// running statistics in training, as Burn's does on an autodiff backend.
    pub fn freeze_features(mut self) -> Self {
        self.blocks = self.blocks.no_grad();
        self
    }
}

impl<B: Backend> Classifier<B> for Cnn<B> {
    type Input = Tensor<B, 4>;

    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.blocks.iter().fold(images, |x, block| block.forward(x));
        let x = self.pool.forward(x).flatten::<2>(1, 3);
        self.head.forward(x)
    }
}
