//! Checks, on whatever backend runs here (CUDA GPUs when built with `--features cuda` and a GPU
//! is present, else the CPU), that data parallelism changes no number: the data-parallel forward
//! equals the plain forward, and a data-parallel training step equals the single-device step,
//! on every model of the zoo (`zoo.rs`); and that buffers stay on their devices and replicas
//! draw their own dropout masks (`placement.rs`); and on the shapes real programs take
//! (`programs.rs`). Prints one line per check and exits non-zero
//! if any fails. Used by `scripts/gpu-check.sh`.
//!
//! ```text
//! cargo run --release -p dp-tools --bin check -- --devices 4
//! ```

mod adaptive;
mod placement;
mod programs;
mod zoo;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use burn_data_parallel::{DataParallel, DataParallelTrainer};
use clap::Parser;
use dp_model::{Classifier, Mlp, MlpConfig};
use dp_zoo::compare::{max_abs_diff, max_param_diff};

/// Checks that data parallelism gives the single-device numbers on this machine's devices.
#[derive(Debug, Parser)]
struct Args {
    /// Devices: every GPU by default with CUDA (more than the GPU count puts several replicas
    /// on one GPU); on the CPU, the CPU device repeated (default 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    devices: Option<u64>,
    /// Largest difference allowed between data-parallel and single-device forward outputs.
    #[arg(long, default_value_t = 1e-5)]
    forward_tolerance: f32,
    /// Largest difference allowed between parameters after data-parallel and single-device
    /// training steps.
    #[arg(long, default_value_t = 1e-5)]
    step_tolerance: f32,
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    dp_backend::run_on_available(args.devices.map(|n| n as usize), Checks(args))
}

struct Checks(Args);

impl dp_backend::Job for Checks {
    /// One CPU device would only be compared with itself.
    fn default_cpu_devices(&self) -> usize {
        4
    }

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        let args = self.0;
        println!(
            "Checking on {} {label}: {:?} ({})",
            devices.len(),
            devices,
            B::name(&devices[0])
        );
        let mut results = Vec::new();
        results.extend(forward_checks::<B::InnerBackend>(
            &devices,
            args.forward_tolerance,
        )?);
        results.extend(step_checks::<B>(&devices, args.step_tolerance)?);
        for outcome in zoo::checks::<B>(&devices, args.step_tolerance)?
            .into_iter()
            .chain(placement::checks::<B>(&devices)?)
            .chain(adaptive::checks::<B>(&devices, args.step_tolerance)?)
            .chain(programs::checks::<B>(&devices, args.step_tolerance)?)
        {
            results.push(outcome.report());
        }
        let failed = results.iter().filter(|ok| !**ok).count();
        println!("{} passed, {failed} failed", results.len() - failed);
        anyhow::ensure!(failed == 0, "{failed} check(s) failed");
        Ok(())
    }
}

fn report(name: String, diff: f32, tolerance: f32) -> bool {
    Outcome::new(name, diff, tolerance).report()
}

/// One check's result.
pub struct Outcome {
    name: String,
    ok: bool,
    detail: String,
}

impl Outcome {
    /// A difference within `tolerance`.
    pub fn new(name: String, diff: f32, tolerance: f32) -> Self {
        Self {
            name,
            ok: diff <= tolerance,
            detail: format!("max abs difference {diff:e} (tolerance {tolerance:e})"),
        }
    }

    /// A condition, and what was seen.
    pub fn check(name: String, ok: bool, detail: String) -> Self {
        Self { name, ok, detail }
    }

    /// Prints the line; whether it passed.
    fn report(self) -> bool {
        let verdict = if self.ok { "PASS" } else { "FAIL" };
        println!("{verdict} {}: {}", self.name, self.detail);
        self.ok
    }
}

fn forward_checks<B: Backend>(devices: &[B::Device], tolerance: f32) -> anyhow::Result<Vec<bool>> {
    let device = &devices[0];
    let mut results = Vec::new();
    let linear = LinearConfig::new(5, 2).init::<B>(device).fork(device);
    let mut dp = DataParallel::new(linear, devices.to_vec())?;
    for rows in [30, 10, 5, 2, 1, 257] {
        let x = Tensor::<B, 2>::random([rows, 5], Distribution::Normal(0.0, 1.0), device);
        let out = dp.forward(x.clone(), |m, x| m.forward(x))?;
        let plain = dp.module().forward(x);
        results.push(report(
            format!("forward Linear(5, 2), {rows} rows"),
            max_abs_diff(out, plain),
            tolerance,
        ));
    }
    let mlp = MlpConfig::new(256, vec![1024, 1024], 10)
        .init::<B>(device)
        .fork(device);
    let mut dp = DataParallel::new(mlp, devices.to_vec())?;
    let x = Tensor::<B, 2>::random([1024, 256], Distribution::Normal(0.0, 1.0), device);
    let out = dp.forward(x.clone(), |m, x| m.forward(x))?;
    let plain = dp.module().forward(x);
    results.push(report(
        "forward MLP 256-1024-1024-10, 1024 rows".into(),
        max_abs_diff(out, plain),
        tolerance,
    ));
    Ok(results)
}

fn step_checks<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Vec<bool>> {
    let device = &devices[0];
    let mut results = Vec::new();
    let batch = |rows: usize| {
        let x = Tensor::<B, 2>::random([rows, 16], Distribution::Normal(0.0, 1.0), device);
        let y = Tensor::<B, 1>::random([rows], Distribution::Uniform(0.0, 4.0), device).int();
        (x, y)
    };
    let loss = |m: &Mlp<B>, (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>)| m.loss(x, y);
    for rows in [30, 10, 5] {
        for adam in [false, true] {
            let start = MlpConfig::new(16, vec![32], 4)
                .init::<B>(device)
                .fork(device);
            let data = batch(rows);
            let (diff, name) = if adam {
                (
                    one_step(start, data, loss, devices, || {
                        AdamConfig::new().init::<B, Mlp<B>>()
                    })?,
                    "Adam",
                )
            } else {
                (
                    one_step(start, data, loss, devices, || {
                        SgdConfig::new().init::<B, Mlp<B>>()
                    })?,
                    "SGD",
                )
            };
            results.push(report(
                format!("training step, {name}, {rows} rows"),
                diff,
                tolerance,
            ));
        }
    }
    // The optimizer step spread over the replicas: each device steps its own tensors and the
    // others receive them from it, so on GPUs every move between devices is exercised here.
    for rows in [30, 5] {
        let start = MlpConfig::new(16, vec![32], 4)
            .init::<B>(device)
            .fork(device);
        let diff = sharded_steps(start, batch(rows), loss, devices)?;
        results.push(report(
            format!("sharded optimizer step (`with_sharded_step`), Adam, 3 steps, {rows} rows"),
            diff,
            tolerance,
        ));
    }
    Ok(results)
}

/// Largest parameter difference after three steps with the optimizer step sharded over the
/// replicas (the replicas it rebuilds run the next step) and three single-device steps.
fn sharded_steps<B: AutodiffBackend>(
    start: Mlp<B>,
    data: (Tensor<B, 2>, Tensor<B, 1, Int>),
    loss: impl Fn(&Mlp<B>, (Tensor<B, 2>, Tensor<B, 1, Int>)) -> Tensor<B, 1> + Sync,
    devices: &[B::Device],
) -> anyhow::Result<f32> {
    let optimizer = || AdamConfig::new().init::<B, Mlp<B>>();
    let mut single = optimizer();
    let mut reference = start.clone();
    for _ in 0..3 {
        let grads =
            GradientsParams::from_grads(loss(&reference, data.clone()).backward(), &reference);
        reference = single.step(LR, reference, grads);
    }
    let moved = max_param_diff(&reference, &start);
    anyhow::ensure!(
        moved > 1e-6,
        "the reference steps did not move the parameters ({moved:e})"
    );
    let mut trainer =
        DataParallelTrainer::new(start, optimizer(), devices.to_vec())?.with_sharded_step();
    for _ in 0..3 {
        trainer.step(LR, data.clone(), &loss)?;
    }
    Ok(max_param_diff(trainer.module(), &reference))
}

/// Learning rate of the checked steps: Adam amplifies rounding in near-zero gradients by about
/// `lr / 1e-5`, so a larger rate would test float rounding rather than data parallelism.
const LR: f64 = 0.01;

/// Largest parameter difference after one data-parallel and one single-device step.
fn one_step<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>>(
    start: Mlp<B>,
    data: (Tensor<B, 2>, Tensor<B, 1, Int>),
    loss: impl Fn(&Mlp<B>, (Tensor<B, 2>, Tensor<B, 1, Int>)) -> Tensor<B, 1> + Sync,
    devices: &[B::Device],
    optimizer: impl Fn() -> O,
) -> anyhow::Result<f32> {
    let l = loss(&start, data.clone());
    let grads = GradientsParams::from_grads(l.backward(), &start);
    let reference = optimizer().step(LR, start.clone(), grads);
    // A step that moved nothing would make the comparison pass whatever the trainer did.
    let moved = max_param_diff(&reference, &start);
    anyhow::ensure!(
        moved > 1e-6,
        "the reference step did not move the parameters ({moved:e})"
    );
    let mut trainer = DataParallelTrainer::new(start, optimizer(), devices.to_vec())?;
    trainer.step(LR, data, loss)?;
    Ok(max_param_diff(trainer.module(), &reference))
}
