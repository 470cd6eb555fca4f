//! `DataParallelStrategy`: burn-train's `SupervisedTraining`, each batch split across devices.

use super::ParallelComponents;
use crate::{DataParallelError, SplitPolicy};
use burn::tensor::backend::AutodiffBackend;
use burn::train::{
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    TrainingModel, TrainingStrategy, ValidLoader,
};
use std::sync::{Arc, Mutex};

/// A burn-train training strategy that runs every batch of the training loader split across
/// `devices` and takes the step one device takes on it (batch norm aside, which normalizes
/// each part with its own statistics), and validation split the same way.
///
/// Add it to a `SupervisedTraining` in one line,
/// `.with_training_strategy(DataParallelStrategy::new(devices).into())`; the rest of the
/// program (dataset, batcher, `TrainStep` / `InferenceStep`, metrics, checkpointer, early
/// stopping, learning-rate scheduler, gradient accumulation) stays as it is.
///
/// An ordinary burn-train program, its batches split across 3 devices:
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::data::dataloader::{DataLoaderBuilder, batcher::Batcher};
/// use burn::data::dataset::InMemDataset;
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig, loss::CrossEntropyLossConfig};
/// use burn::optim::AdamConfig;
/// use burn::tensor::backend::{AutodiffBackend, Backend};
/// use burn::tensor::{Int, Tensor, TensorData};
/// use burn::train::metric::{AccuracyMetric, LossMetric};
/// use burn::train::{
///     ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
/// };
/// use burn_data_parallel::DataParallelStrategy;
///
/// type B = Autodiff<NdArray>;
///
/// #[derive(Module, Debug)]
/// struct Model<B: Backend> {
///     linear: Linear<B>,
/// }
///
/// impl<B: Backend> Model<B> {
///     fn classify(&self, (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>)) -> ClassificationOutput<B> {
///         let logits = self.linear.forward(x);
///         let loss = CrossEntropyLossConfig::new()
///             .init(&logits.device())
///             .forward(logits.clone(), y.clone());
///         ClassificationOutput::new(loss, logits, y)
///     }
/// }
///
/// impl<B: AutodiffBackend> TrainStep for Model<B> {
///     type Input = (Tensor<B, 2>, Tensor<B, 1, Int>);
///     type Output = ClassificationOutput<B>;
///     fn step(&self, batch: Self::Input) -> TrainOutput<ClassificationOutput<B>> {
///         let item = self.classify(batch);
///         TrainOutput::new(self, item.loss.backward(), item)
///     }
/// }
///
/// impl<B: Backend> InferenceStep for Model<B> {
///     type Input = (Tensor<B, 2>, Tensor<B, 1, Int>);
///     type Output = ClassificationOutput<B>;
///     fn step(&self, batch: Self::Input) -> ClassificationOutput<B> {
///         self.classify(batch)
///     }
/// }
///
/// /// A tuple of tensors splits across devices as it is: a batch type of your own implements
/// /// `Scatter` by delegating to the tuple of its tensors.
/// #[derive(Clone)]
/// struct Rows;
///
/// impl<B: Backend> Batcher<B, (f32, i64), (Tensor<B, 2>, Tensor<B, 1, Int>)> for Rows {
///     fn batch(&self, items: Vec<(f32, i64)>, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
///         let n = items.len();
///         let x: Vec<f32> = items.iter().map(|(x, _)| *x).collect();
///         let y: Vec<i64> = items.iter().map(|(_, y)| *y).collect();
///         let x = Tensor::from_data(TensorData::new(x, [n, 1]), device);
///         (x, Tensor::from_data(TensorData::new(y, [n]), device))
///     }
/// }
///
/// let device = Default::default();
/// let items: Vec<(f32, i64)> = (0..40).map(|i| (i as f32 / 40.0, i64::from(i % 2 == 0))).collect();
/// let train = DataLoaderBuilder::<B, _, _>::new(Rows)
///     .batch_size(8)
///     .build(InMemDataset::new(items.clone()));
/// let valid = DataLoaderBuilder::<NdArray, _, _>::new(Rows)
///     .batch_size(8)
///     .build(InMemDataset::new(items));
/// let model = Model { linear: LinearConfig::new(1, 2).init::<B>(&device) };
/// let dir = std::env::temp_dir().join(format!("dp-learner-doc-{}", std::process::id()));
///
/// let result = SupervisedTraining::new(&dir, train, valid)
///     .metrics((AccuracyMetric::new(), LossMetric::new()))
///     .with_application_logger(None)
///     // The one line: each batch of 8 rows split 3, 3 and 2 across three devices.
///     .with_training_strategy(DataParallelStrategy::new(vec![device; 3]).into())
///     .num_epochs(2)
///     .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
/// let trained: Model<NdArray> = result.model;
/// # let _ = std::fs::remove_dir_all(&dir);
/// ```
///
/// What it does, per batch of the training loader:
/// - the learning-rate scheduler steps (`Learner::lr_step`), as burn-train steps it;
/// - the batch is split across the devices by the split policy (the `torch.chunk` rule by
///   default, see [`with_split_policy`](Self::with_split_policy)) and every replica runs the
///   model's `TrainStep::step` on its part. The steps take turns, one replica at a time, since
///   a step fuses forward and backward (see "Concurrency" below);
/// - the parts' gradients are weighted by their rows (or by the weight the output states its
///   loss is a mean over, [`StepOutput::WEIGHTED`](crate::StepOutput::WEIGHTED)) into the
///   gradient of the batch's mean, which the learner's optimizer steps on
///   (`Learner::optimizer_step`): the optimizer and scheduler state in burn-train's
///   checkpoints are the real ones, and a resumed run continues exactly;
/// - with `grads_accumulation(k)`, the batches' gradients are added up over `k` batches before
///   a step, as burn-train adds them, and, as burn-train, the gradients of an epoch's last
///   batches that do not make `k` are dropped (a warning is logged);
/// - the parts' outputs are merged into the output of the whole batch
///   ([`StepOutput::merge`](crate::StepOutput::merge)), which every registered metric
///   receives: the values a single-device run shows.
///
/// Validation runs `InferenceStep::step` on the inference model, each batch split across the
/// devices the same way and its outputs merged: every row counted once. Early stopping, the
/// checkpointer and the interrupter are obeyed after every epoch (the interrupter after every
/// batch too).
///
/// **Concurrency.** burn-train's `TrainStep::step` runs forward and backward in one call, and
/// in Burn 0.21 a `backward()` can silently lose a gradient of a graph another thread is still
/// recording (tracel-ai/burn#5573), which the library's own trainers avoid by letting every
/// forward pass end before any backward pass starts. A fused step cannot be split like that,
/// so the replicas' steps run one at a time, in replica order. On a GPU a step only queues
/// its kernels, so the devices should still compute at the same time (not measured yet); on
/// the CPU the replicas' steps do not overlap. `BENCHMARKS.md` has the measured cost.
///
/// **Errors.** burn-train's strategies cannot return an error. A failed batch (a non-finite
/// loss, a panicking replica, a device that cannot be reached) stops the training through the
/// interrupter, with the error as its message, and the error is kept:
/// [`take_error`](Self::take_error) returns it once `launch` has returned. Nothing of the
/// failed batch is applied.
pub struct DataParallelStrategy<B: AutodiffBackend> {
    devices: Vec<B::Device>,
    policy: Option<Arc<dyn SplitPolicy>>,
    seed: Option<u64>,
    threads_per_replica: Option<usize>,
    error: Mutex<Option<DataParallelError>>,
    comm: Option<std::rc::Rc<dyn crate::dist::Communicator>>,
}

impl<B: AutodiffBackend> DataParallelStrategy<B> {
    /// Trains on `devices`: the model, the optimizer state and the merged outputs live on the
    /// first.
    pub fn new(devices: Vec<B::Device>) -> Self {
        Self {
            devices,
            policy: None,
            seed: None,
            threads_per_replica: None,
            error: Mutex::new(None),
            comm: None,
        }
    }

    /// Splits each batch by `policy` instead of the `torch.chunk` rule (see
    /// [`DataParallelTrainer::with_split_policy`](crate::DataParallelTrainer::with_split_policy)).
    /// The result is the same whatever the split.
    pub fn with_split_policy(mut self, policy: impl SplitPolicy + 'static) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Makes the run repeatable, dropout included: each replica's step draws from a seed
    /// derived from `seed`, the epoch and its position in the epoch (see
    /// [`DataParallelTrainer::with_seed`](crate::DataParallelTrainer::with_seed)), so a run
    /// resumed at an epoch draws what the uninterrupted run drew. Not the draws of another
    /// number of devices or ranks, nor those of one device without this strategy.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Gives each replica `threads` threads for the backend's rayon work (see
    /// [`DataParallel::with_threads_per_replica`](crate::DataParallel::with_threads_per_replica)).
    pub fn with_threads_per_replica(mut self, threads: usize) -> Self {
        self.threads_per_replica = Some(threads);
        self
    }

    /// Trains across the ranks of `comm` (an `Mpi` job, feature `mpi`, or
    /// any [`Communicator`](crate::dist::Communicator)): every rank runs the same program
    /// (its loaders give every rank every batch, in the same order), runs its equal share
    /// of each batch's rows on its own devices, and every rank takes the step one process
    /// takes on the whole batch (the gradients summed by one all-reduce per optimizer step,
    /// see [`DistributedTrainer`](crate::dist::DistributedTrainer)). Rank 0's parameters are
    /// given to every rank at the start. Rank 0 alone feeds the metrics (with every rank's
    /// outputs, which travel through [`StepOutput::into_data`](crate::StepOutput::into_data)),
    /// renders, writes checkpoints and decides early stopping and interruption, which every
    /// rank then obeys after the same batch. Validation is split across the ranks too, every
    /// row counted once.
    ///
    /// A resumed run (`SupervisedTraining::checkpoint`) loads the checkpoint on every rank:
    /// give every rank the same directory (one machine, or a shared file system).
    ///
    /// The communicator stays on the thread that made it (an `Rc`: an MPI job cannot be
    /// called from any thread), and so does a strategy that holds it: launch the training on
    /// that thread.
    pub fn with_communicator(mut self, comm: std::rc::Rc<dyn crate::dist::Communicator>) -> Self {
        self.comm = Some(comm);
        self
    }

    pub(super) fn communicator(&self) -> Option<std::rc::Rc<dyn crate::dist::Communicator>> {
        self.comm.clone()
    }

    /// The devices, in replica order.
    pub fn devices(&self) -> &[B::Device] {
        &self.devices
    }

    /// The error that stopped the last training, if one did (taken: a second call returns
    /// `None`).
    pub fn take_error(&self) -> Option<DataParallelError> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(super) fn seed(&self) -> Option<u64> {
        self.seed
    }

    pub(super) fn policy(&self) -> Option<Arc<dyn SplitPolicy>> {
        self.policy.clone()
    }

    pub(super) fn threads_per_replica(&self) -> Option<usize> {
        self.threads_per_replica
    }

    pub(super) fn keep_error(&self, error: DataParallelError) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

impl<LC: ParallelComponents> SupervisedLearningStrategy<LC> for DataParallelStrategy<LC::Backend> {
    fn fit(
        &self,
        components: TrainingComponents<LC>,
        learner: burn::train::Learner<LC>,
        dataloader_train: TrainLoader<LC>,
        dataloader_valid: ValidLoader<LC>,
        starting_epoch: usize,
    ) -> (TrainingModel<LC>, SupervisedTrainingEventProcessor<LC>) {
        LC::fit(
            self,
            components,
            learner,
            dataloader_train,
            dataloader_valid,
            starting_epoch,
        )
    }
}

impl<LC: ParallelComponents + 'static> From<DataParallelStrategy<LC::Backend>>
    for TrainingStrategy<LC>
{
    // burn-train shares a strategy through an `Arc` but runs it on the launching thread; the
    // strategy holds its communicator in an `Rc` (an MPI job stays on its thread), so it is
    // neither `Send` nor `Sync`.
    #[allow(clippy::arc_with_non_send_sync)]
    fn from(strategy: DataParallelStrategy<LC::Backend>) -> Self {
        TrainingStrategy::Custom(Arc::new(strategy))
    }
}
