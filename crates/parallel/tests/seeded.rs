//! Seeded runs with dropout repeat on several devices: the trainer's steps (micro-batches
//! included), a run resumed from a checkpoint, and forwards through `DataParallel`.
//!
//! Burn's backends draw from one generator per process, which every test thread of this binary
//! would share: the tests take turns.

mod common;

use burn::module::Module;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::Tensor;
use burn_data_parallel::{Chunk, DataParallel, DataParallelTrainer};
use common::zoo::{AB, FEATURES, copy, mlp_with_dropout, rows};
use common::{cpu, cpus, max_param_diff};
use dp_model::{Classifier, Mlp};
use std::sync::Mutex;

/// One test at a time: they all reseed the process's generator.
static GENERATOR: Mutex<()> = Mutex::new(());

const TOLERANCE: f32 = 1e-5;

type Adam = burn::optim::adaptor::OptimizerAdaptor<burn::optim::Adam, Mlp<AB>, AB>;
type AdamState = <Adam as Optimizer<Mlp<AB>, AB>>::Record;

fn loss(m: &Mlp<AB>, (x, y): (Tensor<AB, 2>, Tensor<AB, 1, burn::tensor::Int>)) -> Tensor<AB, 1> {
    m.loss(x, y)
}

/// `steps` Adam steps from step `from` on, each of two micro-batches (9 and 5 rows), on
/// `devices` devices with `seed`, starting from `start` (and its optimizer state, if given).
fn train(
    start: &Mlp<AB>,
    state: Option<AdamState>,
    devices: usize,
    seed: u64,
    from: usize,
    steps: usize,
) -> DataParallelTrainer<AB, Mlp<AB>, Adam> {
    let mut optimizer = AdamConfig::new().init::<AB, Mlp<AB>>();
    if let Some(state) = state {
        optimizer = optimizer.load_record(state);
    }
    let mut trainer = DataParallelTrainer::new(copy(start), optimizer, cpus(devices))
        .unwrap()
        .with_seed(seed)
        .with_steps_taken(from);
    for step in from..from + steps {
        for (rows_, part) in [(9, 0), (5, 1)] {
            let batch = rows::<AB>(rows_, (10 * step + part) as u64);
            trainer.accumulate(batch, loss).unwrap();
        }
        trainer.apply(0.01).unwrap();
    }
    trainer
}

#[test]
fn a_seeded_run_repeats_on_several_devices() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let start = mlp_with_dropout::<AB>();
    for devices in [1, 2, 3] {
        let first = train(&start, None, devices, 7, 0, 4);
        let again = train(&start, None, devices, 7, 0, 4);
        let diff = max_param_diff(first.module(), again.module());
        assert!(
            diff <= TOLERANCE,
            "{devices} devices: runs differ by {diff}"
        );
        // The draws matter: another seed trains other parameters.
        let other = train(&start, None, devices, 8, 0, 4);
        let apart = max_param_diff(first.module(), other.module());
        assert!(
            apart > 1e-4,
            "{devices} devices: seeds 7 and 8 differ by only {apart}"
        );
    }
}

#[test]
fn a_resumed_seeded_run_draws_what_the_uninterrupted_one_drew() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let start = mlp_with_dropout::<AB>();
    let whole = train(&start, None, 3, 11, 0, 4);
    let (module, optimizer) = train(&start, None, 3, 11, 0, 2).into_parts();
    let resumed = train(&module, Some(optimizer.to_record()), 3, 11, 2, 2);
    let diff = max_param_diff(whole.module(), resumed.module());
    assert!(diff <= TOLERANCE, "the resumed run differs by {diff}");
}

#[test]
fn seeded_forwards_through_data_parallel_repeat() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let model = mlp_with_dropout::<AB>();
    let x = Tensor::<AB, 2>::ones([10, FEATURES], &cpu());
    let run = || {
        let mut dp = DataParallel::new(copy(&model), cpus(3))
            .unwrap()
            .with_split_policy(Chunk)
            .with_seed(5);
        let first = dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
        let second = dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
        (first, second)
    };
    let (first, second) = run();
    let (again, _) = run();
    let same: f32 = (first.clone() - again).abs().max().into_scalar();
    assert!(same <= 1e-6, "the same call differs by {same}");
    // Each call, and each replica, draws masks of its own.
    let calls: f32 = (first.clone() - second).abs().max().into_scalar();
    assert!(calls > 1e-3, "two calls drew the same masks");
    let replicas: f32 = (first.clone().narrow(0, 0, 3) - first.narrow(0, 4, 3))
        .abs()
        .max()
        .into_scalar();
    assert!(replicas > 1e-3, "two replicas drew the same masks");
}

#[test]
fn a_seeded_transformer_with_dropout_repeats_on_three_devices() {
    // Attention, feed-forward and residual dropout: several draws per forward pass, over
    // padded sequences of unequal lengths split 4, 4, 3.
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let start = dp_model::TextClassifierConfig::new(12, 6, 3)
        .with_d_model(8)
        .with_heads(2)
        .with_layers(1)
        .with_d_ff(16)
        .with_dropout(0.2)
        .init::<AB>(&cpu())
        .fork(&cpu());
    let run = |seed: u64| {
        let mut trainer = DataParallelTrainer::new(copy(&start), AdamConfig::new().init(), cpus(3))
            .unwrap()
            .with_seed(seed);
        for step in 0..3 {
            let batch = common::zoo::tokens::<AB>(11, 70 + step);
            trainer
                .step(0.01, batch, |m: &dp_model::TextClassifier<AB>, (x, y)| {
                    m.loss(x, y)
                })
                .unwrap();
        }
        trainer.into_parts().0
    };
    let (first, again, other) = (run(3), run(3), run(4));
    let diff = max_param_diff(&first, &again);
    assert!(diff <= TOLERANCE, "the runs differ by {diff}");
    let apart = max_param_diff(&first, &other);
    assert!(apart > 1e-5, "seeds 3 and 4 differ by only {apart}");
}

/// A seeded run with dropout and the optimizer step sharded (whose replicas for the next step
/// are built by the step itself) draws and trains what the run with the step on the first
/// device does, value for value: 3 devices, micro-batches of 9 and 5 rows, 4 steps.
#[test]
fn a_seeded_run_with_the_sharded_step_trains_as_the_step_on_the_first_device() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let start = mlp_with_dropout::<AB>();
    let plain = train(&start, None, 3, 7, 0, 4);
    let optimizer = AdamConfig::new().init::<AB, Mlp<AB>>();
    let mut sharded = DataParallelTrainer::new(copy(&start), optimizer, cpus(3))
        .unwrap()
        .with_seed(7)
        .with_sharded_step();
    for step in 0..4 {
        for (rows_, part) in [(9, 0), (5, 1)] {
            let batch = rows::<AB>(rows_, (10 * step + part) as u64);
            sharded.accumulate(batch, loss).unwrap();
        }
        sharded.apply(0.01).unwrap();
    }
    assert!(max_param_diff(plain.module(), &start) > 1e-4);
    assert_eq!(max_param_diff(sharded.module(), plain.module()), 0.0);
    // The whole state came back: the same next step from it on the first device.
    let resumed = train(
        sharded.module(),
        Some(sharded.optimizer().to_record()),
        3,
        7,
        4,
        1,
    );
    let continued = train(
        plain.module(),
        Some(plain.optimizer().to_record()),
        3,
        7,
        4,
        1,
    );
    assert_eq!(max_param_diff(resumed.module(), continued.module()), 0.0);
}
