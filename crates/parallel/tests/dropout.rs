//! Dropout: exact in evaluation (it is off), and in training it runs, learns, and every
//! replica draws a mask of its own.

mod common;

use burn::module::AutodiffModule;
use burn::optim::AdamConfig;
use burn::tensor::Tensor;
use burn_data_parallel::{DataParallel, DataParallelTrainer};
use common::zoo::{AB, FEATURES, mlp_with_dropout, rows};
use common::{B, cpu, cpus};
use dp_model::{Classifier, Mlp};

#[test]
fn evaluation_is_exact() {
    let model = mlp_with_dropout::<AB>().valid();
    let (x, _) = rows::<B>(30, 1);
    let mut dp = DataParallel::new(model.clone(), cpus(4)).unwrap();
    let out = dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
    let diff: f32 = (out - model.logits(x)).abs().max().into_scalar();
    assert!(diff <= 1e-6, "{diff}");
}

#[test]
fn replicas_draw_masks_of_their_own() {
    // Every row is the same: any difference between the replicas' outputs is their masks'.
    let model = mlp_with_dropout::<AB>();
    let x = Tensor::<AB, 2>::ones([8, FEATURES], &cpu());
    let mut dp = DataParallel::new(model, cpus(2)).unwrap();
    let out = dp.forward(x, |m, x| m.logits(x)).unwrap();
    let first = out.clone().narrow(0, 0, 4);
    let second = out.narrow(0, 4, 4);
    let diff: f32 = (first.clone() - second).abs().max().into_scalar();
    assert!(diff > 1e-3, "both replicas applied the same masks");
    // Within a replica too, rows get masks of their own.
    let rows_differ: f32 = (first.clone().narrow(0, 0, 1) - first.narrow(0, 1, 1))
        .abs()
        .max()
        .into_scalar();
    assert!(rows_differ > 1e-3);
}

#[test]
fn training_with_dropout_learns() {
    // Targets follow the sign of the first feature: learnable despite the dropout.
    let (x, _) = rows::<AB>(64, 3);
    let y = x
        .clone()
        .narrow(1, 0, 1)
        .greater_elem(0.0)
        .int()
        .squeeze_dim::<1>(1);
    let mut trainer =
        DataParallelTrainer::new(mlp_with_dropout::<AB>(), AdamConfig::new().init(), cpus(4))
            .unwrap();
    let step = |trainer: &mut DataParallelTrainer<AB, Mlp<AB>, _>| {
        trainer
            .step(0.01, (x.clone(), y.clone()), |m: &Mlp<AB>, (x, y)| {
                m.loss(x, y)
            })
            .unwrap()
            .loss
    };
    let first = step(&mut trainer);
    let mut last = first;
    for _ in 0..60 {
        last = step(&mut trainer);
    }
    assert!(last < 0.6 * first, "loss went from {first} to {last}");
    let accuracy = trainer
        .module()
        .valid()
        .correct(x.clone().inner(), y.clone().inner()) as f64
        / 64.0;
    assert!(accuracy > 0.9, "accuracy {accuracy}");
}
