//! The model zoo on this machine's devices: for each model, the evaluation forward, a forward
//! and `backward()` through `DataParallel`, and trainer steps with SGD and Adam, against
//! single-device Burn on the first device (per-part normalization for batch norm).

use crate::Outcome;
use burn::module::ParamId;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{
    Chunk, DataParallel, DataParallelTrainer, Replicate, Scatter, SplitPolicy,
};
use dp_model::Classifier;
use dp_zoo::compare::{max_abs_diff, max_param_diff, max_param_diff_except};
use dp_zoo::data::*;
use dp_zoo::models::*;
use dp_zoo::reference::reference_loss;
use std::collections::HashSet;

/// Adam divides by the root of the squared gradient (plus 1e-5), so rounding in a near-zero
/// gradient moves a parameter by up to about `lr * 1e-4`: the rate keeps that under 1e-6.
const ADAM_LR: f64 = 0.002;
const SGD_LR: f64 = 0.1;

/// A batch of `M`'s inputs and targets.
type Batch<B, M> = (<M as Classifier<B>>::Input, Tensor<B, 1, Int>);

/// A zoo model as the checks use it.
struct Subject<Make, Data, Buffers> {
    /// Makes the model on the first device.
    make: Make,
    /// A seeded batch of `rows` rows on the first device.
    batch: Data,
    /// The model's running statistics, which follow their own rule (the placement checks look
    /// at them): every other tensor, frozen ones included, is compared.
    buffers: Buffers,
    /// It normalizes by batch statistics, so the single-device reference runs each part on its
    /// own and weights the parts' losses by rows.
    ghost: bool,
}

/// Every model of the zoo (`dp_zoo::for_each_model!`) through every entry point, on
/// `devices`, against single-device Burn on the first.
pub fn checks<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Vec<Outcome>> {
    let d = &devices[0];
    let mut out = Vec::new();
    macro_rules! check {
        ($name:ident, $make:ident, $data:ident, ghost: $ghost:expr, buffers: $buffers:path) => {
            let subject = Subject {
                make: || $make::<B>().fork(d),
                batch: |rows, seed| {
                    let (x, y) = $data::<B>(rows, seed);
                    (x.to_device(d), y.to_device(d))
                },
                buffers: $buffers,
                ghost: $ghost,
            };
            out.extend(model(
                stringify!($name),
                devices,
                tolerance,
                &subject,
                |rows, seed| {
                    let (x, y) = $data::<B::InnerBackend>(rows, seed);
                    (x.to_device(d), y.to_device(d))
                },
            )?);
        };
    }
    dp_zoo::for_each_model!(check);
    out.extend(sync_cnn::<B>(devices, tolerance)?);
    Ok(out)
}

/// The checks of one model (`inner_batch`: its batches for the inference module).
fn model<B, M>(
    name: &str,
    devices: &[B::Device],
    tolerance: f32,
    subject: &Subject<
        impl Fn() -> M,
        impl Fn(usize, u64) -> Batch<B, M>,
        impl Fn(&M) -> HashSet<ParamId>,
    >,
    inner_batch: impl Fn(usize, u64) -> Batch<B::InnerBackend, M::InnerModule>,
) -> anyhow::Result<Vec<Outcome>>
where
    B: AutodiffBackend,
    M: Classifier<B> + AutodiffModule<B> + Replicate<B> + Sync,
    M::Input: Scatter<B>,
    M::InnerModule: Classifier<B::InnerBackend> + Replicate<B::InnerBackend> + Sync,
    <M::InnerModule as Classifier<B::InnerBackend>>::Input: Scatter<B::InnerBackend>,
{
    let d = &devices[0];
    let mut out = Vec::new();
    for rows in [30, 10, 257] {
        let model = (subject.make)().valid();
        let (x, _) = inner_batch(rows, rows as u64);
        let mut dp = DataParallel::new(model.clone(), devices.to_vec())?;
        let found = dp.forward(x.clone(), |m, x| m.logits(x))?;
        let diff = max_abs_diff(found, model.logits(x));
        out.push(Outcome::new(
            format!("{name}: evaluation forward, {rows} rows"),
            diff,
            tolerance,
        ));
    }
    for rows in [30, 10] {
        let start = (subject.make)();
        let (x, y) = (subject.batch)(rows, 100 + rows as u64);
        let sizes = Chunk.sizes(rows, devices.len());
        let reference = M::from_inner(start.valid());
        let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, subject.ghost);
        let expected = GradientsParams::from_grads(loss.backward(), &reference);
        let expected = optimizer_free_step(reference, expected);

        let mut dp = DataParallel::new(M::from_inner(start.valid()), devices.to_vec())?;
        let logits = dp.forward(x, |m, x| m.logits(x))?;
        let loss = CrossEntropyLossConfig::new()
            .init(d)
            .forward(logits, y.to_device(d));
        let grads = GradientsParams::from_grads(loss.backward(), dp.module());
        let found = optimizer_free_step(dp.into_inner(), grads);
        let diff = max_param_diff_except(&found, &expected, &(subject.buffers)(&start));
        out.push(Outcome::new(
            format!("{name}: backward through DataParallel, {rows} rows"),
            diff,
            tolerance,
        ));
    }
    out.extend(optimizer_steps(name, devices, tolerance, subject, ADAM_LR)?);
    Ok(out)
}

/// Trainer steps with SGD and Adam (at `adam_lr`) on 30 and 10 rows, against single-device
/// Burn.
fn optimizer_steps<B, M>(
    name: &str,
    devices: &[B::Device],
    tolerance: f32,
    subject: &Subject<
        impl Fn() -> M,
        impl Fn(usize, u64) -> Batch<B, M>,
        impl Fn(&M) -> HashSet<ParamId>,
    >,
    adam_lr: f64,
) -> anyhow::Result<Vec<Outcome>>
where
    B: AutodiffBackend,
    M: Classifier<B> + AutodiffModule<B> + Replicate<B> + Sync,
    M::Input: Scatter<B>,
{
    let mut out = Vec::new();
    for rows in [30, 10] {
        for (optimizer, adam) in [("SGD", false), ("Adam", true)] {
            let diff = if adam {
                step(subject, devices, rows, adam_lr, || AdamConfig::new().init())?
            } else {
                step(subject, devices, rows, SGD_LR, || SgdConfig::new().init())?
            };
            out.push(Outcome::new(
                format!("{name}: {optimizer} step, {rows} rows"),
                diff,
                tolerance,
            ));
        }
    }
    Ok(out)
}

/// The CNN with `SyncBatchNorm`: trainer steps against single-device Burn on the whole batch,
/// and a training forward through `DataParallel` on several devices refused with an error.
fn sync_cnn<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Vec<Outcome>> {
    let d = &devices[0];
    // Every tensor is compared, running statistics included: they are exact here.
    let subject = Subject {
        make: || dp_zoo::models::sync_cnn::<B>().fork(d),
        batch: |rows, seed| {
            let (x, y) = dp_zoo::data::images::<B>(rows, seed);
            (x.to_device(d), y.to_device(d))
        },
        buffers: no_buffers,
        ghost: false,
    };
    let name = "CNN (SyncBatchNorm)";
    // The convolutions' biases have a gradient of zero but for rounding (batch norm cancels
    // them), which Adam scales up to a step: measured up to 6e-6 at ADAM_LR, a tenth of that
    // rate keeps it well under the tolerance.
    let adam_lr = ADAM_LR / 10.0;
    let mut out = optimizer_steps(name, devices, tolerance, &subject, adam_lr)?;
    if devices.len() > 1 {
        let (x, _) = (subject.batch)(10, 7);
        let mut dp = DataParallel::new((subject.make)(), devices.to_vec())?;
        let seen = match dp.forward(x, |m, x| m.logits(x)) {
            Err(err @ burn_data_parallel::DataParallelError::SyncBatchNorm { .. }) => {
                Ok(err.to_string())
            }
            Err(err) => Err(format!("another error: {err}")),
            Ok(_) => Err("it ran".to_owned()),
        };
        out.push(Outcome::check(
            format!("{name}: a training forward through DataParallel is refused"),
            seen.is_ok(),
            seen.unwrap_or_else(|e| e),
        ));
    }
    Ok(out)
}

/// Gradients compared through what they do: one plain SGD step of rate 1 (a parameter without
/// a gradient stays), so that one parameter comparison covers them all.
fn optimizer_free_step<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    grads: GradientsParams,
) -> M {
    SgdConfig::new().init::<B, M>().step(1.0, module, grads)
}

/// Largest parameter difference after one data-parallel and one single-device step.
fn step<B, M, O>(
    subject: &Subject<
        impl Fn() -> M,
        impl Fn(usize, u64) -> Batch<B, M>,
        impl Fn(&M) -> HashSet<ParamId>,
    >,
    devices: &[B::Device],
    rows: usize,
    lr: f64,
    optimizer: impl Fn() -> O,
) -> anyhow::Result<f32>
where
    B: AutodiffBackend,
    M: Classifier<B> + AutodiffModule<B> + Replicate<B> + Sync,
    M::Input: Scatter<B>,
    O: Optimizer<M, B>,
{
    let start = (subject.make)();
    let (x, y) = (subject.batch)(rows, 200 + rows as u64);
    let sizes = Chunk.sizes(rows, devices.len());
    let reference = M::from_inner(start.valid());
    let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, subject.ghost);
    let grads = GradientsParams::from_grads(loss.backward(), &reference);
    let reference = optimizer().step(lr, reference, grads);
    // A step that moved nothing would make the comparison pass whatever the trainer did.
    let moved = max_param_diff(&reference, &start);
    anyhow::ensure!(
        moved > 1e-6,
        "the reference step did not move the parameters ({moved:e})"
    );
    let mut trainer =
        DataParallelTrainer::new(M::from_inner(start.valid()), optimizer(), devices.to_vec())?;
    trainer.step(lr, (x, y), |m: &M, (x, y)| m.loss(x, y))?;
    Ok(max_param_diff_except(
        trainer.module(),
        &reference,
        &(subject.buffers)(&start),
    ))
}
