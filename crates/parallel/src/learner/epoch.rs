//! The epochs of a `SupervisedTraining` run by `DataParallelStrategy`: burn-train's loop
//! (`SingleDeviceTrainEpoch`, `SingleDeviceValidEpoch` and the strategy around them, which
//! are private to burn-train), with each batch run across the devices.

use super::optimizer::LearnerStep;
use super::participants::Participants;
use super::{DataParallelStrategy, StepOutput};
use crate::train::{Alone, Peers};
use crate::{DataParallelError, DataParallelTrainer, Part, Replicate, Result, Scatter};
use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{
    EventProcessorTraining, InferenceStep, Learner, LearnerEvent, LearningComponentsTypes,
    SupervisedTrainingEventProcessor, TrainLoader, TrainStep, TrainingComponents, TrainingItem,
    TrainingModel, ValidLoader,
};

/// The inference backend of `LC`.
type Inner<LC> = <<LC as LearningComponentsTypes>::Backend as AutodiffBackend>::InnerBackend;
/// What the training steps of `LC` take and return.
type TrainInput<LC> = <<LC as LearningComponentsTypes>::TrainingModel as TrainStep>::Input;
type TrainOutput<LC> = <<LC as LearningComponentsTypes>::TrainingModel as TrainStep>::Output;
/// What the validation steps of `LC` take and return.
type ValidInput<LC> = <<LC as LearningComponentsTypes>::InferenceModel as InferenceStep>::Input;
type ValidOutput<LC> = <<LC as LearningComponentsTypes>::InferenceModel as InferenceStep>::Output;
/// The trainer running the learner's model, the learner as its optimizer.
type LearnerTrainer<LC> = DataParallelTrainer<
    <LC as LearningComponentsTypes>::Backend,
    TrainingModel<LC>,
    LearnerStep<LC>,
>;

/// The burn-train components [`DataParallelStrategy`] can run: implemented for every
/// `LearningComponentsTypes` whose model can be replicated ([`Replicate`], which every
/// `#[derive(Module)]` type implements), whose batches can be split ([`Scatter`]) and whose
/// step outputs can be merged ([`StepOutput`]).
pub trait ParallelComponents: LearningComponentsTypes + Sized {
    /// Runs the epochs (`SupervisedLearningStrategy::fit`).
    #[doc(hidden)]
    fn fit(
        strategy: &DataParallelStrategy<Self::Backend>,
        components: TrainingComponents<Self>,
        learner: Learner<Self>,
        dataloader_train: TrainLoader<Self>,
        dataloader_valid: ValidLoader<Self>,
        starting_epoch: usize,
    ) -> (TrainingModel<Self>, SupervisedTrainingEventProcessor<Self>);
}

impl<LC> ParallelComponents for LC
where
    LC: LearningComponentsTypes,
    LC::TrainingModel: Replicate<LC::Backend> + Sync,
    LC::InferenceModel: Replicate<Inner<LC>> + Sync,
    TrainInput<LC>: Scatter<LC::Backend>,
    TrainOutput<LC>: StepOutput<LC::Backend>,
    ValidInput<LC>: Scatter<Inner<LC>>,
    ValidOutput<LC>: StepOutput<Inner<LC>>,
    Learner<LC>: Send,
{
    fn fit(
        strategy: &DataParallelStrategy<Self::Backend>,
        components: TrainingComponents<Self>,
        learner: Learner<Self>,
        dataloader_train: TrainLoader<Self>,
        dataloader_valid: ValidLoader<Self>,
        starting_epoch: usize,
    ) -> (TrainingModel<Self>, SupervisedTrainingEventProcessor<Self>) {
        let mut learner = learner;
        let mut run = Run {
            strategy,
            dataloader_train,
            dataloader_valid,
            components,
        };
        let Some(first) = strategy.devices().first().cloned() else {
            run.stop(DataParallelError::NoDevices);
            return (learner.model(), run.components.event_processor);
        };
        learner.fork(&first);
        let fallback = learner.model();
        run.dataloader_train = run.dataloader_train.to_device(&first);
        run.dataloader_valid = run.dataloader_valid.to_device(&first);
        let trainer = new_trainer(strategy, learner);
        if let Some(comm) = strategy.communicator() {
            // Every rank learns whether every rank has its trainer before joining them: one
            // that failed alone must not leave the others waiting.
            let ready = comm.all_gather_u64(&[u64::from(trainer.is_ok())]);
            let failed = ready.iter().position(|&ok| ok == 0);
            let trainer = match (trainer, failed) {
                (Ok(trainer), None) => trainer,
                (Err(err), _) => {
                    run.stop(err);
                    return (fallback, run.components.event_processor);
                }
                (Ok(_), Some(rank)) => {
                    run.stop(DataParallelError::PeerFailed {
                        rank,
                        step: 0,
                        reason: "it could not set up its devices".into(),
                    });
                    return (fallback, run.components.event_processor);
                }
            };
            let joined = crate::dist::DistributedTrainer::new(comm, trainer);
            let (mut trainer, mut ranks) = match joined {
                Ok(joined) => joined.into_parts(),
                Err(err) => {
                    run.stop(err);
                    return (fallback, run.components.event_processor);
                }
            };
            // Every rank's learner starts from rank 0's parameters, as its trainer does.
            let module = trainer.module().clone();
            trainer.optimizer_mut().synced(&module);
            return run.epochs(&mut trainer, &mut ranks, starting_epoch);
        }
        let mut trainer = match trainer {
            Ok(trainer) => trainer,
            Err(err) => {
                run.stop(err);
                return (fallback, run.components.event_processor);
            }
        };
        run.epochs(&mut trainer, &mut Alone, starting_epoch)
    }
}

/// A run of the strategy's epochs.
struct Run<'s, LC: LearningComponentsTypes> {
    strategy: &'s DataParallelStrategy<LC::Backend>,
    dataloader_train: TrainLoader<LC>,
    dataloader_valid: ValidLoader<LC>,
    components: TrainingComponents<LC>,
}

impl<LC> Run<'_, LC>
where
    LC: LearningComponentsTypes,
    LC::TrainingModel: Replicate<LC::Backend> + Sync,
    LC::InferenceModel: Replicate<Inner<LC>> + Sync,
    TrainInput<LC>: Scatter<LC::Backend>,
    TrainOutput<LC>: StepOutput<LC::Backend>,
    ValidInput<LC>: Scatter<Inner<LC>>,
    ValidOutput<LC>: StepOutput<Inner<LC>>,
    Learner<LC>: Send,
{
    /// burn-train's epoch loop (`SingleDeviceTrainingStrategy::fit`): train, validate,
    /// checkpoint, and stop early or when interrupted; the trained model and the event
    /// processor at the end.
    fn epochs<P>(
        mut self,
        trainer: &mut LearnerTrainer<LC>,
        peers: &mut P,
        starting_epoch: usize,
    ) -> (TrainingModel<LC>, SupervisedTrainingEventProcessor<LC>)
    where
        P: Peers<LC::Backend, TrainingModel<LC>, LearnerStep<LC>> + Participants,
    {
        let num_epochs = self.components.num_epochs;
        for epoch in starting_epoch..=num_epochs {
            let progress = Progress::new(epoch, num_epochs);
            if let Err(err) = self.train_epoch(trainer, peers, &progress) {
                self.stop(err);
                break;
            }
            // Rank 0's interrupter decides for every rank (it may have been stopped since the
            // last batch: a failed checkpoint write, the dashboard).
            let interrupter = &self.components.interrupter;
            if peers.stop_after_epoch(interrupter.should_stop()) {
                interrupter.stop(None);
                let reason = interrupter.get_message();
                let reason = reason.as_deref().unwrap_or("reason unknown");
                log::info!("Training interrupted: {reason}");
                break;
            }
            if let Err(err) = self.valid_epoch(trainer, peers, &progress) {
                self.stop(err);
                break;
            }
            let leads = peers.leads();
            let module = trainer.module().clone();
            let learner = trainer.optimizer_mut().synced(&module);
            let components = &mut self.components;
            if leads && let Some(checkpointer) = &mut components.checkpointer {
                checkpointer.checkpoint(learner, epoch, &components.event_store);
            }
            let stop = leads
                && components
                    .early_stopping
                    .as_mut()
                    .is_some_and(|early| early.should_stop(epoch, &components.event_store));
            if peers.stop_after_epoch(stop) {
                break;
            }
        }
        let module = trainer.module().clone();
        let model = trainer.optimizer_mut().synced(&module).model();
        (model, self.components.event_processor)
    }

    /// Stops the training with `err`, kept for [`DataParallelStrategy::take_error`].
    fn stop(&mut self, err: DataParallelError) {
        let message = format!("data-parallel training failed: {err}");
        log::error!("{message}");
        self.components.interrupter.stop(Some(&message));
        self.strategy.keep_error(err);
    }

    /// One training epoch: burn-train's `SingleDeviceTrainEpoch::run`, each batch split
    /// across the devices (and ranks).
    fn train_epoch<P>(
        &mut self,
        trainer: &mut LearnerTrainer<LC>,
        peers: &mut P,
        global_progress: &Progress,
    ) -> Result<()>
    where
        P: Peers<LC::Backend, TrainingModel<LC>, LearnerStep<LC>> + Participants,
    {
        let epoch = global_progress.items_processed;
        log::info!("Executing training step for epoch {epoch}");
        let first = trainer.devices()[0].clone();
        let accumulation = self.components.grad_accumulation.unwrap_or(1).max(1);
        let weighted = <TrainOutput<LC> as StepOutput<LC::Backend>>::WEIGHTED;
        // Each epoch's draws come from the seed and the epoch, counted from its first step: a
        // run resumed at an epoch draws what the uninterrupted run drew in it.
        if let Some(seed) = self.strategy.seed() {
            trainer.reseed_from_here(crate::seed::derive(seed, &[epoch as u64]));
        }
        let mut iterator = self.dataloader_train.iter();
        let mut iteration = 0;
        let mut accumulated = 0;
        while let Some(batch) = iterator.next() {
            iteration += 1;
            trainer.optimizer_mut().learner.lr_step();
            let progress = iterator.progress();
            let part = peers.part_of(batch, &first)?;
            let (_, parts) = trainer.accumulate_steps_with(
                peers,
                part,
                weighted,
                |model: &TrainingModel<LC>, part| {
                    let output = TrainStep::step(model, part);
                    (output.grads, output.item)
                },
                |item: &TrainOutput<LC>| read_loss::<LC::Backend, _>(item),
            )?;
            // The outputs reach rank 0 before the step is taken: a batch whose outputs cannot
            // travel is refused whole.
            let local = Ok(merged(parts, &first));
            let stop = self.components.interrupter.should_stop();
            let (item, stop) = peers.end_batch(local, &first, stop, trainer.steps())?;
            accumulated += 1;
            let lr = trainer.optimizer().learner.lr_current();
            if accumulated >= accumulation {
                trainer.apply_with(peers, lr)?;
                accumulated = 0;
            }
            if let Some(item) = item {
                self.components
                    .event_processor
                    .process_train(LearnerEvent::ProcessedItem(TrainingItem::new(
                        item,
                        progress,
                        global_progress.clone(),
                        Some(iteration),
                        Some(lr),
                    )));
            }
            if stop {
                self.components.interrupter.stop(None);
                break;
            }
        }
        let dropped = trainer.discard_pending();
        if dropped > 0 {
            // burn-train's own epochs drop them too: the same program gives the same
            // parameters.
            log::warn!(
                "epoch {epoch}: the gradients of its last {dropped} batches were dropped, fewer \
                 than the {accumulation} accumulated for a step (as burn-train does)"
            );
        }
        if peers.leads() {
            let processor = &mut self.components.event_processor;
            processor.process_train(LearnerEvent::EndEpoch(epoch));
        }
        Ok(())
    }

    /// One validation epoch: burn-train's `SingleDeviceValidEpoch::run`, each batch split
    /// across the devices (and ranks), every row counted once.
    fn valid_epoch<P: Participants>(
        &mut self,
        trainer: &LearnerTrainer<LC>,
        peers: &mut P,
        global_progress: &Progress,
    ) -> Result<()> {
        let epoch = global_progress.items_processed;
        log::info!("Executing validation step for epoch {epoch}");
        let first = trainer.devices()[0].clone();
        // A failure to make the replicas goes through the first `end_batch`, as any failure of
        // this rank's alone.
        let (mut parallel, mut failed) = match trainer.parallel().sibling(trainer.module().valid())
        {
            Ok(parallel) => (Some(parallel), None),
            Err(err) => (None, Some(err)),
        };
        let mut iterator = self.dataloader_valid.iter();
        let mut iteration = 0;
        while let Some(batch) = iterator.next() {
            iteration += 1;
            let progress = iterator.progress();
            // A failure here is this rank's alone: it goes through `end_batch`, so that no
            // rank is left waiting for it.
            let local = match (failed.take(), &mut parallel) {
                (Some(err), _) => Err(err),
                (None, None) => Err(DataParallelError::NoDevices),
                (None, Some(parallel)) => {
                    peers.part_of(batch, &first).and_then(|part| match part {
                        Some(part) => parallel
                            .forward_parts(part, InferenceStep::step)
                            .map(|parts| merged(weighed(parts), &first)),
                        None => Ok(None),
                    })
                }
            };
            let stop = self.components.interrupter.should_stop();
            let (item, stop) = peers.end_batch(local, &first, stop, trainer.steps())?;
            if let Some(item) = item {
                self.components
                    .event_processor
                    .process_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
                        item,
                        progress,
                        global_progress.clone(),
                        Some(iteration),
                        None,
                    )));
            }
            if stop {
                self.components.interrupter.stop(None);
                break;
            }
        }
        if peers.leads() {
            let processor = &mut self.components.event_processor;
            processor.process_valid(LearnerEvent::EndEpoch(epoch));
        }
        Ok(())
    }
}

/// A trainer over the strategy's devices whose module is the learner's model and whose
/// optimizer is the learner.
fn new_trainer<LC>(
    strategy: &DataParallelStrategy<LC::Backend>,
    learner: Learner<LC>,
) -> Result<LearnerTrainer<LC>>
where
    LC: LearningComponentsTypes,
    LC::TrainingModel: Replicate<LC::Backend> + Sync,
    Learner<LC>: Send,
{
    let model = learner.model();
    let mut trainer =
        DataParallelTrainer::new(model, LearnerStep { learner }, strategy.devices().to_vec())?;
    if let Some(policy) = strategy.policy() {
        trainer = trainer.with_split_policy(policy);
    }
    if let Some(threads) = strategy.threads_per_replica() {
        trainer = trainer.with_threads_per_replica(threads);
    }
    // A seed is given at the start of every epoch (`train_epoch`).
    Ok(trainer)
}

/// An output's loss, and the weight it states where it states one.
fn read_loss<B: Backend, T: StepOutput<B>>(item: &T) -> (f64, Option<f64>) {
    let loss: f64 = item.loss().into_scalar().elem();
    (loss, T::WEIGHTED.then(|| item.loss_weight()))
}

/// Each part with the weight its loss is a mean over: its rows, or the weight it states.
fn weighed<B: Backend, T: StepOutput<B>>(parts: Vec<Part<T>>) -> Vec<(Part<T>, f64)> {
    parts
        .into_iter()
        .map(|part| {
            let weight = if T::WEIGHTED {
                part.value.loss_weight()
            } else {
                part.rows as f64
            };
            (part, weight)
        })
        .collect()
}

/// The parts' outputs merged into the batch's, with the weight of the merged loss; `None`
/// without parts.
fn merged<B: Backend, T: StepOutput<B>>(
    parts: Vec<(Part<T>, f64)>,
    device: &B::Device,
) -> Option<(T, f64)> {
    if parts.is_empty() {
        return None;
    }
    let weight = parts.iter().map(|(_, weight)| weight).sum();
    let parts = parts.into_iter().map(|(part, w)| (part.value, w)).collect();
    Some((T::merge(parts, device), weight))
}
