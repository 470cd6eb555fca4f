//! Data-parallel training of an MLP, a CNN or a transformer on synthetic data or files, over N
//! devices.
//!
//! ```text
//! cargo run --release -p dp-tools --bin train -- --devices 2
//! cargo run --release -p dp-tools --bin train -- --data train.csv --test-data test.csv    # CSV rows, MLP
//! cargo run --release -p dp-tools --bin train -- --model cnn --data images/train --test-data images/test
//! cargo run --release -p dp-tools --bin train -- --model cnn --data mnist/     # MNIST's IDX files
//! cargo run --release -p dp-tools --bin train -- --devices 2 --model cnn --out runs/cnn
//! cargo run --release -p dp-tools --bin train -- --resume --epochs 8     # continue a run
//! cargo run --release -p dp-tools --bin train -- --accumulate 4            # 4 micro-batches per step
//! mpirun -n 2 target/release/train --mpi                      # built with -p dp-tools --features mpi
//! mpirun -n 2 target/release/train --mpi --shard-optimizer    # ZeRO stage 1
//! mpirun -n 2 target/release/train --mpi --balance-ranks      # parts by the ranks' speeds
//! cargo run --release -p dp-tools --bin train -- --devices 2 --split adaptive --threads-per-device 2,1
//! ```

mod checkpoint;
mod config;
mod data;
mod ranks;
mod report;

use anyhow::Context;
use burn::data::dataloader::batcher::Batcher;
use burn::module::AutodiffModule;
use burn::optim::AdamConfig;
use burn::optim::Optimizer;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{BasicOps, Tensor, TensorKind};
use burn_data_parallel::{DataParallelTrainer, Replicate, Scatter, SplitPolicy, Trainer};
use clap::Parser;
use config::{ModelKind, ScheduleKind, TrainConfig};
use data::{Data, Labelled, Loaded, Source};
use dp_dataset::ShardedLoader;
use dp_model::Classifier;
use report::{EpochReport, RunReport};
use std::path::PathBuf;
use std::time::Instant;

/// Trains a classifier with data parallelism: an MLP on Gaussian clusters, a CNN with batch
/// normalization on noisy shifted patterns, or a transformer on token sequences; or the MLP on
/// CSV rows and the CNN on an image folder or MNIST's files (--data).
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
    /// The CNN's batch norms normalize over the whole global batch, across devices and ranks
    /// (`SyncBatchNorm`), as one device does, instead of over each device's part.
    #[arg(long)]
    sync_bn: bool,
    /// Rows per global batch, split across the devices [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate [default: 0.005].
    #[arg(long)]
    lr: Option<f64>,
    /// How the learning rate moves over the optimizer steps (Burn's schedulers) [default:
    /// constant]; its state is in every checkpoint.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Steps of linear warm-up up to the schedule's rate [default: 0].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Where `linear` and `cosine` schedules end [default: 0].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Optimizer steps `linear` and `cosine` last [default: the whole run].
    #[arg(long)]
    schedule_steps: Option<usize>,
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
    /// Continue from the latest checkpoint in --out, up to --epochs. Every other setting must
    /// be the checkpoint's, unless named by --allow-change.
    #[arg(long)]
    resume: bool,
    /// With --resume, the settings that may differ from the checkpoint's (config keys, nested
    /// ones with dots: `lr`, `batch_size`, `data.noise`); each epoch's report keeps the
    /// settings it ran with.
    #[arg(long, value_delimiter = ',')]
    allow_change: Vec<String>,
    /// Train across the ranks of an MPI job (start with `mpirun`; build with `--features
    /// mpi`). Each rank drives its own --devices; --batch-size is the global batch.
    #[arg(long)]
    mpi: bool,
    /// With --mpi, every rank prints its progress (by default only rank 0 does).
    #[arg(long)]
    log_all_ranks: bool,
    /// Micro-batches per global batch: gradients accumulate over them and the optimizer steps
    /// (and, with --mpi, the ranks exchange gradients) once per global batch [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    accumulate: Option<u64>,
    /// With --mpi, each rank keeps the optimizer state of its shard of the parameters only
    /// (ZeRO stage 1); in one process, the gradient sum and the optimizer step are spread over
    /// the devices (`with_sharded_step`). Checkpoints still hold the whole state, and the
    /// training is the same.
    #[arg(long)]
    shard_optimizer: bool,
    /// How each batch is split between this process's devices: `adaptive` gives each device
    /// rows in proportion to its measured speed. The training is the same whatever the split.
    #[arg(long, value_enum, default_value_t = dp_tools::split::Split::Chunk)]
    split: dp_tools::split::Split,
    /// Threads of each CPU device's replica, one count per device (e.g. `2,1`: devices of
    /// unequal speed); by default one each.
    #[arg(long, value_delimiter = ',')]
    threads_per_device: Option<Vec<usize>>,
    /// With --mpi, split each global batch between the ranks in proportion to their measured
    /// speed (machines of unequal speed) instead of in equal parts.
    #[arg(long)]
    balance_ranks: bool,
    /// Train on files instead of synthetic data: CSV rows (features, then an integer label)
    /// for the MLP; for the CNN, an image folder (one subfolder of PNG or JPEG images per
    /// class) or a folder holding MNIST's four IDX files (its t10k pair held out).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The held-out set of --data: a CSV file, or an image folder with the same classes.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Batches prepared ahead on loader threads while the devices compute (0: each batch is
    /// read when its step needs it). The numbers are the same either way.
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Loader threads preparing batches ahead (reading and decoding files) [default: 1].
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    loader_threads: u64,
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
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
    if let Some(kind) = args.schedule {
        config.schedule.kind = kind;
    }
    if let Some(steps) = args.warmup_steps {
        config.schedule.warmup_steps = steps;
    }
    if let Some(min_lr) = args.min_lr {
        config.schedule.min_lr = min_lr;
    }
    if args.schedule_steps.is_some() {
        config.schedule.steps = args.schedule_steps;
    }
    if args.sync_bn {
        config.sync_batch_norm = true;
    }
    if let Some(accumulate) = args.accumulate {
        config.accumulate = accumulate as usize;
    }
    let source = Source::open(&mut config, args.data.as_deref(), args.test_data.as_deref())?;
    config.validate()?;
    let devices = args.devices.map(|n| n as usize);
    // Before MPI starts its threads.
    dp_backend::share_cpu_threads(devices);
    let ranks = ranks::Ranks::start(args.mpi, args.log_all_ranks)?;
    dp_backend::run_on_available(
        devices,
        Training {
            args,
            config,
            ranks,
            source,
        },
    )
}

struct Training {
    args: Args,
    config: TrainConfig,
    ranks: ranks::Ranks,
    source: Source,
}

impl dp_backend::Job for Training {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        train::<B>(
            &self.args,
            self.config,
            self.source,
            &self.ranks,
            devices,
            label,
        )
    }

    fn announce(&self, line: std::fmt::Arguments) {
        self.ranks.say(line);
    }

    fn machine_share(&self) -> (usize, usize) {
        self.ranks.machine_share()
    }
}

fn train<B: AutodiffBackend>(
    args: &Args,
    config: TrainConfig,
    source: Source,
    ranks: &ranks::Ranks,
    devices: Vec<B::Device>,
    label: &str,
) -> anyhow::Result<()> {
    // Ranks started with other settings would train apart or wait on each other: refused
    // before anything is read or written.
    ranks.ensure_same(
        "configuration (config file, its overrides, --data, --test-data, --resume, \
         --allow-change or --balance-ranks)",
        format!(
            "{config}\n{:?}\n{:?}\n{}\n{}\n{:?}",
            args.data, args.test_data, args.resume, args.balance_ranks, args.allow_change
        )
        .as_bytes(),
    )?;
    let run = Run {
        args,
        ranks,
        label,
        devices,
    };
    match source {
        Source::Rows(data) => {
            let mlp = config.mlp();
            let what = format!(
                "an MLP {} -> {:?} -> {}",
                mlp.input_size, mlp.hidden_sizes, mlp.num_classes
            );
            run.go(config, &what, |d| mlp.init::<B>(d), data)
        }
        Source::Images(data) => {
            let cnn = config.cnn();
            run.go(
                config.clone(),
                &cnn_text(&config),
                |d| cnn.init::<B>(d),
                data,
            )
        }
        Source::ImageFiles(data) => {
            let cnn = config.cnn();
            run.go(
                config.clone(),
                &cnn_text(&config),
                |d| cnn.init::<B>(d),
                data,
            )
        }
        Source::Sequences(data) => {
            let transformer = config.transformer();
            let what = format!(
                "a transformer encoder ({} layers, d_model {}, {} heads) on sequences of up to {} \
                 tokens",
                transformer.layers, transformer.d_model, transformer.heads, transformer.max_len
            );
            run.go(config.clone(), &what, |d| transformer.init::<B>(d), data)
        }
    }
}

fn cnn_text(config: &TrainConfig) -> String {
    let i = &config.images;
    format!(
        "a CNN {:?} with batch norm on {}-channel images",
        config.widths, i.channels
    )
}

/// A run's settings that do not depend on the model.
struct Run<'a, B: Backend> {
    args: &'a Args,
    ranks: &'a ranks::Ranks,
    label: &'a str,
    devices: Vec<B::Device>,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// Trains the model `init` makes on `data`'s training set, measuring accuracy on its
    /// held-out set after each epoch.
    fn go<M, const D: usize, K, I, T>(
        self,
        config: TrainConfig,
        what: &str,
        init: impl Fn(&B::Device) -> M,
        data: Data<I, T>,
    ) -> anyhow::Result<()>
    where
        I: Send + Sync + 'static,
        T: Batcher<B, I, Loaded<B, D, K>>
            + Batcher<B::InnerBackend, I, Loaded<B::InnerBackend, D, K>>
            + Clone
            + 'static,
        M: Classifier<B, Input = Tensor<B, D, K>> + AutodiffModule<B> + Replicate<B> + Sync,
        M::InnerModule: Classifier<B::InnerBackend, Input = Tensor<B::InnerBackend, D, K>>
            + Replicate<B::InnerBackend>
            + Sync,
        K: TensorKind<B>
            + BasicOps<B>
            + TensorKind<B::InnerBackend>
            + BasicOps<B::InnerBackend>
            + 'static,
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
        let (model, optimizer, steps, history, schedule) = if args.resume {
            let loaded = checkpoint::load::<B, _, _>(
                out,
                &config,
                &args.allow_change,
                init(&device),
                optimizer,
                &device,
            )?;
            ranks.say(format_args!(
                "Resuming from {} (epoch {}, step {}, trained on {} rank{}).",
                loaded.dir.display(),
                loaded.state.epoch(),
                loaded.state.steps,
                loaded.state.world_size,
                if loaded.state.world_size == 1 {
                    ""
                } else {
                    "s"
                }
            ));
            let state = loaded.state;
            // The saved scheduler state fits only the schedule it was saved with: a schedule
            // changed with --allow-change is replayed up to this step instead.
            let same = state.config.schedule == config.schedule;
            let schedule = (state.schedule_steps, loaded.scheduler.filter(|_| same));
            (
                loaded.model,
                loaded.optimizer,
                state.steps,
                state.history,
                schedule,
            )
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
            let schedule = (None, None);
            (
                init(&device).fork(&device),
                optimizer,
                0,
                Vec::new(),
                schedule,
            )
        };

        let train_rows = data.train.len();
        let test_rows = data.test.len();
        ranks.say(format_args!(
            "Training {what} on {} {label}{}: {train_rows} training rows, {test_rows} held-out \
             ({}), global batches of {}{}.",
            devices.len(),
            ranks.describe(),
            data.source,
            config.batch_size,
            if config.accumulate > 1 {
                format!(" in {} micro-batches", config.accumulate)
            } else {
                String::new()
            }
        ));
        let mut local = DataParallelTrainer::new(model, optimizer, devices.clone())?
            .with_steps_taken(steps)
            .with_split_policy(args.split.policy());
        if let Some(threads) = &args.threads_per_device {
            local = local.with_threads_per_device(threads.clone())?;
        }
        let epochs = Epochs {
            args,
            ranks,
            devices,
            config,
            history,
            schedule,
            data,
            batches: std::marker::PhantomData,
        };
        ranks.train(local, args.shard_optimizer, args.balance_ranks, epochs)
    }
}

/// The epochs of a run, from the first one not yet in `history`.
struct Epochs<'a, B, const D: usize, K, I, Bt>
where
    B: AutodiffBackend,
    K: TensorKind<B> + TensorKind<B::InnerBackend>,
{
    args: &'a Args,
    ranks: &'a ranks::Ranks,
    devices: Vec<B::Device>,
    config: TrainConfig,
    history: Vec<EpochReport>,
    /// The schedule's length and state, from the checkpoint a run resumes.
    schedule: (Option<usize>, Option<Vec<u8>>),
    data: Data<I, Bt>,
    batches: std::marker::PhantomData<fn() -> Labelled<B, D, K>>,
}

impl<B, M, O, const D: usize, K, I, Bt> ranks::Loop<B, M, O> for Epochs<'_, B, D, K, I, Bt>
where
    B: AutodiffBackend,
    I: Send + Sync + 'static,
    Bt: Batcher<B, I, Loaded<B, D, K>>
        + Batcher<B::InnerBackend, I, Loaded<B::InnerBackend, D, K>>
        + Clone
        + 'static,
    M: Classifier<B, Input = Tensor<B, D, K>> + AutodiffModule<B> + Replicate<B> + Sync,
    M::InnerModule: Classifier<B::InnerBackend, Input = Tensor<B::InnerBackend, D, K>>
        + Replicate<B::InnerBackend>
        + Sync,
    O: Optimizer<M, B>,
    K: TensorKind<B>
        + BasicOps<B>
        + TensorKind<B::InnerBackend>
        + BasicOps<B::InnerBackend>
        + 'static,
    Tensor<B, D, K>: Scatter<B>,
    Tensor<B::InnerBackend, D, K>: Scatter<B::InnerBackend>,
{
    fn run<T: Trainer<B, M, Optimizer = O>>(self, mut trainer: T) -> anyhow::Result<()> {
        let Self {
            args,
            ranks,
            devices,
            config,
            mut history,
            schedule,
            data,
            batches: _,
        } = self;
        let device = devices[0].clone();
        let out = &args.out;
        // Every rank reads the same global batches, whatever the number of ranks, and loads
        // its part of each: a run resumes at another world size with the same steps.
        let loader = ShardedLoader::<B, I, Loaded<B, D, K>>::new(
            data.train,
            data.batcher.clone(),
            device.clone(),
            config.batch_size,
        )
        .with_ranks(trainer.world_size(), trainer.rank())?
        .with_seed(config.seed)
        .with_micro_batches(config.accumulate)
        .with_prefetch(args.prefetch)
        .with_threads(args.loader_threads as usize);
        // Every rank evaluates on the whole held-out set (`Trainer::evaluate` splits it).
        let held_out = ShardedLoader::<B::InnerBackend, I, Loaded<B::InnerBackend, D, K>>::new(
            data.test,
            data.batcher,
            device.clone(),
            1024,
        )
        .with_shuffle(false)
        .with_prefetch(args.prefetch)
        .with_threads(args.loader_threads as usize);
        let first_epoch = history.len();
        // The schedule lasts what the config says, else what the run's first start counted.
        let per_epoch = loader.steps_per_epoch();
        let (saved_steps, saved_scheduler) = schedule;
        // Burn's schedulers reach their end a step after `steps`: the run's last step is the
        // schedule's end.
        let schedule_steps = config
            .schedule
            .steps
            .or(saved_steps)
            .unwrap_or((config.epochs * per_epoch).saturating_sub(1).max(1));
        let mut scheduler = config.schedule.scheduler(config.lr, schedule_steps)?;
        match saved_scheduler {
            Some(bytes) => scheduler = checkpoint::load_scheduler::<B>(scheduler, bytes, &device)?,
            // A checkpoint from before schedules (which ran at a constant rate), or one of
            // another schedule: the steps replayed give this schedule's rate at this step.
            None => (0..trainer.steps()).for_each(|_| {
                scheduler.step();
            }),
        }
        let mut lr = config.lr;
        let mut trained_rows = 0usize;
        let mut trained_seconds = 0.0;
        for epoch in first_epoch..config.epochs {
            let mut batches = loader.epoch(epoch);
            let progress = ranks
                .progress_bar(batches.steps_left() as u64)
                .with_prefix(format!("epoch {}/{}", epoch + 1, config.epochs));
            let start = Instant::now();
            let (mut loss_sum, mut rows) = (0.0, 0usize);
            let mut last_split = Vec::new();
            let stopped = || {
                format!(
                    "{}training stopped in epoch {}; the last checkpoint in {} is intact",
                    ranks.tag(),
                    epoch + 1,
                    out.display()
                )
            };
            // A global batch in `accumulate` micro-batches, each split across the ranks: one
            // optimizer step, one gradient exchange.
            while let Some(step) = batches.next_step() {
                for piece in &step {
                    // This rank's rows of the piece: an equal part, or one in proportion to the
                    // ranks' speeds with --balance-ranks.
                    let part = &piece[trainer.part(piece.len()).with_context(stopped)?];
                    // A part that cannot be read fails on its rank alone: every rank learns of it
                    // before the step's collectives, rather than wait for that rank there.
                    let (batch, loaded) = match batches.load(part) {
                        Ok(Ok(batch)) => (Some(batch), Ok(())),
                        Ok(Err(error)) => (None, Err(error.into())),
                        Err(error) => (None, Err(error.into())),
                    };
                    ranks
                        .all_succeed("load its part of the batch", loaded)
                        .with_context(stopped)?;
                    let batch = batch.context("a loaded batch")?;
                    let stats = trainer
                        .accumulate(batch, |model: &M, (x, y)| model.loss(x, y))
                        .with_context(stopped)?;
                    loss_sum += stats.loss * stats.rows as f64;
                    rows += stats.rows;
                    last_split = stats.replicas.iter().map(|r| r.rows).collect();
                }
                lr = config.lr * scheduler.step();
                trainer.apply(lr).with_context(stopped)?;
                progress.inc(1);
                progress.set_message(format!(
                    "loss {:.4} | {:.0} samples/s{}",
                    loss_sum / rows as f64,
                    rows as f64 / start.elapsed().as_secs_f64(),
                    split_note(devices.len(), &last_split, trainer.split_policy())
                ));
            }
            let seconds = start.elapsed().as_secs_f64();
            progress.finish_and_clear();
            trained_rows += rows;
            trained_seconds += seconds;

            // Every rank evaluates its part of the held-out rows.
            let evaluation = Instant::now();
            let (accuracy, test_loss) = evaluate(&trainer, &held_out)?;
            let evaluation_seconds = evaluation.elapsed().as_secs_f64();
            let report = EpochReport {
                epoch: epoch + 1,
                train_loss: loss_sum / rows as f64,
                test_accuracy: accuracy,
                test_loss,
                samples_per_second: rows as f64 / seconds,
                seconds,
                evaluation_seconds,
                lr: Some(lr),
                shares: trainer.split_policy().shares(),
                rank_shares: trainer.rank_split().and_then(|policy| policy.shares()),
                settings: Some(serde_json::to_value(&config)?),
            };
            ranks.say(format_args!(
                "epoch {}/{}: loss {:.4}, held-out accuracy {:.2}% (loss {:.4}, evaluated in \
                 {:.2} s), {:.0} samples/s{}{}",
                report.epoch,
                config.epochs,
                report.train_loss,
                100.0 * report.test_accuracy,
                report.test_loss,
                report.evaluation_seconds,
                report.samples_per_second,
                split_note(devices.len(), &last_split, trainer.split_policy()),
                report
                    .rank_shares
                    .as_deref()
                    .map_or_else(String::new, |shares| format!(
                        ", rank shares {}",
                        percentages(shares)
                    ))
            ));
            history.push(report);
            // Collective: with a sharded optimizer state, rank 0 gathers every shard.
            let optimizer = trainer.optimizer_record()?;
            let saved = match optimizer {
                Some(optimizer) => {
                    let state = checkpoint::State {
                        config: config.clone(),
                        steps: trainer.steps(),
                        history: history.clone(),
                        world_size: trainer.world_size(),
                        schedule_steps: Some(schedule_steps),
                    };
                    checkpoint::save::<B, M, O>(
                        out,
                        trainer.module(),
                        optimizer,
                        &scheduler,
                        &state,
                    )
                    .map(|_| ())
                }
                None => Ok(()),
            };
            // Rank 0 alone writes: the others stop with it rather than wait for it.
            ranks.all_succeed("write the checkpoint", saved)?;
        }

        let rank = trainer.rank();
        trainer.finish()?;
        if rank != 0 {
            return Ok(());
        }
        let report = RunReport {
            backend: B::name(&device),
            devices: devices.iter().map(|d| format!("{d:?}")).collect(),
            samples_per_second: trained_rows as f64 / trained_seconds.max(f64::EPSILON),
            final_test_accuracy: history.last().map_or(0.0, |e| e.test_accuracy),
            epochs: history,
            config,
            peak_memory_bytes: report::peak_memory_bytes(),
        };
        let path = out.join("report.json");
        report.write(&path)?;
        ranks.say(format_args!(
            "Held-out accuracy {:.2}%{}. Report: {}",
            100.0 * report.final_test_accuracy,
            report
                .peak_memory_bytes
                .map_or_else(String::new, |bytes| format!(
                    ", peak memory {:.1} MiB",
                    bytes as f64 / (1 << 20) as f64
                )),
            path.display()
        ));
        Ok(())
    }
}

/// Held-out accuracy and mean loss, every row counted once across the devices and the ranks.
fn evaluate<B, M, T, const D: usize, K, I>(
    trainer: &T,
    held_out: &ShardedLoader<B::InnerBackend, I, Loaded<B::InnerBackend, D, K>>,
) -> anyhow::Result<(f64, f64)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: Classifier<B::InnerBackend, Input = Tensor<B::InnerBackend, D, K>>
        + Replicate<B::InnerBackend>
        + Sync,
    T: Trainer<B, M>,
    K: TensorKind<B::InnerBackend> + BasicOps<B::InnerBackend> + 'static,
    Tensor<B::InnerBackend, D, K>: Scatter<B::InnerBackend>,
    I: Send + Sync + 'static,
{
    let [mut correct, mut loss] = [0.0; 2];
    for batch in held_out.epoch(0) {
        let batch: Labelled<B::InnerBackend, D, K> = batch??;
        let [c, l] = trainer.evaluate(batch, |m, (x, y)| m.correct_and_loss_sum(x, y))?;
        correct += c;
        loss += l;
    }
    let rows = held_out.len().max(1) as f64;
    Ok((correct / rows, loss / rows))
}

/// With several devices, how the last batch was split and, for a policy that learns, the
/// shares it has settled on: ", rows 171+85 (shares 66.8%/33.2%)".
fn split_note(devices: usize, rows: &[usize], policy: &dyn SplitPolicy) -> String {
    if devices < 2 || rows.is_empty() {
        return String::new();
    }
    let rows: Vec<String> = rows.iter().map(usize::to_string).collect();
    let shares = policy.shares().map_or_else(String::new, |shares| {
        format!(" (shares {})", percentages(&shares))
    });
    format!(", rows {}{shares}", rows.join("+"))
}

/// "66.8%/33.2%".
fn percentages(shares: &[f64]) -> String {
    let shares: Vec<String> = shares
        .iter()
        .map(|s| format!("{:.1}%", 100.0 * s))
        .collect();
    shares.join("/")
}
