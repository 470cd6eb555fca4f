//! Every model of the zoo through every entry point, against single-device Burn on the same
//! batches: the evaluation forward, a forward and `backward()` through `DataParallel` (the
//! PyTorch habit), a trainer step with SGD and Adam, accumulated micro-batches, and a
//! checkpoint resumed. Splits of 8, 8, 8, 6 rows and of 3, 3, 3, 1 (a one-row part).

mod common;

use burn::module::{AutodiffModule, ParamId};
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{
    Chunk, DataParallel, DataParallelTrainer, Gather, Replicate, Scatter, SplitPolicy,
};
use common::zoo::*;
use common::{B, cpus};
use dp_model::Classifier;
use std::collections::HashSet;

const TOLERANCE: f32 = 1e-5;
/// Adam divides by the root of the squared gradient (plus 1e-5), which turns rounding in a
/// near-zero gradient into a step of up to `lr`: its rate keeps that under the tolerance.
const ADAM_LR: f64 = 0.002;
const SGD_LR: f64 = 0.1;
/// (devices, rows): 8, 8, 8, 6 and 3, 3, 3, 1.
const SPLITS: [(usize, usize); 2] = [(4, 30), (4, 10)];

type Targets<Bk> = Tensor<Bk, 1, Int>;

/// The evaluation forward (inner backend: batch norm on running statistics, no dropout)
/// equals the plain one on every split.
fn eval_forward<M>(model: &M, batch: impl Fn(usize, u64) -> (M::Input, Targets<B>))
where
    M: Classifier<B> + Replicate<B> + Sync,
    M::Input: Scatter<B>,
{
    for (devices, rows) in [(1, 7), (2, 5), (3, 9), (4, 30), (4, 10)] {
        let (x, _) = batch(rows, rows as u64);
        let mut dp = DataParallel::new(model.clone(), cpus(devices)).unwrap();
        let out = dp.forward(x.clone(), |m, x| m.logits(x)).unwrap();
        let plain = model.logits(x);
        let diff = relative_diff(out, plain);
        assert!(diff <= TOLERANCE, "{rows} rows on {devices}: {diff}");
    }
}

/// `dp.forward`, the loss on the gathered output, `backward()` and `from_grads(dp.module())`
/// give the single-device gradient.
fn backward_through_data_parallel<M>(
    make: impl Fn() -> M,
    batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>),
    ghost: bool,
) where
    M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
    M::Input: Scatter<AB> + Gather<AB>,
{
    let start = make();
    for (devices, rows) in [(4, 30), (4, 10), (3, 5), (2, 2), (1, 7)] {
        let (x, y) = batch(rows, 100 + rows as u64);
        let sizes = Chunk.sizes(rows, devices);

        let reference = copy(&start);
        let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, ghost);
        let expected = GradientsParams::from_grads(loss.backward(), &reference);

        let mut dp = DataParallel::new(copy(&start), cpus(devices)).unwrap();
        let logits = dp.forward(x, |m, x| m.logits(x)).unwrap();
        let grads = GradientsParams::from_grads(cross_entropy(logits, y).backward(), dp.module());

        let (diff, size) = grad_diff(dp.module(), &grads, &expected);
        assert!(
            size > 1e-4,
            "{rows} rows on {devices}: no gradient to compare"
        );
        assert!(
            diff <= TOLERANCE,
            "{rows} rows on {devices}: gradients differ by {diff}"
        );
    }
}

/// One trainer step equals the single-device step; frozen parameters stay as they were.
fn trainer_step<M, O>(
    make: impl Fn() -> M,
    batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>),
    ghost: bool,
    buffers: impl Fn(&M) -> HashSet<ParamId>,
    optimizer: impl Fn() -> O,
    lr: f64,
) where
    M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
    M::Input: Scatter<AB>,
    O: Optimizer<M, AB>,
{
    let start = make();
    for (devices, rows) in SPLITS {
        let (x, y) = batch(rows, 200 + rows as u64);
        let sizes = Chunk.sizes(rows, devices);
        let reference = copy(&start);
        let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, ghost);
        let grads = GradientsParams::from_grads(loss.backward(), &reference);
        let reference = optimizer().step(lr, reference, grads);

        let mut trainer =
            DataParallelTrainer::new(copy(&start), optimizer(), cpus(devices)).unwrap();
        let stats = trainer
            .step(lr, (x, y), |m: &M, (x, y)| m.loss(x, y))
            .unwrap();
        assert_eq!(stats.replicas.len(), sizes.len());

        // Buffers follow their own rule (tests/buffers.rs).
        let skip = buffers(&start);
        let moved = param_diff(&reference, &start, &skip);
        assert!(
            moved > 1e-4,
            "{rows} rows on {devices}: the step moved nothing"
        );
        let diff = param_diff(trainer.module(), &reference, &skip);
        assert!(
            diff <= TOLERANCE,
            "{rows} rows on {devices}: parameters differ by {diff}"
        );
    }
}

/// Micro-batches accumulated, then one optimizer step, equal one step on their union.
fn accumulation<M, O>(
    make: impl Fn() -> M,
    batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>),
    ghost: bool,
    buffers: impl Fn(&M) -> HashSet<ParamId>,
    optimizer: impl Fn() -> O,
    lr: f64,
) where
    M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
    M::Input: Scatter<AB> + Gather<AB>,
    O: Optimizer<M, AB>,
{
    let start = make();
    let devices = 3;
    let micro: Vec<_> = [7, 12, 5]
        .into_iter()
        .enumerate()
        .map(|(i, rows)| batch(rows, 300 + i as u64))
        .collect();
    let total: usize = micro.iter().map(|(_, y)| y.dims()[0]).sum();

    let reference = copy(&start);
    let loss = micro
        .iter()
        .map(|(x, y)| {
            let rows = y.dims()[0];
            let sizes = Chunk.sizes(rows, devices);
            reference_loss(&reference, (x.clone(), y.clone()), &sizes, ghost)
                .mul_scalar(rows as f64 / total as f64)
        })
        .reduce(|a, b| a + b)
        .unwrap();
    let grads = GradientsParams::from_grads(loss.backward(), &reference);
    let reference = optimizer().step(lr, reference, grads);

    let mut trainer = DataParallelTrainer::new(copy(&start), optimizer(), cpus(devices)).unwrap();
    for b in micro {
        trainer.accumulate(b, |m: &M, (x, y)| m.loss(x, y)).unwrap();
    }
    trainer.apply(lr).unwrap();
    let skip = buffers(&start);
    let diff = param_diff(trainer.module(), &reference, &skip);
    assert!(diff <= TOLERANCE, "parameters differ by {diff}");
}

/// Training saved after three steps and resumed in a new trainer takes the same next three
/// steps as training that was never interrupted.
fn resume<M, O>(
    make: impl Fn() -> M,
    batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>),
    optimizer: impl Fn() -> O,
    lr: f64,
) where
    M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
    M::Input: Scatter<AB>,
    O: Optimizer<M, AB>,
{
    let loss = |m: &M, (x, y): (M::Input, Targets<AB>)| m.loss(x, y);
    let mut trainer = DataParallelTrainer::new(make(), optimizer(), cpus(4)).unwrap();
    for step in 0..3 {
        trainer.step(lr, batch(30, 400 + step), loss).unwrap();
    }
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let model_bytes = recorder
        .record(trainer.module().clone().into_record(), ())
        .unwrap();
    let optim_bytes =
        Recorder::<AB>::record(&recorder, trainer.optimizer().to_record(), ()).unwrap();
    for step in 3..6 {
        trainer.step(lr, batch(30, 400 + step), loss).unwrap();
    }

    let model =
        make().load_record(Recorder::<AB>::load(&recorder, model_bytes, &common::cpu()).unwrap());
    let optim = optimizer()
        .load_record(Recorder::<AB>::load(&recorder, optim_bytes, &common::cpu()).unwrap());
    let mut resumed = DataParallelTrainer::new(model, optim, cpus(4))
        .unwrap()
        .with_steps_taken(3);
    for step in 3..6 {
        resumed.step(lr, batch(30, 400 + step), loss).unwrap();
    }
    assert_eq!(resumed.steps(), trainer.steps());
    let diff = param_diff(resumed.module(), trainer.module(), &HashSet::new());
    assert!(diff <= TOLERANCE, "resumed training differs by {diff}");
}

/// The optimizer step spread over the replicas (`with_sharded_step`) trains exactly what the
/// step on the first device trains, value for value, buffers included: accumulated micro-batches
/// (the last with fewer rows than devices), several steps, 2 to 4 devices, and the optimizer's
/// state put back together (a trainer resumed from it on the first device takes the same next
/// step). Adam with weight decay and per-tensor gradient clipping by norm, and SGD with
/// momentum.
fn sharded_step<M>(make: impl Fn() -> M, batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>))
where
    M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
    M::Input: Scatter<AB>,
{
    use burn::grad_clipping::GradientClippingConfig;
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    fn run<M, O>(
        start: &M,
        batch: &impl Fn(usize, u64) -> (M::Input, Targets<AB>),
        optimizer: impl Fn() -> O,
        lr: f64,
    ) where
        M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync,
        M::Input: Scatter<AB>,
        O: Optimizer<M, AB> + Clone + Send,
        O::Record: burn_data_parallel::ShardableRecord<AB>,
    {
        let loss = |m: &M, (x, y): (M::Input, Targets<AB>)| m.loss(x, y);
        for devices in [2, 3, 4] {
            let mut plain =
                DataParallelTrainer::new(copy(start), optimizer(), cpus(devices)).unwrap();
            let mut sharded = DataParallelTrainer::new(copy(start), optimizer(), cpus(devices))
                .unwrap()
                .with_sharded_step();
            assert!(sharded.sharded_step() && !plain.sharded_step());
            for step in 0..2u64 {
                for (i, rows) in [7, 12, 2].into_iter().enumerate() {
                    let b = || batch(rows, 500 + 10 * step + i as u64);
                    plain.accumulate(b(), loss).unwrap();
                    sharded.accumulate(b(), loss).unwrap();
                }
                plain.apply(lr).unwrap();
                sharded.apply(lr).unwrap();
                plain.step(lr, batch(10, 600 + step), loss).unwrap();
                sharded.step(lr, batch(10, 600 + step), loss).unwrap();
            }
            let moved = param_diff(plain.module(), start, &HashSet::new());
            assert!(moved > 1e-4, "on {devices}: nothing moved");
            let diff = param_diff(sharded.module(), plain.module(), &HashSet::new());
            assert_eq!(
                diff, 0.0,
                "on {devices} devices the sharded step differs by {diff}"
            );

            // The state put back together: resumed on the first device, the same next step.
            let mut resumed = DataParallelTrainer::new(
                copy(sharded.module()),
                optimizer().load_record(sharded.optimizer().to_record()),
                cpus(devices),
            )
            .unwrap();
            plain.step(lr, batch(9, 700), loss).unwrap();
            resumed.step(lr, batch(9, 700), loss).unwrap();
            let diff = param_diff(resumed.module(), plain.module(), &HashSet::new());
            assert_eq!(
                diff, 0.0,
                "on {devices} devices the resumed step differs by {diff}"
            );
        }
    }
    let start = make();
    run(
        &start,
        &batch,
        || {
            AdamConfig::new()
                .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
                .with_grad_clipping(Some(GradientClippingConfig::Norm(0.5)))
                .init::<AB, M>()
        },
        ADAM_LR,
    );
    run(
        &start,
        &batch,
        || {
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig::new()))
                .init::<AB, M>()
        },
        SGD_LR,
    );
}

fn sgd<M: AutodiffModule<AB>>() -> impl Optimizer<M, AB> {
    SgdConfig::new().init::<AB, M>()
}

fn adam<M: AutodiffModule<AB>>() -> impl Optimizer<M, AB> {
    AdamConfig::new().init::<AB, M>()
}

/// The tests of one zoo model.
macro_rules! zoo {
    ($name:ident, $make:ident, $batch:ident, ghost: $ghost:expr, buffers: $buffers:path) => {
        mod $name {
            use super::*;

            #[test]
            fn eval_forward_equals_plain() {
                eval_forward(&$make::<AB>().valid(), |r, s| $batch::<B>(r, s));
            }

            #[test]
            fn backward_through_data_parallel_equals_single_device() {
                backward_through_data_parallel($make::<AB>, |r, s| $batch::<AB>(r, s), $ghost);
            }

            #[test]
            fn sgd_step_equals_single_device() {
                trainer_step(
                    $make::<AB>,
                    |r, s| $batch::<AB>(r, s),
                    $ghost,
                    $buffers,
                    sgd,
                    SGD_LR,
                );
            }

            #[test]
            fn adam_step_equals_single_device() {
                trainer_step(
                    $make::<AB>,
                    |r, s| $batch::<AB>(r, s),
                    $ghost,
                    $buffers,
                    adam,
                    ADAM_LR,
                );
            }

            #[test]
            fn accumulation_equals_one_step_on_the_union() {
                accumulation(
                    $make::<AB>,
                    |r, s| $batch::<AB>(r, s),
                    $ghost,
                    $buffers,
                    sgd,
                    SGD_LR,
                );
                accumulation(
                    $make::<AB>,
                    |r, s| $batch::<AB>(r, s),
                    $ghost,
                    $buffers,
                    adam,
                    ADAM_LR,
                );
            }

            #[test]
            fn sharded_step_equals_the_step_on_the_first_device() {
                sharded_step($make::<AB>, |r, s| $batch::<AB>(r, s));
            }

            #[test]
            fn resumed_training_continues_the_same() {
                resume($make::<AB>, |r, s| $batch::<AB>(r, s), adam, ADAM_LR);
            }
        }
    };
}

for_each_model!(zoo);

/// Fine-tuning: frozen parameters stay exactly as they were after data-parallel steps, weight
/// decay included, while the head trains as on one device.
mod frozen {
    use super::*;
    use burn::optim::decay::WeightDecayConfig;

    fn adam_with_decay<M: AutodiffModule<AB>>() -> impl Optimizer<M, AB> {
        AdamConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
            .init::<AB, M>()
    }

    fn backbone_untouched<M: Classifier<AB> + AutodiffModule<AB> + Replicate<AB> + Sync>(
        model: M,
        backbone: impl Fn(&M) -> HashSet<ParamId>,
        batch: impl Fn(usize, u64) -> (M::Input, Targets<AB>),
        buffers: HashSet<ParamId>,
    ) where
        M::Input: Scatter<AB>,
    {
        let frozen = backbone(&model);
        assert!(!frozen.is_empty());
        let trained: HashSet<ParamId> = ids::<AB, _>(&model).difference(&frozen).copied().collect();
        let start = copy(&model);
        let mut trainer = DataParallelTrainer::new(model, adam_with_decay(), cpus(4)).unwrap();
        for step in 0..5 {
            trainer
                .step(ADAM_LR, batch(10, 500 + step), |m: &M, (x, y)| m.loss(x, y))
                .unwrap();
        }
        // Only the frozen backbone is compared (buffers, which train, aside)...
        let skip: HashSet<ParamId> = trained.union(&buffers).copied().collect();
        assert_eq!(param_diff(trainer.module(), &start, &skip), 0.0);
        // ... and the head did train.
        let head_only: HashSet<ParamId> = frozen.union(&buffers).copied().collect();
        assert!(param_diff(trainer.module(), &start, &head_only) > 1e-4);
    }

    #[test]
    fn a_frozen_encoder_stays_frozen_under_weight_decay() {
        let model = frozen_transformer::<AB>();
        backbone_untouched(
            model,
            |m| ids::<AB, _>(&m.encoder),
            tokens::<AB>,
            HashSet::new(),
        );
        trainer_step(
            frozen_transformer,
            tokens::<AB>,
            false,
            no_buffers,
            adam_with_decay,
            ADAM_LR,
        );
    }

    #[test]
    fn frozen_convolutions_stay_frozen_under_weight_decay() {
        let model = frozen_cnn::<AB>();
        let buffers = cnn_buffers(&model);
        backbone_untouched(model, |m| ids::<AB, _>(&m.blocks), images::<AB>, buffers);
        trainer_step(
            frozen_cnn,
            images::<AB>,
            true,
            cnn_buffers,
            adam_with_decay,
            ADAM_LR,
        );
    }
}
