//! `DistributedTrainer`: the data-parallel training step across MPI ranks.

use super::agree::{Call, Phase, agree};
use super::exchange::{Exchange, ExchangeStats, GradientTransport};
use super::flat::Layout;
use super::ranks::RankPeers;
use super::{Communicator, GradientPrecision};
use crate::train::{BatchStats, DataParallelTrainer, ShardableRecord, Trainer, record};
use crate::{DataParallelError, Metric, Replicate, Result, Scatter, SplitPolicy, TrainLoss};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use std::ops::Range;
use std::rc::Rc;

/// The record of optimizer `O` of module `M`.
type OptimizerRecord<B, M, O> = <O as Optimizer<M, B>>::Record;

/// Gathers the shards of an optimizer record on rank 0.
type GatherShards<B, M, O> = fn(
    &dyn Communicator,
    OptimizerRecord<B, M, O>,
    &burn::tensor::Device<B>,
) -> Result<Option<OptimizerRecord<B, M, O>>>;

/// Trains one model over several MPI ranks, each on its own devices, with the exact step of
/// single-process training on the union of the ranks' batches.
///
/// Every rank builds the same model and a [`DataParallelTrainer`] over its local devices, then
/// wraps it: the ranks check that their models match and take rank 0's parameters. Each
/// [`accumulate`](Trainer::accumulate) takes this rank's shard of a global micro-batch (it may
/// be empty on some ranks); each [`apply`](Trainer::apply) sums the gradients of every rank
/// and every micro-batch since the last one, weighted by rows, in **one** all-reduce over one
/// flattened buffer, and every rank takes the same optimizer step. The loop is written against
/// [`Trainer`], which [`DataParallelTrainer`] implements too.
///
/// With [`with_sharded_optimizer`](Self::with_sharded_optimizer), each rank keeps the optimizer
/// state of about `1/ranks` of the parameters (ZeRO stage 1): the all-reduce becomes a
/// reduce-scatter of the gradients and an all-gather of the updated parameters.
///
/// Every call is collective: every rank makes the same calls in the same order. A rank whose
/// call fails, that makes another call, or that finishes early is an error on every rank, not a
/// hang; call [`finish`](Trainer::finish) at the end (a rank that returns without it leaves the
/// others waiting, as in any MPI program).
///
/// ```no_run
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::AdamConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::dist::{Communicator, DistributedTrainer};
/// use burn_data_parallel::{DataParallelTrainer, Trainer};
/// use std::rc::Rc;
/// # fn group() -> Rc<dyn Communicator> { unimplemented!() }
///
/// type B = Autodiff<NdArray>;
/// // With feature `mpi`, in a program started by `mpirun -n 2 ...`: `Rc::new(Mpi::init()?)`.
/// let comm: Rc<dyn Communicator> = group();
/// let device = Default::default();
/// let model = LinearConfig::new(4, 1).init::<B>(&device);
/// let local = DataParallelTrainer::new(model, AdamConfig::new().init(), vec![device])?;
/// let mut trainer = DistributedTrainer::new(comm, local)?.with_sharded_optimizer()?;
/// for _ in 0..2 {
///     // This rank's rows of the global micro-batch.
///     let x = Tensor::<B, 2>::random([8, 4], Distribution::Default, &device);
///     let y = Tensor::<B, 2>::random([8, 1], Distribution::Default, &device);
///     trainer.accumulate((x, y), |m, (x, y)| (m.forward(x) - y).powi_scalar(2).mean())?;
/// }
/// trainer.apply(1e-3)?; // one reduce-scatter and one all-gather for both micro-batches
/// let full_state = trainer.optimizer_record()?; // Some(..) on rank 0: every shard
/// let (model, _) = trainer.finish()?;
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
pub struct DistributedTrainer<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> {
    local: DataParallelTrainer<B, M, O>,
    ranks: RankPeers,
    gather: Option<GatherShards<B, M, O>>,
}

impl<B, M, O> DistributedTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// Joins the ranks: refuses a model whose parameter shapes differ from rank 0's (on every
    /// rank, before any step), then gives every rank rank 0's parameters, ids included (so
    /// that optimizer records name them alike on every rank: an optimizer state loaded before
    /// joining must come from the checkpoint the module was loaded from). The loss reduction
    /// is `local`'s ([`DataParallelTrainer::with_loss_reduction`]). Gradients go through NCCL
    /// where every rank can use it, else through MPI ([`GradientTransport::Auto`]).
    /// Collective: every rank must call it.
    pub fn new(comm: Rc<dyn Communicator>, local: DataParallelTrainer<B, M, O>) -> Result<Self> {
        Self::with_transport(comm, local, GradientTransport::Auto)
    }

    /// [`new`](Self::new), with the engine that sums the gradients chosen by `transport`.
    /// Collective; a rank asking for another transport than the others is an error on every
    /// rank.
    pub fn with_transport(
        comm: Rc<dyn Communicator>,
        mut local: DataParallelTrainer<B, M, O>,
        transport: GradientTransport,
    ) -> Result<Self> {
        let buffers = local.buffers().clone();
        let layout = Layout::of::<B, M>(local.module(), &buffers, 1, false);
        let count = layout.values();
        fits_mpi_count(&[count])?;
        let signature = [super::agree::fingerprint(&layout.signature()), count as u64];
        let all = comm.all_gather_u64(&signature);
        if let Some(rank) = (1..comm.size()).find(|&r| all[2 * r..2 * r + 2] != all[0..2]) {
            return Err(DataParallelError::ModelMismatch {
                rank,
                expected: all[1] as usize,
                found: all[2 * rank + 1] as usize,
            });
        }
        let (mut buffer, mut ids) = if comm.rank() == 0 {
            (layout.params::<B, M>(local.module()), layout.ids())
        } else {
            (vec![0.0; count], vec![0; layout.ids().len()])
        };
        comm.broadcast_f32_from(0, &mut buffer);
        comm.broadcast_u64_from(0, &mut ids);
        let module = layout.with_params::<B, M>(local.module().clone(), &buffer, &ids);
        local.replace_module(module);
        local.set_rank(comm.rank());
        let buffers = local.buffers().clone();
        let layout = Layout::of::<B, M>(local.module(), &buffers, 1, false);
        // The gradients are gathered where the module's first parameter lives.
        let device = local
            .module()
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(|| local.devices()[0].clone());
        let exchange = Exchange::open::<B::InnerBackend>(comm.as_ref(), &device, transport)?;
        // Every rank holds the same model (checked above): all decide alike.
        let norm = (comm.size() > 1 && crate::sync_norm::contains(local.module())).then(|| {
            let threads = comm.thread_collectives();
            std::sync::Arc::new(super::norm_sums::RankNormSums::new(threads, comm.rank()))
        });
        Ok(Self {
            local,
            ranks: RankPeers {
                comm,
                exchange,
                layout,
                sharded: false,
                split: None,
                rows: Vec::new(),
                buffers: !buffers.is_empty(),
                asked: std::sync::atomic::AtomicU64::new(super::ranks::NOT_ASKED),
                norm,
            },
            gather: None,
        })
    }

    /// Keeps on each rank the optimizer state of its shard of the parameters only (ZeRO stage
    /// 1): whole tensors, dealt to the ranks in contiguous runs of about `1/ranks` of the
    /// values. Each step then reduce-scatters the gradients (each rank receives the sum of its
    /// shard's), steps its shard, and all-gathers the parameters: the same traffic as one
    /// all-reduce, and the same trajectory as without sharding, up to rounding.
    ///
    /// A state loaded before (a checkpoint's, whole) is cut to this rank's shard.
    /// [`optimizer_record`](Trainer::optimizer_record) puts the shards back together on rank
    /// 0. Collective: every rank must call it, before any step, or none.
    pub fn with_sharded_optimizer(mut self) -> Result<Self>
    where
        O::Record: ShardableRecord<B>,
    {
        let comm = self.ranks.comm.as_ref();
        agree(comm, Call::new(Phase::Shard, self.local.steps(), 0))?;
        let buffers = self.local.buffers().clone();
        let equal = self.ranks.exchange.needs_equal_blocks();
        let layout = Layout::of::<B, M>(self.local.module(), &buffers, comm.size(), equal);
        let mine = layout.owned_by(comm.rank());
        self.local = self.local.map_optimizer(|optimizer| {
            let record = optimizer.to_record().retain_params(&mine);
            optimizer.load_record(record)
        });
        fits_mpi_count(&layout.counts())?;
        self.ranks.layout = layout;
        self.ranks.sharded = true;
        self.gather = Some(gather_shards::<B, O::Record>);
        Ok(self)
    }

    /// Splits each global batch between the ranks by `policy` ([`Trainer::part`] tells each
    /// rank its rows) instead of in equal parts: with [`Adaptive`](crate::Adaptive), each rank
    /// gets rows in proportion to its measured speed (machines of unequal speed). Every rank
    /// shows the policy every rank's rows and time for each micro-batch (the time a rank spent
    /// on its rows, not in the collectives), so that the policy decides the same on every
    /// rank. The step is the same whatever the split.
    ///
    /// Every rank must set the same policy: a rank whose policy differs (or has learnt
    /// otherwise) makes the next micro-batch an error on every rank
    /// ([`DataParallelError::RankSplitMismatch`]), and so do ranks whose rows are not the
    /// policy's parts ([`DataParallelError::RankPartsMismatch`]): ask [`Trainer::part`] for
    /// each micro-batch just before its `accumulate`. [`Trainer::rank_split`] shows what the
    /// policy has learnt; [`Trainer::split_policy`] is the split between this rank's devices.
    pub fn with_rank_split(mut self, policy: impl SplitPolicy + 'static) -> Self {
        self.ranks.split = Some(Box::new(policy));
        self
    }

    /// Sums the gradients across the ranks in `precision` instead of `f32`: with
    /// [`GradientPrecision::Bf16`] or [`GradientPrecision::F16`], half the bytes cross the
    /// network. **Not exact**: each element of the sum is within
    /// [`GradientPrecision::error_bound`] of the exact one, and the parameters drift from
    /// exact training over a run (figures in BENCHMARKS.md, "Scaling", "Gradient sums in 16
    /// bits"). The ranks step on the same sum (they compare a fingerprint of it), so they stay
    /// in step with one another. The sum over this rank's devices, the optimizer and the
    /// parameters stay in `f32`, as does the all-gather of a sharded optimizer state.
    ///
    /// Made on MPI's host copies: refused ([`DataParallelError::PrecisionUnsupported`]) where
    /// the ranks sum through NCCL. Collective: every rank must ask for the same precision
    /// ([`DataParallelError::PrecisionMismatch`] otherwise, on every rank).
    ///
    /// ```no_run
    /// # use burn::backend::{Autodiff, NdArray};
    /// # use burn::nn::LinearConfig;
    /// # use burn::optim::SgdConfig;
    /// use burn_data_parallel::dist::{DistributedTrainer, GradientPrecision, GradientTransport};
    /// # use burn_data_parallel::DataParallelTrainer;
    /// # use burn_data_parallel::dist::Communicator;
    /// # fn group() -> std::rc::Rc<dyn Communicator> { unimplemented!() }
    /// # type B = Autodiff<NdArray>;
    /// # let comm = group();
    /// # let device = Default::default();
    /// # let model = LinearConfig::new(4, 1).init::<B>(&device);
    /// # let local = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device])?;
    /// let trainer = DistributedTrainer::with_transport(comm, local, GradientTransport::Mpi)?
    ///     .with_gradient_precision(GradientPrecision::Bf16)?;
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn with_gradient_precision(mut self, precision: GradientPrecision) -> Result<Self> {
        let comm = self.ranks.comm.as_ref();
        let call = Call::new(Phase::Precision, self.local.steps(), 0).with_value(precision.code());
        let asked = agree(comm, call)?;
        if let Some(rank) = asked.iter().position(|c| c.value != asked[0].value) {
            return Err(DataParallelError::PrecisionMismatch {
                rank,
                asked: GradientPrecision::from_code(asked[rank].value),
                rank_0: GradientPrecision::from_code(asked[0].value),
            });
        }
        let transport = self.ranks.exchange.kind();
        if precision != GradientPrecision::F32 && transport != GradientTransport::Mpi {
            return Err(DataParallelError::PrecisionUnsupported {
                precision,
                transport,
            });
        }
        self.ranks.exchange.precision = precision;
        Ok(self)
    }

    /// The precision in which the ranks sum their gradients.
    pub fn gradient_precision(&self) -> GradientPrecision {
        self.ranks.exchange.precision
    }

    /// Whether each rank keeps the optimizer state of its shard only.
    pub fn is_sharded(&self) -> bool {
        self.ranks.sharded
    }

    /// The engine summing the gradients: [`GradientTransport::Mpi`] or
    /// [`GradientTransport::Nccl`], the same on every rank.
    pub fn transport(&self) -> GradientTransport {
        self.ranks.exchange.kind()
    }

    /// What the gradient exchange has carried on this rank since this trainer was made (steps
    /// counted by [`DataParallelTrainer::with_steps_taken`] are not included).
    pub fn exchange_stats(&self) -> ExchangeStats {
        let mut stats = self.ranks.exchange.stats();
        if let Some(norm) = &self.ranks.norm {
            norm.add_to(&mut stats);
        }
        stats
    }

    /// The trainer of this rank's devices and the ranks it steps with, apart (for a loop
    /// that calls them itself: burn-train's strategy).
    #[cfg(feature = "burn-train")]
    pub(crate) fn into_parts(self) -> (DataParallelTrainer<B, M, O>, RankPeers) {
        (self.local, self.ranks)
    }

    /// The process group this trainer steps with.
    pub fn communicator(&self) -> &dyn Communicator {
        self.ranks.comm.as_ref()
    }

    /// The optimizer as this rank holds it: with a sharded state, its shard only.
    pub fn optimizer(&self) -> &O {
        self.local.optimizer()
    }

    /// The size of this rank's optimizer state, serialized at full precision: about `1/ranks`
    /// of the unsharded size with a sharded state.
    pub fn optimizer_state_bytes(&self) -> Result<usize> {
        self.local.optimizer_state_bytes()
    }
}

/// Refuses buffers longer than MPI's `int` counts (the same on every rank: the layouts match).
fn fits_mpi_count(counts: &[usize]) -> Result<()> {
    let total: usize = counts.iter().sum();
    if i32::try_from(total).is_err() {
        return Err(DataParallelError::TooLargeForMpi { values: total });
    }
    Ok(())
}

/// Every rank's record on rank 0, merged. Collective.
fn gather_shards<B: AutodiffBackend, R: ShardableRecord<B>>(
    comm: &dyn Communicator,
    mine: R,
    device: &B::Device,
) -> Result<Option<R>> {
    // A rank that cannot write its shard sends nothing rather than leave rank 0 waiting.
    let bytes = record::to_bytes::<B, R>(mine);
    let sent = bytes.as_ref().map_or_else(|_| Vec::new(), Clone::clone);
    let all = comm.gather_bytes_to_0(sent);
    bytes?;
    let mut merged: Option<R> = None;
    for (rank, bytes) in all.into_iter().enumerate() {
        if bytes.is_empty() {
            return Err(DataParallelError::OptimizerRecord {
                reason: format!("rank {rank} could not write its shard"),
            });
        }
        let shard = record::from_bytes::<B, R>(bytes, device)?;
        merged = Some(match merged {
            Some(merged) => merged.merge(shard),
            None => shard,
        });
    }
    Ok(merged)
}

impl<B, M, O> Trainer<B, M> for DistributedTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    type Optimizer = O;

    /// Collective: this rank's shard `batch` of the global micro-batch (empty on some ranks
    /// if need be); the loss returned is over every rank's rows.
    fn accumulate<I, L, F>(&mut self, batch: I, loss: F) -> Result<BatchStats>
    where
        I: Scatter<B>,
        L: TrainLoss<B>,
        F: Fn(&M, I) -> L + Sync,
    {
        self.local.accumulate_with(&mut self.ranks, batch, loss)
    }

    /// Collective: one all-reduce (or reduce-scatter and all-gather) of every micro-batch's
    /// gradients since the last `apply`, then the same step on every rank.
    fn apply(&mut self, lr: f64) -> Result<()> {
        self.local.apply_with(&mut self.ranks, lr)
    }

    fn module(&self) -> &M {
        self.local.module()
    }

    fn part(&self, rows: usize) -> Result<Range<usize>> {
        self.ranks.part(rows)
    }

    fn rank_split(&self) -> Option<&dyn SplitPolicy> {
        self.ranks.split.as_deref()
    }

    fn split_policy(&self) -> &dyn crate::SplitPolicy {
        self.local.split_policy()
    }

    fn steps(&self) -> usize {
        self.local.steps()
    }

    fn rank(&self) -> usize {
        self.ranks.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.ranks.comm.size()
    }

    /// Collective when the state is sharded: the whole state, on rank 0.
    fn optimizer_record(&self) -> Result<Option<O::Record>> {
        let comm = self.ranks.comm.as_ref();
        let Some(gather) = self.gather else {
            return Ok((comm.rank() == 0).then(|| self.local.optimizer().to_record()));
        };
        agree(comm, Call::new(Phase::Record, self.local.steps(), 0))?;
        let device = self.local.devices()[0].clone();
        let gathered = gather(comm, self.local.optimizer().to_record(), &device);
        // Only the failing rank and rank 0 know of a failure: every rank learns of it.
        let failed = comm.all_gather_u64(&[u64::from(gathered.is_err())]);
        if let Some(rank) = failed.iter().position(|&f| f != 0) {
            return Err(self
                .ranks
                .peer_failed(rank, self.local.steps(), gathered.err()));
        }
        gathered
    }

    /// Collective: this rank evaluates rows `rank * n / ranks .. (rank + 1) * n / ranks` of
    /// `set` (no row twice, none left out), and the sums and weighted means are combined over
    /// the ranks. Every rank must give a set of as many rows, and the same number of metrics.
    fn evaluate<I, V, F, const K: usize>(&self, set: I, metric: F) -> Result<[f64; K]>
    where
        M::InnerModule: Replicate<B::InnerBackend> + Sync,
        I: Scatter<B::InnerBackend>,
        V: Into<Metric> + Send,
        F: Fn(&M::InnerModule, I) -> [V; K] + Sync,
    {
        let comm = self.ranks.comm.as_ref();
        let (rank, size) = (comm.rank(), comm.size());
        let dim = self.local.dim();
        let rows = set.rows(dim).map(|rows| rows.unwrap_or(0));
        let set_rows = rows.as_ref().map_or(u64::MAX, |&rows| rows as u64);
        let local = rows.and_then(|_| {
            match crate::train::part_of(set, dim, rank, size, self.local.devices())? {
                Some(part) => self.local.evaluate_parts(part, &metric),
                None => Ok(crate::train::Partial::empty(K)),
            }
        });
        // The rows each rank was given define which rows each evaluates: they must match.
        let call = Call::new(Phase::Evaluate, self.local.steps(), K)
            .with_value(u64::from(local.is_err()))
            .with_settings([set_rows, 0]);
        let calls = agree(comm, call)?;
        if let Some(failed) = calls.iter().position(|c| c.value != 0) {
            return Err(self
                .ranks
                .peer_failed(failed, self.local.steps(), local.err()));
        }
        let mut partial = local?;
        comm.all_reduce_sum_f64(&mut partial.0);
        partial.finish()
    }

    /// Collective: checks that every rank ends after the same number of steps.
    fn finish(self) -> Result<(M, O)> {
        agree(
            self.ranks.comm.as_ref(),
            Call::new(Phase::Finish, self.local.steps(), 0),
        )?;
        Ok(self.local.into_parts())
    }
}
