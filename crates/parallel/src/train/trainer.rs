//! `Trainer`: what a training loop needs, the same in one process and across ranks.

use super::BatchStats;
use super::loss::TrainLoss;
use crate::{Metric, Replicate, Result, Scatter, SplitPolicy};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;

/// A data-parallel trainer: [`DataParallelTrainer`](crate::DataParallelTrainer) in one
/// process, `dist::DistributedTrainer` across MPI ranks (feature `mpi`). Write the training
/// loop once, generic over `T: Trainer<B, M>`, and it runs either way.
///
/// Across ranks every method but [`module`](Self::module), [`steps`](Self::steps),
/// [`rank`](Self::rank), [`world_size`](Self::world_size), [`part`](Self::part) and
/// [`split_policy`](Self::split_policy) is collective: every rank calls it,
/// in the same order.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::SgdConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::{DataParallelTrainer, Trainer};
///
/// type B = Autodiff<NdArray>;
/// type Rows = (Tensor<B, 2>, Tensor<B, 2>);
/// type HeldOut = (Tensor<NdArray, 2>, Tensor<NdArray, 2>);
///
/// /// Two micro-batches per optimizer step, then the mean squared error on held-out rows.
/// fn train(
///     trainer: &mut impl Trainer<B, Linear<B>>,
///     micro_batches: Vec<Rows>,
///     held_out: HeldOut,
/// ) -> burn_data_parallel::Result<f64> {
///     for batch in micro_batches {
///         trainer.accumulate(batch, |m, (x, y)| (m.forward(x) - y).powi_scalar(2).mean())?;
///     }
///     trainer.apply(0.1)?;
///     let rows = held_out.0.dims()[0];
///     let [sum] = trainer.evaluate(held_out, |m, (x, y)| {
///         let error: f32 = (m.forward(x) - y).powi_scalar(2).sum().into_scalar();
///         [f64::from(error)]
///     })?;
///     Ok(sum / rows as f64)
/// }
///
/// let device = Default::default();
/// let model = LinearConfig::new(4, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 2])?;
/// let rows = |n| {
///     let x = Tensor::<B, 2>::random([n, 4], Distribution::Default, &device);
///     let y = Tensor::<B, 2>::random([n, 1], Distribution::Default, &device);
///     (x, y)
/// };
/// let (x, y) = rows(6);
/// let error = train(&mut trainer, vec![rows(5), rows(5)], (x.inner(), y.inner()))?;
/// assert!(error.is_finite());
/// assert_eq!(trainer.steps(), 1);
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
pub trait Trainer<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The optimizer.
    type Optimizer: Optimizer<M, B>;

    /// Runs forward and backward on this process's `batch` (its shard of the global
    /// micro-batch across ranks) and adds the gradients to those accumulated since the last
    /// [`apply`](Self::apply), weighted so that the step equals one on the union of every
    /// micro-batch. `loss` returns a one-element tensor (see
    /// [`LossReduction`](crate::LossReduction)) or a [`WeightedMean`](crate::WeightedMean)
    /// stating its own denominator. No gradient is exchanged between ranks here: only row
    /// counts, settings, losses, weights and running statistics.
    fn accumulate<I, L, F>(&mut self, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync;

    /// One optimizer step with learning rate `lr` on everything accumulated since the last one.
    fn apply(&mut self, lr: f64) -> Result<()>;

    /// [`accumulate`](Self::accumulate) then [`apply`](Self::apply).
    fn step<I, L, F>(&mut self, lr: f64, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        let stats = self.accumulate(batch, loss)?;
        self.apply(lr)?;
        Ok(stats)
    }

    /// The module being trained (the same on every rank after each step).
    fn module(&self) -> &M;

    /// Optimizer steps taken so far.
    fn steps(&self) -> usize;

    /// This process's rank (0 in one process).
    fn rank(&self) -> usize;

    /// Number of processes training together (1 in one process).
    fn world_size(&self) -> usize;

    /// This process's rows of a global (micro-)batch of `rows` rows: a contiguous range, every
    /// row in exactly one process's range. All of them in one process. Across ranks, rank `r`
    /// of `R` takes `r * rows / R .. (r + 1) * rows / R` (as `ShardedSampler::part`), unless
    /// `DistributedTrainer::with_rank_split` gives a policy, which may learn the ranks'
    /// speeds: then ask for each micro-batch's part just before its
    /// [`accumulate`](Self::accumulate), since the policy learns from every micro-batch.
    fn part(&self, rows: usize) -> Result<std::ops::Range<usize>>;

    /// How this process splits its rows between its devices, with what it has learnt
    /// ([`SplitPolicy::shares`]), for logs.
    fn split_policy(&self) -> &dyn SplitPolicy;

    /// How global batches are split between the ranks, where a policy does it
    /// (`DistributedTrainer::with_rank_split`), for logs; `None` otherwise.
    fn rank_split(&self) -> Option<&dyn SplitPolicy> {
        None
    }

    /// The whole optimizer state, for a checkpoint: `Some` on rank 0 (where a sharded state's
    /// shards are gathered), `None` on the other ranks.
    fn optimizer_record(&self) -> Result<Option<<Self::Optimizer as Optimizer<M, B>>::Record>>;

    /// Combines `metric` over every row of `set` (a held-out set, given whole to every
    /// process), each row counted once whatever the devices and the ranks: `metric` returns,
    /// for the rows it is given, sums (plain `f64`s or [`Metric::Sum`]: correct predictions, a
    /// summed loss), which are added up, or means with their weights ([`Metric::Mean`]: a mean
    /// loss over its rows or tokens), which are weighted. On the inference module (`valid()`),
    /// split across this process's devices, and across ranks; every rank must give a set of
    /// the same rows.
    fn evaluate<I, V, F, const K: usize>(&self, set: I, metric: F) -> Result<[f64; K]>
    where
        M::InnerModule: Replicate<B::InnerBackend> + Sync,
        I: Scatter<B::InnerBackend>,
        V: Into<Metric> + Send,
        F: Fn(&M::InnerModule, I) -> [V; K] + Sync;

    /// Ends training (across ranks: checks that every rank took the same steps) and returns
    /// the module and the optimizer.
    fn finish(self) -> Result<(M, Self::Optimizer)>
    where
        Self: Sized;
}
