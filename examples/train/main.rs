//! Data-parallel training of an MLP, a CNN or a transformer on synthetic data, over N devices.
//!
//! ```text
//! cargo run --release --bin train -- --devices 2
//! cargo run --release --bin train -- --devices 2 --model cnn --out runs/cnn
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
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::AutodiffModule;
use burn::optim::AdamConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{BasicOps, Int, Tensor, TensorData, TensorKind};
use burn_data_parallel::{DataParallel, DataParallelTrainer, Replicate, Scatter};
use clap::Parser;
use config::{ModelKind, TrainConfig};
use dp_dataset::{
    ShardedSampler, SyntheticClassification, SyntheticImages, SyntheticSequences, batch_of,
    image_batch, sequence_batch,
};
use dp_model::Classifier;
use report::{EpochReport, RunReport};
use std::path::PathBuf;
use std::time::Instant;

/// Trains a classifier on synthetic data with data parallelism: an MLP on Gaussian clusters, a
/// CNN with batch normalization on noisy shifted patterns, or a transformer on token sequences.
/// Each global batch is split across the devices, gradients are combined weighted by rows, and
/// one Adam step is taken. Checkpoints each epoch; writes a JSON report at the end.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A JSON training config (see `TrainConfig`); the flags below override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model to train [default: mlp].
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
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
    if let Some(model) = args.model {
        config.model = model;
    }
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
    let run = Run {
        args,
        ranks,
        label,
        devices,
    };
    match config.model {
        ModelKind::Mlp => {
            let data = SyntheticClassification::new(&config.data);
            let stack = |set: &InMemDataset<_>, d: &B::Device| {
                let all: Vec<usize> = (0..set.len()).collect();
                let batch = batch_of::<B>(set, &all, d);
                (batch.inputs, batch.targets)
            };
            let test: Vec<usize> = (0..data.test.len()).collect();
            let test_batch = batch_of::<B::InnerBackend>(&data.test, &test, &device);
            let mlp = config.mlp();
            let what = format!(
                "an MLP {} -> {:?} -> {}",
                mlp.input_size, mlp.hidden_sizes, mlp.num_classes
            );
            run.go(
                config,
                &what,
                |d| mlp.init::<B>(d),
                stack(&data.train, &device),
                (test_batch.inputs, test_batch.targets),
            )
        }
        ModelKind::Cnn => {
            let data = SyntheticImages::new(&config.images);
            let items = |set: &InMemDataset<_>| set.iter().collect::<Vec<_>>();
            let train = image_batch::<B>(&items(&data.train), &config.images, &device);
            let test = image_batch::<B::InnerBackend>(&items(&data.test), &config.images, &device);
            let cnn = config.cnn();
            let i = &config.images;
            let what = format!(
                "a CNN {:?} with batch norm on {}x{}x{} images",
                cnn.widths, i.channels, i.size, i.size
            );
            run.go(config.clone(), &what, |d| cnn.init::<B>(d), train, test)
        }
        ModelKind::Transformer => {
            let data = SyntheticSequences::new(&config.sequences);
            let items = |set: &InMemDataset<_>| set.iter().collect::<Vec<_>>();
            let train = sequence_batch::<B>(&items(&data.train), &device);
            let test = sequence_batch::<B::InnerBackend>(&items(&data.test), &device);
            let transformer = config.transformer();
            let what = format!(
                "a transformer encoder ({} layers, d_model {}, {} heads) on sequences of up to {} \
                 tokens",
                transformer.layers, transformer.d_model, transformer.heads, transformer.max_len
            );
            run.go(
                config.clone(),
                &what,
                |d| transformer.init::<B>(d),
                train,
                test,
            )
        }
    }
}

/// A run's settings that do not depend on the model.
struct Run<'a, B: Backend> {
    args: &'a Args,
    ranks: &'a ranks::Ranks,
    label: &'a str,
    devices: Vec<B::Device>,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// Trains the model `init` makes on `train_set` (all rows stacked on the first device),
    /// measuring accuracy on `test_set` after each epoch.
    fn go<M, const D: usize, K>(
        self,
        config: TrainConfig,
        what: &str,
        init: impl Fn(&B::Device) -> M,
        train_set: (Tensor<B, D, K>, Tensor<B, 1, Int>),
        test_set: (
            Tensor<B::InnerBackend, D, K>,
            Tensor<B::InnerBackend, 1, Int>,
        ),
    ) -> anyhow::Result<()>
    where
        M: Classifier<B, Input = Tensor<B, D, K>> + AutodiffModule<B> + Replicate<B> + Sync,
        M::InnerModule: Classifier<B::InnerBackend, Input = Tensor<B::InnerBackend, D, K>>
            + Replicate<B::InnerBackend>
            + Sync,
        K: TensorKind<B> + BasicOps<B> + TensorKind<B::InnerBackend> + BasicOps<B::InnerBackend>,
        Tensor<B, D, K>: Scatter<B>,
        Tensor<B::InnerBackend, D, K>: Scatter<B::InnerBackend>,
    {
        let Self {
            args,
            ranks,
            label,
            devices,
        } = self;
        let device = devices[0].clone();
        let out = &args.out;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

        B::seed(&device, config.seed);
        let optimizer = AdamConfig::new().init::<B, M>();
        let (model, optimizer, steps, mut history) = if args.resume {
            let loaded =
                checkpoint::load::<B, _, _>(out, &config, init(&device), optimizer, &device)?;
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
            // `fork` creates the lazily initialised weights once, before any replica copies
            // them.
            (init(&device).fork(&device), optimizer, 0, Vec::new())
        };

        let train_rows = train_set.1.dims()[0];
        let test_rows = test_set.1.dims()[0];
        ranks.say(format_args!(
            "Training {what} on {} {label}{}: {train_rows} training rows, {test_rows} held-out, \
             global batches of {}.",
            devices.len(),
            ranks.describe(),
            config.batch_size
        ));
        let local =
            DataParallelTrainer::new(model, optimizer, devices.clone())?.with_steps_taken(steps);
        let mut trainer = ranks.join(local)?;

        // Each rank reads its shard of every epoch; its part of a global batch is the next
        // `batch_size / ranks` of its rows (every rank takes the same number of steps).
        let mut sampler =
            ShardedSampler::new(train_rows, ranks.size(), ranks.rank())?.with_seed(config.seed);
        let local_batch = config.batch_size.div_ceil(ranks.size());
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
                // The data sets are stacked on the device once; each batch is one `select`.
                let picked = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(chunk.iter().map(|&i| i as i64).collect(), [chunk.len()]),
                    &device,
                );
                let batch = (
                    train_set.0.clone().select(0, picked.clone()),
                    train_set.1.clone().select(0, picked),
                );
                let stats = trainer
                    .step(config.lr, batch, |model: &M, (x, y)| model.loss(x, y))
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
            // The evaluator is made for this evaluation and dropped with the statement: kept,
            // its handles on the parameters would make the next optimizer step write new
            // buffers instead of updating in place.
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
}

/// Held-out accuracy, with the rows split across the devices.
fn evaluate<B, M, const D: usize, K>(
    parallel: &mut DataParallel<B, M>,
    (inputs, targets): &(Tensor<B, D, K>, Tensor<B, 1, Int>),
) -> anyhow::Result<f64>
where
    B: Backend,
    M: Classifier<B, Input = Tensor<B, D, K>> + Replicate<B> + Sync,
    K: TensorKind<B> + BasicOps<B>,
    Tensor<B, D, K>: Scatter<B>,
{
    let rows = targets.dims()[0];
    let mut correct = 0;
    for start in (0..rows).step_by(1024) {
        let len = 1024.min(rows - start);
        let batch = (
            inputs.clone().narrow(0, start, len),
            targets.clone().narrow(0, start, len),
        );
        let per_replica = parallel.try_map(batch, |m, (x, y)| {
            Ok::<_, std::convert::Infallible>(m.correct(x, y))
        })?;
        correct += per_replica.into_iter().sum::<usize>();
    }
    Ok(correct as f64 / rows.max(1) as f64)
}
