//! The learner as the trainer's optimizer: the step the trainer takes once it has combined
//! the gradients is `Learner::optimizer_step`, so the learner's optimizer and scheduler state
//! is the real one (burn-train checkpoints it) and the learner's model is the trained one.
//!
//! The learner steps its own model, so before each step it is given the trainer's module,
//! parameters and the running statistics the trainer has combined (a record moved, no tensor
//! data copied). Burn 0.21 shares a module's running statistics between its clones, which
//! would keep the two in step without it (the tests pass either way); the learner does not
//! depend on that.

use burn::module::Module;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::train::{Learner, LearningComponentsTypes};

/// A [`Learner`] standing in for the optimizer of the trainer that runs its model.
pub(crate) struct LearnerStep<LC: LearningComponentsTypes> {
    pub(crate) learner: Learner<LC>,
}

impl<LC: LearningComponentsTypes> LearnerStep<LC> {
    /// The learner, its model given `module`'s values (parameters and buffers), for a
    /// checkpoint, a validation or the end of training.
    pub(crate) fn synced(&mut self, module: &LC::TrainingModel) -> &Learner<LC> {
        self.learner.load_model(module.clone().into_record());
        &self.learner
    }
}

impl<LC: LearningComponentsTypes> Clone for LearnerStep<LC> {
    fn clone(&self) -> Self {
        Self {
            learner: self.learner.clone(),
        }
    }
}

impl<LC> Optimizer<LC::TrainingModel, LC::Backend> for LearnerStep<LC>
where
    LC: LearningComponentsTypes,
    Learner<LC>: Send,
{
    /// The learner's optimizer state is burn-train's to checkpoint (`LearningCheckpointer`),
    /// not the trainer's: the trainer's record of it is empty.
    type Record = ();

    fn step(
        &mut self,
        lr: f64,
        module: LC::TrainingModel,
        grads: GradientsParams,
    ) -> LC::TrainingModel {
        debug_assert_eq!(lr, self.learner.lr_current());
        self.learner.load_model(module.into_record());
        self.learner.optimizer_step(grads);
        self.learner.model()
    }

    fn step_multi(
        &mut self,
        lr: f64,
        module: LC::TrainingModel,
        grads: MultiGradientsParams,
    ) -> LC::TrainingModel {
        debug_assert_eq!(lr, self.learner.lr_current());
        self.learner.load_model(module.into_record());
        self.learner.optimizer_step_multi(grads);
        self.learner.model()
    }

    fn to_record(&self) -> Self::Record {}

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }
}
