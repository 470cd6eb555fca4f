//! A data-parallel training step equals the single-device step on the same global batch.

mod common;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{
    Adaptive, Balanced, DataParallelError, DataParallelTrainer, LossReduction, SplitPolicy,
    current_replica,
};
use common::{cpu, cpus, max_param_diff};
use dp_model::{Classifier, Mlp, MlpConfig};

type AB = Autodiff<common::B>;
type Batch = (Tensor<AB, 2>, Tensor<AB, 1, Int>);

const PARAM_TOLERANCE: f32 = 1e-5;

/// A model whose weights come from a generator of its own (the backend's global generator is
/// shared by the test threads, so seeding it would not make the weights reproducible).
fn model(seed: u64) -> Mlp<AB> {
    use rand::{RngExt, SeedableRng};
    struct Fill(rand::rngs::StdRng);
    impl ModuleMapper<AB> for Fill {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<AB, D>>,
        ) -> Param<Tensor<AB, D>> {
            let rng = &mut self.0;
            param.map(|t| {
                let shape = t.shape();
                let values: Vec<f32> = (0..shape.num_elements())
                    .map(|_| rng.random_range(-0.5..0.5))
                    .collect();
                Tensor::from_data(burn::tensor::TensorData::new(values, shape), &t.device())
                    .require_grad()
            })
        }
    }
    let mut fill = Fill(rand::rngs::StdRng::seed_from_u64(seed));
    MlpConfig::new(6, vec![16], 4)
        .init::<AB>(&cpu())
        .map(&mut fill)
        .fork(&cpu())
}

/// A batch drawn from its own generator: the backend's global one is shared by every test
/// thread, so two draws with the same seed could differ.
fn batch(rows: usize, seed: u64) -> Batch {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * 6).map(|_| rng.random_range(-2.0..2.0)).collect();
    let y: Vec<i64> = (0..rows).map(|_| rng.random_range(0..4)).collect();
    (
        Tensor::from_data(burn::tensor::TensorData::new(x, [rows, 6]), &cpu()),
        Tensor::from_data(burn::tensor::TensorData::new(y, [rows]), &cpu()),
    )
}

fn mean_loss(m: &Mlp<AB>, (x, y): Batch) -> Tensor<AB, 1> {
    m.loss(x, y)
}

fn sum_loss(m: &Mlp<AB>, (x, y): Batch) -> Tensor<AB, 1> {
    let rows = x.dims()[0] as f64;
    m.loss(x, y).mul_scalar(rows)
}

/// The reference: plain single-device training.
fn single_step<O: Optimizer<Mlp<AB>, AB>>(
    m: Mlp<AB>,
    optim: &mut O,
    lr: f64,
    batch: Batch,
    loss: fn(&Mlp<AB>, Batch) -> Tensor<AB, 1>,
) -> (Mlp<AB>, f64) {
    let l = loss(&m, batch);
    let value = l.clone().into_scalar() as f64;
    let grads = GradientsParams::from_grads(l.backward(), &m);
    (optim.step(lr, m, grads), value)
}

/// Adam divides by the root of the squared gradient (plus 1e-5): a gradient that rounding
/// leaves at +1e-9 on one side and -1e-9 on the other moves a parameter by about
/// `2 * lr * 1e-9 / 1e-5`. Its learning rates here keep that under the tolerance.
const ADAM_LR: f64 = 0.01;
const SGD_LR: f64 = 0.1;

fn check_one_step<O: Optimizer<Mlp<AB>, AB>>(make: impl Fn() -> O, lr: f64, name: &str) {
    for devices in 1..=4 {
        for rows in [30, 10, 5, 2] {
            let start = model(1);
            let (reference, ref_loss) =
                single_step(start.clone(), &mut make(), lr, batch(rows, 2), mean_loss);
            let mut trainer = DataParallelTrainer::new(start, make(), cpus(devices)).unwrap();
            let stats = trainer.step(lr, batch(rows, 2), mean_loss).unwrap();
            let moved = max_param_diff(&reference, &model(1));
            assert!(
                moved > 1e-4,
                "{name}: the step must move the parameters ({moved})"
            );
            let diff = max_param_diff(trainer.module(), &reference);
            assert!(
                diff <= PARAM_TOLERANCE,
                "{name}: {rows} rows on {devices}: {diff}"
            );
            assert!(
                (stats.loss - ref_loss).abs() <= 1e-5,
                "{name}: loss {} vs {ref_loss}",
                stats.loss
            );
            assert_eq!(stats.rows, rows);
            let split: Vec<usize> = stats.replicas.iter().map(|r| r.rows).collect();
            assert_eq!(split, burn_data_parallel::Chunk.sizes(rows, devices));
        }
    }
}

#[test]
fn one_sgd_step_equals_the_single_device_step() {
    check_one_step(|| SgdConfig::new().init::<AB, Mlp<AB>>(), SGD_LR, "sgd");
}

#[test]
fn one_adam_step_equals_the_single_device_step() {
    check_one_step(|| AdamConfig::new().init::<AB, Mlp<AB>>(), ADAM_LR, "adam");
}

#[test]
fn the_step_does_not_depend_on_the_split_policy() {
    let start = model(3);
    let (reference, _) = single_step(
        start.clone(),
        &mut SgdConfig::new().init(),
        0.5,
        batch(5, 4),
        mean_loss,
    );
    let mut trainer = DataParallelTrainer::new(start, SgdConfig::new().init(), cpus(4))
        .unwrap()
        .with_split_policy(Balanced);
    let stats = trainer.step(0.5, batch(5, 4), mean_loss).unwrap();
    assert_eq!(stats.replicas.len(), Balanced.sizes(5, 4).len());
    assert!(max_param_diff(trainer.module(), &reference) <= PARAM_TOLERANCE);
}

/// Replica 1 made slow (2 ms of sleep per row): the adaptive split gives it fewer rows within
/// a few steps, and every step still equals the single-device step on the whole batch.
#[test]
fn an_adaptive_split_moves_rows_off_a_slow_replica_and_stays_exact() {
    let slow_loss = |m: &Mlp<AB>, (x, y): Batch| {
        if current_replica().is_some_and(|r| r.index == 1) {
            std::thread::sleep(std::time::Duration::from_millis(2 * x.dims()[0] as u64));
        }
        m.loss(x, y)
    };
    let mut reference = model(8);
    let mut ref_optim = AdamConfig::new().init::<AB, Mlp<AB>>();
    let mut trainer =
        DataParallelTrainer::new(reference.clone(), AdamConfig::new().init(), cpus(2))
            .unwrap()
            .with_split_policy(Adaptive::new());
    let mut slow_rows = Vec::new();
    for step in 0..8 {
        let (next, ref_loss) = single_step(
            reference,
            &mut ref_optim,
            ADAM_LR,
            batch(64, 200 + step),
            mean_loss,
        );
        reference = next;
        let stats = trainer
            .step(ADAM_LR, batch(64, 200 + step), slow_loss)
            .unwrap();
        assert!((stats.loss - ref_loss).abs() <= 1e-5, "step {step}");
        assert_eq!(stats.replicas.iter().map(|r| r.rows).sum::<usize>(), 64);
        slow_rows.push(stats.replicas[1].rows);
        assert!(
            max_param_diff(trainer.module(), &reference) <= PARAM_TOLERANCE,
            "step {step}"
        );
    }
    // The torch.chunk split while the first timing warms up, then fewer rows for the slow
    // replica (the bound leaves room for a stalled fast replica), never none.
    assert_eq!(slow_rows[..2], [32, 32], "{slow_rows:?}");
    assert!(
        slow_rows[3..].iter().all(|&r| (1..=12).contains(&r)),
        "{slow_rows:?}"
    );
    let shares = trainer.split_policy().shares().unwrap();
    assert!(shares[1] < 0.25, "{shares:?}");
}

#[test]
fn a_summed_loss_gives_the_summed_step() {
    let start = model(5);
    let (reference, ref_loss) = single_step(
        start.clone(),
        &mut SgdConfig::new().init(),
        0.01,
        batch(30, 6),
        sum_loss,
    );
    let mut trainer = DataParallelTrainer::new(start, SgdConfig::new().init(), cpus(4))
        .unwrap()
        .with_loss_reduction(LossReduction::Sum);
    let stats = trainer.step(0.01, batch(30, 6), sum_loss).unwrap();
    assert!(max_param_diff(trainer.module(), &reference) <= PARAM_TOLERANCE);
    assert!((stats.loss - ref_loss).abs() <= 1e-3 * ref_loss.abs().max(1.0));
}

#[test]
fn twenty_steps_follow_single_device_training() {
    let mut reference = model(7);
    let mut ref_optim = AdamConfig::new().init::<AB, Mlp<AB>>();
    let mut trainer =
        DataParallelTrainer::new(reference.clone(), AdamConfig::new().init(), cpus(3)).unwrap();
    for step in 0..20 {
        let rows = [30, 17, 4][step % 3];
        let (next, ref_loss) = single_step(
            reference,
            &mut ref_optim,
            0.01,
            batch(rows, 100 + step as u64),
            mean_loss,
        );
        reference = next;
        let stats = trainer
            .step(0.01, batch(rows, 100 + step as u64), mean_loss)
            .unwrap();
        assert!(
            (stats.loss - ref_loss).abs() <= 1e-4,
            "step {step}: {} vs {ref_loss}",
            stats.loss
        );
    }
    assert_eq!(trainer.steps(), 20);
    assert!(max_param_diff(trainer.module(), &reference) <= 1e-4);
}

fn check_accumulation<O: Optimizer<Mlp<AB>, AB>>(make: impl Fn() -> O, lr: f64, name: &str) {
    let micro = [batch(7, 11), batch(12, 12), batch(5, 13)];
    let union = (
        Tensor::cat(micro.iter().map(|b| b.0.clone()).collect(), 0),
        Tensor::cat(micro.iter().map(|b| b.1.clone()).collect(), 0),
    );
    let start = model(9);
    let (reference, _) = single_step(start.clone(), &mut make(), lr, union, mean_loss);
    let mut trainer = DataParallelTrainer::new(start, make(), cpus(3)).unwrap();
    for b in micro {
        trainer.accumulate(b, mean_loss).unwrap();
    }
    assert_eq!(trainer.steps(), 0, "accumulating takes no step");
    trainer.apply(lr).unwrap();
    let diff = max_param_diff(trainer.module(), &reference);
    assert!(diff <= PARAM_TOLERANCE, "{name}: {diff}");
}

#[test]
fn accumulating_micro_batches_equals_one_step_on_their_union() {
    check_accumulation(|| SgdConfig::new().init::<AB, Mlp<AB>>(), SGD_LR, "sgd");
    check_accumulation(|| AdamConfig::new().init::<AB, Mlp<AB>>(), ADAM_LR, "adam");
}

#[test]
fn inputs_and_targets_with_different_rows_are_refused() {
    let mut trainer = DataParallelTrainer::new(model(1), SgdConfig::new().init(), cpus(2)).unwrap();
    let (x, _) = batch(8, 1);
    let (_, y) = batch(6, 1);
    let err = trainer.step(0.1, (x, y), mean_loss).unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::RowMismatch {
                expected: 8,
                found: 6,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_empty_batch_is_refused() {
    let mut trainer = DataParallelTrainer::new(model(1), SgdConfig::new().init(), cpus(2)).unwrap();
    let err = trainer.step(0.1, batch(0, 1), mean_loss).unwrap_err();
    assert!(matches!(err, DataParallelError::EmptyInput { .. }), "{err}");
}

#[test]
fn a_non_finite_loss_names_the_step_and_changes_nothing() {
    let start = model(1);
    let mut trainer =
        DataParallelTrainer::new(start.clone(), SgdConfig::new().init(), cpus(3)).unwrap();
    trainer.step(0.1, batch(9, 1), mean_loss).unwrap();
    let after_one = trainer.module().clone();
    let err = trainer
        .step(0.1, batch(9, 2), |m, b| {
            let l = mean_loss(m, b);
            if burn_data_parallel::current_replica().unwrap().index == 2 {
                l.mul_scalar(f64::NAN)
            } else {
                l
            }
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::NonFiniteLoss {
                step: 1,
                replica: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(max_param_diff(trainer.module(), &after_one), 0.0);
    assert_eq!(trainer.steps(), 1);
    // Nothing of the bad batch was kept: an apply now has nothing to apply.
    assert!(matches!(
        trainer.apply(0.1),
        Err(DataParallelError::NothingAccumulated)
    ));
    trainer.step(0.1, batch(9, 3), mean_loss).unwrap();
    assert_eq!(trainer.steps(), 2);
}

#[test]
fn a_step_in_which_no_parameter_received_a_gradient_is_refused() {
    for (devices, sharded) in [(1, false), (2, false), (2, true), (3, true)] {
        let start = model(4);
        let mut trainer =
            DataParallelTrainer::new(start.clone(), SgdConfig::new().init(), cpus(devices))
                .unwrap();
        if sharded {
            trainer = trainer.with_sharded_step();
        }
        // A slip from PyTorch: the loss function runs the backward pass itself.
        let err = trainer
            .step(0.1, batch(8, 1), |m, b| {
                let l = mean_loss(m, b);
                let _ = l.clone().backward();
                l
            })
            .unwrap_err();
        assert!(
            matches!(err, DataParallelError::NoGradient { step: 0 }),
            "{devices} devices: {err}"
        );
        assert_eq!(max_param_diff(trainer.module(), &start), 0.0);
        // A loss that does not depend on the parameters at all.
        let err = trainer
            .step(0.1, batch(8, 2), |_, (x, _)| {
                x.sum().mul_scalar(0.0).require_grad()
            })
            .unwrap_err();
        assert!(
            matches!(err, DataParallelError::NoGradient { step: 0 }),
            "{err}"
        );
        // Training goes on, and the step is the single-device one.
        trainer.step(0.1, batch(8, 3), mean_loss).unwrap();
        assert_eq!(trainer.steps(), 1);
        let mut sgd = SgdConfig::new().init();
        let (expected, _) = single_step(start, &mut sgd, 0.1, batch(8, 3), mean_loss);
        assert!(max_param_diff(trainer.module(), &expected) <= PARAM_TOLERANCE);
    }
}

/// The step sharded from the second micro-batch of a step on (`with_sharded_step` called
/// between `accumulate`s): what was summed so far moves to the owners, and the step is the one
/// on the first device, value for value.
#[test]
fn switching_the_sharded_step_on_in_the_middle_of_a_step_keeps_every_gradient() {
    let start = model(5);
    let mut plain =
        DataParallelTrainer::new(start.clone(), AdamConfig::new().init(), cpus(3)).unwrap();
    let mut switched =
        DataParallelTrainer::new(start.clone(), AdamConfig::new().init(), cpus(3)).unwrap();
    for (i, rows) in [7, 5, 2].into_iter().enumerate() {
        if i == 1 {
            switched = switched.with_sharded_step();
        }
        plain.accumulate(batch(rows, i as u64), mean_loss).unwrap();
        switched
            .accumulate(batch(rows, i as u64), mean_loss)
            .unwrap();
    }
    plain.apply(0.01).unwrap();
    switched.apply(0.01).unwrap();
    assert!(max_param_diff(plain.module(), &start) > 1e-4);
    assert_eq!(max_param_diff(switched.module(), plain.module()), 0.0);
}
