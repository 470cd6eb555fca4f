//! Data-parallel training of an MLP on synthetic data, over N devices.
//!
//! ```text
//! cargo run --release --bin train -- --devices 2
//! cargo run --release --bin train -- --resume --epochs 8     # continue a run
//! mpirun -n 2 target/release/train --mpi                      # built with --features mpi
//! ```

#[path = "../common/allocator.rs"]
mod allocator;
#[path = "../common/backend.rs"]
mod backend;
mod checkpoint;
mod config;
#[path = "../common/exit.rs"]
mod exit;
mod ranks;
mod report;

use anyhow::Context;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module};
use burn::optim::AdamConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_data_parallel::{DataParallel, DataParallelTrainer};
use clap::Parser;
use config::TrainConfig;
use dp_dataset::{ClassificationBatch, ShardedSampler, SyntheticClassification, batch_of};
use dp_model::{Classifier, Mlp};
use report::{EpochReport, RunReport};
use std::path::PathBuf;
use std::time::Instant;

/// Trains an MLP classifier on synthetic Gaussian clusters with data parallelism: each global
/// batch is split across the devices, gradients are combined weighted by rows, and one Adam step
/// is taken. Checkpoints each epoch; writes a JSON report at the end.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A JSON training config (see `TrainConfig`); the flags below override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Passes over the training data [default: 5].
    #[arg(long)]
    epochs: Option<usize>,
    /// Rows per global batch, split across the devices [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate [default: 0.005].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the weights and the shuffling [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Devices: every GPU by default with CUDA; on the CPU, the CPU device repeated this many
    /// times (default 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    devices: Option<u64>,
    /// Folder for checkpoints and the report.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue from the latest checkpoint in --out, up to --epochs.
    #[arg(long)]
    resume: bool,
    /// Train across the ranks of an MPI job (start with `mpirun`; build with `--features
    /// mpi`). Each rank drives its own --devices; --batch-size is the global batch.
    #[arg(long)]
    mpi: bool,
    /// With --mpi, every rank prints its progress (by default only rank 0 does).
    #[arg(long)]
    log_all_ranks: bool,
}

fn main() -> std::process::ExitCode {
    exit::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_json_file(path)?,
        None => TrainConfig::new(),
    };
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(batch_size) = args.batch_size {
        config.batch_size = batch_size;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    config.validate()?;
    let devices = args.devices.map(|n| n as usize);
    // Before MPI starts its threads.
    backend::share_cpu_threads(devices);
    let ranks = ranks::Ranks::start(args.mpi, args.log_all_ranks)?;
    backend::run_on_available(
        devices,
        Training {
            args,
            config,
            ranks,
        },
    )
}

struct Training {
    args: Args,
    config: TrainConfig,
    ranks: ranks::Ranks,
}

impl backend::Job for Training {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        train::<B>(&self.args, self.config, &self.ranks, devices, label)
    }

    #[cfg(feature = "cuda")]
    fn announce(&self, line: std::fmt::Arguments) {
        self.ranks.say(line);
    }

    #[cfg(feature = "cuda")]
    fn gpus(
        &self,
        all: Vec<burn::backend::cuda::CudaDevice>,
    ) -> Vec<burn::backend::cuda::CudaDevice> {
        self.ranks.gpus(all)
    }
}

fn train<B: AutodiffBackend>(
    args: &Args,
    config: TrainConfig,
    ranks: &ranks::Ranks,
    devices: Vec<B::Device>,
    label: &str,
) -> anyhow::Result<()> {
    // Ranks started with other settings would train apart or wait on each other: refused
    // before anything is read or written.
    ranks.ensure_same(
        "configuration (config file, its overrides or --resume)",
        format!("{config}\n{}", args.resume).as_bytes(),
    )?;
    let device = devices[0].clone();
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let data = SyntheticClassification::new(&config.data);

    B::seed(&device, config.seed);
    let optimizer = AdamConfig::new().init::<B, Mlp<B>>();
    let (model, optimizer, steps, mut history) = if args.resume {
        let loaded = checkpoint::load::<B, _>(out, &config, optimizer, &device)?;
        ranks.say(format_args!(
            "Resuming from {} (epoch {}, step {}).",
            loaded.dir.display(),
            loaded.state.epoch(),
            loaded.state.steps
        ));
        let state = loaded.state;
        (loaded.model, loaded.optimizer, state.steps, state.history)
    } else {
        if let Some(existing) = checkpoint::latest(out)? {
            anyhow::bail!(
                "{} already holds a checkpoint ({}); pass --resume to continue it or choose \
                 another --out",
                out.display(),
                existing.display()
            );
        }
        // `fork` creates the lazily initialised weights once, before any replica copies them.
        let model = config.model().init::<B>(&device).fork(&device);
        (model, optimizer, 0, Vec::new())
    };

    let model_config = config.model();
    ranks.say(format_args!(
        "Training an MLP {} -> {:?} -> {} on {} {label}{}: {} training rows, {} held-out, \
         global batches of {}.",
        model_config.input_size,
        model_config.hidden_sizes,
        model_config.num_classes,
        devices.len(),
        ranks.describe(),
        data.train.len(),
        data.test.len(),
        config.batch_size
    ));
    let local =
        DataParallelTrainer::new(model, optimizer, devices.clone())?.with_steps_taken(steps);
    let mut trainer = ranks.join(local)?;

    // Each rank reads its shard of every epoch; its part of a global batch is the next
    // `batch_size / ranks` of its rows (every rank takes the same number of steps).
    let mut sampler =
        ShardedSampler::new(data.train.len(), ranks.size(), ranks.rank())?.with_seed(config.seed);
    let local_batch = config.batch_size.div_ceil(ranks.size());
    // Both sets are stacked on the device once; each batch is then one `select` of its rows.
    let train_set = batch_of::<B>(
        &data.train,
        &(0..data.train.len()).collect::<Vec<_>>(),
        &device,
    );
    let test_set = batch_of::<B::InnerBackend>(
        &data.test,
        &(0..data.test.len()).collect::<Vec<_>>(),
        &device,
    );
    let first_epoch = history.len();
    let mut trained_rows = 0usize;
    let mut trained_seconds = 0.0;
    for epoch in first_epoch..config.epochs {
        sampler.set_epoch(epoch as u64);
        let indices = sampler.indices();
        let batches = indices.len().div_ceil(local_batch);
        let progress = ranks.progress_bar(batches as u64).with_prefix(format!(
            "epoch {}/{}",
            epoch + 1,
            config.epochs
        ));
        let start = Instant::now();
        let (mut loss_sum, mut rows) = (0.0, 0usize);
        for chunk in indices.chunks(local_batch) {
            let picked = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.iter().map(|&i| i as i64).collect(), [chunk.len()]),
                &device,
            );
            let batch = (
                train_set.inputs.clone().select(0, picked.clone()),
                train_set.targets.clone().select(0, picked),
            );
            let stats = trainer
                .step(config.lr, batch, |model, (x, y)| model.loss(x, y))
                .with_context(|| {
                    format!(
                        "{}training stopped in epoch {}; the last checkpoint in {} is intact",
                        ranks.tag(),
                        epoch + 1,
                        out.display()
                    )
                })?;
            loss_sum += stats.loss * stats.rows as f64;
            rows += stats.rows;
            progress.inc(1);
            progress.set_message(format!(
                "loss {:.4} | {:.0} samples/s",
                loss_sum / rows as f64,
                rows as f64 / start.elapsed().as_secs_f64()
            ));
        }
        let seconds = start.elapsed().as_secs_f64();
        progress.finish_and_clear();
        trained_rows += rows;
        trained_seconds += seconds;

        if !ranks.is_first() {
            // Rank 0 measures accuracy and writes the checkpoints; the others go on training.
            continue;
        }
        // The evaluator is made for this evaluation and dropped with the statement: kept, its
        // handles on the parameters would make the next optimizer step write new buffers
        // instead of updating in place.
        let accuracy = evaluate(
            &mut DataParallel::new(trainer.module().valid(), devices.clone())?,
            &test_set,
        )?;
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: loss_sum / rows as f64,
            test_accuracy: accuracy,
            samples_per_second: rows as f64 / seconds,
            seconds,
        };
        ranks.say(format_args!(
            "epoch {}/{}: loss {:.4}, held-out accuracy {:.2}%, {:.0} samples/s",
            report.epoch,
            config.epochs,
            report.train_loss,
            100.0 * report.test_accuracy,
            report.samples_per_second
        ));
        history.push(report);
        let state = checkpoint::State {
            config: config.clone(),
            steps: trainer.steps(),
            history: history.clone(),
        };
        checkpoint::save(out, trainer.module(), trainer.optimizer(), &state)?;
    }

    trainer.finish()?;
    if !ranks.is_first() {
        return Ok(());
    }
    let report = RunReport {
        backend: B::name(&device),
        devices: devices.iter().map(|d| format!("{d:?}")).collect(),
        samples_per_second: trained_rows as f64 / trained_seconds.max(f64::EPSILON),
        final_test_accuracy: history.last().map_or(0.0, |e| e.test_accuracy),
        epochs: history,
        config,
    };
    let path = out.join("report.json");
    report.write(&path)?;
    ranks.say(format_args!(
        "Held-out accuracy {:.2}%. Report: {}",
        100.0 * report.final_test_accuracy,
        path.display()
    ));
    Ok(())
}

/// Held-out accuracy, with the rows split across the devices.
fn evaluate<B: Backend>(
    parallel: &mut DataParallel<B, Mlp<B>>,
    test: &ClassificationBatch<B>,
) -> anyhow::Result<f64> {
    let rows = test.targets.dims()[0];
    let mut correct = 0;
    for start in (0..rows).step_by(1024) {
        let len = 1024.min(rows - start);
        let batch = (
            test.inputs.clone().narrow(0, start, len),
            test.targets.clone().narrow(0, start, len),
        );
        let per_replica = parallel.try_map(batch, |m, (x, y)| {
            Ok::<_, std::convert::Infallible>(m.correct(x, y))
        })?;
        correct += per_replica.into_iter().sum::<usize>();
    }
    Ok(correct as f64 / rows.max(1) as f64)
}
