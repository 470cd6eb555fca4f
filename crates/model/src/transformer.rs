//! A small transformer encoder that classifies token sequences: embeddings, multi-head
//! attention with a padding mask, layer normalization, residual connections.

use crate::Classifier;
use burn::config::Config;
use burn::module::Module;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// The token id that pads a sequence to the batch's length: it is masked out of attention and
/// of the pooled representation.
pub const PAD: i64 = 0;

/// Sizes of a [`TextClassifier`].
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::{Int, Tensor};
/// use dp_model::{Classifier, TextClassifierConfig};
///
/// let model = TextClassifierConfig::new(16, 8, 3).init::<NdArray>(&Default::default());
/// let tokens = Tensor::<NdArray, 2, Int>::from_data([[5, 6, 7, 0], [3, 0, 0, 0]], &Default::default());
/// assert_eq!(model.logits(tokens).dims(), [2, 3]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct TextClassifierConfig {
    /// Distinct tokens, [`PAD`] included.
    pub vocab: usize,
    /// Longest sequence (positions are embedded).
    pub max_len: usize,
    /// Classes, the width of the output.
    pub classes: usize,
    /// Width of the token representations.
    #[config(default = 32)]
    pub d_model: usize,
    /// Attention heads (they divide `d_model`).
    #[config(default = 4)]
    pub heads: usize,
    /// Encoder layers.
    #[config(default = 2)]
    pub layers: usize,
    /// Width of each layer's feed-forward part.
    #[config(default = 64)]
    pub d_ff: usize,
    /// Dropout probability in the encoder layers (active on autodiff backends only).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl TextClassifierConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TextClassifier<B> {
        TextClassifier {
            encoder: TextEncoder {
                tokens: EmbeddingConfig::new(self.vocab, self.d_model).init(device),
                positions: EmbeddingConfig::new(self.max_len, self.d_model).init(device),
                layers: TransformerEncoderConfig::new(
                    self.d_model,
                    self.d_ff,
                    self.heads,
                    self.layers,
                )
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device),
            },
            head: LinearConfig::new(self.d_model, self.classes).init(device),
        }
    }
}

/// Token and position embeddings, transformer encoder layers, and a mean over the tokens that
/// are not padding: one vector per sequence.
#[derive(Module, Debug)]
pub struct TextEncoder<B: Backend> {
    /// The token embedding.
    pub tokens: Embedding<B>,
    /// The position embedding.
    pub positions: Embedding<B>,
    /// The encoder layers (attention, layer norms, residuals, feed-forward).
    pub layers: TransformerEncoder<B>,
}

impl<B: Backend> TextEncoder<B> {
    /// `[rows, d_model]` for `[rows, length]` token ids; every row needs one token that is not
    /// [`PAD`].
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let (x, keep) = self.states(tokens);
        // Mean over the real tokens.
        let count = keep.clone().sum_dim(1);
        (x * keep).sum_dim(1).div(count).squeeze_dim::<2>(1)
    }

    /// Every token's representation, `[rows, length, d_model]`, and which tokens are real
    /// (`[rows, length, 1]`: 1 for a token, 0 for [`PAD`]).
    pub fn states(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [rows, length] = tokens.dims();
        let device = tokens.device();
        let padding = tokens.clone().equal_elem(PAD);
        let positions = Tensor::<B, 1, Int>::arange(0..length as i64, &device)
            .unsqueeze::<2>()
            .repeat_dim(0, rows);
        let x = self.tokens.forward(tokens) + self.positions.forward(positions);
        let x = self
            .layers
            .forward(TransformerEncoderInput::new(x).mask_pad(padding.clone()));
        (x, padding.bool_not().float().unsqueeze_dim::<3>(2))
    }
}

/// A transformer encoder under a `Linear` classification head.
#[derive(Module, Debug)]
pub struct TextClassifier<B: Backend> {
    /// Embeddings and encoder layers, the backbone.
    pub encoder: TextEncoder<B>,
    /// The classification head.
    pub head: Linear<B>,
}

impl<B: Backend> TextClassifier<B> {
    /// A token-level loss, as a language model's: every real token predicts its sequence's
    /// class through the head, and the cross-entropies are summed over the real tokens. Returns
    /// that sum and the number of real tokens; the loss averaged over tokens is their ratio,
    /// whose denominator depends on the padding of each batch.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::tensor::{Int, Tensor};
    /// use dp_model::TextClassifierConfig;
    ///
    /// let device = Default::default();
    /// let model = TextClassifierConfig::new(16, 4, 3).init::<NdArray>(&device);
    /// let tokens = Tensor::<NdArray, 2, Int>::from_data([[5, 6, 7, 0], [3, 0, 0, 0]], &device);
    /// let classes = Tensor::<NdArray, 1, Int>::from_data([2, 0], &device);
    /// let (_sum, count) = model.token_loss_sum(tokens, classes);
    /// assert_eq!(count.into_scalar(), 4.0);
    /// ```
    pub fn token_loss_sum(
        &self,
        tokens: Tensor<B, 2, Int>,
        targets: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let [rows, length] = tokens.dims();
        let (states, keep) = self.encoder.states(tokens);
        let log_probs = burn::tensor::activation::log_softmax(self.head.forward(states), 2);
        let targets = targets.reshape([rows, 1, 1]).repeat_dim(1, length);
        let picked = log_probs.gather(2, targets);
        let sum = (picked * keep.clone()).sum().neg();
        (sum, keep.sum())
    }

    /// The same model with its encoder frozen (no gradient, never changed by an optimizer):
    /// fine-tuning the head alone.
    pub fn freeze_encoder(mut self) -> Self {
        self.encoder = self.encoder.no_grad();
        self
    }
}

impl<B: Backend> Classifier<B> for TextClassifier<B> {
    type Input = Tensor<B, 2, Int>;

    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        self.head.forward(self.encoder.forward(tokens))
    }
}
