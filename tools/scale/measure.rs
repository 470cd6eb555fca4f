//! Times the steps of one point and splits each into its phases.

use crate::{Args, OptimizerKind};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_data_parallel::Trainer;
use dp_model::{Classifier, Mlp};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What the exchange between the ranks has carried so far (`DistributedTrainer::exchange_stats`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exchanged {
    pub time: Duration,
    pub host_time: Duration,
    pub bytes: usize,
}

/// One step's phases, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Phases {
    /// The whole step: `accumulate` then `apply`.
    pub step: f64,
    /// The slowest of this process's replicas' forward and backward (summed over the
    /// micro-batches).
    pub compute: f64,
    /// The rest of `accumulate` but the sum: splitting the batch, waiting for the slowest
    /// replica, and the ranks' agreement on the micro-batch (which waits for the slowest rank).
    pub wait: f64,
    /// The sum of this process's replicas' gradients (`BatchStats::reduce`).
    pub combine: f64,
    /// The collectives between the ranks, less the host copies: the time on the wire, and
    /// waiting for the other ranks.
    pub exchange: f64,
    /// Copies of the gradient buffer to and from the host (and rounding to 16 bits and back).
    pub host: f64,
    /// The rest of `apply`: flattening the gradients into one buffer and back, the ranks'
    /// agreement on the step, and the optimizer step.
    pub optimizer: f64,
}

/// A rank's medians over its timed steps.
pub struct Measured {
    pub steps: usize,
    pub phases: Phases,
    pub bytes_per_step: f64,
    pub params: usize,
    pub backend: String,
}

/// One point of the curves, as printed.
#[derive(Serialize)]
pub struct Point {
    pub model: String,
    pub params: usize,
    pub batch: usize,
    pub micro_batches: usize,
    pub devices: usize,
    pub ranks: usize,
    /// Whether the point ran as an MPI job (`--mpi`), even of one rank.
    pub mpi: bool,
    pub optimizer: OptimizerKind,
    pub precision: crate::Precision,
    pub label: String,
    pub backend: String,
    pub steps: usize,
    pub samples_per_second: f64,
    /// Rank 0's phases (medians).
    pub phases: Phases,
    /// The slowest rank's median forward and backward.
    pub compute_slowest_rank: f64,
    /// Bytes rank 0 handed to the collectives per step.
    pub bytes_per_step: f64,
}

impl Measured {
    /// The point, with rank 0's phases and the slowest rank's compute.
    pub fn finish(self, args: &Args, ranks: usize) -> Point {
        let compute = self.phases.compute;
        self.finish_with(args, ranks, compute)
    }

    pub fn finish_with(self, args: &Args, ranks: usize, slowest: f64) -> Point {
        Point {
            model: args.model.clone(),
            params: self.params,
            batch: args.batch,
            micro_batches: args.micro_batches,
            devices: args.devices,
            ranks,
            mpi: args.mpi,
            optimizer: args.optimizer,
            precision: args.precision,
            label: args.label.clone(),
            backend: self.backend,
            steps: self.steps,
            samples_per_second: (args.batch * args.micro_batches) as f64 / self.phases.step,
            phases: self.phases,
            compute_slowest_rank: slowest,
            bytes_per_step: self.bytes_per_step,
        }
    }
}

/// The learning rate of each optimizer.
pub fn lr(kind: OptimizerKind) -> f64 {
    match kind {
        OptimizerKind::Sgd => 0.05,
        OptimizerKind::Adam => 1e-3,
    }
}

/// A step's rows: inputs and labels.
pub type Batch<B> = (Tensor<B, 2>, Tensor<B, 1, Int>);

/// The loss each step trains on: cross-entropy, times `--loss-scale`.
pub fn loss<B: AutodiffBackend>(
    args: &Args,
) -> impl Fn(&Mlp<B>, Batch<B>) -> Tensor<B, 1> + Sync + Copy {
    let scale = args.loss_scale;
    move |m, (x, y)| {
        let loss = m.loss(x, y);
        if scale == 1.0 {
            loss
        } else {
            loss.mul_scalar(scale)
        }
    }
}

/// The global batch of step `step` (the same on every rank: seeded), and this rank's rows of
/// it. The labels are a fixed random linear teacher's choices, so that training learns (and
/// the drift of 16-bit sums is measured on a loss that falls).
pub fn batch<B: AutodiffBackend, T: Trainer<B, Mlp<B>>>(
    args: &Args,
    trainer: &T,
    device: &B::Device,
    step: u64,
) -> anyhow::Result<Batch<B>> {
    let config = args.model_config()?;
    B::seed(device, 0);
    let teacher = Tensor::<B, 2>::random(
        [config.input_size, config.num_classes],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    B::seed(device, step);
    let x = Tensor::random(
        [args.batch, config.input_size],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let y = x.clone().matmul(teacher).argmax(1).flatten::<1>(0, 1);
    let part = trainer.part(args.batch)?;
    let rows = part.end - part.start;
    Ok((x.narrow(0, part.start, rows), y.narrow(0, part.start, rows)))
}

/// Times steps of `trainer` for about `args.seconds` (at least `args.min_steps`) after three
/// untimed ones; `exchanged` reads what the ranks' exchange has carried (nothing in one
/// process), and `rank_0s` hands every rank rank 0's value (so that every rank takes as many
/// steps).
pub fn point<B, T>(
    args: &Args,
    trainer: &mut T,
    exchanged: impl Fn(&T) -> Exchanged,
    rank_0s: impl Fn(u64) -> u64,
) -> anyhow::Result<Measured>
where
    B: AutodiffBackend,
    T: Trainer<B, Mlp<B>>,
{
    let devices = trainer.module().devices();
    let device = devices[0].clone();
    let sync = || {
        for device in &devices {
            let _ = B::sync(device);
        }
    };
    let (x, y) = batch::<B, T>(args, trainer, &device, 1)?;
    let lr = lr(args.optimizer);
    let mut seen: Vec<(Phases, usize)> = Vec::new();
    let mut steps = 3;
    let mut step = 0;
    while step < steps {
        let before = exchanged(trainer);
        let t0 = Instant::now();
        let (mut compute, mut combine) = (0.0, 0.0);
        for _ in 0..args.micro_batches {
            let stats = trainer.accumulate((x.clone(), y.clone()), loss(args))?;
            compute += stats
                .replicas
                .iter()
                .map(|r| r.compute.as_secs_f64())
                .fold(0.0, f64::max);
            combine += stats.reduce.as_secs_f64();
        }
        sync();
        let t1 = Instant::now();
        trainer.apply(lr)?;
        sync();
        let t2 = Instant::now();
        let after = exchanged(trainer);
        let on_wire = (after.time - before.time).as_secs_f64();
        let host = (after.host_time - before.host_time).as_secs_f64();
        let phases = Phases {
            step: (t2 - t0).as_secs_f64(),
            compute,
            wait: ((t1 - t0).as_secs_f64() - compute - combine).max(0.0),
            combine,
            exchange: on_wire - host,
            host,
            optimizer: ((t2 - t1).as_secs_f64() - on_wire).max(0.0),
        };
        if step >= 3 {
            seen.push((phases, after.bytes - before.bytes));
        }
        step += 1;
        if step == 3 {
            // As many steps as fill the time at the warm-up's last step's pace, from rank 0.
            let more = (args.seconds / phases.step.max(1e-6)).ceil() as u64;
            steps += rank_0s(more.max(args.min_steps as u64)) as usize;
        }
    }
    let med = |f: &dyn Fn(&Phases) -> f64| {
        let mut v: Vec<f64> = seen.iter().map(|(p, _)| f(p)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let phases = Phases {
        step: med(&|p| p.step),
        compute: med(&|p| p.compute),
        wait: med(&|p| p.wait),
        combine: med(&|p| p.combine),
        exchange: med(&|p| p.exchange),
        host: med(&|p| p.host),
        optimizer: med(&|p| p.optimizer),
    };
    let bytes = seen.iter().map(|(_, b)| *b as f64).sum::<f64>() / seen.len() as f64;
    let params = trainer.module().num_params();
    Ok(Measured {
        steps: seen.len(),
        phases,
        bytes_per_step: bytes,
        params,
        backend: B::name(&device),
    })
}
