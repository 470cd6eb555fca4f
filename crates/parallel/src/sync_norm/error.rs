//! Why a synchronized batch norm could not normalize over the whole batch.

/// Why a [`SyncBatchNorm`](crate::SyncBatchNorm) in training could not use the statistics of
/// the whole global batch. Inside a replica it is raised as a panic payload of this type, which
/// the call that ran the replica returns as
/// [`DataParallelError::SyncBatchNorm`](crate::DataParallelError::SyncBatchNorm).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncNormError {
    /// The layer trained inside a call whose replicas cannot meet while they run (their
    /// forward passes run one after another, or each runs its own backward pass in turn), so
    /// it could only have normalized each replica's part on its own.
    #[error(
        "a SyncBatchNorm trained inside {call}, whose replicas cannot exchange statistics \
         while they run: train with DataParallelTrainer or DistributedTrainer (or use a plain \
         BatchNorm, normalized per part)"
    )]
    NotSynchronized {
        /// The call, in words.
        call: &'static str,
    },

    /// Another replica of the call, or another rank, failed while this one waited for it in
    /// a synchronized layer (it did not come, or cannot come back, to the meeting).
    #[error("{who} failed while this replica waited for it in a synchronized batch norm")]
    PeerFailed {
        /// The replica or rank, in words.
        who: String,
    },

    /// Replicas or ranks reached their synchronized layers differently: a different number of
    /// them, or statistics of different sizes (a model whose layers depend on its data).
    #[error("replicas or ranks disagree at a synchronized batch norm: {what}")]
    Mismatch {
        /// What differed.
        what: String,
    },

    /// The layer ran on a backend whose tensors this crate cannot take part in the autodiff
    /// graph of (an autodiff backend other than Burn's `Autodiff`).
    #[error("SyncBatchNorm needs Burn's Autodiff backend to train; this backend is not it")]
    UnsupportedBackend,

    /// The ranks could not exchange statistics (MPI without thread support).
    #[error("the ranks cannot exchange batch-norm statistics: {0}")]
    Transport(String),
}
