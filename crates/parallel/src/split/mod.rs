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
