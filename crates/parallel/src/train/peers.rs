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

/// What an optimizer step combines (in one process, only the gradients).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) struct Accumulated {
    /// The optimizer steps taken before this one.
    pub step: usize,
    /// Micro-batches accumulated for it.
    pub micro_batches: usize,
    /// Rows of this process over those micro-batches.
    pub rows: usize,
    /// This process's gradient sum, weighted for every process's rows.
    pub grads: GradientsParams,
}

/// How the processes taking part in a step agree and combine.
pub(crate) trait Peers<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> {
    /// The rows of micro-batch `micro_batch` of step `step`, given this process's count or why
    /// its batch cannot be read; an error on every process if any cannot.
    fn rows(&mut self, step: usize, micro_batch: usize, local: Result<usize>) -> Result<Rows>;

    /// The sum over the processes of `weighted_loss` (a row-weighted loss sum, or a sum), once
    /// every process has run its micro-batch, `busy` being the time this process spent on its
    /// rows (what a split between processes learns from); an error on every process if any
    /// failed.
    fn outcome(&mut self, step: usize, weighted_loss: Result<f64>, busy: Duration) -> Result<f64>;

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
    fn rows(&mut self, _: usize, _: usize, local: Result<usize>) -> Result<Rows> {
        local.map(|local| Rows {
            local,
            total: local,
        })
    }

    fn outcome(&mut self, _: usize, weighted_loss: Result<f64>, _: Duration) -> Result<f64> {
        weighted_loss
    }

    fn update(
        &mut self,
        module: M,
        optimizer: &mut O,
        lr: f64,
        accumulated: Accumulated,
    ) -> std::result::Result<M, (M, crate::DataParallelError)> {
        Ok(optimizer.step(lr, module, accumulated.grads))
    }
}
