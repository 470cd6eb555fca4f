//! Each zoo model, tiny, on the backend's default device, its parameters created once (Burn
//! creates them lazily, and each clone separately otherwise), so that copies share them.

use crate::{CLASSES, LENGTH, VOCAB};
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

/// `Linear` layers and ReLUs over rows of 6 features.
pub fn mlp<B: Backend>() -> Mlp<B> {
    created(MlpConfig::new(6, vec![16], CLASSES).init::<B>(&Default::default()))
}

/// [`mlp`], wider, with dropout.
pub fn mlp_with_dropout<B: Backend>() -> Mlp<B> {
    let config = MlpConfig::new(6, vec![64], CLASSES).with_dropout(0.5);
    created(config.init::<B>(&Default::default()))
}

/// Convolutions, batch normalization (running statistics) and pooling over 1x6x6 images.
pub fn cnn<B: Backend>() -> Cnn<B> {
    let config = CnnConfig::new(1, CLASSES).with_widths(vec![4, 6]);
    created(config.init::<B>(&Default::default()))
}

/// [`cnn`] with `SyncBatchNorm`: statistics over every replica's rows.
pub fn sync_cnn<B: Backend>() -> Cnn<B> {
    let config = CnnConfig::new(1, CLASSES)
        .with_widths(vec![4, 6])
        .with_sync_batch_norm(true);
    created(config.init::<B>(&Default::default()))
}

/// Token and position embeddings, a transformer encoder layer (attention with a padding mask).
pub fn transformer<B: Backend>() -> TextClassifier<B> {
    let config = TextClassifierConfig::new(VOCAB, LENGTH, CLASSES)
        .with_d_model(8)
        .with_heads(2)
        .with_layers(1)
        .with_d_ff(16);
    created(config.init::<B>(&Default::default()))
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
pub fn tied<B: Backend>() -> TiedEmbeddings<B> {
    created(
        TiedEmbeddingsConfig::new(VOCAB)
            .with_d_model(8)
            .init::<B>(&Default::default()),
    )
}

/// A layer only some rows go through, over rows of 5 features.
pub fn branchy<B: Backend>() -> Branchy<B> {
    created(BranchyConfig::new(5, 8, CLASSES).init::<B>(&Default::default()))
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
