//! Every classifier of this crate as a burn-train program sees it (feature `burn-train`): a
//! batch is `(inputs, targets)`, the loss is the mean cross-entropy, and the output is
//! burn-train's `ClassificationOutput`, which its loss and accuracy metrics read.

use crate::{Branchy, Classifier, Cnn, Mlp, TextClassifier, TiedEmbeddings};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

/// The logits of `input` with their mean cross-entropy against `targets`.
fn classify<B: Backend, M: Classifier<B>>(
    model: &M,
    input: M::Input,
    targets: Tensor<B, 1, Int>,
) -> ClassificationOutput<B> {
    let logits = model.logits(input);
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), targets.clone());
    ClassificationOutput::new(loss, logits, targets)
}

// burn-train's traits are foreign, so a blanket impl over `Classifier` is not allowed: one
// impl per model.
macro_rules! steps {
    ($($model:ident),*) => {$(
        impl<B: AutodiffBackend> TrainStep for $model<B> {
            type Input = (<Self as Classifier<B>>::Input, Tensor<B, 1, Int>);
            type Output = ClassificationOutput<B>;

            fn step(&self, (input, targets): Self::Input) -> TrainOutput<Self::Output> {
                let output = classify(self, input, targets);
                TrainOutput::new(self, output.loss.backward(), output)
            }
        }

        impl<B: Backend> InferenceStep for $model<B> {
            type Input = (<Self as Classifier<B>>::Input, Tensor<B, 1, Int>);
            type Output = ClassificationOutput<B>;

            fn step(&self, (input, targets): Self::Input) -> Self::Output {
                classify(self, input, targets)
            }
        }
    )*};
}

steps!(Mlp, Cnn, TextClassifier, TiedEmbeddings, Branchy);
