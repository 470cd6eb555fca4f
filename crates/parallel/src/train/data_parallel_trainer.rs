//! `DataParallelTrainer`: the data-parallel training step.

use super::Trainer;
use super::loss::{Denominator, LossReduction, TrainLoss};
use super::owners::{self, Owners, StepTraffic};
use super::peers::{Accumulated, Alone, Contribution, MicroBatch, Outcome, Peers, Rows};
use super::record::ShardableRecord;
use super::reduce::{Combine, GradientSum};
use super::sharded_step::{ShardedStep, Shards, Stepped, sharded_step};
use crate::ReplicaInfo;
use crate::parallel_apply::{Rendezvous, ReplicaTiming};
use crate::replicas::Link;
use crate::seed::{Turns, derive};
use crate::sync_norm;
use crate::{DataParallel, DataParallelError, Replicate, Result, Scatter, SplitPolicy};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What one batch gave.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    /// The loss over the whole batch, as the single-device loss would be: the row-weighted mean
    /// of the replicas' losses for [`LossReduction::Mean`], their sum for
    /// [`LossReduction::Sum`], the summed losses over the summed weights for a
    /// [`WeightedMean`](crate::WeightedMean) (0 where the weights add up to 0).
    pub loss: f64,
    /// Rows in the batch.
    pub rows: usize,
    /// What the loss is a mean over: the rows, or the stated weights of a
    /// [`WeightedMean`](crate::WeightedMean); to combine the losses of several batches.
    pub weight: f64,
    /// One entry per replica that ran, in replica order.
    pub replicas: Vec<ReplicaTiming>,
    /// Time to bring the gradients to the first device and add them up (to their owners, each
    /// on its own worker, with [`with_sharded_step`](DataParallelTrainer::with_sharded_step)).
    pub reduce: Duration,
}

/// What a replica hands back from its thread.
struct ReplicaResult {
    loss: f64,
    /// The weight its loss stated, if it states one.
    weight: Option<f64>,
    grads: Option<GradientsParams>,
}

/// What the replicas of a micro-batch gave: per replica its timing, loss and stated weight, and
/// the gradients.
type Replicas = (Vec<(ReplicaTiming, f64, Option<f64>)>, Vec<GradientsParams>);

/// Trains a module over several devices with the exact step of single-device training.
///
/// It implements [`Trainer`], the interface a training loop is written against, as
/// `dist::DistributedTrainer` does across MPI ranks.
///
/// Each [`step`](Self::step) splits the global batch (inputs and targets together, by the same
/// rule as [`DataParallel::forward`]), runs forward and backward on every replica concurrently,
/// combines the gradients on the first device weighted by each part's share of the rows, and
/// takes one optimizer step there (or spreads both over the replicas:
/// [`with_sharded_step`](Self::with_sharded_step)); the replicas follow the new parameters on
/// the next call.
/// [`accumulate`](Self::accumulate) and [`apply`](Self::apply) split a step over several
/// micro-batches, with the same result as one step on their union.
///
/// Replicas run their backward passes at the same time, each on its own copy of the
/// parameters, once every replica has finished its forward pass (Burn 0.21 can lose a gradient
/// when a `backward()` runs while another thread records graph steps, tracel-ai/burn#5573).
/// Frozen parameters (`no_grad`) get no gradient and are never changed. A Burn `BatchNorm`
/// normalizes each replica's part with that part's statistics, and the module's running
/// statistics become the row-weighted mean of the replicas' after each micro-batch; a
/// [`SyncBatchNorm`](crate::SyncBatchNorm) normalizes over the whole micro-batch, every
/// replica and rank (see the crate documentation, "What stays exact").
///
/// The loss function returns a one-element tensor (a mean over its rows unless
/// [`with_loss_reduction`](Self::with_loss_reduction) says otherwise) or a
/// [`WeightedMean`](crate::WeightedMean) stating its own denominator (valid tokens). A run is
/// repeatable, dropout included, with [`with_seed`](Self::with_seed).
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::DataParallelTrainer;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(4, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 3])?;
///
/// let x = Tensor::<B, 2>::random([10, 4], Distribution::Default, &device);
/// let y = Tensor::<B, 2>::random([10, 1], Distribution::Default, &device);
/// let stats = trainer.step(0.1, (x, y), |model, (x, y)| {
///     (model.forward(x) - y).powi_scalar(2).mean()
/// })?;
/// assert_eq!(stats.rows, 10);
/// assert_eq!(stats.replicas.len(), 3); // 4, 4 and 2 rows
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
pub struct DataParallelTrainer<B: AutodiffBackend, M, O> {
    pub(super) parallel: DataParallel<B, M>,
    optimizer: O,
    reduction: LossReduction,
    pub(super) pending: GradientSum,
    pub(super) steps: usize,
    pub(super) seed: Option<u64>,
    /// This process's rank, which seeds its replicas' draws apart from other ranks'.
    pub(super) rank: usize,
    /// The step the seed was given at: replicas are seeded by their position from there (0
    /// unless `reseed_from_here` moved it).
    pub(super) seed_base: usize,
    /// The optimizer step spread over the replicas ([`with_sharded_step`](Self::with_sharded_step)),
    /// with the owner of each tensor.
    sharded: Option<(ShardedStep<B, M, O>, Owners)>,
}

impl<B, M, O> DataParallelTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// Trains `module` with `optimizer` over `devices`; the module and the optimizer's state
    /// live on the first device.
    pub fn new(module: M, optimizer: O, devices: Vec<B::Device>) -> Result<Self> {
        Ok(Self {
            parallel: DataParallel::new(module, devices)?,
            optimizer,
            reduction: LossReduction::Mean,
            pending: GradientSum::default(),
            steps: 0,
            seed: None,
            rank: 0,
            seed_base: 0,
            sharded: None,
        })
    }

    /// Spreads the gradient combination and the optimizer step over the replicas, instead of
    /// taking both on the first device while the other replicas wait.
    ///
    /// Each trainable tensor gets an owner among the devices (whole tensors, dealt so that the
    /// owners hold about as many values each). After the backward passes, each owner adds up
    /// every replica's gradient of its tensors on its own device and worker (a reduce-scatter),
    /// steps them with the optimizer's state for those tensors only, and the replicas receive
    /// the new values straight from their owners (an all-gather). The step is the one the
    /// optimizer takes on the whole module, value for value, for an optimizer that steps each
    /// tensor on its own (all of Burn's; one that looks across tensors, such as clipping by a
    /// norm over all of them, would not be): the optimizer's state is split by tensor before the
    /// step and put back together after it, so [`optimizer`](Self::optimizer)
    /// still returns the whole state for checkpoints. [`step_traffic`](Self::step_traffic)
    /// counts what moves between the replicas.
    ///
    /// It needs an optimizer that can be cloned and whose record is kept per parameter: every
    /// optimizer Burn's `*Config::init()` makes (SGD, Adam, AdamW, ...). One process only: a
    /// [`DistributedTrainer`](crate::dist::DistributedTrainer) built from this trainer combines
    /// as before (its own option shards across ranks). As with [`apply`](Self::apply), an
    /// optimizer that panics loses the module, and here its state too.
    ///
    /// One difference from the step on the first device, for a module that holds one
    /// parameter at two places of its tree (not a tied weight used twice in `forward`, which
    /// is one place): Burn's optimizer steps it at the first place only and leaves the second
    /// with the old value; sharded, a replica other than its owner receives the new value at
    /// both.
    ///
    /// ```
    /// use burn::backend::{Autodiff, NdArray};
    /// use burn::nn::LinearConfig;
    /// use burn::optim::AdamConfig;
    /// use burn::tensor::{Distribution, Tensor};
    /// use burn_data_parallel::DataParallelTrainer;
    ///
    /// type B = Autodiff<NdArray>;
    /// let device = Default::default();
    /// let model = LinearConfig::new(4, 1).init::<B>(&device);
    /// let mut trainer = DataParallelTrainer::new(model, AdamConfig::new().init(), vec![device; 2])?
    ///     .with_sharded_step();
    /// let x = Tensor::<B, 2>::random([10, 4], Distribution::Default, &device);
    /// let y = Tensor::<B, 2>::random([10, 1], Distribution::Default, &device);
    /// trainer.step(0.1, (x, y), |model, (x, y)| (model.forward(x) - y).powi_scalar(2).mean())?;
    /// // The weight (4 values) on one device, the bias (1) on the other: each sends what it
    /// // does not own and its own new values once.
    /// assert_eq!(trainer.step_traffic().sent, vec![5, 5]);
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn with_sharded_step(mut self) -> Self
    where
        O: Clone + Send,
        O::Record: ShardableRecord<B>,
    {
        let owners = Owners::balanced::<B, M>(self.parallel.module(), self.devices().len());
        self.sharded = Some((sharded_step::<B, M, O>, owners));
        self
    }

    /// Whether the optimizer step is spread over the replicas
    /// ([`with_sharded_step`](Self::with_sharded_step)).
    pub fn sharded_step(&self) -> bool {
        self.sharded.is_some()
    }

    /// What an optimizer step moves between this process's replicas, per replica, where every
    /// replica computes a gradient of every trainable tensor: counted from where each tensor's
    /// gradients are added up and stepped (the first device, or its owner with
    /// [`with_sharded_step`](Self::with_sharded_step)). See [`StepTraffic`].
    pub fn step_traffic(&self) -> StepTraffic {
        let replicas = self.devices().len();
        match &self.sharded {
            Some((_, owners)) => owners.traffic(),
            None => Owners::first::<B, M>(self.parallel.module(), replicas).traffic(),
        }
    }

    /// Makes the run repeatable: the random draws of every replica's forward pass (dropout's
    /// masks) come from a seed derived from `seed`, the rank, the step, the micro-batch and the
    /// replica. The same program with the same seed, devices, ranks and split then trains the
    /// same parameters, and a run resumed at step `k` (with
    /// [`with_steps_taken`](Self::with_steps_taken)) draws what the uninterrupted one drew.
    /// Not the same draws as on another number of devices, nor as one device without this
    /// trainer.
    ///
    /// Burn 0.21 has one random generator per backend and process, so the replicas' forward
    /// passes run one after another, each after reseeding it (with synchronized batch norms,
    /// in rounds: each replica runs up to the next such layer, and reseeds from its own seed
    /// and the round when its turn comes back); backward passes still run at the same time. On the CPU this costs the forward passes' concurrency (measured in
    /// `BENCHMARKS.md`); on a GPU it is not measured yet. A split that
    /// learns from timings ([`Adaptive`](crate::Adaptive)) changes the parts from run to run,
    /// and the draws with them. The backend's generator is left reseeded.
    ///
    /// ```
    /// use burn::backend::{Autodiff, NdArray};
    /// use burn::module::Module;
    /// use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
    /// use burn::optim::SgdConfig;
    /// use burn::tensor::{Tensor, backend::Backend};
    /// use burn_data_parallel::DataParallelTrainer;
    ///
    /// type B = Autodiff<NdArray>;
    /// #[derive(Module, Debug)]
    /// struct Net<B: Backend> {
    ///     linear: Linear<B>,
    ///     dropout: Dropout,
    /// }
    /// let device = Default::default();
    /// let train = || {
    ///     B::seed(&device, 1);
    ///     let net = Net {
    ///         linear: LinearConfig::new(4, 1).init::<B>(&device),
    ///         dropout: DropoutConfig::new(0.5).init(),
    ///     };
    ///     let mut trainer =
    ///         DataParallelTrainer::new(net, SgdConfig::new().init(), vec![device; 2])?.with_seed(7);
    ///     let x = Tensor::<B, 2>::ones([8, 4], &device);
    ///     for _ in 0..3 {
    ///         trainer.step(0.1, x.clone(), |m, x| m.linear.forward(m.dropout.forward(x)).mean())?;
    ///     }
    ///     Ok::<_, burn_data_parallel::DataParallelError>(trainer.module().linear.weight.val())
    /// };
    /// train()?.into_data().assert_eq(&train()?.into_data(), true);
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The seed given to [`with_seed`](Self::with_seed).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Seeds this process's replicas as rank `rank`'s.
    pub(crate) fn set_rank(&mut self, rank: usize) {
        self.rank = rank;
    }

    /// Declares what the loss function returns (a mean over its rows unless told otherwise).
    pub fn with_loss_reduction(mut self, reduction: LossReduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Gives each replica `threads` threads for the backend's rayon work (default 1); see
    /// [`DataParallel::with_threads_per_replica`].
    pub fn with_threads_per_replica(mut self, threads: usize) -> Self {
        self.parallel = self.parallel.with_threads_per_replica(threads);
        self
    }

    /// Gives replica `i` `threads[i]` threads; see
    /// [`DataParallel::with_threads_per_device`].
    pub fn with_threads_per_device(mut self, threads: impl Into<Vec<usize>>) -> Result<Self> {
        self.parallel = self.parallel.with_threads_per_device(threads)?;
        Ok(self)
    }

    /// Splits batches by `policy` instead of the `torch.chunk` rule, such as
    /// [`Adaptive`](crate::Adaptive) for devices of unequal speed. The step is the same
    /// whatever the split, since each part's gradient is weighted by its rows.
    pub fn with_split_policy(mut self, policy: impl SplitPolicy + 'static) -> Self {
        self.parallel = self.parallel.with_split_policy(policy);
        self
    }

    /// The split policy, for what it has learnt.
    pub fn split_policy(&self) -> &dyn SplitPolicy {
        self.parallel.split_policy()
    }

    /// The module being trained, on the first device.
    ///
    /// # Panics
    ///
    /// After an [`apply`](Self::apply) whose optimizer step panicked: the module was moved into
    /// it and is lost with it.
    pub fn module(&self) -> &M {
        self.parallel.module()
    }

    /// The optimizer, for its record (checkpoints).
    pub fn optimizer(&self) -> &O {
        &self.optimizer
    }

    #[cfg(feature = "burn-train")]
    pub(crate) fn optimizer_mut(&mut self) -> &mut O {
        &mut self.optimizer
    }

    /// Seeds the steps that run their own backward pass (`stepped`) from here on: their draws
    /// come from `seed` and their position counted from this step, whatever steps came before
    /// (a run resumed at an epoch draws what the uninterrupted run drew in it).
    #[cfg(feature = "burn-train")]
    pub(crate) fn reseed_from_here(&mut self, seed: u64) {
        self.seed = Some(seed);
        self.seed_base = self.steps;
    }

    /// Drops the gradients accumulated since the last [`apply`](Self::apply), returning how
    /// many micro-batches they came from.
    #[cfg(feature = "burn-train")]
    pub(crate) fn discard_pending(&mut self) -> usize {
        let micro_batches = self.pending.micro_batches();
        // Taking an accumulator of weightless losses is an error; it is emptied all the same.
        let _ = self.pending.take(self.steps);
        micro_batches
    }

    /// The devices, in replica order.
    pub fn devices(&self) -> &[B::Device] {
        self.parallel.devices()
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Counts `steps` as already taken (when resuming from a checkpoint), so that errors name
    /// the step of the whole run.
    pub fn with_steps_taken(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// The module and the optimizer.
    pub fn into_parts(self) -> (M, O) {
        (self.parallel.into_inner(), self.optimizer)
    }

    /// One training step on `batch`: [`accumulate`](Self::accumulate), then
    /// [`apply`](Self::apply) with learning rate `lr`.
    pub fn step<I, L, F>(&mut self, lr: f64, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        Trainer::step(self, lr, batch, loss)
    }

    /// Runs forward and backward on every replica and adds the gradients to those accumulated
    /// since the last [`apply`](Self::apply), without changing the module.
    ///
    /// `loss` returns a one-element tensor, the loss over the rows it is given reduced as
    /// [`with_loss_reduction`](Self::with_loss_reduction) says, or a
    /// [`WeightedMean`](crate::WeightedMean); every micro-batch of a step returns the same
    /// kind. If any replica's loss is not finite, nothing of this batch is kept (no gradient,
    /// and the module's running statistics as they were) and
    /// [`DataParallelError::NonFiniteLoss`] is returned.
    pub fn accumulate<I, L, F>(&mut self, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        self.accumulate_with(&mut Alone, batch, loss)
    }

    /// One optimizer step with learning rate `lr` on everything accumulated since the last
    /// one; the replicas receive the new parameters on the next call.
    ///
    /// # Panics
    ///
    /// If the optimizer panics; the module it was given is then lost, and every later call
    /// that needs it panics too.
    pub fn apply(&mut self, lr: f64) -> Result<()> {
        self.apply_with(&mut Alone, lr)
    }

    /// [`accumulate`](Self::accumulate), with `peers` taking part: each row weighs
    /// `1 / rows` in a mean loss, `rows` counting every micro-batch of the step so far on every
    /// process, and the loss returned is over every process's rows.
    pub(crate) fn accumulate_with<I, L, F>(
        &mut self,
        peers: &mut impl Peers<B, M, O>,
        batch: I,
        loss: F,
    ) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        let dim = self.parallel.dim();
        let denominator = Denominator::of::<B, L>(self.reduction);
        let local = batch.rows(dim).map(|rows| rows.unwrap_or(0));
        let (rows, micro_batch) = self.agree_micro_batch(peers, local, denominator)?;
        // Rows so far, for a mean over rows weighted before each backward pass.
        let rows_so_far = match denominator {
            Denominator::Rows => self.pending.weighted_for() + rows.total as f64,
            _ => 1.0,
        };
        let norm_sums = peers.norm_sums();
        let (outcome, local) = self.share_micro_batch(
            peers,
            |this| {
                let local = if rows.local > 0 {
                    this.forward_backward(
                        batch,
                        loss,
                        denominator,
                        rows_so_far,
                        micro_batch,
                        norm_sums.clone(),
                    )
                } else {
                    Ok((Vec::new(), Vec::new()))
                };
                // The other processes may still be in their synchronized layers: this one
                // takes part in their exchanges (with nothing to add) until all are done.
                if let Some(sums) = &norm_sums {
                    sums.finish(match (&local, rows.local) {
                        (Err(_), _) => sync_norm::Finish::Failed,
                        (Ok(_), 0) => sync_norm::Finish::Idle,
                        (Ok(_), _) => sync_norm::Finish::Done,
                    });
                }
                local
            },
            // This process's loss and weight, summed as the whole step's are.
            |(replicas, _)| {
                let loss: f64 = replicas
                    .iter()
                    .map(|(timing, loss, _)| match denominator {
                        Denominator::Rows | Denominator::StepRows => loss * timing.rows as f64,
                        Denominator::One | Denominator::Weights | Denominator::StepWeights => *loss,
                    })
                    .sum();
                let weight: f64 = match denominator {
                    Denominator::Weights => replicas.iter().filter_map(|r| r.2).sum(),
                    _ => rows.local as f64,
                };
                (loss, weight)
            },
        )?;
        let (replicas, grads) = local.unwrap_or_default();

        let start = Instant::now();
        let weight = match denominator {
            Denominator::Weights => outcome.weight,
            _ => rows.total as f64,
        };
        self.add_to_pending(peers.alone(), grads, denominator, weight)?;
        let loss = match denominator {
            Denominator::One => outcome.loss,
            _ if weight > 0.0 => outcome.loss / weight,
            _ => 0.0,
        };
        Ok(BatchStats {
            loss,
            rows: rows.total,
            weight,
            replicas: replicas.into_iter().map(|(timing, ..)| timing).collect(),
            reduce: start.elapsed(),
        })
    }

    /// Adds a micro-batch's gradients (`parts`, one per replica that ran) to those pending:
    /// each owner's on its worker when the step is sharded and this process trains `alone`,
    /// else all on the first device.
    pub(super) fn add_to_pending(
        &mut self,
        alone: bool,
        parts: Vec<GradientsParams>,
        denominator: Denominator,
        weight: f64,
    ) -> Result<()> {
        let owners = match &self.sharded {
            Some((_, owners)) if alone && owners.replicas() > 1 => {
                self.parallel.ensure_workers(owners.replicas())?;
                Some(owners)
            }
            _ => None,
        };
        self.pending.add_micro_batch::<B, M>(
            self.parallel.module(),
            parts,
            denominator,
            weight,
            Combine {
                owners,
                workers: self.parallel.workers(),
                devices: self.parallel.devices(),
            },
        );
        Ok(())
    }

    /// The micro-batch every process is about to run, agreed with `peers` from this process's
    /// rows (`local`) and its settings: every process's rows, and the micro-batch's index in
    /// the step. An error on every process where any cannot read its batch, where the settings
    /// differ, where no process has a row, or where the kind of loss is not the step's so far.
    pub(super) fn agree_micro_batch<P: Peers<B, M, O>>(
        &mut self,
        peers: &mut P,
        local: Result<usize>,
        denominator: Denominator,
    ) -> Result<(Rows, usize)> {
        let settings = MicroBatch {
            loss: denominator as u64,
            seed: self.seed.map_or(0, |seed| derive(seed, &[]) | 1),
        };
        let micro_batch = self.pending.micro_batches();
        let rows = peers.rows(self.steps, micro_batch, local, settings)?;
        if rows.total == 0 {
            let dim = self.parallel.dim();
            return Err(DataParallelError::EmptyInput { dim });
        }
        self.pending.check_kind(self.steps, denominator)?;
        Ok((rows, micro_batch))
    }

    /// The seed of micro-batch `micro_batch`'s replicas in a seeded run: from the seed and the
    /// position (rank, steps since the seed was given, micro-batch); each replica derives its
    /// own from it.
    pub(super) fn micro_batch_seed(&self, micro_batch: usize) -> Option<u64> {
        self.seed.map(|seed| {
            let step = self.steps.saturating_sub(self.seed_base);
            derive(seed, &[self.rank as u64, step as u64, micro_batch as u64])
        })
    }

    /// Runs this process's part of a micro-batch (`run`, timed) and shares what it gave with
    /// `peers`: its loss and weight (`sums` of what `run` returned) or its failure, and its
    /// running statistics where they are combined. Every process learns whether any failed
    /// before anyone goes on; a refused micro-batch leaves the statistics as they were. Returns
    /// the micro-batch over every process, and what `run` returned.
    pub(super) fn share_micro_batch<T, P: Peers<B, M, O>>(
        &mut self,
        peers: &mut P,
        run: impl FnOnce(&mut Self) -> Result<T>,
        sums: impl FnOnce(&T) -> (f64, f64),
    ) -> Result<(Outcome, Option<T>)> {
        let buffers = self.parallel.buffers().clone();
        let before = buffers.snapshot(self.parallel.module());
        // Not counting waits for the other processes (in synchronized batch norms).
        let (local, busy) = crate::parallel_apply::busy(|| run(self));
        let (sums, local) = match local {
            Ok(local) => (Ok(sums(&local)), Some(local)),
            Err(err) => (Err(err), None),
        };
        let shared = if peers.combines_buffers() {
            buffers.read(self.parallel.module())
        } else {
            Vec::new()
        };
        let contribution = Contribution {
            sums,
            busy,
            buffers: shared,
        };
        let outcome = match peers.outcome(self.steps, contribution) {
            Ok(outcome) => outcome,
            Err(err) => {
                // Nothing of a refused batch is kept: the statistics go back too.
                buffers.restore(self.parallel.module(), before);
                return Err(err);
            }
        };
        if let Some(values) = &outcome.buffers {
            buffers.write(self.parallel.module(), values);
        }
        Ok((outcome, local))
    }

    /// Forward and backward on every replica's part of `batch`, each row weighing
    /// `1 / rows_so_far` in a mean over rows: each replica's timing, loss and stated weight,
    /// and its gradients.
    fn forward_backward<I, L, F>(
        &mut self,
        batch: I,
        loss: F,
        denominator: Denominator,
        rows_so_far: f64,
        micro_batch: usize,
        norm_sums: Option<Arc<dyn sync_norm::RankSum>>,
    ) -> Result<Replicas>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        let dim = self.parallel.dim();
        let forwards_done = Rendezvous::default();
        let turns = Arc::new(Turns::default());
        // The meetings of the replicas' synchronized batch norms, made by the first replica to
        // start (the number of replicas is known once the batch is split).
        let group = OnceLock::new();
        let seed = self.micro_batch_seed(micro_batch);
        let devices = self.parallel.devices().to_vec();
        let (results, timings) = self.parallel.run(
            batch,
            |replica: &M, part: I| {
                let rows = part.rows(dim).ok().flatten().unwrap_or(0);
                let info = crate::current_replica().unwrap_or(ReplicaInfo {
                    index: 0,
                    replicas: 1,
                });
                let index = info.index;
                let group = group.get_or_init(|| {
                    Arc::new(sync_norm::Group::new(info.replicas, norm_sums.clone()))
                });
                // Seeded forward passes run in turns, given up while a replica waits for the
                // others in a synchronized layer; back in turn, it draws from its own seed.
                let reseed = seed.map(|seed| {
                    let device = devices[index].clone();
                    let reseed: sync_norm::Reseed = Arc::new(move |round: usize| {
                        B::seed(&device, derive(seed, &[index as u64, round as u64]))
                    });
                    (turns.clone(), reseed)
                });
                let _joined = sync_norm::join(
                    group.clone(),
                    index,
                    info.replicas,
                    sync_norm::sum::<B>,
                    reseed,
                );
                // Every replica ends its forward pass before any starts its backward pass: in
                // Burn 0.21 a `backward()` can free the graph steps another thread is still
                // recording, and a gradient is lost without an error (tracel-ai/burn#5573).
                // A replica whose forward panics still takes its place, then panics.
                let value = catch_unwind(AssertUnwindSafe(|| match seed {
                    // One generator per process: seeded replicas draw one after another.
                    Some(seed) => turns.take(index, || {
                        B::seed(&devices[index], derive(seed, &[index as u64]));
                        loss(replica, part)
                    }),
                    None => loss(replica, part),
                }));
                if value.is_err() {
                    sync_norm::abandon();
                }
                sync_norm::forward_done();
                forwards_done.wait();
                let (value, weight) = value
                    .unwrap_or_else(|panic| resume_unwind(panic))
                    .into_parts();
                // The replica's share of the rows: the replicas' gradients then add up to the
                // gradient over every row (see `reduce`).
                // (Steps of their own are not run here: see `stepped`.)
                let scale = match denominator {
                    Denominator::Rows => rows as f64 / rows_so_far.max(1.0),
                    Denominator::One
                    | Denominator::Weights
                    | Denominator::StepRows
                    | Denominator::StepWeights => 1.0,
                };
                let grads = value.clone().mul_scalar(scale).backward();
                // Read once the backward pass is queued: on a GPU, reading the loss first would
                // wait for the forward pass before any backward work is sent.
                let scalar: f64 = value.into_scalar().elem();
                let weight: Option<f64> = weight.map(|w| w.into_scalar().elem());
                let grads = scalar
                    .is_finite()
                    .then(|| GradientsParams::from_grads(grads, replica));
                Ok::<_, Infallible>(ReplicaResult {
                    loss: scalar,
                    weight,
                    grads,
                })
            },
            // One backward pass per replica: each replica's parameters are leaves of its own.
            Some(Link::Detached),
        )?;

        let mut replicas = Vec::with_capacity(results.len());
        let mut grads = Vec::with_capacity(results.len());
        for (timing, result) in timings.into_iter().zip(results) {
            let Some(g) = result.grads else {
                return Err(DataParallelError::NonFiniteLoss {
                    step: self.steps,
                    replica: timing.replica,
                    loss: result.loss,
                });
            };
            if let Some(weight) = result.weight
                && !(weight.is_finite() && weight >= 0.0)
            {
                return Err(DataParallelError::InvalidLossWeight {
                    step: self.steps,
                    replica: timing.replica,
                    weight,
                });
            }
            grads.push(g);
            replicas.push((timing, result.loss, result.weight));
        }
        Ok((replicas, grads))
    }

    /// [`apply`](Self::apply), with `peers` combining the gradients with theirs.
    pub(crate) fn apply_with(&mut self, peers: &mut impl Peers<B, M, O>, lr: f64) -> Result<()> {
        if self.pending.micro_batches() == 0 {
            return Err(DataParallelError::NothingAccumulated);
        }
        let micro_batches = self.pending.micro_batches();
        let shards = self.pending.take(self.steps)?;
        if let Some((step, owners)) = &self.sharded
            && peers.alone()
            && shards.len() > 1
        {
            if shards.iter().all(GradientsParams::is_empty) {
                let step = self.steps;
                return Err(DataParallelError::NoGradient { step });
            }
            let optimizer = &mut self.optimizer;
            self.parallel
                .update_module_and_replicas(|module, kept, workers, devices| {
                    let Stepped { module, replicas } = step(
                        Shards {
                            module,
                            kept,
                            grads: shards,
                            owners,
                            workers,
                            devices,
                            lr,
                        },
                        optimizer,
                    );
                    (module, replicas)
                });
            self.steps += 1;
            return Ok(());
        }
        let accumulated = Accumulated {
            step: self.steps,
            micro_batches,
            grads: owners::merge::<B, M>(self.parallel.module(), shards),
        };
        let optimizer = &mut self.optimizer;
        let mut failed = None;
        // The copies on the other devices are made again from the new parameters on the next
        // call. On the CPU a copy shares the parameters' memory, so this costs no data movement.
        self.parallel.update_module(|module| {
            match peers.update(module, optimizer, lr, accumulated) {
                Ok(module) => module,
                Err((module, err)) => {
                    failed = Some(err);
                    module
                }
            }
        });
        if let Some(err) = failed {
            return Err(err);
        }
        self.steps += 1;
        Ok(())
    }

    /// The module's buffers.
    pub(crate) fn buffers(&mut self) -> &crate::buffers::Buffers {
        self.parallel.buffers()
    }

    /// How the loss function reduces over its rows.
    pub fn loss_reduction(&self) -> LossReduction {
        self.reduction
    }

    /// The wrapper that runs the replicas.
    pub(crate) fn parallel(&self) -> &DataParallel<B, M> {
        &self.parallel
    }

    #[cfg(test)]
    pub(crate) fn parallel_mut(&mut self) -> &mut DataParallel<B, M> {
        &mut self.parallel
    }

    /// The dimension batches are split along.
    pub(crate) fn dim(&self) -> usize {
        self.parallel.dim()
    }

    /// This trainer with its optimizer replaced by `f(optimizer)`.
    pub(crate) fn map_optimizer(self, f: impl FnOnce(O) -> O) -> Self {
        Self {
            optimizer: f(self.optimizer),
            ..self
        }
    }

    /// The size of the optimizer's state, serialized at full precision.
    pub fn optimizer_state_bytes(&self) -> Result<usize> {
        super::record::to_bytes::<B, _>(self.optimizer.to_record()).map(|bytes| bytes.len())
    }

    /// Replaces the module, keeping the optimizer (all processes start from one set of weights).
    pub(crate) fn replace_module(&mut self, module: M) {
        self.parallel.set_module(module);
        if let Some((_, owners)) = &mut self.sharded {
            *owners = Owners::balanced::<B, M>(self.parallel.module(), owners.replicas());
        }
    }
}

impl<B, M, O> Trainer<B, M> for DataParallelTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    type Optimizer = O;

    fn accumulate<I, L, F>(&mut self, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        DataParallelTrainer::accumulate(self, batch, loss)
    }

    fn apply(&mut self, lr: f64) -> Result<()> {
        DataParallelTrainer::apply(self, lr)
    }

    fn module(&self) -> &M {
        DataParallelTrainer::module(self)
    }

    fn part(&self, rows: usize) -> Result<std::ops::Range<usize>> {
        Ok(0..rows)
    }

    fn split_policy(&self) -> &dyn crate::SplitPolicy {
        DataParallelTrainer::split_policy(self)
    }

    fn steps(&self) -> usize {
        DataParallelTrainer::steps(self)
    }

    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn optimizer_record(&self) -> Result<Option<O::Record>> {
        Ok(Some(self.optimizer.to_record()))
    }

    fn evaluate<I, V, F, const K: usize>(&self, set: I, metric: F) -> Result<[f64; K]>
    where
        M::InnerModule: Replicate<B::InnerBackend> + Sync,
        I: Scatter<B::InnerBackend>,
        V: Into<crate::Metric> + Send,
        F: Fn(&M::InnerModule, I) -> [V; K] + Sync,
    {
        DataParallelTrainer::evaluate(self, set, metric)
    }

    fn finish(self) -> Result<(M, O)> {
        Ok(self.into_parts())
    }
}
