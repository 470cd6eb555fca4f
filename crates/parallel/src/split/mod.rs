//! Split policies: how many rows each device receives.
//!
//! The default, [`Chunk`], is PyTorch's rule (`torch.chunk`), which users of `DataParallel`
//! rely on: chunks of `ceil(rows / devices)` rows, the last one smaller, so there may be fewer
//! chunks than devices (5 rows on 4 devices give 2, 2, 1). [`Balanced`] spreads the remainder
//! instead (5 on 4 give 2, 1, 1, 1), which keeps every device busy. [`Adaptive`] learns each
//! device's speed from the calls it sees and gives it rows in proportion.

mod adaptive;

pub use adaptive::Adaptive;

use crate::ReplicaTiming;
use std::fmt::Debug;

/// Decides the number of rows given to each device.
///
/// The returned sizes go to the first devices of the list, in order. They must be non-zero, at
/// most one per device, and sum to `rows`; [`DataParallel`](crate::DataParallel) checks this and
/// returns [`InvalidSplit`](crate::DataParallelError::InvalidSplit) otherwise.
///
/// ```
/// use burn_data_parallel::SplitPolicy;
///
/// /// Twice the rows for the first device (a faster GPU), the rest shared by the others.
/// #[derive(Debug)]
/// struct FirstDoubled;
///
/// impl SplitPolicy for FirstDoubled {
///     fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
///         let first = (2 * rows).div_ceil(devices + 1).min(rows);
///         let rest = (rows - first, devices - 1);
///         let mut sizes = vec![first];
///         if rest.1 > 0 {
///             sizes.extend((0..rest.1).map(|i| rest.0 / rest.1 + usize::from(i < rest.0 % rest.1)));
///         }
///         sizes.retain(|&s| s > 0);
///         sizes
///     }
/// }
/// assert_eq!(FirstDoubled.sizes(30, 2), [20, 10]);
/// // `DataParallel::new(model, devices)?.with_split_policy(FirstDoubled)`
/// ```
pub trait SplitPolicy: Debug + Send + Sync {
    /// Rows for each of the first devices, for `rows` rows over `devices` devices (both > 0).
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize>;

    /// Learns from a call that succeeded: each replica's rows and the time it was busy with
    /// them, in replica order, for the sizes this policy returned. A policy that does not learn
    /// ignores it (the default).
    fn observe(&self, timings: &[ReplicaTiming]) {
        let _ = timings;
    }

    /// The fraction of the rows each device is meant to receive now, for logs; `None` (the
    /// default) for a policy whose split depends on the rows alone.
    fn shares(&self) -> Option<Vec<f64>> {
        None
    }

    /// What processes compare to know that they split global batches alike, before each
    /// micro-batch they split with this policy
    /// ([`DistributedTrainer::with_rank_split`](crate::dist::DistributedTrainer::with_rank_split)):
    /// two policies with the same fingerprint must give the same sizes for the same rows and
    /// devices. The default hashes the policy's `Debug` form, which must then show everything
    /// its sizes depend on, what it has learnt included (as [`Adaptive`](crate::Adaptive)'s
    /// does; every rank shows it the same timings, so every rank learns the same).
    fn fingerprint(&self) -> u64 {
        crate::dist::fingerprint(format!("{self:?}").as_bytes())
    }
}

/// A policy chosen at run time (from a command line, a config).
///
/// ```
/// use burn_data_parallel::{Adaptive, Chunk, SplitPolicy};
///
/// let adaptive = true;
/// let policy: Box<dyn SplitPolicy> =
///     if adaptive { Box::new(Adaptive::new()) } else { Box::new(Chunk) };
/// assert_eq!(policy.sizes(30, 4), [8, 8, 8, 6]); // Adaptive starts with the chunk rule
/// // `DataParallel::new(model, devices)?.with_split_policy(policy)`
/// ```
impl<P: SplitPolicy + ?Sized> SplitPolicy for Box<P> {
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        (**self).sizes(rows, devices)
    }

    fn observe(&self, timings: &[ReplicaTiming]) {
        (**self).observe(timings)
    }

    fn shares(&self) -> Option<Vec<f64>> {
        (**self).shares()
    }

    fn fingerprint(&self) -> u64 {
        (**self).fingerprint()
    }
}

/// A policy shared with the caller, who keeps a handle on it (for
/// [`Adaptive::speeds`], say).
///
/// ```
/// use burn::backend::NdArray;
/// use burn::nn::LinearConfig;
/// use burn_data_parallel::{Adaptive, DataParallel};
/// use std::sync::Arc;
///
/// let device = Default::default();
/// let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
/// let adaptive = Arc::new(Adaptive::new());
/// let dp = DataParallel::new(model, vec![device; 2])?.with_split_policy(Arc::clone(&adaptive));
/// assert_eq!(adaptive.speeds(), Vec::<Option<f64>>::new()); // nothing split yet
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
impl<P: SplitPolicy + ?Sized> SplitPolicy for std::sync::Arc<P> {
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        (**self).sizes(rows, devices)
    }

    fn observe(&self, timings: &[ReplicaTiming]) {
        (**self).observe(timings)
    }

    fn shares(&self) -> Option<Vec<f64>> {
        (**self).shares()
    }

    fn fingerprint(&self) -> u64 {
        (**self).fingerprint()
    }
}

/// Splits as `policy` does, without teaching it: evaluations split like the training steps
/// whose policy they borrow, whose speeds are those of training.
#[derive(Debug)]
pub(crate) struct Borrowed(pub(crate) std::sync::Arc<dyn SplitPolicy>);

impl SplitPolicy for Borrowed {
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        self.0.sizes(rows, devices)
    }

    fn shares(&self) -> Option<Vec<f64>> {
        self.0.shares()
    }
}

/// PyTorch's `torch.chunk` rule, the default.
///
/// ```
/// use burn_data_parallel::{Chunk, SplitPolicy};
/// assert_eq!(Chunk.sizes(30, 4), [8, 8, 8, 6]);
/// assert_eq!(Chunk.sizes(5, 4), [2, 2, 1]); // only 3 devices are used
/// assert_eq!(Chunk.sizes(10, 4), [3, 3, 3, 1]);
/// assert!(Chunk.sizes(0, 4).is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk;

impl SplitPolicy for Chunk {
    /// 0 rows give no chunk at all (PyTorch gives `devices` empty ones, which no replica can
    /// use).
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        if rows == 0 || devices == 0 {
            return Vec::new();
        }
        let chunk = rows.div_ceil(devices);
        (0..rows)
            .step_by(chunk)
            .map(|start| chunk.min(rows - start))
            .collect()
    }
}

/// As even as possible: sizes differ by at most one, and `min(rows, devices)` devices are used.
///
/// ```
/// use burn_data_parallel::{Balanced, SplitPolicy};
/// assert_eq!(Balanced.sizes(5, 4), [2, 1, 1, 1]);
/// assert_eq!(Balanced.sizes(30, 4), [8, 8, 7, 7]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balanced;

impl SplitPolicy for Balanced {
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        let parts = devices.min(rows);
        (0..parts)
            .map(|i| rows / parts + usize::from(i < rows % parts))
            .collect()
    }
}

/// Rank `rank`'s rows of `rows` rows split between `ranks` processes (or `rows` devices
/// between `ranks` local processes): `rank * rows / ranks .. (rank + 1) * rows / ranks`, so
/// that the parts cover every row once, in order, and differ in size by at most one. The rule
/// every process applies when nothing else splits a global batch between them.
///
/// ```
/// use burn_data_parallel::rank_rows;
///
/// let parts: Vec<_> = (0..3).map(|rank| rank_rows(10, rank, 3)).collect();
/// assert_eq!(parts, [0..3, 3..6, 6..10]);
/// assert!(rank_rows(2, 0, 3).is_empty()); // fewer rows than ranks: some get none
/// ```
pub fn rank_rows(rows: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    let ranks = ranks.max(1);
    rank * rows / ranks..(rank + 1) * rows / ranks
}

/// Local rank `local_rank`'s share of its machine's `devices` (its GPUs, say), among
/// `local_size` processes on the machine, so that they do not all crowd onto the first: the
/// devices are dealt out in contiguous blocks by [`rank_rows`]'s rule, and where there are
/// fewer devices than processes, processes share them in turn (local rank `l` gets device
/// `l % devices.len()`).
///
/// ```
/// use burn_data_parallel::machine_share;
///
/// let gpus: Vec<usize> = (0..8).collect();
/// assert_eq!(machine_share(&gpus, 1, 2), [4, 5, 6, 7]); // `mpirun -n 2`: 4 GPUs each
/// assert_eq!(machine_share(&gpus[..2], 2, 3), [0]); // 3 processes, 2 GPUs
/// ```
pub fn machine_share<D: Clone>(devices: &[D], local_rank: usize, local_size: usize) -> Vec<D> {
    if devices.is_empty() {
        return Vec::new();
    }
    if devices.len() < local_size {
        return vec![devices[local_rank % devices.len()].clone()];
    }
    devices[rank_rows(devices.len(), local_rank, local_size)].to_vec()
}

/// Checks a policy's answer, so that a faulty custom policy is an error rather than lost rows.
pub(crate) fn checked_sizes(
    policy: &dyn SplitPolicy,
    rows: usize,
    devices: usize,
) -> crate::Result<Vec<usize>> {
    let sizes = policy.sizes(rows, devices);
    let valid = !sizes.is_empty()
        && sizes.len() <= devices
        && sizes.iter().all(|&s| s > 0)
        && sizes.iter().sum::<usize>() == rows;
    if valid {
        Ok(sizes)
    } else {
        Err(crate::DataParallelError::InvalidSplit {
            policy: format!("{policy:?}"),
            rows,
            devices,
            sizes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy that says how it agrees: its `Debug` text differs from rank to rank.
    #[derive(Debug)]
    struct OwnFingerprint {
        #[expect(
            dead_code,
            reason = "shown by `Debug` only: it makes the ranks' texts differ"
        )]
        rank: usize,
    }

    impl SplitPolicy for OwnFingerprint {
        fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
            Chunk.sizes(rows, devices)
        }

        fn fingerprint(&self) -> u64 {
            7
        }
    }

    #[test]
    fn a_policy_s_own_fingerprint_survives_boxes_and_arcs() {
        let boxed: Box<dyn SplitPolicy> = Box::new(OwnFingerprint { rank: 1 });
        let shared = std::sync::Arc::new(OwnFingerprint { rank: 2 });
        assert_eq!(boxed.fingerprint(), 7);
        assert_eq!(Box::new(shared).fingerprint(), 7);
        // The default: the `Debug` text, which tells policies apart.
        assert_ne!(Chunk.fingerprint(), Balanced.fingerprint());
        assert_eq!(Box::new(Chunk).fingerprint(), Chunk.fingerprint());
        assert_ne!(
            format!("{:?}", OwnFingerprint { rank: 1 }),
            format!("{:?}", OwnFingerprint { rank: 2 })
        );
    }

    /// `torch.chunk` sizes, checked against PyTorch 2.15 (see the reference table).
    #[test]
    fn chunk_rule_matches_torch_chunk() {
        let table: &[(usize, usize, &[usize])] = &[
            (30, 4, &[8, 8, 8, 6]),
            (10, 4, &[3, 3, 3, 1]),
            (5, 4, &[2, 2, 1]),
            (2, 4, &[1, 1]),
            (6, 4, &[2, 2, 2]),
            (9, 4, &[3, 3, 3]),
            (17, 8, &[3, 3, 3, 3, 3, 2]),
            (65, 8, &[9, 9, 9, 9, 9, 9, 9, 2]),
            (1, 4, &[1]),
            (0, 4, &[]),
            (7, 3, &[3, 3, 1]),
            (8, 3, &[3, 3, 2]),
            (4, 1, &[4]),
        ];
        for &(rows, devices, expected) in table {
            assert_eq!(
                Chunk.sizes(rows, devices),
                expected,
                "{rows} rows on {devices}"
            );
        }
    }

    #[test]
    fn balanced_spreads_the_remainder() {
        assert_eq!(Balanced.sizes(65, 8), [9, 8, 8, 8, 8, 8, 8, 8]);
        assert_eq!(Balanced.sizes(2, 4), [1, 1]);
        assert_eq!(Balanced.sizes(12, 4), [3, 3, 3, 3]);
    }

    #[test]
    fn every_policy_covers_the_rows_exactly() {
        for rows in 1..100 {
            for devices in 1..10 {
                for policy in [&Chunk as &dyn SplitPolicy, &Balanced] {
                    let sizes = checked_sizes(policy, rows, devices).unwrap();
                    assert!(sizes.len() <= devices.min(rows));
                }
            }
        }
    }

    #[derive(Debug)]
    struct Lossy;
    impl SplitPolicy for Lossy {
        fn sizes(&self, rows: usize, _devices: usize) -> Vec<usize> {
            vec![rows - 1]
        }
    }

    #[test]
    fn a_policy_that_loses_rows_is_refused() {
        let err = checked_sizes(&Lossy, 10, 4).unwrap_err();
        assert!(matches!(
            err,
            crate::DataParallelError::InvalidSplit { rows: 10, .. }
        ));
    }
}
