//! An ordinary burn-train program, a classifier of synthetic images, trained on every device
//! (and every MPI rank) by changing one line: the training strategy.
//!
//! ```text
//! cargo run --release -p dp-tools --bin learner -- --devices 2               # DataParallelStrategy
//! cargo run --release -p dp-tools --bin learner -- --strategy single         # burn-train's SingleDevice
//! cargo run --release -p dp-tools --bin learner -- --strategy burn-multi --devices 2   # burn-train's own
//! cargo run --release -p dp-tools --bin learner -- --resume 2 --epochs 4     # continue from epoch 2
//! mpirun -n 2 target/release/learner --mpi                       # built with -p dp-tools --features mpi
//! ```
//!
//! Everything else is what a burn-train user already has: a `Dataset` and a `Batcher`, a model
//! with `TrainStep` and `InferenceStep`, loss, accuracy and learning-rate metrics, a cosine
//! schedule, a file checkpointer and early stopping. burn-train's renderer prints the progress
//! (its plain one where there is no terminal). With `--summary`, rank 0 writes the trained
//! parameters and the run's outcome as JSON.

use anyhow::Context;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::{AdamConfig, Optimizer, SgdConfig};
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MetricEarlyStoppingStrategy,
    MultiDeviceOptim, StoppingCondition, SupervisedTraining, TrainOutput, TrainStep,
    TrainingStrategy,
};
use burn_data_parallel::{DataParallelStrategy, Result as DpResult, Scatter};
use clap::{Parser, ValueEnum};
use dp_dataset::{ImageConfig, ImageItem, SyntheticImages};
use dp_model::{Classifier, Cnn, CnnConfig, Mlp, MlpConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "A burn-train program on every device: DataParallelStrategy in one line")]
struct Args {
    /// Devices (CPU devices without a GPU; default: every GPU, or 2 CPU devices).
    #[arg(long)]
    devices: Option<usize>,
    /// The model.
    #[arg(long, value_enum, default_value_t = ModelKind::Mlp)]
    model: ModelKind,
    /// Which training strategy runs the program.
    #[arg(long, value_enum, default_value_t = Strategy::DataParallel)]
    strategy: Strategy,
    /// Train across the ranks of an `mpirun` job (feature `mpi`).
    #[arg(long)]
    mpi: bool,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// The optimizer (Adam turns last-bit differences of near-zero gradients into visible
    /// ones, in proportion to the learning rate: compare strategies with SGD).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// The learning rate the cosine schedule starts from.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Batches whose gradients are added up before each optimizer step.
    #[arg(long)]
    accumulate: Option<usize>,
    /// Training images (a last batch shorter than the others is kept).
    #[arg(long, default_value_t = 1000)]
    train_size: usize,
    #[arg(long, default_value_t = 200)]
    valid_size: usize,
    /// Stop when the validation loss has not improved for this many epochs.
    #[arg(long, default_value_t = 2)]
    patience: usize,
    /// Continue the run in `--dir` from the checkpoint of this epoch.
    #[arg(long)]
    resume: Option<usize>,
    /// Where burn-train writes its logs, metrics and checkpoints.
    #[arg(long, default_value = "runs/learner")]
    dir: PathBuf,
    /// Seeds the backend before the model's parameters are drawn (and the strategy's
    /// dropout draws), so that runs can be compared.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the trained parameters and the outcome to this JSON file (rank 0).
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Strategy {
    /// This library's `DataParallelStrategy`.
    DataParallel,
    /// burn-train's `ExecutionStrategy::SingleDevice`, on the first device.
    Single,
    /// burn-train's own `ExecutionStrategy::MultiDevice`, for comparison.
    BurnMulti,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModelKind {
    /// An MLP over the flattened pixels.
    Mlp,
    /// A CNN with batch normalization (each replica normalizes its part with the part's
    /// statistics: compare it with another split of the same parts, not with one device).
    Cnn,
}

/// The model: an MLP over the flattened pixels, or a CNN over the images.
#[derive(Module, Debug)]
pub struct ImageClassifier<B: Backend> {
    mlp: Option<Mlp<B>>,
    cnn: Option<Cnn<B>>,
}

/// A batch of images, as the batcher makes it.
#[derive(Clone, Debug)]
pub struct ImageBatch<B: Backend> {
    pixels: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

/// What lets the strategy split a batch across devices: the tuple of its tensors does.
impl<B: Backend> Scatter<B> for ImageBatch<B> {
    fn rows(&self, dim: usize) -> DpResult<Option<usize>> {
        (self.pixels.clone(), self.targets.clone()).rows(dim)
    }

    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        (self.pixels, self.targets)
            .scatter(dim, sizes, devices)
            .into_iter()
            .map(|(pixels, targets)| ImageBatch { pixels, targets })
            .collect()
    }
}

#[derive(Clone)]
struct ImageBatcher;

impl<B: Backend> Batcher<B, ImageItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> ImageBatch<B> {
        let rows = items.len();
        let width = items.first().map_or(0, |item| item.pixels.len());
        let targets: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let pixels: Vec<f32> = items.into_iter().flat_map(|item| item.pixels).collect();
        ImageBatch {
            pixels: Tensor::from_data(TensorData::new(pixels, [rows, width]), device),
            targets: Tensor::from_data(TensorData::new(targets, [rows]), device),
        }
    }
}

impl<B: Backend> ImageClassifier<B> {
    fn forward_classification(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let logits = match (&self.mlp, &self.cnn) {
            (Some(mlp), _) => mlp.forward(batch.pixels),
            (None, Some(cnn)) => {
                let [rows, width] = batch.pixels.dims();
                let side = (width as f64).sqrt() as usize;
                cnn.logits(batch.pixels.reshape([rows, 1, side, side]))
            }
            (None, None) => unreachable!("an ImageClassifier has one of its models"),
        };
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<B: AutodiffBackend> TrainStep for ImageClassifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.forward_classification(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for ImageClassifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}

struct Program {
    args: Args,
    rank: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<std::rc::Rc<burn_data_parallel::dist::Mpi>>,
}

impl dp_backend::Job for Program {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        train::<B>(self, devices, label)
    }

    fn default_cpu_devices(&self) -> usize {
        2
    }

    fn announce(&self, line: std::fmt::Arguments) {
        if self.rank == 0 {
            println!("{line}");
        }
    }

    fn machine_share(&self) -> (usize, usize) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return (mpi.local_rank(), mpi.local_size());
        }
        (0, 1)
    }
}

fn train<B: AutodiffBackend>(
    program: Program,
    devices: Vec<B::Device>,
    label: &str,
) -> anyhow::Result<()> {
    let args = &program.args;
    let images = ImageConfig::new()
        .with_train_size(args.train_size)
        .with_test_size(args.valid_size);
    let data = SyntheticImages::new(&images);
    let width = images.channels * images.size * images.size;
    let device = devices[0].clone();
    B::seed(&device, args.seed);
    // The model's parameters are made on the first device before any copy is taken.
    let model = match args.model {
        ModelKind::Mlp => ImageClassifier {
            mlp: Some(MlpConfig::new(width, vec![64], images.classes).init::<B>(&device)),
            cnn: None,
        },
        ModelKind::Cnn => ImageClassifier {
            mlp: None,
            cnn: Some(CnnConfig::new(images.channels, images.classes).init::<B>(&device)),
        },
    }
    .fork(&device);

    // The one line that changes: the training strategy (kept to ask for its error).
    let strategy = DataParallelStrategy::<B>::new(devices.clone()).with_seed(args.seed);
    #[cfg(feature = "mpi")]
    let strategy = match &program.mpi {
        Some(mpi) => strategy.with_communicator(mpi.clone()),
        None => strategy,
    };
    // Kept to ask for its error; with the MPI job in it, it stays on this thread.
    #[allow(clippy::arc_with_non_send_sync)]
    let parallel = Arc::new(strategy);
    if program.rank == 0 {
        let shown = match args.strategy {
            Strategy::Single => 1,
            _ => devices.len(),
        };
        println!(
            "{:?} on {shown} {label} ({}), {} training images in batches of {}",
            args.strategy,
            B::name(&device),
            args.train_size,
            args.batch_size
        );
    }
    let run = Run {
        args,
        rank: program.rank,
        devices: &devices,
        parallel: parallel.clone(),
        data,
    };
    let trained = match args.optimizer {
        OptimizerKind::Adam => run.fit(model, AdamConfig::new().init())?,
        OptimizerKind::Sgd => run.fit(model, SgdConfig::new().init())?,
    };

    let error = parallel.take_error();
    if program.rank == 0
        && let Some(path) = &args.summary
    {
        let summary = serde_json::json!({
            "strategy": format!("{:?}", args.strategy),
            "devices": devices.len(),
            "error": error.as_ref().map(ToString::to_string),
            "parameters": parameters(&trained),
        });
        std::fs::write(path, serde_json::to_string(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(error) = error {
        return Err(error).context("training stopped");
    }
    if program.rank == 0 {
        println!("Done: metrics and checkpoints in {}", args.dir.display());
    }
    Ok(())
}

/// The program's pieces, for [`Run::fit`] with either optimizer.
struct Run<'a, B: AutodiffBackend> {
    args: &'a Args,
    rank: usize,
    devices: &'a [B::Device],
    parallel: Arc<DataParallelStrategy<B>>,
    data: SyntheticImages,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// burn-train's `SupervisedTraining`, as any burn-train program sets it up.
    fn fit<O>(
        self,
        model: ImageClassifier<B>,
        optimizer: O,
    ) -> anyhow::Result<ImageClassifier<B::InnerBackend>>
    where
        O: Optimizer<ImageClassifier<B>, B> + 'static,
    {
        let dataloader_train = DataLoaderBuilder::new(ImageBatcher)
            .batch_size(self.args.batch_size)
            .build(self.data.train);
        let dataloader_valid = DataLoaderBuilder::new(ImageBatcher)
            .batch_size(self.args.batch_size)
            .build(self.data.test);

        let strategy: TrainingStrategy<_> = match self.args.strategy {
            Strategy::DataParallel => TrainingStrategy::Custom(self.parallel.clone()),
            Strategy::Single => ExecutionStrategy::single(self.devices[0].clone()).into(),
            Strategy::BurnMulti => {
                ExecutionStrategy::multi(self.devices.to_vec(), MultiDeviceOptim::OptimMainDevice)
                    .into()
            }
        };
        let scheduler = CosineAnnealingLrSchedulerConfig::new(self.args.lr, 50)
            .with_min_lr(self.args.lr / 10.0)
            .init()
            .map_err(anyhow::Error::msg)
            .context("the learning-rate schedule")?;
        let mut training =
            SupervisedTraining::new(&self.args.dir, dataloader_train, dataloader_valid)
                .metrics((AccuracyMetric::new(), LossMetric::new()))
                .metric_train_numeric(LearningRateMetric::new())
                .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
                .early_stopping(MetricEarlyStoppingStrategy::new(
                    &LossMetric::<B::InnerBackend>::new(),
                    Aggregate::Mean,
                    Direction::Lowest,
                    Split::Valid,
                    StoppingCondition::NoImprovementSince {
                        n_epochs: self.args.patience,
                    },
                ))
                .with_training_strategy(strategy)
                .num_epochs(self.args.epochs);
        if self.rank != 0 {
            // Rank 0 writes the experiment's log; the other ranks would write into the same file.
            training = training.with_application_logger(None);
        }
        if let Some(k) = self.args.accumulate {
            training = training.grads_accumulation(k);
        }
        if let Some(epoch) = self.args.resume {
            training = training.checkpoint(epoch);
        }
        Ok(training
            .launch(Learner::new(model, optimizer, scheduler))
            .model)
    }
}

/// Every float parameter's values, in the module's order.
fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>();
            self.0.extend(values.to_vec::<f32>().unwrap_or_default());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

fn run(args: Args) -> anyhow::Result<()> {
    #[cfg(feature = "mpi")]
    let mpi = if args.mpi {
        Some(std::rc::Rc::new(burn_data_parallel::dist::Mpi::init()?))
    } else {
        None
    };
    #[cfg(not(feature = "mpi"))]
    if args.mpi {
        anyhow::bail!("--mpi needs a build with `--features mpi`");
    }
    #[cfg(feature = "mpi")]
    let rank = mpi.as_ref().map_or(0, |mpi| mpi.rank());
    #[cfg(not(feature = "mpi"))]
    let rank = 0;
    if args.mpi && args.strategy != Strategy::DataParallel {
        anyhow::bail!("--mpi runs the data-parallel strategy only");
    }
    let requested = args.devices;
    dp_backend::run_on_available(
        requested,
        Program {
            args,
            rank,
            #[cfg(feature = "mpi")]
            mpi,
        },
    )
}

fn main() -> std::process::ExitCode {
    dp_backend::report(run(Args::parse()))
}
