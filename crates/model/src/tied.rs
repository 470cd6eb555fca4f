//! Tied weights: one embedding matrix reads the input tokens and scores the output tokens.

use crate::{Classifier, PAD};
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Sizes of a [`TiedEmbeddings`] model.
#[derive(Config, Debug, PartialEq)]
pub struct TiedEmbeddingsConfig {
    /// Distinct tokens, [`PAD`] included; also the classes.
    pub vocab: usize,
    /// Width of the embeddings.
    #[config(default = 16)]
    pub d_model: usize,
}

impl TiedEmbeddingsConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TiedEmbeddings<B> {
        TiedEmbeddings {
            embedding: EmbeddingConfig::new(self.vocab, self.d_model).init(device),
            mix: LinearConfig::new(self.d_model, self.d_model).init(device),
        }
    }
}

/// Predicts a token from a sequence: the mean embedding of its tokens, mixed by a `Linear` and
/// a `tanh`, scored against every token's embedding. The embedding matrix is one parameter used
/// twice, as language models tie their input and output embeddings: its gradient is the sum of
/// both uses.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::{Int, Tensor};
/// use dp_model::{Classifier, TiedEmbeddingsConfig};
///
/// let model = TiedEmbeddingsConfig::new(10).init::<NdArray>(&Default::default());
/// let tokens = Tensor::<NdArray, 2, Int>::from_data([[1, 2, 0]], &Default::default());
/// assert_eq!(model.logits(tokens).dims(), [1, 10]); // a score per token of the vocabulary
/// ```
#[derive(Module, Debug)]
pub struct TiedEmbeddings<B: Backend> {
    /// The token embedding, `[vocab, d_model]`, also the output projection.
    pub embedding: Embedding<B>,
    mix: Linear<B>,
}

impl<B: Backend> Classifier<B> for TiedEmbeddings<B> {
    type Input = Tensor<B, 2, Int>;

    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let keep = tokens
            .clone()
            .equal_elem(PAD)
            .bool_not()
            .float()
            .unsqueeze_dim::<3>(2);
        let embedded = self.embedding.forward(tokens) * keep.clone();
        let mean = embedded.sum_dim(1).div(keep.sum_dim(1)).squeeze_dim::<2>(1);
        let hidden = self.mix.forward(mean).tanh();
        hidden.matmul(self.embedding.weight.val().transpose())
    }
}
