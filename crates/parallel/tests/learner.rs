//! burn-train programs on `DataParallelStrategy` against the same programs on burn-train's
//! `ExecutionStrategy::SingleDevice`: parameters, optimizer state (through a resumed run) and
//! every logged metric value, on the zoo's models, with a learning-rate schedule, gradient
//! accumulation and a short last batch.
#![cfg(feature = "burn-train")]
// With feature `mpi` the strategy may hold the MPI job, which stays on the thread that started
// it: the strategy is then neither `Send` nor `Sync`, and burn-train does not ask it to be.
#![allow(clippy::arc_with_non_send_sync)]

mod common;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, EarlyStoppingStrategy, ExecutionStrategy, InferenceStep, Learner,
    MultiDeviceOptim, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
    TrainingStrategy,
};
use burn_data_parallel::{Chunk, DataParallelStrategy, DataParallelTrainer};
use common::zoo::{AB, FEATURES, param_diff};
use common::{B, cpu, cpus};
use dp_model::{Classifier, Cnn, Mlp};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One test at a time: Burn's random generator is one per process, and a seeded run repeats
/// only when nothing else draws from it meanwhile (models are initialized from it too).
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

// The zoo's models are burn-train programs as they are: dp-model implements `TrainStep` and
// `InferenceStep` for each (feature `burn-train`).

/// One dataset row: its features (or tokens) and its class.
#[derive(Clone, Debug)]
struct Row {
    x: Vec<f32>,
    y: i64,
}

/// Stacks rows into `[rows, shape..]` features and classes.
#[derive(Clone)]
struct Stack<const D: usize>([usize; D]);

impl<Bk: Backend, const D: usize, const E: usize>
    Batcher<Bk, Row, (Tensor<Bk, E>, Tensor<Bk, 1, Int>)> for Stack<D>
{
    fn batch(&self, rows: Vec<Row>, device: &Bk::Device) -> (Tensor<Bk, E>, Tensor<Bk, 1, Int>) {
        let n = rows.len();
        let mut shape = [n; E];
        shape[1..].copy_from_slice(&self.0);
        let ys: Vec<i64> = rows.iter().map(|r| r.y).collect();
        let xs: Vec<f32> = rows.into_iter().flat_map(|r| r.x).collect();
        (
            Tensor::from_data(TensorData::new(xs, shape), device),
            Tensor::from_data(TensorData::new(ys, [n]), device),
        )
    }
}

/// `count` rows of `shape` features, from a generator of their own.
fn dataset(count: usize, shape: &[usize], seed: u64) -> Vec<Row> {
    let width: usize = shape.iter().product();
    (0..count)
        .map(|i| {
            let at = |j: usize| ((i * 7919 + j * 104729 + seed as usize * 31) % 1000) as f32;
            Row {
                x: (0..width).map(|j| at(j) / 250.0 - 2.0).collect(),
                y: ((i * 13 + seed as usize) % common::zoo::CLASSES) as i64,
            }
        })
        .collect()
}

/// How a run is made.
#[derive(Clone)]
enum Run {
    Single,
    Parallel(usize),
    /// burn-train's own `ExecutionStrategy::MultiDevice`.
    BurnMulti(usize),
    /// The strategy with an `Adaptive` split, whose parts follow the replicas' timings.
    Adaptive(usize),
}

/// Stops after `epochs` epochs (a deterministic early stop).
#[derive(Clone)]
struct StopAfter(usize);

impl EarlyStoppingStrategy for StopAfter {
    fn should_stop(
        &mut self,
        epoch: usize,
        _: &burn::train::metric::store::EventStoreClient,
    ) -> bool {
        epoch >= self.0
    }
}

struct Setup {
    epochs: usize,
    batch: usize,
    accumulation: Option<usize>,
    stop_after: Option<usize>,
    checkpoint: Option<usize>,
}

/// Trains `model` on `train` (validated on `valid`) as `run` says, in `dir`: Adam and a cosine
/// schedule, loss and accuracy metrics, a file checkpointer. Returns the trained model.
#[allow(clippy::too_many_arguments)]
fn train<M, const D: usize, const E: usize>(
    model: M,
    shape: [usize; D],
    train: Vec<Row>,
    valid: Vec<Row>,
    run: Run,
    setup: &Setup,
    dir: &Path,
) -> (
    M::InnerModule,
    Option<burn_data_parallel::DataParallelError>,
)
where
    M: TrainStep<Input = (Tensor<AB, E>, Tensor<AB, 1, Int>), Output = ClassificationOutput<AB>>
        + AutodiffModule<AB>
        + std::fmt::Display
        + 'static,
    M::InnerModule:
        InferenceStep<Input = (Tensor<B, E>, Tensor<B, 1, Int>), Output = ClassificationOutput<B>>,
    M: burn_data_parallel::Replicate<AB> + Sync,
    M::InnerModule: burn_data_parallel::Replicate<B> + Sync,
{
    let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack(shape))
        .batch_size(setup.batch)
        .build(InMemDataset::new(train));
    let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack(shape))
        .batch_size(setup.batch)
        .build(InMemDataset::new(valid));
    let scheduler = CosineAnnealingLrSchedulerConfig::new(0.02, 7)
        .with_min_lr(0.001)
        .init()
        .unwrap();
    let strategy = DataParallelStrategy::<AB>::new(cpus(match run {
        Run::Single => 1,
        Run::Parallel(n) | Run::BurnMulti(n) | Run::Adaptive(n) => n,
    }));
    let strategy = Arc::new(match run {
        Run::Adaptive(_) => strategy.with_split_policy(burn_data_parallel::Adaptive::new()),
        _ => strategy,
    });
    let mut training = SupervisedTraining::new(dir, dl_train, dl_valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
        .with_application_logger(None)
        .num_epochs(setup.epochs);
    training = match run {
        Run::Single => training.with_training_strategy(ExecutionStrategy::single(cpu()).into()),
        Run::Parallel(_) | Run::Adaptive(_) => {
            training.with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        }
        Run::BurnMulti(n) => training.with_training_strategy(
            ExecutionStrategy::multi(cpus(n), MultiDeviceOptim::OptimMainDevice).into(),
        ),
    };
    if let Some(k) = setup.accumulation {
        training = training.grads_accumulation(k);
    }
    if let Some(epochs) = setup.stop_after {
        training = training.early_stopping(StopAfter(epochs));
    }
    if let Some(epoch) = setup.checkpoint {
        training = training.checkpoint(epoch);
    }
    let learner = Learner::new(model, AdamConfig::new().init(), scheduler);
    let result = training.launch(learner);
    (result.model, strategy.take_error())
}

/// Every value burn-train logged for `split` in `dir`, per epoch and metric, in order.
fn logged(dir: &Path, split: &str) -> Vec<(String, Vec<f64>)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let root = dir.join(split);
    for epoch in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(epoch.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let values = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter_map(|line| line.split(',').next()?.trim().parse::<f64>().ok())
                .collect();
            (
                path.strip_prefix(dir).unwrap().display().to_string(),
                values,
            )
        })
        .collect()
}

/// The largest difference between two runs' logged values, each run's files and counts equal.
fn logged_diff(a: &Path, b: &Path) -> f64 {
    let mut worst: f64 = 0.0;
    for split in ["train", "valid"] {
        let (la, lb) = (logged(a, split), logged(b, split));
        assert_eq!(
            la.iter().map(|(f, v)| (f, v.len())).collect::<Vec<_>>(),
            lb.iter().map(|(f, v)| (f, v.len())).collect::<Vec<_>>(),
            "the runs logged different metrics or items"
        );
        assert!(!la.is_empty() && la.iter().all(|(_, v)| !v.is_empty()));
        for ((_, va), (_, vb)) in la.iter().zip(&lb) {
            for (x, y) in va.iter().zip(vb) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

fn temp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(name).tempdir().unwrap()
}

fn mlp() -> Mlp<AB> {
    common::zoo::mlp::<AB>()
}

#[test]
fn an_mlp_program_trains_as_on_one_device_on_2_and_3_devices_whatever_the_split() {
    let _generator = exclusive();
    // 45 rows in batches of 8: a last batch of 5; with accumulation, an odd batch out.
    let (rows, valid) = (dataset(45, &[FEATURES], 1), dataset(19, &[FEATURES], 2));
    for accumulation in [None, Some(2)] {
        let setup = Setup {
            epochs: 2,
            batch: 8,
            accumulation,
            stop_after: None,
            checkpoint: None,
        };
        let model = mlp();
        let single_dir = temp("single");
        let (single, _) = train(
            model.clone(),
            [FEATURES],
            rows.clone(),
            valid.clone(),
            Run::Single,
            &setup,
            single_dir.path(),
        );
        let moved = param_diff(&single, &model.valid(), &HashSet::new());
        assert!(moved > 1e-3, "training moved nothing ({moved})");
        for (devices, run) in [
            (2, Run::Parallel(2)),
            (3, Run::Parallel(3)),
            (3, Run::Adaptive(3)),
        ] {
            let dir = temp("parallel");
            let (parallel, error) = train(
                model.clone(),
                [FEATURES],
                rows.clone(),
                valid.clone(),
                run,
                &setup,
                dir.path(),
            );
            assert!(error.is_none(), "{error:?}");
            let diff = param_diff(&single, &parallel, &HashSet::new());
            eprintln!("{devices} devices, accumulation {accumulation:?}: parameters {diff:e}");
            assert!(
                diff < 1e-5,
                "{devices} devices, accumulation {accumulation:?}: parameters off by {diff}"
            );
            let metrics = logged_diff(single_dir.path(), dir.path());
            assert!(
                metrics < 1e-5,
                "{devices} devices, accumulation {accumulation:?}: metrics off by {metrics}"
            );
        }
    }
}

/// What the README says of burn-train's own multi-device training on this program: its
/// parameters end far from single-device training's (it sums the devices' gradients and gives
/// each device a full batch of its own slice of the dataset).
#[test]
fn burn_trains_own_multi_device_strategy_ends_elsewhere() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(48, &[FEATURES], 1), dataset(16, &[FEATURES], 2));
    let setup = Setup {
        epochs: 2,
        batch: 8,
        accumulation: None,
        stop_after: None,
        checkpoint: None,
    };
    let model = mlp();
    let (single_dir, multi_dir) = (temp("single"), temp("multi"));
    let (single, _) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Single,
        &setup,
        single_dir.path(),
    );
    let (multi, _) = train(
        model.clone(),
        [FEATURES],
        rows,
        valid,
        Run::BurnMulti(2),
        &setup,
        multi_dir.path(),
    );
    let moved = param_diff(&single, &model.valid(), &HashSet::new());
    let diff = param_diff(&single, &multi, &HashSet::new());
    eprintln!("burn-train MultiDevice(2) vs SingleDevice: {diff:e} (the run moved {moved:e})");
    assert!(diff > 1e-3, "{diff}");
}

fn cnn() -> Cnn<AB> {
    common::zoo::cnn::<AB>()
}

/// Batch norm normalizes each replica's part with the part's statistics: the strategy is
/// checked against the library's own trainer cutting the same parts (itself checked against
/// single-device training part by part), running statistics included. With SGD: Adam turns
/// the last-bit differences of gradients near zero into 1e-4 over a few steps.
#[test]
fn a_cnn_with_batch_norm_trains_as_the_trainer_on_the_same_parts() {
    let _generator = exclusive();
    let epochs = 2;
    let (rows, valid) = (dataset(21, &[1, 6, 6], 3), dataset(9, &[1, 6, 6], 4));
    let model = cnn();
    let lr = 0.05;
    let dir = temp("cnn");
    let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack([1, 6, 6]))
        .batch_size(8)
        .build(InMemDataset::new(rows.clone()));
    let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack([1, 6, 6]))
        .batch_size(8)
        .build(InMemDataset::new(valid));
    let strategy = DataParallelStrategy::<AB>::new(cpus(2));
    let trained = SupervisedTraining::new(dir.path(), dl_train, dl_valid)
        .metrics((LossMetric::new(),))
        .with_application_logger(None)
        .with_training_strategy(strategy.into())
        .num_epochs(epochs)
        .launch(Learner::new(
            common::zoo::copy(&model),
            burn::optim::SgdConfig::new().init(),
            lr,
        ))
        .model;

    // Clones of a module share its running statistics (Burn 0.21): each run gets a copy.
    let copy = common::zoo::copy(&model);
    let mut trainer = DataParallelTrainer::new(copy, burn::optim::SgdConfig::new().init(), cpus(2))
        .unwrap()
        .with_split_policy(Chunk);
    for _ in 0..epochs {
        for chunk in rows.chunks(8) {
            let batch: (Tensor<AB, 4>, Tensor<AB, 1, Int>) =
                Batcher::<AB, Row, _>::batch(&Stack([1, 6, 6]), chunk.to_vec(), &cpu());
            trainer
                .step(lr, batch, |m: &Cnn<AB>, (x, y)| {
                    common::zoo::cross_entropy(m.logits(x), y)
                })
                .unwrap();
        }
    }
    let reference = trainer.module().valid();
    let moved = param_diff(&reference, &model.valid(), &HashSet::new());
    assert!(moved > 1e-3, "{moved}");
    // Parameters and running statistics.
    let diff = param_diff(&reference, &trained, &HashSet::new());
    assert!(diff < 1e-5, "off by {diff}");
}

/// The strategy's replicas take their steps in turns and cannot meet inside a layer: a
/// `SyncBatchNorm` stops the training with a typed error instead of normalizing per part.
#[test]
fn a_sync_batch_norm_is_refused_by_the_strategy() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(16, &[1, 6, 6], 3), dataset(8, &[1, 6, 6], 4));
    let model = dp_model::CnnConfig::new(1, common::zoo::CLASSES)
        .with_widths(vec![4])
        .with_sync_batch_norm(true)
        .init::<AB>(&cpu());
    let dir = temp("sync-bn");
    let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack([1, 6, 6]))
        .batch_size(8)
        .build(InMemDataset::new(rows));
    let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack([1, 6, 6]))
        .batch_size(8)
        .build(InMemDataset::new(valid));
    let strategy = Arc::new(DataParallelStrategy::<AB>::new(cpus(2)));
    let _ = SupervisedTraining::new(dir.path(), dl_train, dl_valid)
        .metrics((LossMetric::new(),))
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        .num_epochs(1)
        .launch(Learner::new(
            model,
            burn::optim::SgdConfig::new().init(),
            0.05,
        ));
    let err = strategy
        .take_error()
        .expect("the strategy stopped with an error");
    assert!(
        matches!(
            err,
            burn_data_parallel::DataParallelError::SyncBatchNorm {
                source: burn_data_parallel::SyncNormError::NotSynchronized { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// A resumed run (model, Adam state and the cosine schedule from burn-train's checkpoint)
/// ends where the uninterrupted one ends, which ends where one device ends.
#[test]
fn a_run_resumed_from_a_checkpoint_continues_exactly() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(27, &[FEATURES], 5), dataset(8, &[FEATURES], 6));
    let model = mlp();
    let setup = |epochs, checkpoint| Setup {
        epochs,
        batch: 6,
        accumulation: None,
        stop_after: None,
        checkpoint,
    };
    let (single_dir, whole_dir, resumed_dir) = (temp("single"), temp("whole"), temp("resumed"));
    let (single, _) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Single,
        &setup(3, None),
        single_dir.path(),
    );
    let (whole, _) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Parallel(2),
        &setup(3, None),
        whole_dir.path(),
    );
    let (first, error) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Parallel(2),
        &setup(1, None),
        resumed_dir.path(),
    );
    assert!(error.is_none());
    assert!(param_diff(&first, &whole, &HashSet::new()) > 1e-4);
    // A fresh model: everything comes from the checkpoint of epoch 1.
    let (resumed, error) = train(
        mlp(),
        [FEATURES],
        rows,
        valid,
        Run::Parallel(2),
        &setup(3, Some(1)),
        resumed_dir.path(),
    );
    assert!(error.is_none());
    let diff = param_diff(&whole, &resumed, &HashSet::new());
    assert!(diff < 1e-6, "resumed run off by {diff}");
    let diff = param_diff(&single, &whole, &HashSet::new());
    assert!(diff < 1e-5, "off single-device training by {diff}");
}

#[test]
fn early_stopping_stops_the_run_after_the_epoch_it_says() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(16, &[FEATURES], 7), dataset(8, &[FEATURES], 8));
    let model = mlp();
    let setup = Setup {
        epochs: 5,
        batch: 8,
        accumulation: None,
        stop_after: Some(2),
        checkpoint: None,
    };
    let (single_dir, dir) = (temp("single"), temp("parallel"));
    let (single, _) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Single,
        &setup,
        single_dir.path(),
    );
    let (parallel, error) = train(
        model.clone(),
        [FEATURES],
        rows.clone(),
        valid.clone(),
        Run::Parallel(3),
        &setup,
        dir.path(),
    );
    assert!(error.is_none());
    let epochs = std::fs::read_dir(dir.path().join("train")).unwrap().count();
    assert_eq!(
        epochs, 2,
        "early stopping after epoch 2 ran {epochs} epochs"
    );
    assert!(param_diff(&single, &parallel, &HashSet::new()) < 1e-5);
}

/// Two parameters concatenated before a product, the op that loses a gradient when a
/// concurrent `backward()` frees its inputs (tracel-ai/burn#5573).
#[derive(Module, Debug)]
pub struct Concat<B: Backend> {
    left: burn::module::Param<Tensor<B, 2>>,
    right: burn::module::Param<Tensor<B, 2>>,
}

impl<B: Backend> Concat<B> {
    fn output(&self, (x, y): (Tensor<B, 2>, Tensor<B, 2>)) -> RegressionOutput<B> {
        let weights = Tensor::cat(vec![self.left.val(), self.right.val()], 1);
        let output = x.matmul(weights);
        let loss = (output.clone() - y.clone()).powi_scalar(2).mean();
        RegressionOutput::new(loss, output, y)
    }
}

impl<B: AutodiffBackend> TrainStep for Concat<B> {
    type Input = (Tensor<B, 2>, Tensor<B, 2>);
    type Output = RegressionOutput<B>;
    fn step(&self, batch: Self::Input) -> TrainOutput<RegressionOutput<B>> {
        let item = self.output(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for Concat<B> {
    type Input = (Tensor<B, 2>, Tensor<B, 2>);
    type Output = RegressionOutput<B>;
    fn step(&self, batch: Self::Input) -> RegressionOutput<B> {
        self.output(batch)
    }
}

#[derive(Clone)]
struct Pairs;

impl<Bk: Backend> Batcher<Bk, Row, (Tensor<Bk, 2>, Tensor<Bk, 2>)> for Pairs {
    fn batch(&self, rows: Vec<Row>, device: &Bk::Device) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
        let n = rows.len();
        let xs: Vec<f32> = rows.iter().flat_map(|r| r.x.clone()).collect();
        let ys: Vec<f32> = rows.iter().map(|r| r.y as f32).collect();
        let x = Tensor::from_data(TensorData::new(xs, [n, 16]), device);
        let y: Tensor<Bk, 2> = Tensor::from_data(TensorData::new(ys, [n, 1]), device);
        (x, y.repeat_dim(1, 32))
    }
}

/// The replicas' fused steps take turns: 4 replicas over 150 batches end where one device
/// ends, so no gradient was lost.
#[test]
fn four_replicas_over_150_fused_steps_never_lose_a_gradient_and_a_nan_stops_the_run() {
    let _generator = exclusive();
    let rows = dataset(150 * 12, &[16], 9);
    let init = |seed: usize| {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 2654435761u64 as usize + seed * 97) % 1000) as f32 / 4000.0)
            .collect();
        burn::module::Param::from_tensor(Tensor::<AB, 2>::from_data(
            TensorData::new(values, [16, 16]),
            &cpu(),
        ))
    };
    let model = Concat {
        left: init(1),
        right: init(2),
    }
    .fork(&cpu());
    let run = |devices: usize, rows: Vec<Row>| {
        let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Pairs)
            .batch_size(12)
            .build(InMemDataset::new(rows.clone()));
        let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Pairs)
            .batch_size(12)
            .build(InMemDataset::new(rows[..12].to_vec()));
        let parallel = Arc::new(DataParallelStrategy::<AB>::new(cpus(devices.max(1))));
        let strategy: TrainingStrategy<_> = if devices == 1 {
            ExecutionStrategy::single(cpu()).into()
        } else {
            TrainingStrategy::Custom(parallel.clone())
        };
        let dir = temp("concat");
        let model = SupervisedTraining::new(dir.path(), dl_train, dl_valid)
            .with_application_logger(None)
            .with_training_strategy(strategy)
            .launch(Learner::new(
                model.clone(),
                burn::optim::SgdConfig::new().init(),
                1e-3,
            ))
            .model;
        (model, parallel.take_error())
    };
    let single = run(1, rows.clone());
    let parallel = run(4, rows.clone());
    let (single, parallel) = (single.0, parallel.0);
    assert!(param_diff(&single, &model.valid(), &HashSet::new()) > 1e-3);
    let diff = param_diff(&single, &parallel, &HashSet::new());
    assert!(diff < 1e-5, "off by {diff}");

    // A NaN in the third batch: the run stops with the error kept, nothing of that batch
    // applied: it ends where one device ends after the first two batches.
    let mut poisoned = rows[..48].to_vec();
    poisoned[30].x[3] = f32::NAN;
    let (stopped, error) = run(3, poisoned);
    assert!(
        matches!(
            error,
            Some(burn_data_parallel::DataParallelError::NonFiniteLoss { step: 2, .. })
        ),
        "{error:?}"
    );
    let (two_batches, _) = run(1, rows[..24].to_vec());
    assert!(param_diff(&two_batches, &stopped, &HashSet::new()) < 1e-6);
}

/// The transformer trained on a loss averaged over real tokens (padding left out): its output
/// states the tokens its loss is a mean over.
#[derive(Module, Debug)]
pub struct TextNet<B: Backend> {
    pub model: dp_model::TextClassifier<B>,
}

/// A token-mean loss's output: the loss, the tokens it is a mean over, and the logits.
pub struct TokenOutput<B: Backend> {
    loss: Tensor<B, 1>,
    tokens: Tensor<B, 1>,
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

impl<B: Backend> burn::train::ItemLazy for TokenOutput<B> {
    type ItemSync = Self;
    fn sync(self) -> Self {
        self
    }
}

impl<B: Backend> burn::train::metric::Adaptor<burn::train::metric::LossInput<B>>
    for TokenOutput<B>
{
    fn adapt(&self) -> burn::train::metric::LossInput<B> {
        burn::train::metric::LossInput::new(self.loss.clone())
    }
}

impl<B: Backend> burn_data_parallel::StepOutput<B> for TokenOutput<B> {
    const WEIGHTED: bool = true;

    fn loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn loss_weight(&self) -> f64 {
        f64::from(self.tokens.clone().into_scalar().elem::<f32>())
    }

    fn merge(parts: Vec<(Self, f64)>, device: &B::Device) -> Self {
        let loss = burn_data_parallel::merged_loss(
            parts.iter().map(|(p, w)| (p.loss.clone(), *w)),
            device,
        );
        let tokens =
            Tensor::from_floats([parts.iter().map(|(_, w)| *w as f32).sum::<f32>()], device);
        let (logits, targets): (Vec<_>, Vec<_>) = parts
            .into_iter()
            .map(|(p, _)| (p.logits, p.targets))
            .unzip();
        TokenOutput {
            loss,
            tokens,
            logits: burn_data_parallel::merged_rows(logits, device),
            targets: burn_data_parallel::merged_rows(targets, device),
        }
    }
}

impl<B: Backend> TextNet<B> {
    fn output(&self, (x, y): (Tensor<B, 2, Int>, Tensor<B, 1, Int>)) -> TokenOutput<B> {
        let logits = self.model.logits(x.clone());
        let (sum, tokens) = self.model.token_loss_sum(x, y.clone());
        TokenOutput {
            loss: sum / tokens.clone(),
            tokens,
            logits,
            targets: y,
        }
    }
}

impl<B: AutodiffBackend> TrainStep for TextNet<B> {
    type Input = (Tensor<B, 2, Int>, Tensor<B, 1, Int>);
    type Output = TokenOutput<B>;
    fn step(&self, batch: Self::Input) -> TrainOutput<TokenOutput<B>> {
        let item = self.output(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for TextNet<B> {
    type Input = (Tensor<B, 2, Int>, Tensor<B, 1, Int>);
    type Output = TokenOutput<B>;
    fn step(&self, batch: Self::Input) -> TokenOutput<B> {
        self.output(batch)
    }
}

#[derive(Clone)]
struct Tokens;

impl<Bk: Backend> Batcher<Bk, Row, (Tensor<Bk, 2, Int>, Tensor<Bk, 1, Int>)> for Tokens {
    fn batch(
        &self,
        rows: Vec<Row>,
        device: &Bk::Device,
    ) -> (Tensor<Bk, 2, Int>, Tensor<Bk, 1, Int>) {
        let n = rows.len();
        let ys: Vec<i64> = rows.iter().map(|r| r.y).collect();
        let ids: Vec<i64> = rows
            .into_iter()
            .flat_map(|r| r.x.into_iter().map(|t| t as i64))
            .collect();
        let length = ids.len() / n;
        (
            Tensor::from_data(TensorData::new(ids, [n, length]), device),
            Tensor::from_data(TensorData::new(ys, [n]), device),
        )
    }
}

/// Padded sequences of 1 to 6 tokens out of 12, as rows.
fn token_rows(count: usize, seed: u64) -> Vec<Row> {
    let (x, y) = common::zoo::tokens::<B>(count, seed);
    let ids = x.into_data().convert::<i64>().to_vec::<i64>().unwrap();
    let ys = y.into_data().convert::<i64>().to_vec::<i64>().unwrap();
    ids.chunks(6)
        .zip(ys)
        .map(|(ids, y)| Row {
            x: ids.iter().map(|&t| t as f32).collect(),
            y,
        })
        .collect()
}

/// Trains `model` with a token-mean loss on `rows` (validated on `valid`) in batches of
/// `batch`, two accumulated per SGD step, on one device with burn-train's `SingleDevice` or
/// on `devices` with the strategy, in `dir`.
fn train_text(
    model: &TextNet<AB>,
    (rows, valid): (&[Row], &[Row]),
    batch: usize,
    devices: usize,
    dir: &Path,
) -> TextNet<B> {
    let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Tokens)
        .batch_size(batch)
        .build(InMemDataset::new(rows.to_vec()));
    let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Tokens)
        .batch_size(4)
        .build(InMemDataset::new(valid.to_vec()));
    let strategy: TrainingStrategy<_> = if devices == 1 {
        ExecutionStrategy::single(cpu()).into()
    } else {
        DataParallelStrategy::<AB>::new(cpus(devices)).into()
    };
    SupervisedTraining::new(dir, dl_train, dl_valid)
        .metric_train_numeric(LossMetric::<AB>::new())
        .metric_valid_numeric(LossMetric::<B>::new())
        .with_application_logger(None)
        .with_training_strategy(strategy)
        .grads_accumulation(2)
        .num_epochs(2)
        .launch(Learner::new(
            model.clone(),
            burn::optim::SgdConfig::new().init(),
            0.05,
        ))
        .model
}

#[test]
fn a_transformer_with_a_token_mean_loss_trains_as_on_one_device() {
    let _generator = exclusive();
    let (rows, valid) = (token_rows(23, 10), token_rows(11, 11));
    let model = TextNet {
        model: common::zoo::transformer::<AB>(),
    };
    let (single_dir, dir) = (temp("single"), temp("tokens"));
    let single = train_text(&model, (&rows, &valid), 7, 1, single_dir.path());
    let parallel = train_text(&model, (&rows, &valid), 7, 3, dir.path());
    assert!(param_diff(&single, &model.valid(), &HashSet::new()) > 1e-3);
    let diff = param_diff(&single, &parallel, &HashSet::new());
    assert!(diff < 1e-5, "off by {diff}");
    let metrics = logged_diff(single_dir.path(), dir.path());
    assert!(metrics < 1e-5, "metrics off by {metrics}");
}

/// Batches of 2 rows on 3 devices (one device idle), a last batch of 1, and an encoder frozen
/// for fine-tuning: the head trains as on one device, the encoder is never changed.
#[test]
fn fewer_rows_than_devices_and_frozen_parameters_train_as_on_one_device() {
    let _generator = exclusive();
    let (rows, valid) = (token_rows(9, 18), token_rows(5, 19));
    let model = TextNet {
        model: common::zoo::frozen_transformer::<AB>(),
    };
    let (single_dir, dir) = (temp("single"), temp("frozen"));
    let single = train_text(&model, (&rows, &valid), 2, 1, single_dir.path());
    let parallel = train_text(&model, (&rows, &valid), 2, 3, dir.path());
    let encoder = common::zoo::ids(&model.model.encoder);
    assert!(!encoder.is_empty());
    let frozen_moved = param_diff(
        &parallel.model.encoder,
        &model.valid().model.encoder,
        &HashSet::new(),
    );
    assert_eq!(frozen_moved, 0.0, "the frozen encoder changed");
    assert!(param_diff(&single, &model.valid(), &HashSet::new()) > 1e-3);
    let diff = param_diff(&single, &parallel, &HashSet::new());
    assert!(diff < 1e-5, "off by {diff}");
    let metrics = logged_diff(single_dir.path(), dir.path());
    assert!(metrics < 1e-5, "metrics off by {metrics}");
}

fn dropout_mlp() -> Mlp<AB> {
    common::zoo::mlp_with_dropout::<AB>()
}

/// With `with_seed`, a program with dropout repeats on several devices; another seed draws
/// other masks.
#[test]
fn a_seeded_run_with_dropout_repeats() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(30, &[FEATURES], 12), dataset(8, &[FEATURES], 13));
    let model = dropout_mlp();
    let run = |seed: u64| {
        let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
            .batch_size(8)
            .build(InMemDataset::new(rows.clone()));
        let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
            .batch_size(8)
            .build(InMemDataset::new(valid.clone()));
        let dir = temp("seeded");
        SupervisedTraining::new(dir.path(), dl_train, dl_valid)
            .with_application_logger(None)
            .with_training_strategy(
                DataParallelStrategy::<AB>::new(cpus(3))
                    .with_seed(seed)
                    .into(),
            )
            .num_epochs(2)
            .launch(Learner::new(
                common::zoo::copy(&model),
                AdamConfig::new().init(),
                0.01,
            ))
            .model
    };
    let (first, again, other) = (run(7), run(7), run(8));
    let repeat = param_diff(&first, &again, &HashSet::new());
    assert!(repeat < 1e-6, "the same seed differs by {repeat}");
    let apart = param_diff(&first, &other, &HashSet::new());
    assert!(apart > 1e-4, "another seed gives the same run ({apart})");
}

/// A logger that stops the run through burn-train's interrupter as soon as it sees a training
/// item: what Ctrl-C in burn-train's dashboard does.
struct StopOnFirstItem(
    burn::train::Interrupter,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl burn::train::logger::MetricLogger for StopOnFirstItem {
    fn log(
        &mut self,
        _: burn::train::metric::store::MetricsUpdate,
        _: usize,
        _: &burn::train::metric::store::Split,
    ) {
        self.0.stop(Some("stopped by the test"));
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn read_numeric(
        &mut self,
        _: &str,
        _: usize,
        _: &burn::train::metric::store::Split,
    ) -> Result<Vec<burn::train::metric::NumericEntry>, String> {
        Ok(Vec::new())
    }

    fn log_metric_definition(&mut self, _: burn::train::metric::MetricDefinition) {}

    fn log_epoch_summary(&mut self, _: burn::train::metric::store::EpochSummary) {}
}

#[test]
fn the_interrupter_stops_the_run() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(64, &[FEATURES], 14), dataset(8, &[FEATURES], 15));
    let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
        .batch_size(8)
        .build(InMemDataset::new(rows));
    let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
        .batch_size(8)
        .build(InMemDataset::new(valid));
    let dir = temp("interrupted");
    let training = SupervisedTraining::new(dir.path(), dl_train, dl_valid)
        .metrics((LossMetric::new(),))
        .with_application_logger(None)
        .num_epochs(500);
    let interrupter = training.interrupter();
    let strategy = Arc::new(DataParallelStrategy::<AB>::new(cpus(2)));
    let logged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    training
        .with_metric_logger(StopOnFirstItem(interrupter.clone(), logged.clone()))
        .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        .launch(Learner::new(mlp(), AdamConfig::new().init(), 0.01));
    assert!(interrupter.should_stop());
    assert!(strategy.take_error().is_none());
    // 500 epochs of 8 batches, 4000 items: the interrupted run ends long before (the metrics
    // are processed on their own thread, some items behind the training, so the bound is
    // loose).
    let logged = logged.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..2000).contains(&logged), "{logged} items logged");
}

/// A seeded run with dropout resumed from its checkpoint draws what the uninterrupted run
/// drew: its masks come from the seed, the epoch and the position in the epoch.
#[test]
fn a_seeded_run_with_dropout_resumes_exactly() {
    let _generator = exclusive();
    let (rows, valid) = (dataset(30, &[FEATURES], 16), dataset(8, &[FEATURES], 17));
    let model = dropout_mlp();
    let run = |dir: &Path, epochs: usize, resume: Option<usize>| {
        let dl_train: Arc<dyn DataLoader<AB, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
            .batch_size(8)
            .build(InMemDataset::new(rows.clone()));
        let dl_valid: Arc<dyn DataLoader<B, _>> = DataLoaderBuilder::new(Stack([FEATURES]))
            .batch_size(8)
            .build(InMemDataset::new(valid.clone()));
        let mut training = SupervisedTraining::new(dir, dl_train, dl_valid)
            .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
            .with_application_logger(None)
            .with_training_strategy(DataParallelStrategy::<AB>::new(cpus(2)).with_seed(5).into())
            .num_epochs(epochs);
        if let Some(epoch) = resume {
            training = training.checkpoint(epoch);
        }
        training
            .launch(Learner::new(
                common::zoo::copy(&model),
                AdamConfig::new().init(),
                0.01,
            ))
            .model
    };
    let (whole_dir, resumed_dir) = (temp("whole"), temp("resumed"));
    let whole = run(whole_dir.path(), 3, None);
    let first = run(resumed_dir.path(), 1, None);
    assert!(param_diff(&first, &whole, &HashSet::new()) > 1e-4);
    let resumed = run(resumed_dir.path(), 3, Some(1));
    let diff = param_diff(&whole, &resumed, &HashSet::new());
    assert!(diff < 1e-6, "the resumed run is off by {diff}");
}
