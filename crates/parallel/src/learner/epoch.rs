//! The epochs of a `SupervisedTraining` run by `DataParallelStrategy`: burn-train's loop
//! (`SingleDeviceTrainEpoch`, `SingleDeviceValidEpoch` and the strategy around them, which
//! are private to burn-train), with each batch run across the devices.

use super::optimizer::LearnerStep;
use super::{DataParallelStrategy, StepOutput};
use crate::train::Alone;
use crate::{DataParallelError, DataParallelTrainer, Part, Replicate, Result, Scatter};
use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
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
        let TrainingComponents {
            num_epochs,
            mut checkpointer,
            grad_accumulation,
            interrupter,
            mut early_stopping,
            event_processor: mut processor,
            event_store,
            ..
        } = components;
        let first = strategy.devices()[0].clone();
        let mut learner = learner;
        learner.fork(&first);
        let fallback = learner.model();
        let mut trainer = match new_trainer(strategy, learner) {
            Ok(trainer) => trainer,
            Err(err) => {
                stop(strategy, &interrupter, err);
                return (fallback, processor);
            }
        };
        let dataloader_train = dataloader_train.to_device(&first);
        let dataloader_valid = dataloader_valid.to_device(&first);
        let accumulation = grad_accumulation.unwrap_or(1).max(1);

        for epoch in starting_epoch..=num_epochs {
            let progress = Progress::new(epoch, num_epochs);
            let trained = train_epoch::<LC>(
                &mut trainer,
                &*dataloader_train,
                accumulation,
                &progress,
                &mut processor,
                &interrupter,
            );
            if let Err(err) = trained {
                stop(strategy, &interrupter, err);
                break;
            }
            if interrupter.should_stop() {
                let reason = interrupter.get_message();
                log::info!(
                    "Training interrupted: {}",
                    reason.as_deref().unwrap_or("reason unknown")
                );
                break;
            }
            let validated = valid_epoch::<LC>(
                &trainer,
                &*dataloader_valid,
                &progress,
                &mut processor,
                &interrupter,
            );
            if let Err(err) = validated {
                stop(strategy, &interrupter, err);
                break;
            }
            let module = trainer.module().clone();
            let learner = trainer.optimizer_mut().synced(&module);
            if let Some(checkpointer) = &mut checkpointer {
                checkpointer.checkpoint(learner, epoch, &event_store);
            }
            if let Some(early_stopping) = &mut early_stopping
                && early_stopping.should_stop(epoch, &event_store)
            {
                break;
            }
        }
        let module = trainer.module().clone();
        (trainer.optimizer_mut().synced(&module).model(), processor)
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
    if let Some(seed) = strategy.seed() {
        trainer = trainer.with_seed(seed);
    }
    Ok(trainer)
}

/// Stops the training with `err`, kept for [`DataParallelStrategy::take_error`].
fn stop<B: AutodiffBackend>(
    strategy: &DataParallelStrategy<B>,
    interrupter: &burn::train::Interrupter,
    err: DataParallelError,
) {
    let message = format!("data-parallel training failed: {err}");
    log::error!("{message}");
    interrupter.stop(Some(&message));
    strategy.keep_error(err);
}

/// One training epoch: burn-train's `SingleDeviceTrainEpoch::run`, each batch split across
/// the devices.
fn train_epoch<LC>(
    trainer: &mut LearnerTrainer<LC>,
    dataloader: &dyn burn::data::dataloader::DataLoader<LC::Backend, TrainInput<LC>>,
    accumulation: usize,
    global_progress: &Progress,
    processor: &mut SupervisedTrainingEventProcessor<LC>,
    interrupter: &burn::train::Interrupter,
) -> Result<()>
where
    LC: LearningComponentsTypes,
    LC::TrainingModel: Replicate<LC::Backend> + Sync,
    TrainInput<LC>: Scatter<LC::Backend>,
    TrainOutput<LC>: StepOutput<LC::Backend>,
    Learner<LC>: Send,
{
    let epoch = global_progress.items_processed;
    log::info!("Executing training step for epoch {epoch}");
    let first = trainer.devices()[0].clone();
    let mut iterator = dataloader.iter();
    let mut iteration = 0;
    let mut accumulated = 0;
    while let Some(batch) = iterator.next() {
        iteration += 1;
        trainer.optimizer_mut().learner.lr_step();
        let progress = iterator.progress();
        let weighted = <TrainOutput<LC> as StepOutput<LC::Backend>>::WEIGHTED;
        let (_, parts) = trainer.accumulate_steps_with(
            &mut Alone,
            batch,
            weighted,
            |model: &TrainingModel<LC>, part| {
                let output = TrainStep::step(model, part);
                (output.grads, output.item)
            },
            |item: &TrainOutput<LC>| read_loss::<LC::Backend, _>(item),
        )?;
        accumulated += 1;
        let lr = trainer.optimizer().learner.lr_current();
        if accumulated >= accumulation {
            trainer.apply_with(&mut Alone, lr)?;
            accumulated = 0;
        }
        let item = merge::<LC::Backend, _>(parts, &first);
        processor.process_train(LearnerEvent::ProcessedItem(TrainingItem::new(
            item,
            progress,
            global_progress.clone(),
            Some(iteration),
            Some(lr),
        )));
        if interrupter.should_stop() {
            break;
        }
    }
    let dropped = trainer.discard_pending();
    if dropped > 0 {
        // burn-train's own epochs drop them too: the same program gives the same parameters.
        log::warn!(
            "epoch {epoch}: the gradients of its last {dropped} batches were dropped, fewer than \
             the {accumulation} accumulated for a step (as burn-train does)"
        );
    }
    processor.process_train(LearnerEvent::EndEpoch(epoch));
    Ok(())
}

/// One validation epoch: burn-train's `SingleDeviceValidEpoch::run`, each batch split across
/// the devices.
fn valid_epoch<LC>(
    trainer: &LearnerTrainer<LC>,
    dataloader: &dyn burn::data::dataloader::DataLoader<Inner<LC>, ValidInput<LC>>,
    global_progress: &Progress,
    processor: &mut SupervisedTrainingEventProcessor<LC>,
    interrupter: &burn::train::Interrupter,
) -> Result<()>
where
    LC: LearningComponentsTypes,
    LC::TrainingModel: Replicate<LC::Backend> + Sync,
    LC::InferenceModel: Replicate<Inner<LC>> + Sync,
    ValidInput<LC>: Scatter<Inner<LC>>,
    ValidOutput<LC>: StepOutput<Inner<LC>>,
    Learner<LC>: Send,
{
    let epoch = global_progress.items_processed;
    log::info!("Executing validation step for epoch {epoch}");
    let first = trainer.devices()[0].clone();
    let mut parallel = trainer.parallel().sibling(trainer.module().valid())?;
    let mut iterator = dataloader.iter();
    let mut iteration = 0;
    while let Some(batch) = iterator.next() {
        iteration += 1;
        let progress = iterator.progress();
        let parts =
            parallel.forward_parts(batch, |model, part| InferenceStep::step(model, part))?;
        let item = merge::<Inner<LC>, _>(parts, &first);
        processor.process_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
            item,
            progress,
            global_progress.clone(),
            Some(iteration),
            None,
        )));
        if interrupter.should_stop() {
            break;
        }
    }
    processor.process_valid(LearnerEvent::EndEpoch(epoch));
    Ok(())
}

/// An output's loss, and the weight it states where it states one.
fn read_loss<B: burn::tensor::backend::Backend, T: StepOutput<B>>(item: &T) -> (f64, Option<f64>) {
    let loss: f64 = item.loss().into_scalar().elem();
    (loss, T::WEIGHTED.then(|| item.loss_weight()))
}

/// The parts' outputs merged into the batch's, each weighted by its rows or stated weight.
fn merge<B: burn::tensor::backend::Backend, T: StepOutput<B>>(
    parts: Vec<Part<T>>,
    device: &B::Device,
) -> T {
    let parts = parts
        .into_iter()
        .map(|part| {
            let weight = if T::WEIGHTED {
                part.value.loss_weight()
            } else {
                part.rows as f64
            };
            (part.value, weight)
        })
        .collect();
    T::merge(parts, device)
}
