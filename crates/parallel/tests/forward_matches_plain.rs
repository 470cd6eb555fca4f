//! A data-parallel forward gives exactly what the plain module gives on the whole batch.

mod common;

use burn::tensor::{Bool, Int, Tensor};
use burn_data_parallel::{
    Adaptive, Balanced, Chunk, DataParallel, SplitPolicy, Whole, current_replica,
};
use common::*;
use proptest::prelude::*;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

const TOLERANCE: f32 = 1e-6;

fn check_rows_dim0(rows: usize, devices: usize, policy: impl SplitPolicy + 'static) {
    let mut dp = DataParallel::new(linear(5, 2), cpus(devices))
        .unwrap()
        .with_split_policy(policy);
    let x = normal([rows, 5], rows as u64);
    let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    let plain = dp.module().forward(x);
    let diff = max_abs_diff(out, plain);
    assert!(diff <= TOLERANCE, "{rows} rows on {devices}: {diff}");
}

#[test]
fn dim0_equals_plain_forward_for_1_to_4_devices() {
    for devices in 1..=4 {
        for rows in [1, 2, 3, 5, 7, 10, 30, 33] {
            check_rows_dim0(rows, devices, Chunk);
            check_rows_dim0(rows, devices, Balanced);
        }
    }
}

/// Inference learns the speeds too: a replica made slow (sleeping 2 ms per row) gets fewer rows
/// after a few calls, and the output is still the plain forward's.
#[test]
fn an_adaptive_forward_follows_the_slow_replica_and_stays_exact() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(3))
        .unwrap()
        .with_split_policy(Adaptive::new());
    let mut split = Vec::new();
    for call in 0..6 {
        let x = normal([60, 5], call);
        let out = dp
            .parallel_apply(x.clone(), |m, x| {
                let rows = x.dims()[0];
                if current_replica().is_some_and(|r| r.index == 2) {
                    std::thread::sleep(Duration::from_millis(2 * rows as u64));
                }
                (rows, m.forward(x))
            })
            .unwrap();
        split.push(out.iter().map(|(rows, _)| *rows).collect::<Vec<_>>());
        let out = Tensor::cat(out.into_iter().map(|(_, y)| y).collect(), 0);
        assert!(max_abs_diff(out, dp.module().forward(x)) <= TOLERANCE);
    }
    assert_eq!(split[0], [20, 20, 20]);
    let last = split.last().unwrap();
    assert!(
        last[2] <= 6 && last.iter().sum::<usize>() == 60,
        "{split:?}"
    );
    let shares = dp.split_policy().shares().unwrap();
    assert!(shares[2] < shares[0] && shares[2] < shares[1], "{shares:?}");
}

/// CPU replicas of different widths: each replica's worker has the threads it was given.
#[test]
fn each_device_gets_its_own_thread_count() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(3))
        .unwrap()
        .with_threads_per_device(vec![3, 1, 2])
        .unwrap();
    let widths = dp
        .parallel_apply(normal([9, 5], 1), |_, _| rayon::current_num_threads())
        .unwrap();
    assert_eq!(widths, [3, 1, 2]);
}

#[test]
fn dim1_equals_plain_forward() {
    for devices in 1..=4 {
        for cols in [1, 3, 10, 30] {
            let mut dp = DataParallel::new(linear(5, 2), cpus(devices))
                .unwrap()
                .with_dim(1);
            // Columns are samples: [5, cols] in, [2, cols] out.
            let f = |m: &burn::nn::Linear<B>, x: Tensor<B, 2>| m.forward(x.transpose()).transpose();
            let x = normal([5, cols], cols as u64);
            let out = dp.forward(x.clone(), f).unwrap();
            assert_eq!(out.dims(), [2, cols]);
            let plain = f(dp.module(), x);
            assert!(max_abs_diff(out, plain) <= TOLERANCE);
        }
    }
}

#[test]
fn rank3_tensors_split_on_their_first_dim() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(3)).unwrap();
    let x: Tensor<B, 3> = normal([7, 4, 5], 3);
    let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    assert_eq!(out.dims(), [7, 4, 2]);
    assert!(max_abs_diff(out, dp.module().forward(x)) <= TOLERANCE);
}

type TupleIn = (
    Tensor<B, 2>,
    Tensor<B, 1, Int>,
    Tensor<B, 2, Bool>,
    Whole<f32>,
);
type TupleOut = (Tensor<B, 2>, Tensor<B, 1, Int>);

fn tuple_step(m: &burn::nn::Linear<B>, (x, ids, mask, Whole(scale)): TupleIn) -> TupleOut {
    let y = m.forward(x.mask_fill(mask, 0.0)).mul_scalar(scale);
    (y, ids.mul_scalar(2))
}

#[test]
fn tuples_of_float_int_bool_and_whole_values() {
    for devices in 1..=4 {
        for rows in [1, 4, 9, 30] {
            let mut dp = DataParallel::new(linear(5, 2), cpus(devices)).unwrap();
            let x = normal([rows, 5], 11);
            let ids = Tensor::<B, 1, Int>::arange(0..rows as i64, &cpu());
            let mask = normal::<2>([rows, 5], 12).greater_elem(0.5);
            let input = (x, ids, mask, Whole(0.5_f32));
            let (y, ids2) = dp.forward(input.clone(), tuple_step).unwrap();
            let (y_plain, ids_plain) = tuple_step(dp.module(), input);
            assert!(max_abs_diff(y, y_plain) <= TOLERANCE);
            // Row order survives the round trip: ids come back as 0, 2, 4, ...
            assert_eq!(ids2.into_data(), ids_plain.into_data());
        }
    }
}

#[test]
fn vecs_are_split_element_by_element() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    let xs = vec![normal([10, 5], 1), normal([10, 5], 2)];
    let out = dp
        .forward(xs.clone(), |m, xs| {
            xs.into_iter().map(|x| m.forward(x)).collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(out.len(), 2);
    for (o, x) in out.into_iter().zip(xs) {
        assert!(max_abs_diff(o, dp.module().forward(x)) <= TOLERANCE);
    }
}

#[test]
fn the_tutorial_batch_is_split_8_8_8_6_across_4_threads() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    let seen = Mutex::new(Vec::new());
    dp.forward(normal([30, 5], 1), |m, x| {
        let info = current_replica().expect("inside a replica");
        seen.lock()
            .unwrap()
            .push((info.index, x.dims(), std::thread::current().id()));
        m.forward(x)
    })
    .unwrap();
    let mut seen = seen.into_inner().unwrap();
    seen.sort_by_key(|s| s.0);
    let sizes: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(sizes, [(0, [8, 5]), (1, [8, 5]), (2, [8, 5]), (3, [6, 5])]);
    // With several devices every replica, the first included, runs on a thread of its own,
    // none on the caller's (there, the backend's rayon work would go to the global pool).
    let caller = std::thread::current().id();
    assert!(seen.iter().all(|s| s.2 != caller), "{seen:?}");
    let threads: std::collections::HashSet<_> = seen.iter().map(|s| s.2).collect();
    assert_eq!(threads.len(), 4);
}

#[test]
fn one_device_runs_on_the_callers_thread() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(1)).unwrap();
    let seen = Mutex::new(None);
    dp.forward(normal([30, 5], 1), |m, x| {
        *seen.lock().unwrap() = Some(std::thread::current().id());
        m.forward(x)
    })
    .unwrap();
    assert_eq!(
        seen.into_inner().unwrap(),
        Some(std::thread::current().id())
    );
}

#[test]
fn replicas_run_at_the_same_time() {
    // Every replica waits until all four have started; run one after another, they could not
    // all be inside at once. The timeout only keeps a broken build from hanging the suite.
    let inside = (Mutex::new(0), Condvar::new());
    let all_met = Mutex::new(Vec::new());
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    dp.forward(normal([8, 5], 1), |m, x| {
        let (count, cv) = &inside;
        let mut n = count.lock().unwrap();
        *n += 1;
        cv.notify_all();
        let (n, _) = cv
            .wait_timeout_while(n, Duration::from_secs(20), |n| *n < 4)
            .unwrap();
        all_met.lock().unwrap().push(*n == 4);
        drop(n);
        m.forward(x)
    })
    .unwrap();
    assert_eq!(all_met.into_inner().unwrap(), [true; 4]);
}

#[test]
fn a_fresh_lazily_initialised_model_gives_the_same_weights_to_every_replica() {
    // Burn creates parameters on first use: copies made before that would each draw their own.
    for _ in 0..3 {
        let lazy = linear(16, 3);
        let mut dp = DataParallel::new(lazy, cpus(4)).unwrap();
        let x = normal([40, 16], 5);
        let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
        assert!(max_abs_diff(out, dp.module().forward(x)) <= TOLERANCE);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_shape_any_device_count(
        rows in 1usize..48,
        features in 1usize..8,
        outputs in 1usize..6,
        devices in 1usize..=6,
        dim in 0usize..=1,
        balanced in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dp = DataParallel::new(linear(features, outputs), cpus(devices)).unwrap().with_dim(dim);
        let mut dp = if balanced { dp.with_split_policy(Balanced) } else { dp };
        let f = |m: &burn::nn::Linear<B>, x: Tensor<B, 2>| {
            if dim == 0 { m.forward(x) } else { m.forward(x.transpose()).transpose() }
        };
        let shape = if dim == 0 { [rows, features] } else { [features, rows] };
        let x = normal(shape, seed);
        let out = dp.forward(x.clone(), f).unwrap();
        let plain = f(dp.module(), x);
        prop_assert!(max_abs_diff(out, plain) <= TOLERANCE);
    }
}
