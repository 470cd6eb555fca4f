//! The one error type of the crate.

/// Why a data-parallel call failed.
///
/// Failures of a call are returned, not raised: a replica that panics is caught on its thread
/// and reported here once every thread has finished, and the
/// [`DataParallel`](crate::DataParallel) stays usable for the next call. One case panics: if the
/// function given to an optimizer step panics (a panicking optimizer, or a panicking collective
/// across ranks), the module it held is lost, and the accessors of the wrapper (`module`,
/// `module_mut`, `into_inner`) panic until [`set_module`](crate::DataParallel::set_module)
/// gives it a new one.
///
/// The variants from [`MpiAlreadyInitialized`](Self::MpiAlreadyInitialized) to
/// [`OutputCannotTravel`](Self::OutputCannotTravel) arise across processes only: those found
/// in a collective step are returned on every rank alike, rather than one rank failing while
/// the others wait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataParallelError {
    /// The device list was empty.
    #[error("no devices given: data parallelism needs at least one device")]
    NoDevices,

    /// The input has zero rows along the split dimension.
    #[error("the input has 0 rows along dimension {dim}: there is nothing to split")]
    EmptyInput {
        /// The split dimension.
        dim: usize,
    },

    /// The input holds no tensor to split: only values given whole to every replica.
    #[error(
        "the input holds no tensor to split along dimension {dim}, only values given whole \
         to every replica"
    )]
    NothingToSplit {
        /// The split dimension.
        dim: usize,
    },

    /// A tensor has no dimension `dim`.
    #[error("cannot split along dimension {dim}: a tensor of the input has rank {rank}")]
    DimOutOfRange {
        /// The split dimension.
        dim: usize,
        /// The rank of the offending tensor.
        rank: usize,
    },

    /// Two tensors of the input disagree on their size along the split dimension.
    ///
    /// PyTorch silently drops the extra rows in this case; this crate refuses.
    #[error(
        "the input's tensors disagree along dimension {dim}: one has {expected} rows, another \
         {found} (nothing is truncated: give every split tensor the same size, or wrap the odd \
         one in `Whole`)"
    )]
    RowMismatch {
        /// The split dimension.
        dim: usize,
        /// Rows of the first tensor met.
        expected: usize,
        /// Rows of the tensor that disagrees.
        found: usize,
    },

    /// A split policy returned sizes that do not cover the rows exactly.
    #[error(
        "split policy {policy} gave sizes {sizes:?} for {rows} rows on {devices} devices; \
         sizes must be non-zero, at most one per device, and sum to the rows"
    )]
    InvalidSplit {
        /// The policy's `Debug` form.
        policy: String,
        /// Rows to split.
        rows: usize,
        /// Devices available.
        devices: usize,
        /// What the policy returned.
        sizes: Vec<usize>,
    },

    /// Thread counts per device that are not one per device, each at least 1.
    #[error(
        "thread counts {threads:?} for {devices} devices: give one count per device, each at \
         least 1"
    )]
    ThreadCounts {
        /// Devices of the wrapper.
        devices: usize,
        /// The counts given.
        threads: Vec<usize>,
    },

    /// The worker thread of a replica could not be started.
    #[error("cannot start the worker thread of replica {replica}: {message}")]
    WorkerStart {
        /// The replica the worker was for.
        replica: usize,
        /// Why it could not start.
        message: String,
    },

    /// A replica panicked. The lowest replica index that failed is reported.
    #[error("replica {replica} on device {device} panicked: {message}")]
    ReplicaPanicked {
        /// Index of the replica (and of its device in the device list).
        replica: usize,
        /// The device, in its `Debug` form.
        device: String,
        /// The panic message.
        message: String,
    },

    /// A [`SyncBatchNorm`](crate::SyncBatchNorm) in training could not normalize over the
    /// whole batch (see [`SyncNormError`](crate::SyncNormError)). Where one replica failed and
    /// the others could then not meet it, the first replica's own failure is reported instead.
    #[error("replica {replica} on device {device}: {source}")]
    SyncBatchNorm {
        /// Index of the replica (and of its device in the device list).
        replica: usize,
        /// The device, in its `Debug` form.
        device: String,
        /// Why.
        #[source]
        source: crate::SyncNormError,
    },

    /// A replica's function returned an error. The lowest replica index that failed is reported.
    #[error("replica {replica} on device {device} failed: {source}")]
    ReplicaFailed {
        /// Index of the replica (and of its device in the device list).
        replica: usize,
        /// The device, in its `Debug` form.
        device: String,
        /// The error the replica returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A replica's output does not have one row per input row along the split dimension (a
    /// mean or a loss over its part, rows added or dropped): concatenated, it would not line up
    /// with the input. Per-part values are returned by
    /// [`DataParallel::forward_parts`](crate::DataParallel::forward_parts).
    #[error(
        "replica {replica} returned {rows_out} rows along dimension {dim} for its {rows_in} \
         input rows: a forward's outputs are concatenated, so each needs one row per input row; \
         for values over a whole part (a loss, a mean, a sum) use `forward_parts`, which returns \
         each part's value with its rows"
    )]
    OutputRows {
        /// The replica.
        replica: usize,
        /// The split dimension.
        dim: usize,
        /// Rows of its input part.
        rows_in: usize,
        /// Rows of (a tensor of) its output.
        rows_out: usize,
    },

    /// An optimizer step in which no trainable parameter received a gradient from any replica
    /// (or rank): the loss does not depend on them, or the loss function called `backward()`
    /// itself. No step was taken, and the accumulated micro-batches were dropped.
    #[error(
        "step {step}: no trainable parameter received a gradient from any replica or rank; \
         the loss does not depend on them, or the loss function called `backward()` itself \
         (return the loss instead: the trainer runs the backward pass); no step was taken"
    )]
    NoGradient {
        /// Optimizer steps taken before this one.
        step: usize,
    },

    /// The replicas' outputs cannot be concatenated: their shapes differ outside the gather
    /// dimension, or the gather dimension does not exist.
    #[error(
        "cannot gather along dimension {dim}: replica {replica} returned shape {found:?}, \
         replica 0 returned {expected:?}"
    )]
    GatherShapeMismatch {
        /// The gather dimension.
        dim: usize,
        /// The replica whose output disagrees.
        replica: usize,
        /// Shape of replica 0's output.
        expected: Vec<usize>,
        /// Shape of the disagreeing output.
        found: Vec<usize>,
    },

    /// [`Gather::gather`](crate::Gather::gather) was given no part at all.
    #[error("nothing to gather: no replica output was given")]
    NothingToGather,

    /// A [`Scatter`](crate::Scatter) implementation returned the wrong number of parts.
    #[error("scatter produced {found} parts for {expected} replicas")]
    ScatterCount {
        /// Parts asked for (one per replica).
        expected: usize,
        /// Parts returned.
        found: usize,
    },

    /// A replica's loss was NaN or infinite: the step was not taken and the module is unchanged.
    #[error(
        "step {step}: replica {replica} computed a non-finite loss ({loss}); no step was taken"
    )]
    NonFiniteLoss {
        /// Optimizer steps taken before this one (0 for the first).
        step: usize,
        /// The replica whose loss is not finite.
        replica: usize,
        /// The loss it computed.
        loss: f64,
    },

    /// A replica's [`WeightedMean`](crate::WeightedMean) stated a weight that is negative, NaN
    /// or infinite: nothing of this batch was kept.
    #[error(
        "step {step}: replica {replica} stated a loss weight of {weight}; a weight must be \
         finite and not negative; nothing of this batch was kept"
    )]
    InvalidLossWeight {
        /// Optimizer steps taken before this one.
        step: usize,
        /// The replica.
        replica: usize,
        /// The weight it stated.
        weight: f64,
    },

    /// A micro-batch's loss is of another kind than those accumulated before it in the same
    /// step (a mean over rows, a sum, a [`WeightedMean`](crate::WeightedMean)): their gradients
    /// have no common denominator. Nothing of this micro-batch was kept.
    #[error(
        "step {step}: this micro-batch's loss is {now}, the earlier ones' of this step {earlier}; \
         every micro-batch of a step needs the same kind of loss; nothing of this micro-batch \
         was kept"
    )]
    MixedLosses {
        /// Optimizer steps taken before this one.
        step: usize,
        /// The earlier micro-batches' kind.
        earlier: &'static str,
        /// This micro-batch's kind.
        now: &'static str,
    },

    /// Every [`WeightedMean`](crate::WeightedMean) of a step stated a weight of 0 (every token
    /// masked): the mean has no denominator. No step was taken and the accumulated gradients
    /// were dropped.
    #[error(
        "step {step}: the losses' weights add up to 0 over the whole step, so their mean is \
         undefined; no step was taken and the accumulated gradients were dropped"
    )]
    NoLossWeight {
        /// Optimizer steps taken before this one.
        step: usize,
    },

    /// The parts of an evaluation returned metric `index` as a [`Metric::Sum`] in some parts
    /// and a [`Metric::Mean`] in others, or as means of total weight 0.
    ///
    /// [`Metric::Sum`]: crate::Metric::Sum
    /// [`Metric::Mean`]: crate::Metric::Mean
    #[error("metric {index} cannot be combined over the parts of the set: {reason}")]
    MetricMismatch {
        /// The metric's index in the array the metric function returns.
        index: usize,
        /// What is wrong.
        reason: String,
    },

    /// An optimizer step was asked for with no gradient accumulated since the last one.
    #[error("no gradient accumulated since the last optimizer step")]
    NothingAccumulated,

    /// An optimizer record could not be written to bytes or read back (measuring the state, or
    /// gathering a sharded one from the ranks).
    #[error("cannot write the optimizer state to bytes or read it back: {reason}")]
    OptimizerRecord {
        /// Burn's recorder error.
        reason: String,
    },

    // ---- Errors across processes (`dist`, and `DataParallelStrategy` over a communicator),
    // from here to `OutputCannotTravel`. ----
    /// `Mpi::init` was called a second time in this process (MPI starts once per process).
    #[error("MPI is already initialised in this process: call `Mpi::init` once")]
    MpiAlreadyInitialized,

    /// A rank asked for another gradient transport than rank 0.
    #[error(
        "rank {rank} asks for the {asked:?} gradient transport and rank 0 for {rank_0:?}: every \
         rank must ask for the same"
    )]
    TransportMismatch {
        /// The first rank that differs.
        rank: usize,
        /// What it asked for.
        asked: crate::dist::GradientTransport,
        /// What rank 0 asked for.
        rank_0: crate::dist::GradientTransport,
    },

    /// A rank asked for another precision of the gradient sums than rank 0.
    #[error(
        "rank {rank} asks for gradient sums in {asked:?} and rank 0 in {rank_0:?}: every rank \
         must ask for the same"
    )]
    PrecisionMismatch {
        /// The first rank that differs.
        rank: usize,
        /// What it asked for.
        asked: crate::dist::GradientPrecision,
        /// What rank 0 asked for.
        rank_0: crate::dist::GradientPrecision,
    },

    /// Gradient sums in 16 bits were asked for on a transport that sums in `f32` only (NCCL
    /// here: the compression is done on MPI's host copies).
    #[error(
        "gradient sums in {precision:?} are made on MPI's host copies; the {transport:?} \
         transport sums in f32 (ask for GradientTransport::Mpi to compress)"
    )]
    PrecisionUnsupported {
        /// The precision asked for.
        precision: crate::dist::GradientPrecision,
        /// The transport the ranks use.
        transport: crate::dist::GradientTransport,
    },

    /// The model has more values than one MPI collective can carry (MPI counts are `int`s).
    #[error(
        "the model's {values} values exceed the {} one MPI collective can carry",
        i32::MAX
    )]
    TooLargeForMpi {
        /// Values the exchange would carry.
        values: usize,
    },

    /// A step of the gradient exchange (an MPI or NCCL collective, the copy of its buffer, or
    /// the ranks' agreement on the call) failed.
    #[error("{operation:?} failed: {reason}")]
    Collective {
        /// Which step.
        operation: crate::dist::CollectiveOp,
        /// What the engine said.
        reason: String,
    },

    /// A rank holds a model whose parameters differ in shape or number from rank 0's.
    #[error(
        "rank {rank} holds a different model from rank 0 ({found} parameters against {expected}, \
         or other shapes): every rank must build the same model; nothing was trained"
    )]
    ModelMismatch {
        /// The first rank that differs.
        rank: usize,
        /// Parameters of rank 0's model.
        expected: usize,
        /// Parameters of that rank's model.
        found: usize,
    },

    /// A rank was started with another value (a configuration) than rank 0.
    #[error(
        "rank {rank} has another {what} than rank 0: every rank must be started the same way; \
         nothing was trained"
    )]
    RankDisagrees {
        /// The first rank that differs.
        rank: usize,
        /// What differs.
        what: String,
    },

    /// Ranks split global batches between them by different policies, so that some rows would
    /// be counted twice or not at all.
    #[error(
        "rank {rank} splits the global batches between the ranks otherwise than this rank (at \
         step {step}): give every rank the same `with_rank_split` policy, or none"
    )]
    RankSplitMismatch {
        /// The first rank that differs.
        rank: usize,
        /// The step.
        step: usize,
    },

    /// With a split between the ranks (`with_rank_split`), the rows the ranks took in a
    /// micro-batch are not the policy's parts of their total.
    #[error(
        "at step {step} the ranks took {rows:?} rows after asking `Trainer::part` for their \
         parts of {asked:?} rows, where the split policy's parts of their total are \
         {expected:?}: give each rank the rows `part` returns for the global micro-batch, \
         asked just before its `accumulate`"
    )]
    RankPartsMismatch {
        /// The step.
        step: usize,
        /// Each rank's rows.
        rows: Vec<usize>,
        /// The rows of the global batch each rank asked its part of (`None`: not asked).
        asked: Vec<Option<usize>>,
        /// The policy's parts of the ranks' rows together.
        expected: Vec<usize>,
    },

    /// Ranks make the same call with different settings (a learning rate, the kind of loss, a
    /// seed, the rows of a held-out set): the result would differ from one process's.
    #[error(
        "at step {step}, rank {rank} {call} with {setting} {found} where this rank has \
         {this_rank}: every rank must make each call with the same settings; nothing of this \
         call was kept"
    )]
    SettingMismatch {
        /// The first rank that differs.
        rank: usize,
        /// The step.
        step: usize,
        /// The call.
        call: String,
        /// The setting that differs.
        setting: String,
        /// This rank's value.
        this_rank: String,
        /// That rank's value.
        found: String,
    },

    /// Ranks disagree on the step they are taking.
    #[error("rank {rank} is at step {found} while this rank is at step {expected}")]
    StepMismatch {
        /// The rank out of step.
        rank: usize,
        /// This rank's step.
        expected: usize,
        /// That rank's step.
        found: usize,
    },

    /// Ranks disagree on what they are doing: one accumulates another micro-batch, evaluates or
    /// shards its optimizer state while another does something else.
    #[error(
        "at step {step}, rank {rank} {found} while this rank {expected}: every rank must make the \
         same calls in the same order (the same number of `accumulate`s before each `apply`)"
    )]
    OutOfStep {
        /// The first rank that differs.
        rank: usize,
        /// The step.
        step: usize,
        /// What this rank does.
        expected: String,
        /// What that rank does.
        found: String,
    },

    /// A rank finished training while others still take steps (uneven data).
    #[error(
        "rank {rank} finished training after {step} steps while others go on: every rank must \
         take the same number of steps (a ShardedSampler gives them that)"
    )]
    RankFinished {
        /// The rank that finished.
        rank: usize,
        /// Steps it took, or the step the others were at.
        step: usize,
    },

    /// This rank finished training while another still takes steps (uneven data).
    #[error(
        "rank {rank} is still training (at step {step}) while this rank finished after \
         {finished_after} steps: every rank must take the same number of steps"
    )]
    StillTraining {
        /// The rank still training.
        rank: usize,
        /// The step it is taking.
        step: usize,
        /// Steps this rank took.
        finished_after: usize,
    },

    /// NCCL was asked for but a rank cannot use it.
    #[error("rank {rank} cannot reduce gradients through NCCL: {reason}")]
    NcclUnavailable {
        /// The lowest rank that cannot.
        rank: usize,
        /// Why, as that rank saw it.
        reason: String,
    },

    /// Another rank failed this step; no step was taken.
    #[error("rank {rank} failed at step {step} ({reason}); no step was taken")]
    PeerFailed {
        /// The lowest failing rank.
        rank: usize,
        /// The step.
        step: usize,
        /// That rank's error, as it reported it.
        reason: String,
    },

    /// A step's output cannot be sent to rank 0, which feeds every rank's outputs to the
    /// metrics when a burn-train program trains across MPI ranks.
    #[error(
        "rank {rank} cannot send its step outputs ({output}) to rank 0: implement \
         `StepOutput::into_data` and `StepOutput::from_data` for it"
    )]
    OutputCannotTravel {
        /// The lowest rank that could not.
        rank: usize,
        /// The output's type.
        output: &'static str,
    },

    // ---- End of the errors across processes. ----
    /// Tensors do not make the round trip between two of the devices intact: the backend cannot
    /// copy between them (Burn 0.21 copies between devices on CUDA and the CPU backends only).
    #[error(
        "{backend} cannot move tensors from {from} to {to} and back intact ({reason}); use \
         devices of one kind on a backend that copies between them (CUDA, or the CPU)"
    )]
    DeviceTransfer {
        /// The backend, as it names itself.
        backend: String,
        /// The device the values were sent from.
        from: String,
        /// The device that failed.
        to: String,
        /// What went wrong.
        reason: String,
    },

    /// The replicas returned lists of different lengths.
    #[error(
        "cannot gather: replica {replica} returned {found} items, replica 0 returned {expected}"
    )]
    GatherLengthMismatch {
        /// The replica whose output disagrees.
        replica: usize,
        /// Items in replica 0's output.
        expected: usize,
        /// Items in the disagreeing output.
        found: usize,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = DataParallelError> = std::result::Result<T, E>;

/// The message a panic was raised with.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic with a non-string payload)".to_owned())
}
