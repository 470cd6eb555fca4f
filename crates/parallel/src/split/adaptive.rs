//! [`Adaptive`]: rows in proportion to each device's measured speed.

use super::{Balanced, Chunk, SplitPolicy};
use crate::ReplicaTiming;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A split that learns each device's speed and gives it rows in proportion, so that devices of
/// unequal speed (an old GPU beside a new one, a GPU shared with another job, CPU replicas of
/// different widths) finish their parts at the same time.
///
/// - Until it has learnt a speed, it splits by the `torch.chunk` rule ([`Chunk`]). Each
///   device's first timing is not learnt from: it holds one-time costs (kernel compilation and
///   autotuning on a GPU, first allocations), so the split moves from the third call on.
/// - After that, every replica's throughput in a call (its rows over the time it was busy,
///   [`ReplicaTiming::compute`]) updates that device's speed, an exponential moving average
///   ([`with_smoothing`](Self::with_smoothing)). A sample counts as at most 4 times the current
///   speed, or a quarter of it, so that a clock that barely moved cannot make one device look
///   infinitely fast.
/// - The shares change only when the split they give is predicted to finish at least
///   [`with_tolerance`](Self::with_tolerance) sooner than the current one: steady speeds keep a
///   steady split, and a device that slows down gets fewer rows within a few calls.
/// - A timing with no rows, no time, or a speed that is not a finite positive number teaches
///   nothing: that device keeps its last good speed (and if no device learnt anything, the
///   shares stay as they were). A device never measured counts as the mean of the measured ones.
/// - Row counts are exact and sum to the batch. Once it splits by speed, every device gets at
///   least one row when there are as many rows as devices (so that it keeps being measured),
///   and the first `rows` devices one each when there are fewer.
///
/// What it balances is each replica's busy time as the call measures it. In a trainer, each
/// replica reads its loss after its backward pass is queued, so on a GPU the time covers the
/// device's work. A forward through [`DataParallel`](crate::DataParallel) returns once the
/// work is queued, unless the closure reads a result, so on a GPU its timings measure the
/// host's part only. Training through `DataParallel::forward` runs the replicas one after
/// another (see there): no split is faster there.
///
/// Exactness does not depend on the split: trainers weight each part's gradient by its rows,
/// and [`DataParallel`](crate::DataParallel) concatenates parts in order. The one exception is
/// what is computed per part by design: a batch norm in training normalizes each part by that
/// part's statistics (see the crate documentation, "What stays exact"), and a slow device's
/// part may shrink to a few rows, or one.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::LinearConfig;
/// use burn::optim::SgdConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::{Adaptive, DataParallelTrainer, current_replica};
/// use std::time::Duration;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(4, 1).init::<B>(&device);
/// let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; 2])?
///     .with_split_policy(Adaptive::new());
/// let x = Tensor::<B, 2>::random([64, 4], Distribution::Default, &device);
/// let y = Tensor::<B, 2>::random([64, 1], Distribution::Default, &device);
/// for _ in 0..4 {
///     let stats = trainer.step(0.1, (x.clone(), y.clone()), |model, (x, y)| {
///         // Replica 1 plays a slow device: 1 ms more per row.
///         if current_replica().is_some_and(|r| r.index == 1) {
///             std::thread::sleep(Duration::from_millis(x.dims()[0] as u64));
///         }
///         (model.forward(x) - y).powi_scalar(2).mean()
///     })?;
///     let rows: Vec<usize> = stats.replicas.iter().map(|r| r.rows).collect();
///     println!("rows per replica {rows:?}, shares {:?}", trainer.split_policy().shares());
/// }
/// let shares = trainer.split_policy().shares().unwrap();
/// assert!(shares[1] < 0.25, "{shares:?}"); // 32 rows each at first
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
#[derive(Debug)]
pub struct Adaptive {
    smoothing: f64,
    tolerance: f64,
    state: Mutex<State>,
}

/// What has been learnt, for one device count.
#[derive(Debug, Clone, Default)]
struct State {
    devices: usize,
    /// Whether each device's first (warm-up) timing has been seen.
    warmed: Vec<bool>,
    /// Rows per second of each device, once measured.
    speeds: Vec<Option<f64>>,
    /// The fraction of the rows each device gets; `None` until a speed is known.
    shares: Option<Vec<f64>>,
}

/// The most one call can change a device's speed by (either way).
const MAX_CHANGE: f64 = 4.0;

impl Default for Adaptive {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Adaptive {
    /// An independent copy, with what this one has learnt so far.
    fn clone(&self) -> Self {
        Self {
            smoothing: self.smoothing,
            tolerance: self.tolerance,
            state: Mutex::new(self.state().clone()),
        }
    }
}

impl Adaptive {
    /// Smoothing 0.3, tolerance 0.03.
    pub fn new() -> Self {
        Self {
            smoothing: 0.3,
            tolerance: 0.03,
            state: Mutex::new(State::default()),
        }
    }

    /// The weight of the newest call in each device's speed, in `(0, 1]` (default 0.3): higher
    /// follows changes sooner, lower is steadier under noisy timings. Values outside the range
    /// are brought into it; NaN keeps the current value.
    pub fn with_smoothing(mut self, smoothing: f64) -> Self {
        if !smoothing.is_nan() {
            self.smoothing = smoothing.clamp(f64::MIN_POSITIVE, 1.0);
        }
        self
    }

    /// How much sooner (as a fraction, default 0.03) a new split must be predicted to finish
    /// before the shares change; 0 follows every measurement. Negative values count as 0; NaN
    /// keeps the current value.
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        if !tolerance.is_nan() {
            self.tolerance = tolerance.max(0.0);
        }
        self
    }

    /// Each device's speed in rows per second, as learnt so far (`None`: not measured yet).
    pub fn speeds(&self) -> Vec<Option<f64>> {
        self.state().speeds.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is valid after any panic: each update writes whole values.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Learns from one call: `(device, rows per second)` for the replicas that ran (the first
    /// good sample of each device only warms it up).
    fn learn(&self, samples: impl IntoIterator<Item = (usize, f64)>) {
        let mut state = self.state();
        let mut learnt = false;
        for (device, sample) in samples {
            if device >= state.devices || !(sample.is_finite() && sample > 0.0) {
                continue;
            }
            if !state.warmed[device] {
                state.warmed[device] = true;
                continue;
            }
            let speed = &mut state.speeds[device];
            *speed = Some(match *speed {
                None => sample,
                Some(old) => {
                    let sample = sample.clamp(old / MAX_CHANGE, old * MAX_CHANGE);
                    old + self.smoothing * (sample - old)
                }
            });
            learnt = true;
        }
        if !learnt {
            return;
        }
        let known: Vec<f64> = state.speeds.iter().flatten().copied().collect();
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        let speeds: Vec<f64> = state.speeds.iter().map(|s| s.unwrap_or(mean)).collect();
        let total: f64 = speeds.iter().sum();
        let ideal: Vec<f64> = speeds.iter().map(|s| s / total).collect();
        if !ideal.iter().all(|s| s.is_finite() && *s > 0.0) {
            return;
        }
        let devices = state.devices;
        let current = state
            .shares
            .clone()
            .unwrap_or_else(|| vec![1.0 / devices as f64; devices]);
        if finish_time(&current, &speeds) > finish_time(&ideal, &speeds) * (1.0 + self.tolerance) {
            state.shares = Some(ideal);
        } else if state.shares.is_none() {
            state.shares = Some(current);
        }
    }
}

/// The time a split by `shares` takes per row of the batch, at `speeds`: that of its slowest
/// part.
fn finish_time(shares: &[f64], speeds: &[f64]) -> f64 {
    shares
        .iter()
        .zip(speeds)
        .map(|(share, speed)| share / speed)
        .fold(0.0, f64::max)
}

/// `rows` apportioned by `shares` (positive, summing to about 1, one per device): largest
/// remainders, at least one row each.
fn apportion(rows: usize, shares: &[f64]) -> Vec<usize> {
    let devices = shares.len();
    if rows < devices {
        return Balanced.sizes(rows, devices);
    }
    let total: f64 = shares.iter().sum();
    let targets: Vec<f64> = shares.iter().map(|s| s / total * rows as f64).collect();
    let mut sizes: Vec<usize> = targets
        .iter()
        .map(|t| (t.floor() as usize).max(1))
        .collect();
    let mut sum: usize = sizes.iter().sum();
    while sum < rows {
        let (i, _) = targets
            .iter()
            .zip(&sizes)
            .map(|(t, &s)| t - s as f64)
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, gap)| {
                if gap > best.1 { (i, gap) } else { best }
            });
        sizes[i] += 1;
        sum += 1;
    }
    while sum > rows {
        let (i, _) = targets
            .iter()
            .zip(&sizes)
            .enumerate()
            .filter(|(_, (_, s))| **s > 1)
            .map(|(i, (t, &s))| (i, s as f64 - t))
            .fold((0, f64::NEG_INFINITY), |best, (i, excess)| {
                if excess > best.1 { (i, excess) } else { best }
            });
        sizes[i] -= 1;
        sum -= 1;
    }
    sizes
}

impl SplitPolicy for Adaptive {
    fn sizes(&self, rows: usize, devices: usize) -> Vec<usize> {
        let mut state = self.state();
        if state.devices != devices {
            *state = State {
                devices,
                warmed: vec![false; devices],
                speeds: vec![None; devices],
                shares: None,
            };
        }
        match &state.shares {
            Some(shares) if rows > 0 => apportion(rows, shares),
            _ => Chunk.sizes(rows, devices),
        }
    }

    fn observe(&self, timings: &[ReplicaTiming]) {
        self.learn(timings.iter().filter(|t| t.rows > 0).map(|t| {
            let seconds = t.compute.as_secs_f64();
            (t.replica, t.rows as f64 / seconds)
        }));
    }

    fn shares(&self) -> Option<Vec<f64>> {
        self.state().shares.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::checked_sizes;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Runs `calls` calls of `rows` rows on devices of `speeds` rows per second (linear cost),
    /// feeding back exact timings; returns the sizes of every call.
    fn simulate(policy: &Adaptive, rows: usize, speeds: &[f64], calls: usize) -> Vec<Vec<usize>> {
        (0..calls)
            .map(|_| {
                let sizes = checked_sizes(policy, rows, speeds.len()).unwrap();
                let timings: Vec<ReplicaTiming> = sizes
                    .iter()
                    .enumerate()
                    .map(|(replica, &rows)| ReplicaTiming {
                        replica,
                        rows,
                        compute: Duration::from_secs_f64(rows as f64 / speeds[replica]),
                    })
                    .collect();
                policy.observe(&timings);
                sizes
            })
            .collect()
    }

    #[test]
    fn starts_with_the_torch_chunk_rule() {
        let policy = Adaptive::new();
        assert_eq!(policy.sizes(30, 4), Chunk.sizes(30, 4));
        assert_eq!(policy.shares(), None);
        assert_eq!(policy.speeds(), [None; 4]);
    }

    #[test]
    fn converges_to_the_speed_ratio_and_stays_there() {
        let policy = Adaptive::new();
        let sizes = simulate(&policy, 300, &[100.0, 50.0], 10);
        // The chunk rule until a speed is learnt (the first timing only warms up).
        assert_eq!(sizes[0], [150, 150]);
        assert_eq!(sizes[1], [150, 150]);
        assert_eq!(sizes[2], [200, 100]);
        // Steady speeds, steady split: no oscillation once converged.
        assert!(sizes[2..].iter().all(|s| s == &sizes[2]), "{sizes:?}");
        let shares = policy.shares().unwrap();
        assert!((shares[0] - 2.0 / 3.0).abs() < 1e-9, "{shares:?}");
    }

    #[test]
    fn three_devices_and_rounding() {
        let policy = Adaptive::new();
        let sizes = simulate(&policy, 100, &[30.0, 20.0, 10.0], 5);
        assert_eq!(sizes[1], Chunk.sizes(100, 3));
        // 50, 33.3 and 16.7: the largest remainder takes the odd row.
        assert_eq!(sizes[4], [50, 33, 17]);
    }

    #[test]
    fn a_device_that_slows_down_gets_fewer_rows_within_a_few_calls() {
        let policy = Adaptive::new();
        simulate(&policy, 200, &[100.0, 100.0], 5);
        let sizes = simulate(&policy, 200, &[100.0, 25.0], 4);
        assert!(sizes[0][1] == 100 && sizes[1][1] < 100, "{sizes:?}");
        assert!(sizes[3][1] < 70, "{sizes:?}");
        // And gets them back once it is fast again.
        let sizes = simulate(&policy, 200, &[100.0, 100.0], 12);
        let last = sizes.last().unwrap();
        assert!(last[1].abs_diff(100) <= 6, "{sizes:?}");
    }

    #[test]
    fn small_noise_does_not_move_a_steady_split() {
        let policy = Adaptive::new();
        simulate(&policy, 256, &[100.0, 50.0], 6);
        let settled = policy.sizes(256, 2);
        for wobble in [1.01, 0.99, 1.015, 0.985, 1.0] {
            let sizes = simulate(&policy, 256, &[100.0 * wobble, 50.0], 1);
            assert_eq!(sizes[0], settled);
        }
    }

    #[test]
    fn bad_timings_keep_the_last_good_shares() {
        let policy = Adaptive::new();
        simulate(&policy, 90, &[60.0, 30.0], 3);
        let good = policy.shares().unwrap();
        policy.learn([(0, f64::NAN), (1, 0.0)]);
        policy.learn([(0, f64::INFINITY), (1, -5.0)]);
        policy.learn([(0, f64::NEG_INFINITY)]);
        policy.learn([(7, 1.0)]); // no such device
        // A replica that got no rows, or whose clock did not move.
        policy.observe(&[
            ReplicaTiming {
                replica: 0,
                rows: 0,
                compute: Duration::ZERO,
            },
            ReplicaTiming {
                replica: 1,
                rows: 10,
                compute: Duration::ZERO,
            },
        ]);
        assert_eq!(policy.shares().unwrap(), good);
        assert_eq!(policy.sizes(90, 2), [60, 30]);
    }

    #[test]
    fn the_first_timing_of_each_device_is_not_learnt_from() {
        let policy = Adaptive::new();
        // A first call slowed by one-time costs on device 1.
        simulate(&policy, 100, &[50.0, 1.0], 1);
        assert_eq!(policy.speeds(), [None, None]);
        simulate(&policy, 100, &[50.0, 50.0], 1);
        assert_eq!(policy.sizes(100, 2), [50, 50]);
    }

    #[test]
    fn one_absurd_timing_cannot_take_every_row() {
        let policy = Adaptive::new().with_smoothing(1.0);
        simulate(&policy, 100, &[50.0, 50.0], 3);
        policy.learn([(0, 1e300), (1, 50.0)]);
        let sizes = policy.sizes(100, 2);
        assert!(sizes[1] >= 20, "{sizes:?}");
    }

    #[test]
    fn an_unmeasured_device_counts_as_the_mean() {
        let policy = Adaptive::new();
        // 3 rows on 4 devices use three of them; the fourth is never measured.
        simulate(&policy, 3, &[10.0, 10.0, 10.0, 10.0], 2);
        assert_eq!(policy.speeds()[3], None);
        assert_eq!(policy.sizes(40, 4), [10, 10, 10, 10]);
    }

    #[test]
    fn a_new_device_count_starts_again() {
        let policy = Adaptive::new();
        simulate(&policy, 90, &[60.0, 30.0], 3);
        assert_eq!(policy.sizes(30, 3), Chunk.sizes(30, 3));
    }

    #[test]
    fn a_very_slow_device_keeps_one_row() {
        let policy = Adaptive::new();
        let sizes = simulate(&policy, 10, &[1000.0, 1.0, 1000.0], 20);
        assert_eq!(sizes.last().unwrap(), &[5, 1, 4]);
    }

    proptest! {
        /// Every row in exactly one part; once a speed is learnt, at least one row per device
        /// where rows allow; never more parts than rows or devices.
        #[test]
        fn sizes_cover_the_rows(
            speeds in prop::collection::vec(0.01f64..1e4, 1..8),
            rows in 1usize..500,
            calls in 0usize..5,
        ) {
            let policy = Adaptive::new();
            simulate(&policy, 64, &speeds, calls);
            let sizes = checked_sizes(&policy, rows, speeds.len()).unwrap();
            if calls < 2 {
                prop_assert_eq!(sizes, Chunk.sizes(rows, speeds.len()));
            } else {
                prop_assert_eq!(sizes.len(), rows.min(speeds.len()));
            }
        }

        /// Once converged on steady speeds, no device's part is a row or more from its exact
        /// share.
        #[test]
        fn converged_sizes_follow_the_speeds(
            speeds in prop::collection::vec(10.0f64..100.0, 2..6),
            rows in 50usize..400,
        ) {
            let policy = Adaptive::new().with_tolerance(0.0);
            simulate(&policy, rows, &speeds, 3);
            let sizes = policy.sizes(rows, speeds.len());
            let total: f64 = speeds.iter().sum();
            for (size, speed) in sizes.iter().zip(&speeds) {
                let exact = rows as f64 * speed / total;
                prop_assert!((*size as f64 - exact).abs() < 1.0, "{:?} for {:?}", sizes, speeds);
            }
        }
    }
}
