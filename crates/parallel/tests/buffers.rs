//! Buffers (BatchNorm's running statistics) under data parallelism: each replica updates its
//! own, the module's become their row-weighted mean after a training call, replicas never move
//! or share the module's, and evaluation after training equals the plain evaluation.
//!
//! Single-device training's running mean is reproduced exactly where the math allows: by a
//! batch norm whose input does not itself depend on batch statistics (the first one here).
//! Later ones see the outputs of per-part normalization, as every data-parallel batch norm
//! without synchronization does.

mod common;

use burn::module::{AutodiffModule, Module, RunningState};
use burn::optim::SgdConfig;
use burn::tensor::{Tensor, TensorData};
use burn_data_parallel::{
    Balanced, Chunk, DataParallel, DataParallelError, DataParallelTrainer, Replicate, Scatter,
    SplitPolicy,
};
use common::zoo::*;
use common::{B, cpu, cpus};
use dp_model::{Classifier, Cnn};

const TOLERANCE: f32 = 1e-5;

/// The running statistics of every batch norm of `model`, flattened, synced first.
fn stats<Bk: burn::tensor::backend::Backend>(model: &Cnn<Bk>) -> Vec<(Vec<f32>, Vec<f32>)> {
    // Saving a clone folds in the updates each thread has pending.
    let _ = model.clone().into_record();
    model
        .blocks
        .iter()
        .map(|block| {
            let read = |t: Tensor<Bk, 1>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            (
                read(block.norm.running_mean().value()),
                read(block.norm.running_var().value()),
            )
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// What the running statistics must be after one data-parallel training forward of `x` split
/// into `sizes`: the row-weighted mean of what each part alone would have left.
fn expected_stats(start: &Cnn<AB>, x: Tensor<AB, 4>, sizes: &[usize]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let rows: usize = sizes.iter().sum();
    let parts = Scatter::<AB>::scatter(x, 0, sizes, &vec![Default::default(); sizes.len()]);
    let mut sums: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for (part, &n) in parts.into_iter().zip(sizes) {
        let alone = start.unaliased();
        let _ = alone.logits(part);
        let weight = n as f32 / rows as f32;
        for (block, (mean, var)) in stats(&alone).into_iter().enumerate() {
            let weighted = |v: Vec<f32>| v.into_iter().map(|x| x * weight).collect::<Vec<_>>();
            match sums.get_mut(block) {
                Some((m, v)) => {
                    m.iter_mut().zip(weighted(mean)).for_each(|(s, w)| *s += w);
                    v.iter_mut().zip(weighted(var)).for_each(|(s, w)| *s += w);
                }
                None => sums.push((weighted(mean), weighted(var))),
            }
        }
    }
    sums
}

/// The running mean of the first batch norm after a single-device training forward of `x`.
fn single_device_first_mean(start: &Cnn<AB>, x: Tensor<AB, 4>) -> Vec<f32> {
    let whole = start.unaliased();
    let _ = whole.logits(x);
    stats(&whole).swap_remove(0).0
}

fn assert_stats(found: &[(Vec<f32>, Vec<f32>)], expected: &[(Vec<f32>, Vec<f32>)], what: &str) {
    for (block, ((mean, var), (emean, evar))) in found.iter().zip(expected).enumerate() {
        let (dm, dv) = (max_diff(mean, emean), max_diff(var, evar));
        assert!(
            dm <= TOLERANCE,
            "{what}: block {block} running mean off by {dm}"
        );
        assert!(
            dv <= TOLERANCE,
            "{what}: block {block} running variance off by {dv}"
        );
    }
}

#[test]
fn a_trainer_step_leaves_the_row_weighted_statistics() {
    for (devices, rows) in [(4, 30), (4, 10), (3, 5), (2, 7)] {
        let start = cnn::<AB>();
        let (x, y) = images::<AB>(rows, rows as u64);
        let expected = expected_stats(&start, x.clone(), &Chunk.sizes(rows, devices));
        let first_mean = single_device_first_mean(&start, x.clone());
        let mut trainer =
            DataParallelTrainer::new(copy(&start), SgdConfig::new().init(), cpus(devices)).unwrap();
        trainer
            .step(0.1, (x, y), |m: &Cnn<AB>, (x, y)| m.loss(x, y))
            .unwrap();
        let found = stats(trainer.module());
        assert_stats(&found, &expected, &format!("{rows} rows on {devices}"));
        let diff = max_diff(&found[0].0, &first_mean);
        assert!(
            diff <= TOLERANCE,
            "first running mean off single-device's by {diff}"
        );
        // The module's own statistics are untouched by the step from the start: the start's
        // statistics (shared with nothing) still hold their initial values.
        let initial = stats(&start);
        assert!(
            initial
                .iter()
                .all(|(m, v)| m.iter().all(|&x| x == 0.0) && v.iter().all(|&x| x == 1.0))
        );
    }
}

#[test]
fn a_forward_through_data_parallel_leaves_the_row_weighted_statistics() {
    let start = cnn::<AB>();
    let (x, _) = images::<AB>(30, 1);
    let expected = expected_stats(&start, x.clone(), &Chunk.sizes(30, 4));
    let first_mean = single_device_first_mean(&start, x.clone());
    let mut dp = DataParallel::new(start.unaliased(), cpus(4)).unwrap();
    dp.forward(x, |m, x| m.logits(x)).unwrap();
    let found = stats(dp.module());
    assert_stats(&found, &expected, "forward");
    assert!(max_diff(&found[0].0, &first_mean) <= TOLERANCE);
}

#[test]
fn the_first_running_mean_of_accumulated_micro_batches_is_single_device_training_s() {
    let start = cnn::<AB>();
    let micro: Vec<_> = [(9, 1), (14, 2), (5, 3)]
        .into_iter()
        .map(|(rows, seed)| images::<AB>(rows, seed))
        .collect();
    let plain = start.unaliased();
    for (x, _) in &micro {
        let _ = plain.logits(x.clone());
    }
    let mut trainer =
        DataParallelTrainer::new(copy(&start), SgdConfig::new().init(), cpus(3)).unwrap();
    for batch in micro {
        trainer
            .accumulate(batch, |m: &Cnn<AB>, (x, y)| m.loss(x, y))
            .unwrap();
    }
    trainer.apply(0.1).unwrap();
    let (found, expected) = (stats(trainer.module()), stats(&plain));
    let diff = max_diff(&found[0].0, &expected[0].0);
    assert!(diff <= TOLERANCE, "running mean off by {diff}");
}

#[test]
fn evaluation_after_training_equals_the_plain_evaluation_of_the_trained_module() {
    let mut trainer =
        DataParallelTrainer::new(cnn::<AB>(), SgdConfig::new().init(), cpus(4)).unwrap();
    for step in 0..3 {
        trainer
            .step(0.1, images::<AB>(30, 10 + step), |m: &Cnn<AB>, (x, y)| {
                m.loss(x, y)
            })
            .unwrap();
    }
    let trained = trainer.module().valid();
    let (x, _) = images::<B>(23, 99);
    let mut dp = DataParallel::new(trained.clone(), cpus(4)).unwrap();
    let out = dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
    let diff: f32 = (out - trained.logits(x)).abs().max().into_scalar();
    assert!(diff <= TOLERANCE, "evaluation differs by {diff}");
    // The statistics were trained: evaluation uses values that moved from 0 and 1.
    let (mean, var) = &stats(&trained)[0];
    assert!(mean.iter().any(|&m| m.abs() > 1e-3) && var.iter().any(|&v| (v - 1.0).abs() > 1e-3));
}

#[test]
fn replicas_do_not_share_the_module_s_statistics() {
    // Kept replicas for evaluation: updating a replica's statistics (as a training forward on
    // its thread would) must leave the module's alone.
    let model = cnn::<AB>().valid();
    let mut dp = DataParallel::new(model, cpus(3)).unwrap();
    let (x, _) = images::<B>(9, 5);
    let before = stats(dp.module());
    dp.forward(x.clone(), |m, x| {
        // Replica k adds 5 (k + 1): shared statistics would end with the threads' mean, +10.
        let step = 5.0 * (1 + burn_data_parallel::current_replica().unwrap().index) as f64;
        for block in &m.blocks {
            block
                .norm
                .running_mean()
                .update(block.norm.running_mean().value().add_scalar(step));
        }
        m.logits(x)
    })
    .unwrap();
    // Inference makes no combination: only replica 0, the module itself, changed its own.
    let after = stats(dp.module());
    for ((m0, _), (m1, _)) in before.iter().zip(&after) {
        assert!(
            m1.iter().zip(m0).all(|(a, b)| (a - b - 5.0).abs() < 1e-6),
            "{m0:?} -> {m1:?}"
        );
    }
}

/// `model` with its batch norms' running statistics set to `stats` (a copy: `model` keeps its
/// own).
fn with_stats(model: &Cnn<AB>, stats: &[(Vec<f32>, Vec<f32>)]) -> Cnn<AB> {
    let mut copy = model.unaliased();
    let tensor = |values: &Vec<f32>| {
        Tensor::<AB, 1>::from_data(TensorData::new(values.clone(), [values.len()]), &cpu())
    };
    for (block, (mean, var)) in copy.blocks.iter_mut().zip(stats) {
        let (running_mean, running_var) = block.norm.running_mut();
        *running_mean = RunningState::new(tensor(mean));
        *running_var = RunningState::new(tensor(var));
    }
    copy
}

/// The statistics after training forwards of `calls` in turn, each split by `policy` over
/// `devices`: every call's parts start from the statistics the calls before left.
fn expected_after_calls(
    start: &Cnn<AB>,
    calls: &[Tensor<AB, 4>],
    policy: &dyn SplitPolicy,
    devices: usize,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut current = start.unaliased();
    for x in calls {
        let sizes = policy.sizes(x.dims()[0], devices);
        let stats = expected_stats(&current, x.clone(), &sizes);
        current = with_stats(&current, &stats);
    }
    stats(&current)
}

/// Micro-batches and short last batches that use fewer replicas than there are devices, the
/// policy that splits them, and the devices.
fn ragged_cases() -> Vec<(Vec<usize>, Box<dyn SplitPolicy>, usize)> {
    vec![
        (vec![8, 5, 8], Box::new(Chunk), 4),
        (vec![9, 2, 9, 1, 9], Box::new(Chunk), 3),
        (vec![8, 1, 8], Box::new(Chunk), 2),
        (vec![8, 1, 8], Box::new(Balanced), 2),
        (vec![1, 1, 7], Box::new(Chunk), 3),
    ]
}

#[test]
fn micro_batches_that_use_fewer_replicas_leave_the_statistics_of_one_device() {
    for (sizes, policy, devices) in ragged_cases() {
        let what = format!("micro-batches {sizes:?} on {devices} devices by {policy:?}");
        let start = cnn::<AB>();
        let micro: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &rows)| images::<AB>(rows, 40 + i as u64))
            .collect();
        let xs: Vec<_> = micro.iter().map(|(x, _)| x.clone()).collect();
        let expected = expected_after_calls(&start, &xs, policy.as_ref(), devices);
        let plain = start.unaliased();
        for x in &xs {
            let _ = plain.logits(x.clone());
        }
        let mut trainer =
            DataParallelTrainer::new(copy(&start), SgdConfig::new().init(), cpus(devices))
                .unwrap()
                .with_split_policy(policy);
        for batch in micro {
            trainer
                .accumulate(batch, |m: &Cnn<AB>, (x, y)| m.loss(x, y))
                .unwrap();
        }
        trainer.apply(0.1).unwrap();
        let found = stats(trainer.module());
        assert_stats(&found, &expected, &what);
        let diff = max_diff(&found[0].0, &stats(&plain)[0].0);
        assert!(
            diff <= TOLERANCE,
            "{what}: first running mean off one device's by {diff}"
        );
    }
}

#[test]
fn forwards_that_use_fewer_replicas_leave_the_statistics_of_one_device() {
    // Recalibrating a frozen CNN's statistics in training mode, with a short call between.
    for (sizes, policy, devices) in ragged_cases() {
        let what = format!("forwards of {sizes:?} rows on {devices} devices by {policy:?}");
        let start = frozen_cnn::<AB>();
        let xs: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &rows)| images::<AB>(rows, 60 + i as u64).0)
            .collect();
        let expected = expected_after_calls(&start, &xs, policy.as_ref(), devices);
        let plain = start.unaliased();
        let mut dp = DataParallel::new(start.unaliased(), cpus(devices))
            .unwrap()
            .with_split_policy(policy);
        for x in &xs {
            let _ = plain.logits(x.clone());
            dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
        }
        let found = stats(dp.module());
        assert_stats(&found, &expected, &what);
        let diff = max_diff(&found[0].0, &stats(&plain)[0].0);
        assert!(
            diff <= TOLERANCE,
            "{what}: first running mean off one device's by {diff}"
        );
    }
}

/// `images` with a NaN in its last row.
fn poisoned(rows: usize, seed: u64) -> (Tensor<AB, 4>, Tensor<AB, 1, burn::tensor::Int>) {
    let (x, y) = images::<AB>(rows, seed);
    let nan = Tensor::<AB, 4>::full([1, 1, 6, 6], f32::NAN, &cpu());
    (Tensor::cat(vec![x.narrow(0, 0, rows - 1), nan], 0), y)
}

#[test]
fn a_refused_batch_leaves_the_module_exactly_as_it_was() {
    let mut trainer =
        DataParallelTrainer::new(cnn::<AB>(), SgdConfig::new().init(), cpus(3)).unwrap();
    let mut clean =
        DataParallelTrainer::new(copy(trainer.module()), SgdConfig::new().init(), cpus(3)).unwrap();
    // A NaN pixel makes the loss NaN (the pooling alone would skip it).
    let loss =
        |m: &Cnn<AB>, (x, y): (Tensor<AB, 4>, _)| m.loss(x.clone(), y) + x.sum().mul_scalar(0.0);
    for t in [&mut trainer, &mut clean] {
        t.step(0.1, images::<AB>(12, 1), loss).unwrap();
    }
    let before = stats(trainer.module());
    let params_before = common::params(trainer.module());
    let err = trainer.step(0.1, poisoned(12, 2), loss).unwrap_err();
    assert!(
        matches!(err, DataParallelError::NonFiniteLoss { .. }),
        "{err}"
    );
    // Statistics and parameters as they were, to the bit.
    assert_eq!(stats(trainer.module()), before);
    assert_eq!(common::params(trainer.module()), params_before);
    // And training goes on as if the batch had never been given.
    for step in 3..5 {
        for t in [&mut trainer, &mut clean] {
            t.step(0.1, images::<AB>(10, step), loss).unwrap();
        }
    }
    assert_stats(&stats(trainer.module()), &stats(clean.module()), "after");
    let diff = common::max_param_diff(trainer.module(), clean.module());
    assert!(diff <= TOLERANCE, "parameters off by {diff}");
}

#[test]
fn a_forward_whose_replica_panics_leaves_the_statistics_as_they_were() {
    let mut dp = DataParallel::new(frozen_cnn::<AB>(), cpus(3)).unwrap();
    dp.forward(images::<AB>(9, 1).0, |m, x| m.logits(x))
        .unwrap();
    let before = stats(dp.module());
    let err = dp
        .forward(images::<AB>(9, 2).0, |m, x| {
            let out = m.logits(x);
            assert!(
                burn_data_parallel::current_replica().unwrap().index != 2,
                "replica 2 fails after its forward pass"
            );
            out
        })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::ReplicaPanicked { replica: 2, .. }),
        "{err}"
    );
    assert_eq!(stats(dp.module()), before);
}

#[test]
fn the_statistics_of_a_failed_or_refused_call_never_come_back() {
    let start = frozen_cnn::<AB>();
    let xs: Vec<_> = (0..3).map(|i| images::<AB>(8, 80 + i).0).collect();
    let expected = expected_after_calls(&start, &[xs[0].clone(), xs[2].clone()], &Chunk, 2);
    let mut dp = DataParallel::new(start.unaliased(), cpus(2)).unwrap();
    dp.forward(xs[0].clone(), |m, x| m.logits(x)).unwrap();
    // Replica 0 fails after its forward pass while replica 1 finishes its own, whose update
    // is then pending on its worker's thread.
    let err = dp
        .forward(xs[1].clone(), |m, x| {
            let out = m.logits(x);
            let replica = burn_data_parallel::current_replica().unwrap().index;
            assert!(replica != 0, "replica 0 fails after its forward pass");
            out
        })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::ReplicaPanicked { replica: 0, .. }),
        "{err}"
    );
    // Outputs refused for their rows, after every replica updated its statistics.
    let err = dp
        .forward(xs[1].clone(), |m, x| m.logits(x).mean_dim(0))
        .unwrap_err();
    assert!(matches!(err, DataParallelError::OutputRows { .. }), "{err}");
    dp.forward(xs[2].clone(), |m, x| m.logits(x)).unwrap();
    assert_stats(
        &stats(dp.module()),
        &expected,
        "after a failed and a refused call",
    );
}
