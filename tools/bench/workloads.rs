//! The workloads, run in the child process on any backend.

use crate::spec::{Measurement, Phases, Runner, Spec, Traffic, Workload};
use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use burn_data_parallel::{DataParallel, DataParallelTrainer, current_replica};
use dp_model::{Classifier, Mlp, MlpConfig};
use std::time::{Duration, Instant};

pub const W3_BATCH: usize = 256;
const W2_BATCH: usize = 1024;
pub const W3_LR: f64 = 0.05;

pub fn mlp_config() -> MlpConfig {
    MlpConfig::new(256, vec![1024, 1024], 10)
}

/// Times `iteration` for `seconds` after a warm-up; returns the per-iteration durations.
pub fn time<B: Backend>(
    seconds: f64,
    devices: &[B::Device],
    mut iteration: impl FnMut(),
) -> Vec<f64> {
    let sync = || {
        for device in devices {
            let _ = B::sync(device);
        }
    };
    let warmup = Instant::now();
    while warmup.elapsed() < Duration::from_secs_f64((seconds / 5.0).min(1.0)) {
        iteration();
        sync();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || samples.len() < 5 {
        let t = Instant::now();
        iteration();
        sync();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples
}

pub fn median(mut samples: Vec<f64>) -> (usize, f64) {
    samples.sort_by(f64::total_cmp);
    (samples.len(), samples[samples.len() / 2])
}

/// Runs one measurement on backend `B` (autodiff for W3; the inner backend otherwise).
pub fn measure<B: AutodiffBackend>(
    spec: &Spec,
    devices: Vec<B::Device>,
) -> anyhow::Result<Measurement> {
    let device = devices[0].clone();
    B::seed(&device, 1);
    let mut replica_rows = None;
    let mut load_seconds = None;
    let mut phases = None;
    let mut traffic = None;
    let (rows, samples) = match spec.workload {
        Workload::Tutorial => (30, w1::<B::InnerBackend>(spec, devices)?),
        Workload::Inference => (W2_BATCH, w2::<B::InnerBackend>(spec, devices)?),
        Workload::Training => match spec.runner {
            Runner::BurnTrain => {
                return crate::burn_train::measure::<B>(
                    spec,
                    devices,
                    crate::burn_train::Run::Multi,
                );
            }
            Runner::BurnTrainStrategy => {
                return crate::burn_train::measure::<B>(
                    spec,
                    devices,
                    crate::burn_train::Run::Strategy,
                );
            }
            Runner::DataParallel
            | Runner::Seeded
            | Runner::Sharded
            | Runner::Adam
            | Runner::ShardedAdam => {
                let (samples, step_phases, step_traffic) = w3_trainer::<B>(spec, devices)?;
                phases = Some(step_phases);
                traffic = Some(step_traffic);
                (W3_BATCH, samples)
            }
            _ => (W3_BATCH, w3::<B>(spec, devices)?),
        },
        Workload::UnequalReplicas => {
            let (samples, rows) = w4::<B>(spec, devices)?;
            replica_rows = Some(rows);
            (W3_BATCH, samples)
        }
        Workload::ImageFolder => {
            let (samples, load) = crate::w5::w5::<B>(spec, devices)?;
            load_seconds = Some(load);
            (crate::w5::W5_BATCH, samples)
        }
    };
    let (iterations, median_seconds) = median(samples);
    Ok(Measurement {
        spec: spec.clone(),
        backend: B::name(&device),
        iterations,
        median_seconds,
        rows_per_second: rows as f64 / median_seconds,
        exchanged_values: None,
        optimizer_bytes: None,
        exchange_seconds: None,
        compute_seconds: None,
        replica_rows,
        load_seconds,
        phases,
        traffic,
    })
}

fn w1<B: Backend>(spec: &Spec, devices: Vec<B::Device>) -> anyhow::Result<Vec<f64>> {
    let device = devices[0].clone();
    let model = LinearConfig::new(5, 2).init::<B>(&device).fork(&device);
    let x = Tensor::<B, 2>::random([30, 5], Distribution::Normal(0.0, 1.0), &device);
    forward(spec, devices, model, x, |m, x| m.forward(x))
}

fn w2<B: Backend>(spec: &Spec, devices: Vec<B::Device>) -> anyhow::Result<Vec<f64>> {
    let device = devices[0].clone();
    let model = mlp_config().init::<B>(&device).fork(&device);
    let x = Tensor::<B, 2>::random([W2_BATCH, 256], Distribution::Normal(0.0, 1.0), &device);
    forward(spec, devices, model, x, |m, x| m.forward(x))
}

/// Times `f(model, x)`, called directly or through `DataParallel`.
fn forward<B: Backend, M: burn_data_parallel::Replicate<B> + Sync>(
    spec: &Spec,
    devices: Vec<B::Device>,
    model: M,
    x: Tensor<B, 2>,
    f: impl Fn(&M, Tensor<B, 2>) -> Tensor<B, 2> + Sync,
) -> anyhow::Result<Vec<f64>> {
    Ok(match spec.runner {
        Runner::Plain => time::<B>(spec.seconds, &devices, || {
            std::hint::black_box(f(&model, x.clone()));
        }),
        _ => {
            let mut dp = DataParallel::new(model, devices.clone())?;
            let mut failure = None;
            let samples = time::<B>(spec.seconds, &devices, || {
                if let Err(e) = dp.forward(x.clone(), &f) {
                    failure.get_or_insert(e);
                }
            });
            if let Some(e) = failure {
                return Err(e.into());
            }
            samples
        }
    })
}

/// The W3 batch: 256 rows of 256 features, labels in 0..10.
pub fn w3_batch<B: Backend>(device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let x = Tensor::random([W3_BATCH, 256], Distribution::Normal(0.0, 1.0), device);
    let y = Tensor::<B, 1>::random([W3_BATCH], Distribution::Uniform(0.0, 10.0), device).int();
    (x, y)
}

fn w3<B: AutodiffBackend>(spec: &Spec, devices: Vec<B::Device>) -> anyhow::Result<Vec<f64>> {
    let device = devices[0].clone();
    let model: Mlp<B> = mlp_config().init::<B>(&device).fork(&device);
    let (x, y) = w3_batch::<B>(&device);
    let mut failure = None;
    let samples = match spec.runner {
        Runner::Ceiling => {
            let rows = W3_BATCH.div_ceil(spec.devices);
            let (x, y) = (x.clone().narrow(0, 0, rows), y.clone().narrow(0, 0, rows));
            time::<B>(spec.seconds, &devices, || {
                std::hint::black_box(GradientsParams::from_grads(
                    model.loss(x.clone(), y.clone()).backward(),
                    &model,
                ));
            })
        }
        Runner::Plain => {
            let mut model = Some(model);
            let mut optim = SgdConfig::new().init::<B, Mlp<B>>();
            time::<B>(spec.seconds, &devices, || {
                if let Some(m) = model.take() {
                    let loss = m.loss(x.clone(), y.clone());
                    let grads = GradientsParams::from_grads(loss.backward(), &m);
                    model = Some(optim.step(W3_LR, m, grads));
                }
            })
        }
        Runner::ForwardBackward => {
            let mut dp = DataParallel::new(model, devices.clone())?;
            let mut optim = SgdConfig::new().init::<B, Mlp<B>>();
            let loss = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
            time::<B>(spec.seconds, &devices, || {
                match dp.forward(x.clone(), |m, x| m.forward(x)) {
                    Ok(logits) => {
                        let l = loss.forward(logits, y.clone());
                        let grads = GradientsParams::from_grads(l.backward(), dp.module());
                        let stepped = optim.step(W3_LR, dp.module().clone(), grads);
                        dp.set_module(stepped);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            })
        }
        _ => anyhow::bail!("{:?} is not a plain W3 runner", spec.runner),
    };
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(samples)
}

/// W3 through `DataParallelTrainer` (SGD or Adam, the step sharded or not, seeded or not):
/// the step times, where the time goes, and what the replicas exchange.
fn w3_trainer<B: AutodiffBackend>(
    spec: &Spec,
    devices: Vec<B::Device>,
) -> anyhow::Result<(Vec<f64>, Phases, Traffic)> {
    let device = devices[0].clone();
    let model: Mlp<B> = mlp_config().init::<B>(&device).fork(&device);
    let batch = w3_batch::<B>(&device);
    match spec.runner {
        Runner::Adam | Runner::ShardedAdam => {
            let trainer = DataParallelTrainer::new(model, AdamConfig::new().init(), devices)?;
            w3_steps(spec, trainer, batch, W3_ADAM_LR)
        }
        _ => {
            let trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), devices)?;
            w3_steps(spec, trainer, batch, W3_LR)
        }
    }
}

/// Adam's rate for W3 (SGD's 0.05 would throw Adam's weights about).
const W3_ADAM_LR: f64 = 1e-3;

fn w3_steps<B, O>(
    spec: &Spec,
    trainer: DataParallelTrainer<B, Mlp<B>, O>,
    (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>),
    lr: f64,
) -> anyhow::Result<(Vec<f64>, Phases, Traffic)>
where
    B: AutodiffBackend,
    O: Optimizer<Mlp<B>, B> + Clone + Send,
    O::Record: burn_data_parallel::ShardableRecord<B>,
{
    let mut trainer = match spec.runner {
        Runner::Sharded | Runner::ShardedAdam => trainer.with_sharded_step(),
        Runner::Seeded => trainer.with_seed(1),
        _ => trainer,
    };
    let devices = trainer.devices().to_vec();
    // Each phase ends when its work is done on every device (queued work on a GPU).
    let sync = |devices: &[B::Device]| {
        for device in devices {
            let _ = B::sync(device);
        }
    };
    let mut failure = None;
    let mut seen: Vec<(f64, Vec<f64>, f64, f64)> = Vec::new();
    let samples = time::<B>(spec.seconds, &devices, || {
        let start = Instant::now();
        let stats = trainer.accumulate((x.clone(), y.clone()), |m, (x, y)| m.loss(x, y));
        sync(&devices);
        let accumulated = start.elapsed().as_secs_f64();
        let applied = Instant::now();
        let stats = stats.and_then(|stats| trainer.apply(lr).map(|()| stats));
        sync(&devices);
        match stats {
            Ok(stats) => seen.push((
                accumulated,
                stats
                    .replicas
                    .iter()
                    .map(|r| r.compute.as_secs_f64())
                    .collect(),
                stats.reduce.as_secs_f64(),
                applied.elapsed().as_secs_f64(),
            )),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    // The warm-up's steps are in `seen` too: only the timed ones count.
    let seen = &seen[seen.len() - samples.len()..];
    let med = |values: Vec<f64>| median(values).1;
    let replicas = seen.iter().map(|s| s.1.len()).min().unwrap_or(0);
    let phases = Phases {
        step: med(seen.iter().map(|s| s.0 + s.3).collect()),
        replica_compute: (0..replicas)
            .map(|i| med(seen.iter().map(|s| s.1[i]).collect()))
            .collect(),
        replica_wait: (0..replicas)
            .map(|i| med(seen.iter().map(|s| s.0 - s.2 - s.1[i]).collect()))
            .collect(),
        combine: med(seen.iter().map(|s| s.2).collect()),
        optimizer: med(seen.iter().map(|s| s.3).collect()),
    };
    let counted = trainer.step_traffic();
    let traffic = Traffic {
        ring_bound: counted.ring_bound(),
        over_ring_bound: counted.over_ring_bound(),
        sent: counted.sent,
        received: counted.received,
    };
    Ok((samples, phases, traffic))
}

/// W4: the W3 step on replicas of unequal speed, the slow one (replica 1, or the single
/// replica of `ReplicaAlone(1)`) computing every row twice. Returns the step times and each
/// replica's rows in the last step.
fn w4<B: AutodiffBackend>(
    spec: &Spec,
    devices: Vec<B::Device>,
) -> anyhow::Result<(Vec<f64>, Vec<usize>)> {
    let device = devices[0].clone();
    let model: Mlp<B> = mlp_config().init::<B>(&device).fork(&device);
    let (x, y) = w3_batch::<B>(&device);
    let slow = match spec.runner {
        Runner::ReplicaAlone(1) => 0,
        Runner::ReplicaAlone(_) | Runner::EqualReplicas => usize::MAX,
        _ => 1,
    };
    let loss = move |m: &Mlp<B>, (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>)| {
        if current_replica().is_some_and(|r| r.index == slow) {
            // The same work again, with no effect on the gradient.
            let again = m.loss(x.clone(), y.clone()).mul_scalar(0.0);
            m.loss(x, y) + again
        } else {
            m.loss(x, y)
        }
    };
    let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), devices.clone())?
        .with_split_policy(spec.split.policy());
    let mut failure = None;
    let mut rows = Vec::new();
    let samples = time::<B>(spec.seconds, &devices, || {
        match trainer.step(W3_LR, (x.clone(), y.clone()), loss) {
            Ok(stats) => rows = stats.replicas.iter().map(|r| r.rows).collect(),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok((samples, rows))
}
