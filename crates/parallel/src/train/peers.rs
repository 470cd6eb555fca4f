//! The seam between a training step and the other processes taking part in it: what a
//! micro-batch and an optimizer step need from them. In one process ([`Alone`]) every answer is
//! this process's own; across MPI ranks (`dist`), each is a collective.
//!
//! The step itself (splitting, row weighting, recombining the loss, accumulating) lives once, in
//! [`DataParallelTrainer`](super::DataParallelTrainer); only these three questions differ.

use crate::Result;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use std::time::Duration;

/// A micro-batch as every process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    /// This process's rows.
    pub local: usize,
    /// Every process's rows together.
    pub total: usize,
}

/// What every process must agree on before a micro-batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MicroBatch {
    /// The kind of loss (a [`Denominator`](super::loss::Denominator)'s code).
    pub loss: u64,
    /// A fingerprint of the run's seed, 0 without one.
    pub seed: u64,
}

/// What this process brings to a micro-batch once its replicas have run.
pub(crate) struct Contribution {
    /// Its loss summed as the step's is (row-weighted for a mean over rows), with its rows or
    /// stated weights; or why it failed.
    pub sums: Result<(f64, f64)>,
    /// The time it spent on its rows (what a split between processes learns from).
    pub busy: Duration,
    /// Its buffer values after the micro-batch (their row-weighted mean over its replicas),
    /// where [`Peers::combines_buffers`] asks for them.
    pub buffers: Vec<f32>,
}

/// A micro-batch over every process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The losses summed.
    pub loss: f64,
    /// The rows or stated weights summed.
    pub weight: f64,
    /// The buffer values every process now holds (their row-weighted mean over every
    /// process's replicas), where they were combined.
    pub buffers: Option<Vec<f32>>,
}

/// What an optimizer step combines (in one process, only the gradients).
pub(crate) struct Accumulated {
    /// The optimizer steps taken before this one.
    pub step: usize,
    /// Micro-batches accumulated for it.
    pub micro_batches: usize,
    /// This process's gradient sum, weighted for every process's rows (no entry for a
    /// parameter this process's losses did not reach).
    pub grads: GradientsParams,
}

/// How the processes taking part in a step agree and combine.
pub(crate) trait Peers<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> {
    /// The rows of micro-batch `micro_batch` of step `step`, given this process's count or why
    /// its batch cannot be read, and its settings; an error on every process if any cannot
    /// read its batch or the settings differ.
    fn rows(
        &mut self,
        step: usize,
        micro_batch: usize,
        local: Result<usize>,
        settings: MicroBatch,
    ) -> Result<Rows>;

    /// Where the processes sum the statistics of synchronized batch norms; `None` in one
    /// process, or for a module without such a layer.
    fn norm_sums(&mut self) -> Option<std::sync::Arc<dyn crate::sync_norm::RankSum>> {
        None
    }

    /// Whether this process trains alone (its replicas' gradients are the whole step's, and
    /// the optimizer step may be spread over them).
    fn alone(&self) -> bool {
        false
    }

    /// Whether [`outcome`](Self::outcome) combines the buffers, and so needs this process's.
    fn combines_buffers(&self) -> bool {
        false
    }

    /// The micro-batch over every process, once each has run its part; an error on every
    /// process if any failed.
    fn outcome(&mut self, step: usize, contribution: Contribution) -> Result<Outcome>;

    /// Combines `accumulated` with the other processes' gradients and takes the optimizer step
    /// on `module`. On an error, the module is handed back with it.
    fn update(
        &mut self,
        module: M,
        optimizer: &mut O,
        lr: f64,
        accumulated: Accumulated,
    ) -> std::result::Result<M, (M, crate::DataParallelError)>;
}

/// One process: nothing to agree on, nothing to combine.
pub(crate) struct Alone;

impl<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> Peers<B, M, O> for Alone {
    fn alone(&self) -> bool {
        true
    }

    fn rows(&mut self, _: usize, _: usize, local: Result<usize>, _: MicroBatch) -> Result<Rows> {
        local.map(|local| Rows {
            local,
            total: local,
        })
    }

    fn outcome(&mut self, _: usize, contribution: Contribution) -> Result<Outcome> {
        contribution.sums.map(|(loss, weight)| Outcome {
            loss,
            weight,
            buffers: None,
        })
    }

    fn update(
        &mut self,
        module: M,
        optimizer: &mut O,
        lr: f64,
        accumulated: Accumulated,
    ) -> std::result::Result<M, (M, crate::DataParallelError)> {
        if accumulated.grads.is_empty() {
            let step = accumulated.step;
            return Err((module, crate::DataParallelError::NoGradient { step }));
        }
        Ok(optimizer.step(lr, module, accumulated.grads))
    }
}
