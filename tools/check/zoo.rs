//! The model zoo on this machine's devices: for each model, the evaluation forward, a forward
//! and `backward()` through `DataParallel`, and trainer steps with SGD and Adam, against
//! single-device Burn on the first device (per-part normalization for batch norm).

use crate::Outcome;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{
    Chunk, DataParallel, DataParallelTrainer, Replicate, Scatter, SplitPolicy,
};
use dp_model::Classifier;
use dp_zoo::compare::{max_abs_diff, max_param_diff};
use dp_zoo::data::*;
use dp_zoo::models::*;
use dp_zoo::reference::reference_loss;

/// Adam divides by the root of the squared gradient (plus 1e-5), so rounding in a near-zero
/// gradient moves a parameter by up to about `lr * 1e-4`: the rate keeps that under 1e-6.
const ADAM_LR: f64 = 0.002;
const SGD_LR: f64 = 0.1;

/// A batch of `M`'s inputs and targets.
type Batch<B, M> = (<M as Classifier<B>>::Input, Tensor<B, 1, Int>);

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
            out.extend(model(
                stringify!($name),
                devices,
                tolerance,
                $ghost,
                || $make::<B>().fork(d),
                |rows, seed| {
                    let (x, y) = $data::<B>(rows, seed);
                    (x.to_device(d), y.to_device(d))
                },
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

/// The checks of one model. `ghost`: it normalizes by batch statistics, so the single-device
/// reference runs each part on its own and weights the parts' losses by rows.
fn model<B, M>(
    name: &str,
    devices: &[B::Device],
    tolerance: f32,
    ghost: bool,
    make: impl Fn() -> M,
    batch: impl Fn(usize, u64) -> Batch<B, M>,
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
        let model = make().valid();
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
        let start = make();
        let (x, y) = batch(rows, 100 + rows as u64);
        let sizes = Chunk.sizes(rows, devices.len());
        let reference = M::from_inner(start.valid());
        let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, ghost);
        let expected = GradientsParams::from_grads(loss.backward(), &reference);
        let expected = optimizer_free_step(reference, expected);

        let mut dp = DataParallel::new(M::from_inner(start.valid()), devices.to_vec())?;
        let logits = dp.forward(x, |m, x| m.logits(x))?;
        let loss = CrossEntropyLossConfig::new()
            .init(d)
            .forward(logits, y.to_device(d));
        let grads = GradientsParams::from_grads(loss.backward(), dp.module());
        let found = optimizer_free_step(dp.into_inner(), grads);
        let diff = if ghost {
            without_buffers(&found, &expected)
        } else {
            max_param_diff(&found, &expected)
        };
        out.push(Outcome::new(
            format!("{name}: backward through DataParallel, {rows} rows"),
            diff,
            tolerance,
        ));
    }
    out.extend(optimizer_steps(
        name, devices, tolerance, ghost, ADAM_LR, &make, &batch,
    )?);
    Ok(out)
}

/// Trainer steps with SGD and Adam (at `adam_lr`) on 30 and 10 rows, against single-device
/// Burn.
fn optimizer_steps<B, M>(
    name: &str,
    devices: &[B::Device],
    tolerance: f32,
    ghost: bool,
    adam_lr: f64,
    make: &impl Fn() -> M,
    batch: &impl Fn(usize, u64) -> Batch<B, M>,
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
                step(make, batch, devices, rows, ghost, adam_lr, || {
                    AdamConfig::new().init()
                })?
            } else {
                step(make, batch, devices, rows, ghost, SGD_LR, || {
                    SgdConfig::new().init()
                })?
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
    let make = || dp_zoo::models::sync_cnn::<B>().fork(d);
    let batch = |rows, seed| {
        let (x, y) = dp_zoo::data::images::<B>(rows, seed);
        (x.to_device(d), y.to_device(d))
    };
    let name = "CNN (SyncBatchNorm)";
    // The convolutions' biases have a gradient of zero but for rounding (batch norm cancels
    // them), which Adam scales up to a step: measured up to 6e-6 at ADAM_LR, a tenth of that
    // rate keeps it well under the tolerance.
    let adam_lr = ADAM_LR / 10.0;
    let mut out = optimizer_steps(name, devices, tolerance, false, adam_lr, &make, &batch)?;
    if devices.len() > 1 {
        let (x, _) = batch(10, 7);
        let mut dp = DataParallel::new(make(), devices.to_vec())?;
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
    make: &impl Fn() -> M,
    batch: &impl Fn(usize, u64) -> Batch<B, M>,
    devices: &[B::Device],
    rows: usize,
    ghost: bool,
    lr: f64,
    optimizer: impl Fn() -> O,
) -> anyhow::Result<f32>
where
    B: AutodiffBackend,
    M: Classifier<B> + AutodiffModule<B> + Replicate<B> + Sync,
    M::Input: Scatter<B>,
    O: Optimizer<M, B>,
{
    let start = make();
    let (x, y) = batch(rows, 200 + rows as u64);
    let sizes = Chunk.sizes(rows, devices.len());
    let reference = M::from_inner(start.valid());
    let loss = reference_loss(&reference, (x.clone(), y.clone()), &sizes, ghost);
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
    let buffers_aside = ghost.then(|| without_buffers(trainer.module(), &reference));
    Ok(buffers_aside.unwrap_or_else(|| max_param_diff(trainer.module(), &reference)))
}

/// For batch norm, the running statistics follow their own documented rule (row-weighted over
/// the parts; the placement checks look at them): the parameters alone are compared.
fn without_buffers<B: AutodiffBackend, M: AutodiffModule<B>>(a: &M, b: &M) -> f32 {
    // Parameters require a gradient unless frozen; buffers never do. Of a frozen model, the
    // trained parameters are compared (the library's tests check that frozen ones stay).
    struct Trainable<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Trainable<B> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() {
                self.0.push(value.flatten(0, D - 1));
            }
        }
    }
    let (mut ta, mut tb) = (Trainable(Vec::new()), Trainable(Vec::new()));
    a.visit(&mut ta);
    b.visit(&mut tb);
    if ta.0.len() != tb.0.len() {
        return f32::INFINITY;
    }
    ta.0.into_iter()
        .zip(tb.0)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}
