//! A multilayer perceptron classifier whose sizes come from a JSON-serialisable config.

use burn::config::Config;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};

/// Sizes of an [`Mlp`]: `input_size -> hidden_sizes[0] -> ReLU -> ... -> num_classes`.
///
/// Saved and loaded as JSON with Burn's `Config::save` / `Config::load`.
///
/// ```
/// use burn::config::Config;
/// use dp_model::MlpConfig;
///
/// let config = MlpConfig::new(256, vec![1024, 1024], 10);
/// let json = config.to_string();
/// assert_eq!(MlpConfig::load_binary(json.as_bytes()).unwrap(), config);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Features in each input row.
    pub input_size: usize,
    /// Width of each hidden layer, in order (each followed by a ReLU).
    pub hidden_sizes: Vec<usize>,
    /// Classes, the width of the output (logits).
    pub num_classes: usize,
}

impl MlpConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        let widths: Vec<usize> = std::iter::once(self.input_size)
            .chain(self.hidden_sizes.iter().copied())
            .chain(std::iter::once(self.num_classes))
            .collect();
        Mlp {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            activation: Relu::new(),
        }
    }
}

/// A stack of `Linear` layers with a ReLU between each two.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
    activation: Relu,
}

impl<B: Backend> Mlp<B> {
    /// Logits, `[rows, num_classes]`.
    pub fn forward(&self, input: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len().saturating_sub(1);
        self.layers.iter().enumerate().fold(input, |x, (i, layer)| {
            let x = layer.forward(x);
            if i < last {
                self.activation.forward(x)
            } else {
                x
            }
        })
    }

    /// Mean cross-entropy of the logits against `targets` (class indices).
    pub fn loss(&self, input: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let logits = self.forward(input);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets)
    }

    /// Rows of `input` whose predicted class (highest logit) equals the target.
    pub fn correct(&self, input: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
        let predicted = self.forward(input).argmax(1).squeeze_dim::<1>(1);
        predicted
            .equal(targets)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize
    }
}
