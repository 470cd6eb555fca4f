//! Each zoo model, tiny: its configuration (`*_config`, which `dist_check` varies to build a
//! mismatched model on one rank), and the model on the backend's default device, its parameters
//! created once (Burn creates them lazily, and each clone separately otherwise), so that copies
//! share them.

use crate::{CLASSES, FEATURES, LENGTH, VOCAB};
use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use dp_model::{
    Branchy, BranchyConfig, Cnn, CnnConfig, Mlp, MlpConfig, TextClassifier, TextClassifierConfig,
    TiedEmbeddings, TiedEmbeddingsConfig,
};
use std::collections::HashSet;

fn created<B: Backend, M: Module<B>>(module: M) -> M {
    module.fork(&Default::default())
}

/// `Linear` layers and ReLUs over rows of [`FEATURES`] features.
pub fn mlp_config() -> MlpConfig {
    MlpConfig::new(FEATURES, vec![16], CLASSES)
}

/// [`mlp_config`]'s model.
pub fn mlp<B: Backend>() -> Mlp<B> {
    created(mlp_config().init::<B>(&Default::default()))
}

/// [`mlp`], wider, with dropout.
pub fn mlp_with_dropout<B: Backend>() -> Mlp<B> {
    let config = MlpConfig {
        hidden_sizes: vec![64],
        ..mlp_config()
    }
    .with_dropout(0.5);
    created(config.init::<B>(&Default::default()))
}

/// Convolutions, batch normalization (running statistics) and pooling over 1x6x6 images.
pub fn cnn_config() -> CnnConfig {
    CnnConfig::new(1, CLASSES).with_widths(vec![4, 6])
}

/// [`cnn_config`]'s model.
pub fn cnn<B: Backend>() -> Cnn<B> {
    created(cnn_config().init::<B>(&Default::default()))
}

/// [`cnn`] with `SyncBatchNorm`: statistics over every replica's rows.
pub fn sync_cnn<B: Backend>() -> Cnn<B> {
    let config = cnn_config().with_sync_batch_norm(true);
    created(config.init::<B>(&Default::default()))
}

/// Token and position embeddings, a transformer encoder layer (attention with a padding mask).
pub fn transformer_config() -> TextClassifierConfig {
    TextClassifierConfig::new(VOCAB, LENGTH, CLASSES)
        .with_d_model(8)
        .with_heads(2)
        .with_layers(1)
        .with_d_ff(16)
}

/// [`transformer_config`]'s model.
pub fn transformer<B: Backend>() -> TextClassifier<B> {
    created(transformer_config().init::<B>(&Default::default()))
}

/// [`transformer`] with its encoder frozen: fine-tuning the head.
pub fn frozen_transformer<B: Backend>() -> TextClassifier<B> {
    transformer().freeze_encoder()
}

/// [`cnn`] with its convolutions frozen.
pub fn frozen_cnn<B: Backend>() -> Cnn<B> {
    cnn().freeze_features()
}

/// One embedding used twice, as input embedding and output projection.
pub fn tied_config() -> TiedEmbeddingsConfig {
    TiedEmbeddingsConfig::new(VOCAB).with_d_model(8)
}

/// [`tied_config`]'s model.
pub fn tied<B: Backend>() -> TiedEmbeddings<B> {
    created(tied_config().init::<B>(&Default::default()))
}

/// A layer only the rows whose first feature exceeds 1.8 go through (about 1 in 20 of the
/// zoo's rows): some parts, and some whole batches, give it no gradient.
pub fn branchy_config() -> BranchyConfig {
    BranchyConfig::new(FEATURES, 8, CLASSES).with_threshold(1.8)
}

/// [`branchy_config`]'s model.
pub fn branchy<B: Backend>() -> Branchy<B> {
    created(branchy_config().init::<B>(&Default::default()))
}

/// No buffers.
pub fn no_buffers<M>(_: &M) -> HashSet<ParamId> {
    HashSet::new()
}

/// The running statistics of a CNN's batch norms: its buffers.
pub fn cnn_buffers<B: Backend>(model: &Cnn<B>) -> HashSet<ParamId> {
    model
        .blocks
        .iter()
        .flat_map(|block| {
            let mut found = crate::compare::ids::<B, _>(block.norm.running_mean());
            found.extend(crate::compare::ids::<B, _>(block.norm.running_var()));
            found
        })
        .collect()
}
