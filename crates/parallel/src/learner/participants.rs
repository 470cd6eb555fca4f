//! Who takes part in a burn-train run besides this process: nobody in one process, the other
//! MPI ranks with `DataParallelStrategy::with_communicator`. Each rank runs the user's whole program
//! (its loaders give every rank every batch); what differs is answered here: which rows of a
//! batch this process runs, who feeds the metrics, and who decides to stop.

use super::StepOutput;
use crate::train::Alone;
use crate::{Result, Scatter};
use burn::tensor::backend::Backend;

/// The processes of a run, as the epochs see them.
pub(crate) trait Participants {
    /// This process's rows of a global batch, on `device`; `None` where it has none.
    fn part_of<B: Backend, I: Scatter<B>>(&self, batch: I, device: &B::Device)
    -> Result<Option<I>>;

    /// Whether this process feeds the metrics, writes checkpoints and decides early stopping
    /// (rank 0).
    fn leads(&self) -> bool;

    /// Ends a batch: this process's merged output (with the weight of its loss), or why it
    /// has none, goes to the leader, which gets every process's merged (`None` elsewhere, or
    /// where no process had rows); and every process learns whether the leader stops the run
    /// (`stop` is the leader's verdict; the others' is not read). A failure anywhere is an
    /// error everywhere, and no process is left waiting.
    fn end_batch<B: Backend, T: StepOutput<B>>(
        &self,
        local: Result<Option<(T, f64)>>,
        device: &B::Device,
        stop: bool,
        step: usize,
    ) -> Result<(Option<T>, bool)>;

    /// Whether the leader stops the run after an epoch (`stop`, read on the leader only).
    fn stop_after_epoch(&self, stop: bool) -> bool;
}

impl Participants for Alone {
    fn part_of<B: Backend, I: Scatter<B>>(&self, batch: I, _: &B::Device) -> Result<Option<I>> {
        Ok(Some(batch))
    }

    fn leads(&self) -> bool {
        true
    }

    fn end_batch<B: Backend, T: StepOutput<B>>(
        &self,
        local: Result<Option<(T, f64)>>,
        _: &B::Device,
        stop: bool,
        _: usize,
    ) -> Result<(Option<T>, bool)> {
        Ok((local?.map(|(output, _)| output), stop))
    }

    fn stop_after_epoch(&self, stop: bool) -> bool {
        stop
    }
}
