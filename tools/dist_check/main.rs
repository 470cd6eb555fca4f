//! Multi-process training check, run under `mpirun` (feature `mpi`): every rank trains on its
//! shard of the same global batches, and every rank's parameters must end equal to plain
//! single-process training on those batches, for any model of the zoo (`--model`). Flags
//! inject the faults the tests exercise.
//!
//! ```text
//! cargo build --release -p dp-tools --features mpi --bin dist_check
//! mpirun --allow-run-as-root --oversubscribe -n 2 target/release/dist_check
//! ```
//!
//! Built with `--features cuda,mpi` on a machine with GPUs, each rank trains on its share of
//! the GPUs (`Mpi::share_of`), and `--transport nccl` checks the NCCL path.

use anyhow::Context;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{BasicOps, ElementConversion, Int, Tensor, TensorData, TensorKind};
use burn_data_parallel::dist::{DistributedTrainer, GradientTransport, Mpi};
use burn_data_parallel::{
    Adaptive, Chunk, DataParallelTrainer, Replicate, Scatter, ShardableRecord, SplitPolicy,
    TrainLoss, Trainer, WeightedMean,
};
use clap::Parser;
use dp_dataset::ShardedSampler;
use dp_model::{Classifier, TextClassifier};
use dp_zoo::compare::max_param_diff;
use std::sync::{Arc, Mutex};

/// Trains on every rank's shard of seeded global batches and compares with single-process
/// training.
#[derive(Debug, Parser)]
struct Args {
    /// Steps to train.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Rows of each global batch, split across the ranks.
    #[arg(long, default_value_t = 30)]
    global_batch: usize,
    /// CPU devices (threads) each rank drives.
    #[arg(long, default_value_t = 1)]
    devices_per_rank: usize,
    /// Largest parameter difference allowed against single-process training.
    #[arg(long, default_value_t = 1e-5)]
    tolerance: f32,
    /// This rank builds a different model (it must be refused before any step).
    #[arg(long)]
    mismatch_rank: Option<usize>,
    /// This rank panics at --fault-step.
    #[arg(long)]
    panic_rank: Option<usize>,
    /// This rank exits at --fault-step without a word.
    #[arg(long)]
    exit_rank: Option<usize>,
    /// This rank takes one step more than the others.
    #[arg(long)]
    extra_step_rank: Option<usize>,
    /// This rank resumes as if one step had already been taken (it must be refused at the first
    /// step, on every rank).
    #[arg(long)]
    resumed_rank: Option<usize>,
    /// This rank's replica panics at --fault-step (a caught panic: an error on every rank).
    #[arg(long)]
    replica_panic_rank: Option<usize>,
    /// Split each global batch in contiguous parts by the chunk rule instead of
    /// DistributedSampler's padded shards, so that ranks hold different row counts (some none).
    #[arg(long)]
    uneven: bool,
    /// The step at which the faults happen.
    #[arg(long, default_value_t = 3)]
    fault_step: usize,
    /// The engine that sums the gradients across ranks.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// This rank asks for another transport than --transport (it must be refused).
    #[arg(long)]
    odd_transport_rank: Option<usize>,
    /// The model trained.
    #[arg(long, value_enum, default_value_t = Model::Mlp)]
    model: Model,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = Optim::Sgd)]
    optimizer: Optim,
    /// Micro-batches each rank cuts its shard of a global batch into, accumulated into one
    /// optimizer step (models without batch norm).
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// This rank accumulates one micro-batch more (it must be refused on every rank).
    #[arg(long)]
    extra_micro_batch_rank: Option<usize>,
    /// Each rank keeps the optimizer state of its shard only (ZeRO stage 1).
    #[arg(long)]
    sharded: bool,
    /// This rank does the opposite of --sharded (it must be refused before any step).
    #[arg(long)]
    odd_sharding_rank: Option<usize>,
    /// Rows of the held-out set the trained model is evaluated on across the ranks.
    #[arg(long, default_value_t = 37)]
    held_out: usize,
    /// Split each global batch between the ranks by their measured speed
    /// (`with_rank_split(Adaptive)`), each rank taking the rows `Trainer::part` gives it.
    #[arg(long)]
    balance_ranks: bool,
    /// This rank does the opposite of --balance-ranks (it must be refused on every rank).
    #[arg(long)]
    odd_balance_rank: Option<usize>,
    /// With --balance-ranks, this rank asks for its part of a batch one row short (it must be
    /// refused on every rank).
    #[arg(long)]
    short_part_rank: Option<usize>,
    /// This rank is slow: its replicas sleep 2 ms per row.
    #[arg(long)]
    slow_rank: Option<usize>,
    /// The loss: the mean over rows, or a mean stating its own denominator (`WeightedMean`):
    /// class-weighted, or over the real tokens of padded sequences (transformer models).
    #[arg(long, value_enum, default_value_t = LossKind::Mean)]
    loss: LossKind,
    /// This rank uses the other kind of loss (it must be refused on every rank).
    #[arg(long)]
    odd_loss_rank: Option<usize>,
    /// This rank steps with twice the learning rate (it must be refused on every rank).
    #[arg(long)]
    odd_lr_rank: Option<usize>,
    /// This rank's held-out set has one row fewer (it must be refused on every rank).
    #[arg(long)]
    short_held_out_rank: Option<usize>,
    /// Every rank's loss function runs the backward pass itself from --fault-step on, so no
    /// parameter receives a gradient from the trainer (it must be refused on every rank).
    #[arg(long)]
    backward_in_loss: bool,
    /// This rank evaluates one metric more (it must be refused on every rank).
    #[arg(long)]
    extra_metric_rank: Option<usize>,
    /// Seeds the run (`with_seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// This rank seeds with another seed (it must be refused on every rank).
    #[arg(long)]
    odd_seed_rank: Option<usize>,
    /// Dropout in the MLP: the run is then not compared with single-process training; it
    /// prints its parameters' summary (`PARAMS`) for runs to be compared with each other.
    #[arg(long)]
    dropout: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LossKind {
    Mean,
    /// A class-weighted mean (`Classifier::weighted_loss_sum`).
    Weighted,
    /// The transformer's mean over real tokens (`TextClassifier::token_loss_sum`).
    Tokens,
}

/// The models of the zoo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Model {
    /// Linear layers and ReLUs.
    Mlp,
    /// Convolutions and batch normalization (checked against per-part normalization).
    Cnn,
    /// The CNN with `SyncBatchNorm` (checked against one device on the whole batch).
    SyncCnn,
    /// Embeddings and a transformer encoder with a padding mask.
    Transformer,
    /// The transformer with its encoder frozen: fine-tuning the head.
    Finetune,
    /// One embedding matrix used for the input and the output.
    Tied,
    /// A layer few rows go through, so that some steps give it no gradient on any rank.
    Branchy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Optim {
    Sgd,
    Adam,
    /// Adam with weight decay, which must leave frozen parameters alone.
    Adamw,
}

impl Optim {
    /// Adam divides by the root of the squared gradient (plus 1e-5), which turns rounding in a
    /// near-zero gradient into a step of up to `lr`: its rate keeps that under the tolerance.
    fn lr(self) -> f64 {
        match self {
            Self::Sgd => 0.1,
            Self::Adam | Self::Adamw => 0.0005,
        }
    }
}

/// Single-process training on every rank's rows.
enum Reference<B: AutodiffBackend, M, O> {
    /// One module on one device, the whole union at once.
    Plain(Option<M>, O),
    /// The parts the ranks' replicas make, each a replica of a `DataParallelTrainer`, split
    /// as the sizes say.
    Parts(Box<DataParallelTrainer<B, M, O>>, Arc<Mutex<Vec<usize>>>),
}

impl<B, M, O> Reference<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// `parts`: the most parts a micro-batch is cut into, for a model whose parts matter.
    fn new(
        start: &M,
        optimizer: O,
        parts: Option<usize>,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let module = M::from_inner(start.valid());
        Ok(match parts {
            None => Self::Plain(Some(module), optimizer),
            Some(parts) => {
                let devices = vec![device.clone(); parts];
                let sizes = Arc::new(Mutex::new(Vec::new()));
                let trainer = DataParallelTrainer::new(module, optimizer, devices)?
                    .with_split_policy(Fixed(Arc::clone(&sizes)));
                Self::Parts(Box::new(trainer), sizes)
            }
        })
    }

    /// One step on `micro_batches`, each with the parts it is cut into (one micro-batch, the
    /// whole union, for `Plain`); returns the loss.
    fn step<I: Scatter<B>, L: TrainLoss<B>>(
        &mut self,
        lr: f64,
        micro_batches: Vec<(I, Vec<usize>)>,
        loss: impl Fn(&M, I) -> L + Sync,
    ) -> anyhow::Result<f64> {
        match self {
            Self::Plain(module, optimizer) => {
                let m = module.take().expect("the reference module is there");
                let mut batches = micro_batches.into_iter();
                let (batch, _) = batches.next().expect("one batch");
                anyhow::ensure!(
                    batches.next().is_none(),
                    "the plain reference takes one batch"
                );
                let (l, weight) = loss(&m, batch).into_parts();
                let l = match weight {
                    Some(weight) => l / weight,
                    None => l,
                };
                let value: f64 = l.clone().into_scalar().elem();
                let grads = GradientsParams::from_grads(l.backward(), &m);
                *module = Some(optimizer.step(lr, m, grads));
                Ok(value)
            }
            Self::Parts(trainer, sizes) => {
                let (mut sum, mut weight) = (0.0, 0.0);
                for (batch, parts) in micro_batches {
                    *sizes.lock().unwrap() = parts.into_iter().filter(|&rows| rows > 0).collect();
                    let stats = trainer.accumulate(batch, &loss)?;
                    sum += stats.loss * stats.weight;
                    weight += stats.weight;
                }
                trainer.apply(lr)?;
                Ok(sum / weight)
            }
        }
    }

    fn module(&self) -> &M {
        match self {
            Self::Plain(module, _) => module.as_ref().expect("the reference module is there"),
            Self::Parts(trainer, _) => trainer.module(),
        }
    }

    /// The size of the whole optimizer state, serialized as the trainers measure theirs.
    fn optimizer_state_bytes(&self) -> anyhow::Result<usize> {
        match self {
            Self::Plain(_, optimizer) => {
                let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
                Ok(Recorder::<B>::record(&recorder, optimizer.to_record(), ())?.len())
            }
            Self::Parts(trainer, _) => Ok(trainer.optimizer_state_bytes()?),
        }
    }
}

/// The sizes last set, whatever the rows: the ranks' parts of a micro-batch, in rank order.
#[derive(Debug)]
struct Fixed(Arc<Mutex<Vec<usize>>>);

impl SplitPolicy for Fixed {
    fn sizes(&self, _rows: usize, _devices: usize) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

/// Every float parameter's values, one after another.
fn common_params<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Transport {
    Auto,
    Mpi,
    Nccl,
}

impl From<Transport> for GradientTransport {
    fn from(transport: Transport) -> Self {
        match transport {
            Transport::Auto => Self::Auto,
            Transport::Mpi => Self::Mpi,
            Transport::Nccl => Self::Nccl,
        }
    }
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before MPI starts its threads.
    dp_backend::share_cpu_threads(Some(args.devices_per_rank));
    let mpi = std::rc::Rc::new(Mpi::init()?);
    dp_backend::run_on_available(Some(args.devices_per_rank), Check { args, mpi })
}

struct Check {
    args: Args,
    mpi: std::rc::Rc<Mpi>,
}

impl dp_backend::Job for Check {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _: &str) -> anyhow::Result<()> {
        check::<B>(&self.args, &self.mpi, devices)
    }

    fn announce(&self, line: std::fmt::Arguments) {
        if self.mpi.rank() == 0 {
            println!("[rank 0] {line}");
        }
    }

    fn machine_share(&self) -> (usize, usize) {
        (self.mpi.local_rank(), self.mpi.local_size())
    }
}

fn check<B: AutodiffBackend>(
    args: &Args,
    mpi: &std::rc::Rc<Mpi>,
    devices: Vec<B::Device>,
) -> anyhow::Result<()> {
    // Each rank starts from different weights: the broadcast must make them rank 0's.
    B::seed(&devices[0], 1 + mpi.rank() as u64);
    let odd = args.mismatch_rank == Some(mpi.rank());
    match args.model {
        Model::Mlp => {
            let mlp = dp_zoo::models::mlp_config();
            let hidden = if odd {
                vec![17]
            } else {
                mlp.hidden_sizes.clone()
            };
            let dropout = args.dropout.unwrap_or(0.0);
            let model = |d: &B::Device| {
                dp_model::MlpConfig {
                    hidden_sizes: hidden.clone(),
                    ..mlp.clone()
                }
                .with_dropout(dropout)
                .init::<B>(d)
            };
            Case {
                args,
                mpi,
                devices,
                model,
                batch: rows::<B>,
                held_out: rows::<B::InnerBackend>,
                ghost: false,
                tokens: None,
            }
            .run()
        }
        Model::Cnn | Model::SyncCnn => {
            let cnn = dp_zoo::models::cnn_config();
            let widths = if odd { vec![4, 7] } else { cnn.widths.clone() };
            let sync = args.model == Model::SyncCnn;
            let model = |d: &B::Device| {
                cnn.clone()
                    .with_widths(widths.clone())
                    .with_sync_batch_norm(sync)
                    .init::<B>(d)
            };
            Case {
                args,
                mpi,
                devices,
                model,
                batch: images::<B>,
                held_out: images::<B::InnerBackend>,
                ghost: !sync,
                tokens: None,
            }
            .run()
        }
        Model::Transformer | Model::Finetune => {
            let frozen = args.model == Model::Finetune;
            let model = |d: &B::Device| {
                let config = dp_zoo::models::transformer_config();
                let d_model = if odd { 12 } else { config.d_model };
                let model = config.with_d_model(d_model).init::<B>(d);
                if frozen {
                    model.freeze_encoder()
                } else {
                    model
                }
            };
            Case {
                args,
                mpi,
                devices,
                model,
                batch: tokens::<B>,
                held_out: tokens::<B::InnerBackend>,
                ghost: false,
                tokens: Some(token_mean::<B>),
            }
            .run()
        }
        Model::Tied => {
            let model = |d: &B::Device| {
                let config = dp_zoo::models::tied_config();
                let d_model = if odd { 9 } else { config.d_model };
                config.with_d_model(d_model).init::<B>(d)
            };
            Case {
                args,
                mpi,
                devices,
                model,
                batch: tokens::<B>,
                held_out: tokens::<B::InnerBackend>,
                ghost: false,
                tokens: None,
            }
            .run()
        }
        Model::Branchy => {
            // Few rows exceed 1.8 in their first feature: some steps have none on any rank.
            let model = |d: &B::Device| {
                let mut config = dp_zoo::models::branchy_config();
                if odd {
                    config.hidden += 1;
                }
                config.init::<B>(d)
            };
            Case {
                args,
                mpi,
                devices,
                model,
                batch: rows::<B>,
                held_out: rows::<B::InnerBackend>,
                ghost: false,
                tokens: None,
            }
            .run()
        }
    }
}

/// Inputs and class targets.
type Batch<B, const D: usize, K> = (Tensor<B, D, K>, Tensor<B, 1, Int>);

/// Makes step `step`'s batch of `rows` rows on a device.
type MakeBatch<B, const D: usize, K> = fn(usize, usize, &burn::tensor::Device<B>) -> Batch<B, D, K>;

/// One model to train on every rank's shard of seeded global batches, beside a single-process
/// reference on the union of the shards.
struct Case<'a, B: AutodiffBackend, F, M, const D: usize, K>
where
    K: TensorKind<B> + TensorKind<B::InnerBackend>,
{
    args: &'a Args,
    mpi: &'a std::rc::Rc<Mpi>,
    devices: Vec<B::Device>,
    /// Makes the model on a device.
    model: F,
    /// Step `step`'s global batch of `rows` rows.
    batch: MakeBatch<B, D, K>,
    /// The same rows for the inference module.
    held_out: MakeBatch<B::InnerBackend, D, K>,
    /// The model normalizes by batch statistics, so the reference runs each part (one per
    /// rank and local replica) on its own and weights their losses by rows.
    ghost: bool,
    /// The model's loss averaged over tokens, where it has one.
    tokens: Option<LossFn<M, B, D, K, WeightedMean<B>>>,
}

/// Inputs and targets of a batch.
type Rows<B, const D: usize, K> = (Tensor<B, D, K>, Tensor<B, 1, Int>);

/// A loss function of model `M` returning `L`.
type LossFn<M, B, const D: usize, K, L> = fn(&M, Rows<B, D, K>) -> L;

fn mean_loss<B: AutodiffBackend, M: Classifier<B>>(
    m: &M,
    (x, y): (M::Input, Tensor<B, 1, Int>),
) -> Tensor<B, 1> {
    m.loss(x, y)
}

fn token_mean<B: AutodiffBackend>(
    m: &TextClassifier<B>,
    (x, y): (Tensor<B, 2, Int>, Tensor<B, 1, Int>),
) -> WeightedMean<B> {
    let (sum, count) = m.token_loss_sum(x, y);
    WeightedMean::new(sum, count)
}

fn weighted_loss<B: AutodiffBackend, M: Classifier<B>>(
    m: &M,
    (x, y): (M::Input, Tensor<B, 1, Int>),
) -> WeightedMean<B> {
    let (sum, weight) = m.weighted_loss_sum(x, y);
    WeightedMean::new(sum, weight)
}

impl<B, F, M, const D: usize, K> Case<'_, B, F, M, D, K>
where
    B: AutodiffBackend,
    F: Fn(&B::Device) -> M,
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
    fn run(self) -> anyhow::Result<()> {
        let odd = self.args.odd_loss_rank == Some(self.mpi.rank());
        match (self.args.loss, odd) {
            (LossKind::Mean, false) | (LossKind::Weighted | LossKind::Tokens, true) => {
                self.with_loss(mean_loss::<B, M>)
            }
            (LossKind::Weighted, false) | (LossKind::Mean, true) => {
                self.with_loss(weighted_loss::<B, M>)
            }
            (LossKind::Tokens, false) => match self.tokens {
                Some(token_mean) => self.with_loss(token_mean),
                None => anyhow::bail!("--loss tokens needs a transformer (--model transformer)"),
            },
        }
    }

    fn with_loss<L: TrainLoss<B> + Clone>(self, loss: LossFn<M, B, D, K, L>) -> anyhow::Result<()> {
        match self.args.optimizer {
            Optim::Sgd => self.train(|| SgdConfig::new().init::<B, M>(), loss),
            Optim::Adam => self.train(|| AdamConfig::new().init::<B, M>(), loss),
            Optim::Adamw => self.train(
                || {
                    AdamConfig::new()
                        .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
                        .init::<B, M>()
                },
                loss,
            ),
        }
    }

    fn train<O, L>(
        self,
        optimizer: impl Fn() -> O,
        loss: LossFn<M, B, D, K, L>,
    ) -> anyhow::Result<()>
    where
        O: Optimizer<M, B>,
        O::Record: ShardableRecord<B>,
        L: TrainLoss<B> + Clone,
    {
        let Self {
            args,
            mpi,
            devices,
            model,
            batch,
            held_out,
            ghost,
            tokens: _,
        } = self;
        let (rank, size) = (mpi.rank(), mpi.size());
        let device = devices[0].clone();
        let local_devices = devices.len();
        let model = model(&device).fork(&device);
        let taken = usize::from(args.resumed_rank == Some(rank));
        let mut local =
            DataParallelTrainer::new(model, optimizer(), devices)?.with_steps_taken(taken);
        let seed = match (args.seed, args.odd_seed_rank == Some(rank)) {
            (Some(seed), false) => Some(seed),
            (Some(seed), true) => Some(seed + 1),
            (None, true) => Some(1),
            (None, false) => None,
        };
        if let Some(seed) = seed {
            local = local.with_seed(seed);
        }
        let transport = match (args.odd_transport_rank == Some(rank), args.transport) {
            (false, transport) => transport.into(),
            (true, Transport::Mpi) => GradientTransport::Auto,
            (true, _) => GradientTransport::Mpi,
        };
        let mut trainer = DistributedTrainer::with_transport(mpi.clone(), local, transport)
            .with_context(|| format!("rank {rank}: cannot start training"))?;
        if args.balance_ranks != (args.odd_balance_rank == Some(rank)) {
            trainer = trainer.with_rank_split(Adaptive::new());
        }
        if args.sharded != (args.odd_sharding_rank == Some(rank)) {
            trainer = trainer
                .with_sharded_optimizer()
                .with_context(|| format!("rank {rank}: cannot shard the optimizer state"))?;
        }
        anyhow::ensure!(
            !(args.balance_ranks && (ghost || args.uneven)),
            "--balance-ranks checks models without batch norm, with the parts it decides"
        );
        if rank == 0 {
            println!(
                "[rank 0] gradients summed through {:?}",
                trainer.transport()
            );
        }

        let initial = trainer.module().clone();
        // Each rank's rows of a global batch, by DistributedSampler's rules: when the ranks do not
        // divide the batch, some rows are repeated, and single-process training sees the same rows.
        let indices_of = |r: usize| -> anyhow::Result<Vec<i64>> {
            if args.uneven {
                let sizes = Chunk.sizes(args.global_batch, size);
                let start: usize = sizes.iter().take(r).sum();
                let len = sizes.get(r).copied().unwrap_or(0);
                return Ok((start..start + len).map(|i| i as i64).collect());
            }
            let sampler = ShardedSampler::new(args.global_batch, size, r)?.with_shuffle(false);
            Ok(sampler.indices().into_iter().map(|i| i as i64).collect())
        };
        let as_tensor = |indices: Vec<i64>| {
            let n = indices.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [n]), &device)
        };
        let shards: Vec<Vec<i64>> = (0..size).map(indices_of).collect::<anyhow::Result<_>>()?;
        // Parts asked of the trainer are contiguous and cover the whole global batch at every
        // step.
        let asks_parts = args.balance_ranks || args.short_part_rank.is_some();
        let union = if asks_parts {
            as_tensor((0..args.global_batch as i64).collect())
        } else {
            as_tensor(shards.concat())
        };
        let slow = args.slow_rank == Some(rank);
        let mut rank_rows = Vec::new();
        // The reference, in one process: plain training on the union of the shards; for a model
        // that normalizes by batch statistics, a `DataParallelTrainer` (itself checked against
        // per-part single-device training) over the same parts as every rank's replicas make.
        let parts = ghost.then_some(size * local_devices);
        let mut reference = Reference::new(&initial, optimizer(), parts, &device)?;
        let steps = args.steps + usize::from(args.extra_step_rank == Some(rank));
        let lr = args.optimizer.lr()
            * if args.odd_lr_rank == Some(rank) {
                2.0
            } else {
                1.0
            };
        for step in 0..steps {
            if step == args.fault_step && args.panic_rank == Some(rank) {
                panic!("fault injected at step {step}");
            }
            if step == args.fault_step && args.exit_rank == Some(rank) {
                std::process::exit(3);
            }
            let replica_panics = step == args.fault_step && args.replica_panic_rank == Some(rank);
            let (x, y) = batch(step, args.global_batch, &device);
            // This rank's shard, in `accumulate` micro-batches: one optimizer step.
            let micro = args.accumulate + usize::from(args.extra_micro_batch_rank == Some(rank));
            let shard: Vec<i64> = if asks_parts {
                let short = usize::from(args.short_part_rank == Some(rank));
                let part = trainer.part(args.global_batch - short)?;
                rank_rows.push(part.len());
                part.map(|i| i as i64).collect()
            } else {
                shards[rank].clone()
            };
            let n = shard.len();
            let (mut loss_sum, mut rows) = (0.0, 0);
            for i in 0..micro {
                let piece = shard[i * n / micro..(i + 1) * n / micro].to_vec();
                let piece = as_tensor(piece);
                let stats = trainer
                    .accumulate(
                        (
                            x.clone().select(0, piece.clone()),
                            y.clone().select(0, piece),
                        ),
                        |m: &M, batch| {
                            assert!(
                                !replica_panics,
                                "fault injected in a replica at step {step}"
                            );
                            if args.backward_in_loss && step >= args.fault_step {
                                let value = loss(m, batch);
                                let _ = value.clone().into_parts().0.backward();
                                return value;
                            }
                            if slow {
                                let rows = batch.1.dims()[0] as u64;
                                std::thread::sleep(std::time::Duration::from_millis(2 * rows));
                            }
                            loss(m, batch)
                        },
                    )
                    .with_context(|| format!("rank {rank}: step {step} failed"))?;
                loss_sum += stats.loss * stats.rows as f64;
                rows += stats.rows;
            }
            trainer
                .apply(lr)
                .with_context(|| format!("rank {rank}: step {step} failed"))?;
            let loss_of_step = loss_sum / rows as f64;
            // The reference's micro-batches: the union of the ranks' shards, or, where batch
            // statistics make the parts matter, each micro-batch's union with the parts every
            // rank's replicas made of it.
            let micro_batches: Vec<(Tensor<B, 1, Int>, Vec<usize>)> = if ghost {
                (0..micro)
                    .map(|i| {
                        let pieces: Vec<&[i64]> = shards
                            .iter()
                            .map(|s| &s[i * s.len() / micro..(i + 1) * s.len() / micro])
                            .collect();
                        let parts = pieces
                            .iter()
                            .flat_map(|p| Chunk.sizes(p.len(), local_devices))
                            .collect();
                        (as_tensor(pieces.concat()), parts)
                    })
                    .collect()
            } else {
                vec![(union.clone(), Vec::new())]
            };
            let reference_loss = reference.step(
                lr,
                micro_batches
                    .into_iter()
                    .map(|(rows, parts)| {
                        (
                            (x.clone().select(0, rows.clone()), y.clone().select(0, rows)),
                            parts,
                        )
                    })
                    .collect(),
                loss,
            )?;
            if rank == 0 {
                println!(
                    "[rank 0] step {step}: loss {loss_of_step:.6} (single process \
                     {reference_loss:.6})"
                );
            }
        }
        if let Some(policy) = trainer.rank_split() {
            println!(
                "[rank {rank}] rows per step {rank_rows:?}; rank shares {:?}",
                policy.shares()
            );
        }
        let exchanged = trainer.exchange_stats();
        let sharded = trainer.is_sharded();
        let transport = trainer.transport();
        let state_bytes = trainer.optimizer_state_bytes()?;
        let whole_state = trainer.optimizer_record()?;
        // Each rank evaluates its part of the held-out rows.
        let short = usize::from(args.short_held_out_rank == Some(rank));
        let set = held_out(9999, args.held_out - short, &device);
        let evaluation = if args.extra_metric_rank == Some(rank) {
            let [correct, loss, _] = trainer.evaluate(set, |m, (x, y)| {
                let [correct, loss] = m.correct_and_loss_sum(x, y);
                [correct, loss, 0.0]
            })?;
            [correct, loss]
        } else {
            trainer.evaluate(set, |m, (x, y)| m.correct_and_loss_sum(x, y))?
        };
        // Every rank finishes before any checks its own figures: a rank leaving early would leave
        // the others waiting in `finish`.
        let (model, _) = trainer
            .finish()
            .with_context(|| format!("rank {rank}: cannot finish"))?;
        // One all-reduce per step whatever the micro-batches, carrying the trainable
        // parameters' gradients and a flag per trainable tensor; frozen parameters and buffers
        // never travel there. Sharded: one reduce-scatter and one all-gather of as much
        // (through NCCL, whose blocks are of one size, give or take the padding: at most a
        // tensor and its flags per rank).
        let (trainable, tensors, largest) = trainable(&initial);
        let per_step = trainable + tensors;
        if sharded && size > 1 {
            let padded = match transport {
                GradientTransport::Mpi => per_step,
                _ => per_step + size * (largest + tensors),
            };
            anyhow::ensure!(
                exchanged.all_reduces == 0
                    && exchanged.reduce_scatters == steps
                    && exchanged.all_gathers == steps
                    && exchanged.values >= 2 * steps * per_step
                    && exchanged.values <= 2 * steps * padded,
                "rank {rank}: {steps} sharded steps of about {per_step} values exchanged \
                 {exchanged:?}"
            );
        } else {
            anyhow::ensure!(
                exchanged.all_reduces == steps && exchanged.values == steps * per_step,
                "rank {rank}: {steps} steps of {per_step} values each ({trainable} trainable \
                 parameters in {tensors} tensors) exchanged {exchanged:?}"
            );
        }
        // A sharded rank holds about 1/ranks of the state (within 10% and one tensor's);
        // rank 0 gathers all of it.
        let whole = reference.optimizer_state_bytes()?;
        if sharded && size > 1 && whole > 0 {
            let bound = whole as f64 / size as f64 * 1.1 + (8 * largest + 512) as f64;
            anyhow::ensure!(
                (state_bytes as f64) <= bound,
                "rank {rank}: a sharded optimizer state of {state_bytes} bytes, where the whole \
                 one is {whole} (bound {bound:.0})"
            );
        }
        if let Some(record) = whole_state {
            // Every entry names one of rank 0's parameters: shards keyed by another rank's ids
            // would be dropped here and the size would fall short.
            let record = record.retain_params(&trainable_ids(&model));
            let gathered = Recorder::<B>::record(
                &BinBytesRecorder::<FullPrecisionSettings>::default(),
                record,
                (),
            )?
            .len();
            anyhow::ensure!(
                gathered.abs_diff(whole) * 100 <= whole,
                "rank {rank}: the gathered optimizer state has {gathered} bytes, the whole one \
                 {whole}"
            );
        }
        let moved = max_param_diff(&model, &initial);
        anyhow::ensure!(
            moved > 1e-4,
            "rank {rank}: training did not move the parameters ({moved:e})"
        );
        if args.dropout.is_some() {
            // Dropout's masks are drawn per replica: no single process draws the same. Runs
            // with the same seed are compared with each other.
            let values: Vec<f32> = common_params(&model);
            let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
            let squares: f64 = values.iter().map(|&v| f64::from(v).powi(2)).sum();
            let first: Vec<String> = values.iter().take(8).map(|v| format!("{v:.9}")).collect();
            println!(
                "[rank {rank}] PARAMS {sum:.9} {squares:.9} {}",
                first.join(" ")
            );
            return Ok(());
        }
        let diff = max_param_diff(&model, reference.module());
        anyhow::ensure!(
            diff <= args.tolerance,
            "rank {rank}: parameters differ from single-process training by {diff:e}"
        );
        // Evaluation across the ranks counts every held-out row once: the same sums as one
        // process evaluating the same module on every row.
        let (x, y) = held_out(9999, args.held_out, &device);
        let [correct, loss_sum] = model.valid().correct_and_loss_sum(x, y);
        let [ranks_correct, ranks_loss] = evaluation;
        anyhow::ensure!(
            ranks_correct == correct
                && (ranks_loss - loss_sum).abs() <= 1e-5 * loss_sum.abs().max(1.0),
            "rank {rank}: evaluation across ranks gave {ranks_correct} correct and a loss sum of \
             {ranks_loss}; one process gives {correct} and {loss_sum}"
        );
        println!(
            "[rank {rank}] PASS: {steps} steps on {size} ranks, {} gradient all-reduces \
             ({} reduce-scatters, {} all-gathers) of about {per_step} values ({} parameters, \
             {trainable} trainable), max parameter difference {diff:e}, optimizer state \
             {state_bytes} of {whole} bytes, held-out {correct}/{} correct, {} batch-norm sums \
             of {} values",
            exchanged.all_reduces,
            exchanged.reduce_scatters,
            exchanged.all_gathers,
            model.num_params(),
            args.held_out,
            exchanged.norm_sums,
            exchanged.norm_values,
        );
        Ok(())
    }
}

/// Values and tensors of the parameters that require a gradient, and the largest tensor's
/// values (buffers included).
fn trainable<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> (usize, usize, usize) {
    struct Count(usize, usize, usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let values = value.shape().num_elements();
            self.2 = self.2.max(values);
            if value.is_require_grad() {
                self.0 += values;
                self.1 += 1;
            }
        }
    }
    let mut count = Count(0, 0, 0);
    model.visit(&mut count);
    (count.0, count.1, count.2)
}

/// The ids of the parameters that require a gradient.
fn trainable_ids<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
) -> std::collections::HashSet<burn::module::ParamId> {
    struct Ids(std::collections::HashSet<burn::module::ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.0.insert(param.id);
            }
        }
    }
    let mut ids = Ids(Default::default());
    model.visit(&mut ids);
    ids.0
}

/// The seed of step `step`'s global batch, the same on every rank.
fn seed(step: usize) -> u64 {
    1000 + step as u64
}

/// Rows of the zoo's features.
fn rows<B: Backend>(
    step: usize,
    rows: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    dp_zoo::data::rows_on(rows, seed(step), device)
}

/// 6x6 one-channel images.
fn images<B: Backend>(
    step: usize,
    rows: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    dp_zoo::data::images_on(rows, seed(step), device)
}

/// Token sequences of 1 to `LENGTH` tokens, padded with 0.
fn tokens<B: Backend>(
    step: usize,
    rows: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    dp_zoo::data::tokens_on(rows, seed(step), device)
}
