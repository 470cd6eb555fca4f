//! Losses with their own denominator (a mean over valid tokens): the step equals one device's
//! on the whole batch, however the rows are split across devices and micro-batches, where a
//! mean of the parts' means (PyTorch DDP's rule) is not; evaluation weights means the same way.

mod common;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{DataParallelError, DataParallelTrainer, Metric, WeightedMean};
use common::zoo::{AB, copy, tokens, transformer};
use common::{B, cpus, max_param_diff};
use dp_model::TextClassifier;

const TOLERANCE: f32 = 1e-5;
const LR: f64 = 0.2;

type Batch = (Tensor<AB, 2, Int>, Tensor<AB, 1, Int>);

fn token_mean(m: &TextClassifier<AB>, (x, y): Batch) -> WeightedMean<AB> {
    let (sum, count) = m.token_loss_sum(x, y);
    WeightedMean::new(sum, count)
}

/// `rows` padded sequences of unequal lengths, cut into micro-batches of `sizes` rows.
fn micro_batches(sizes: &[usize], seed: u64) -> Vec<Batch> {
    let rows = sizes.iter().sum();
    let (x, y) = tokens::<AB>(rows, seed);
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let part = (x.clone().narrow(0, start, n), y.clone().narrow(0, start, n));
            start += n;
            part
        })
        .collect()
}

/// One SGD step of one device on the token mean over every micro-batch together; returns the
/// new module and the loss.
fn single_device_step(model: TextClassifier<AB>, batches: &[Batch]) -> (TextClassifier<AB>, f64) {
    let x = Tensor::cat(batches.iter().map(|b| b.0.clone()).collect(), 0);
    let y = Tensor::cat(batches.iter().map(|b| b.1.clone()).collect(), 0);
    let (sum, count) = model.token_loss_sum(x, y);
    let loss = sum / count;
    let value = f64::from(loss.clone().into_scalar());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optimizer = SgdConfig::new().init::<AB, TextClassifier<AB>>();
    (optimizer.step(LR, model, grads), value)
}

#[test]
fn a_token_mean_is_exact_across_devices_and_micro_batches() {
    let cases: [(usize, &[usize]); 4] = [(3, &[10]), (4, &[7, 2, 5]), (2, &[1, 9]), (3, &[2, 1])];
    for (devices, sizes) in cases {
        let what = format!("micro-batches {sizes:?} on {devices} devices");
        let start = transformer::<AB>();
        let mut trainer =
            DataParallelTrainer::new(copy(&start), SgdConfig::new().init(), cpus(devices)).unwrap();
        let mut reference = copy(&start);
        for step in 0..2 {
            let batches = micro_batches(sizes, 10 * step + devices as u64);
            let (mut weighted, mut weight) = (0.0, 0.0);
            for batch in batches.clone() {
                let stats = trainer.accumulate(batch, token_mean).unwrap();
                weighted += stats.loss * stats.weight;
                weight += stats.weight;
            }
            trainer.apply(LR).unwrap();
            let (next, loss) = single_device_step(reference, &batches);
            reference = next;
            // The losses are read from different groupings of the same sums: rounding only.
            assert!(
                (weighted / weight - loss).abs() <= 5e-5,
                "{what}: the token mean is {loss}, the trainer's {}",
                weighted / weight
            );
        }
        let moved = max_param_diff(trainer.module(), &start);
        assert!(moved > 1e-3, "{what}: the parameters moved only {moved}");
        let diff = max_param_diff(trainer.module(), &reference);
        assert!(
            diff <= TOLERANCE,
            "{what}: parameters off one device's by {diff}"
        );
    }
}

#[test]
fn the_same_loss_as_a_mean_per_part_is_not_the_token_mean() {
    // What the trainer would do without the stated denominator: each part's own token mean,
    // weighted by rows. The test above would catch it.
    let start = transformer::<AB>();
    let mut trainer =
        DataParallelTrainer::new(copy(&start), SgdConfig::new().init(), cpus(3)).unwrap();
    let batches = micro_batches(&[10], 1);
    trainer
        .step(LR, batches[0].clone(), |m: &TextClassifier<AB>, (x, y)| {
            let (sum, count) = m.token_loss_sum(x, y);
            sum / count
        })
        .unwrap();
    let (reference, _) = single_device_step(copy(&start), &batches);
    let diff = max_param_diff(trainer.module(), &reference);
    assert!(
        diff > 1e-4,
        "a mean of the parts' means is off by only {diff}"
    );
}

#[test]
fn evaluation_weights_means_by_their_own_weights() {
    let model = transformer::<AB>();
    let trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), cpus(3)).unwrap();
    let (x, y) = tokens::<B>(11, 5);
    let [token_mean, row_mean, rows] = trainer
        .evaluate((x.clone(), y.clone()), |m, (x, y)| {
            let rows = x.dims()[0] as f64;
            let (sum, count) = m.token_loss_sum(x.clone(), y.clone());
            let count = f64::from(count.into_scalar());
            let row_loss = f64::from(
                common::zoo::cross_entropy(dp_model::Classifier::logits(m, x), y).into_scalar(),
            );
            [
                Metric::mean(f64::from(sum.into_scalar()) / count, count),
                Metric::mean(row_loss, rows),
                Metric::Sum(rows),
            ]
        })
        .unwrap();
    let inference = trainer.module().valid();
    let (sum, count) = inference.token_loss_sum(x.clone(), y.clone());
    let expected = f64::from((sum / count).into_scalar());
    assert!(
        (token_mean - expected).abs() <= 1e-5,
        "{token_mean} against {expected}"
    );
    let expected = f64::from(
        common::zoo::cross_entropy(dp_model::Classifier::logits(&inference, x), y).into_scalar(),
    );
    assert!(
        (row_mean - expected).abs() <= 1e-5,
        "{row_mean} against {expected}"
    );
    assert_eq!(rows, 11.0);
}

#[test]
fn a_step_mixing_kinds_of_loss_or_without_weight_is_refused() {
    let mut trainer =
        DataParallelTrainer::new(transformer::<AB>(), SgdConfig::new().init(), cpus(2)).unwrap();
    let batches = micro_batches(&[4, 4], 3);
    trainer.accumulate(batches[0].clone(), token_mean).unwrap();
    let err = trainer
        .accumulate(batches[1].clone(), |m: &TextClassifier<AB>, (x, y)| {
            dp_model::Classifier::loss(m, x, y)
        })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::MixedLosses { step: 0, .. }),
        "{err}"
    );
    trainer.apply(LR).unwrap();

    // Every token masked: no denominator.
    let before = common::params(trainer.module());
    trainer
        .accumulate(batches[1].clone(), |m: &TextClassifier<AB>, (x, y)| {
            let (sum, _) = m.token_loss_sum(x, y);
            WeightedMean::new(sum.mul_scalar(0.0), Tensor::zeros([1], &common::cpu()))
        })
        .unwrap();
    let err = trainer.apply(LR).unwrap_err();
    assert!(
        matches!(err, DataParallelError::NoLossWeight { step: 1 }),
        "{err}"
    );
    assert_eq!(common::params(trainer.module()), before);

    let err = trainer
        .accumulate(batches[0].clone(), |m: &TextClassifier<AB>, (x, y)| {
            let (sum, _) = m.token_loss_sum(x, y);
            WeightedMean::new(sum, Tensor::full([1], -1.0, &common::cpu()))
        })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::InvalidLossWeight { .. }),
        "{err}"
    );
}
