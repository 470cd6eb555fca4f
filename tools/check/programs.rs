//! The shapes real training programs take: micro-batches and a short last batch with fewer rows
//! than devices (batch-norm statistics as one device's), a loss averaged over valid tokens
//! (`WeightedMean`) against one device on the whole batch, a seeded run with dropout repeated,
//! and a refused batch that leaves the statistics as they were.

use crate::Outcome;
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_data_parallel::{DataParallelTrainer, WeightedMean};
use dp_model::{Classifier, Cnn, CnnConfig, MlpConfig, TextClassifier, TextClassifierConfig};
use dp_zoo::compare::max_param_diff;

pub fn checks<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Vec<Outcome>> {
    Ok(vec![
        ragged_statistics::<B>(devices, tolerance)?,
        token_mean::<B>(devices, tolerance)?,
        seeded_dropout::<B>(devices, tolerance)?,
        refused_batch::<B>(devices)?,
    ])
}

/// The first batch norm's running mean, settled.
fn first_mean<Bk: Backend>(model: &Cnn<Bk>) -> Tensor<Bk, 1> {
    let _ = model.clone().into_record();
    model.blocks[0].norm.running_mean().value()
}

fn cnn<B: AutodiffBackend>(d: &B::Device) -> Cnn<B> {
    CnnConfig::new(1, 3)
        .with_widths(vec![4, 6])
        .init::<B>(d)
        .fork(d)
}

fn ragged_statistics<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Outcome> {
    let d = &devices[0];
    let n = devices.len();
    // A full micro-batch, one of a single row, and a short one.
    let sizes = [2 * n + 1, 1, n.saturating_sub(1).max(1), 2 * n];
    let start = cnn::<B>(d);
    let plain = Cnn::<B>::from_inner(start.valid());
    let mut trainer = DataParallelTrainer::new(
        Cnn::from_inner(start.valid()),
        SgdConfig::new().init(),
        devices.to_vec(),
    )?;
    for (i, &rows) in sizes.iter().enumerate() {
        let batch = dp_zoo::data::uniform_on::<B, 4>([rows, 1, 6, 6], 500 + i as u64, d);
        let _ = plain.logits(batch.0.clone());
        trainer.accumulate(batch, |m: &Cnn<B>, (x, y)| m.loss(x, y))?;
    }
    trainer.apply(0.1)?;
    let diff = dp_zoo::compare::max_abs_diff(first_mean(trainer.module()), first_mean(&plain));
    Ok(Outcome::new(
        format!("batch norm: micro-batches of {sizes:?} rows leave one device's running mean"),
        diff,
        tolerance,
    ))
}

fn token_mean<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Outcome> {
    let d = &devices[0];
    let model = TextClassifierConfig::new(12, 6, 3)
        .with_d_model(8)
        .with_heads(2)
        .with_layers(1)
        .with_d_ff(16)
        .init::<B>(d)
        .fork(d);
    let rows = 3 * devices.len() + 1;
    let (x, y) = dp_zoo::data::tokens_on::<B>(rows, 77, d);
    let loss = |m: &TextClassifier<B>, (x, y)| {
        let (sum, count) = m.token_loss_sum(x, y);
        WeightedMean::new(sum, count)
    };
    let mut trainer = DataParallelTrainer::new(
        TextClassifier::from_inner(model.valid()),
        SgdConfig::new().init(),
        devices.to_vec(),
    )?;
    trainer.step(0.2, (x.clone(), y.clone()), loss)?;
    let plain = TextClassifier::from_inner(model.valid());
    let (sum, count) = plain.token_loss_sum(x, y);
    let grads = GradientsParams::from_grads((sum / count).backward(), &plain);
    let expected = SgdConfig::new().init().step(0.2, plain, grads);
    Ok(Outcome::new(
        format!("a loss averaged over valid tokens: {rows} padded sequences, one SGD step"),
        max_param_diff(trainer.module(), &expected),
        tolerance,
    ))
}

fn seeded_dropout<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Outcome> {
    let d = &devices[0];
    let start = MlpConfig::new(8, vec![32], 3)
        .with_dropout(0.3)
        .init::<B>(d)
        .fork(d);
    let run = || -> anyhow::Result<_> {
        let module = dp_model::Mlp::from_inner(start.valid());
        let mut trainer =
            DataParallelTrainer::new(module, SgdConfig::new().init(), devices.to_vec())?
                .with_seed(21);
        for step in 0..3 {
            let batch = dp_zoo::data::uniform_on::<B, 2>([4 * devices.len() + 3, 8], 600 + step, d);
            trainer.step(0.1, batch, |m: &dp_model::Mlp<B>, (x, y)| m.loss(x, y))?;
        }
        Ok(trainer.into_parts().0)
    };
    let (first, again) = (run()?, run()?);
    Ok(Outcome::new(
        "dropout: a seeded run repeats (3 steps, twice)".into(),
        max_param_diff(&first, &again),
        tolerance,
    ))
}

fn refused_batch<B: AutodiffBackend>(devices: &[B::Device]) -> anyhow::Result<Outcome> {
    let d = &devices[0];
    let mut trainer =
        DataParallelTrainer::new(cnn::<B>(d), SgdConfig::new().init(), devices.to_vec())?;
    let rows = 2 * devices.len();
    let (x, y) = dp_zoo::data::uniform_on::<B, 4>([rows, 1, 6, 6], 700, d);
    let before = first_mean(trainer.module()).into_data();
    // A NaN in the input: the loss is NaN, the batch must leave no trace.
    let poisoned = x.clone().add_scalar(f32::NAN);
    let refused = trainer
        .step(
            0.1,
            (poisoned, y),
            |m: &Cnn<B>, (x, y): (Tensor<B, 4>, _)| m.loss(x.clone(), y) + x.sum().mul_scalar(0.0),
        )
        .is_err();
    let after = first_mean(trainer.module()).into_data();
    Ok(Outcome::check(
        "a refused batch leaves the running statistics as they were".into(),
        refused && before == after,
        format!(
            "refused: {refused}; statistics unchanged: {}",
            before == after
        ),
    ))
}
