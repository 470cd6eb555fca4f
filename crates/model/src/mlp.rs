//! A multilayer perceptron classifier whose sizes come from a JSON-serialisable config.

use crate::Classifier;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, Relu};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Sizes of an [`Mlp`]: `input_size -> hidden_sizes[0] -> ReLU -> dropout -> ... ->
/// num_classes`.
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
    /// Probability that dropout zeroes a hidden value (on autodiff backends only: training).
    #[config(default = 0.0)]
    pub dropout: f64,
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
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

/// A stack of `Linear` layers with a ReLU and dropout between each two.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
    activation: Relu,
    dropout: Dropout,
}

impl<B: Backend> Mlp<B> {
    /// The same model with every layer but the last frozen (no gradient, never changed by an
    /// optimizer): fine-tuning the output layer alone.
    pub fn freeze_hidden_layers(mut self) -> Self {
        let last = self.layers.pop();
        self.layers = self.layers.no_grad();
        self.layers.extend(last);
        self
    }

    /// Logits, `[rows, num_classes]`.
    pub fn forward(&self, input: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len().saturating_sub(1);
        self.layers.iter().enumerate().fold(input, |x, (i, layer)| {
            let x = layer.forward(x);
            if i < last {
                self.dropout.forward(self.activation.forward(x))
            } else {
                x
            }
        })
    }
}

impl<B: Backend> Classifier<B> for Mlp<B> {
    type Input = Tensor<B, 2>;

    fn logits(&self, input: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward(input)
    }
}
