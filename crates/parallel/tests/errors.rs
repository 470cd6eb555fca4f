//! Every failure of a call is a typed error, not a panic, and the wrapper keeps working
//! afterwards.

mod common;

use burn::tensor::{Int, Tensor};
use burn_data_parallel::{DataParallel, DataParallelError, SplitPolicy, Whole, current_replica};
use common::*;

fn tutorial_dp(devices: usize) -> DataParallel<B, burn::nn::Linear<B>> {
    DataParallel::new(linear(5, 2), cpus(devices)).unwrap()
}

/// After an error, a normal call still works and is still exact.
fn still_works(dp: &mut DataParallel<B, burn::nn::Linear<B>>) {
    let x = normal([30, 5], 99);
    let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    assert!(max_abs_diff(out, dp.module().forward(x)) <= 1e-6);
}

#[test]
fn no_devices() {
    let err = DataParallel::<B, _>::new(linear(5, 2), vec![]).unwrap_err();
    assert!(matches!(err, DataParallelError::NoDevices));
}

#[test]
fn zero_rows() {
    let mut dp = tutorial_dp(4);
    let x = Tensor::<B, 2>::zeros([0, 5], &cpu());
    let err = dp.forward(x, |m, x| m.forward(x)).unwrap_err();
    assert!(
        matches!(err, DataParallelError::EmptyInput { dim: 0 }),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn nothing_to_split() {
    let mut dp = tutorial_dp(2);
    let err = dp
        .forward(Whole(normal([4, 5], 1)), |m, Whole(x)| m.forward(x))
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::NothingToSplit { .. }),
        "{err}"
    );
}

#[test]
fn inputs_that_disagree_on_rows_are_refused_not_truncated() {
    let mut dp = tutorial_dp(4);
    let x = normal([8, 5], 1);
    let ids = Tensor::<B, 1, Int>::arange(0..2, &cpu());
    let err = dp.forward((x, ids), |m, (x, _)| m.forward(x)).unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::RowMismatch {
                dim: 0,
                expected: 8,
                found: 2
            }
        ),
        "{err}"
    );
    let nested = vec![normal([8, 5], 1), normal([9, 5], 2)];
    let err = dp.forward(nested, |_, xs| xs).unwrap_err();
    assert!(
        matches!(err, DataParallelError::RowMismatch { .. }),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn split_dim_beyond_the_rank() {
    let mut dp = tutorial_dp(2).with_dim(2);
    let err = dp
        .forward(normal([4, 5], 1), |m, x| m.forward(x))
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::DimOutOfRange { dim: 2, rank: 2 }),
        "{err}"
    );
}

#[test]
fn outputs_that_cannot_be_concatenated() {
    let mut dp = tutorial_dp(3);
    // Replica i returns i + 1 columns: the shapes differ outside the gather dimension.
    let err = dp
        .forward(normal([9, 5], 1), |_, x| {
            let cols = current_replica().unwrap().index + 1;
            Tensor::<B, 2>::zeros([x.dims()[0], cols], &cpu())
        })
        .unwrap_err();
    match err {
        DataParallelError::GatherShapeMismatch {
            replica,
            expected,
            found,
            ..
        } => {
            assert_eq!((replica, expected, found), (1, vec![3, 1], vec![3, 2]));
        }
        other => panic!("unexpected {other}"),
    }
    let err = dp
        .forward(normal([9, 5], 1), |_, x| {
            vec![x; current_replica().unwrap().index + 1]
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::GatherLengthMismatch { replica: 1, .. }
        ),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn outputs_without_one_row_per_input_row_are_refused() {
    // A forward that pools over the batch: one mean per part, which single-device Burn would
    // give once. Each replica is named with its rows in and out.
    let mut dp = tutorial_dp(4);
    let err = dp
        .forward(normal([30, 5], 1), |m, x| m.forward(x).mean_dim(0))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::OutputRows {
                replica: 0,
                dim: 0,
                rows_in: 8,
                rows_out: 1
            }
        ),
        "{err}"
    );
    // Rows repeated: the plain shape, but the parts' rows would interleave.
    let mut dp = tutorial_dp(2);
    let err = dp
        .forward(normal([8, 5], 2), |m, x| {
            let y = m.forward(x);
            Tensor::cat(vec![y.clone(), y.mul_scalar(10.0)], 0)
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::OutputRows {
                rows_in: 4,
                rows_out: 8,
                ..
            }
        ),
        "{err}"
    );
    // In a tuple too, whichever member is off; and on one device, as on several.
    let mut one = tutorial_dp(1);
    let err = one
        .forward(normal([6, 5], 3), |m, x| {
            let y = m.forward(x);
            (y.clone(), y.sum())
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::OutputRows {
                rows_in: 6,
                rows_out: 1,
                ..
            }
        ),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn per_part_values_come_with_their_rows() {
    let mut dp = tutorial_dp(4);
    let x = normal([30, 5], 4);
    let parts = dp
        .forward_parts(x.clone(), |m, x| m.forward(x).sum())
        .unwrap();
    let rows: Vec<usize> = parts.iter().map(|p| p.rows).collect();
    assert_eq!(rows, [8, 8, 8, 6]);
    assert_eq!(
        parts.iter().map(|p| p.replica).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    // Sums add up to the batch's sum.
    let sum = parts
        .into_iter()
        .map(|p| p.value)
        .reduce(|a, b| a + b)
        .unwrap();
    assert!(max_abs_diff(sum, dp.module().forward(x).sum()) <= 1e-4);
}

#[derive(Debug)]
struct DropsARow;
impl SplitPolicy for DropsARow {
    fn sizes(&self, rows: usize, _devices: usize) -> Vec<usize> {
        vec![1; rows - 1]
    }
}

#[test]
fn thread_counts_that_do_not_match_the_devices() {
    for threads in [vec![1, 1], vec![2, 0, 1, 1], vec![1; 5]] {
        let err = tutorial_dp(4)
            .with_threads_per_device(threads.clone())
            .unwrap_err();
        assert!(
            matches!(&err, DataParallelError::ThreadCounts { devices: 4, threads: t } if *t == threads),
            "{err}"
        );
    }
}

#[test]
fn a_split_policy_that_loses_rows() {
    let mut dp = tutorial_dp(100).with_split_policy(DropsARow);
    let err = dp
        .forward(normal([5, 5], 1), |m, x| m.forward(x))
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::InvalidSplit { rows: 5, .. }),
        "{err}"
    );
}

#[test]
fn a_panicking_replica_is_reported_by_index_and_device() {
    let mut dp = tutorial_dp(4);
    let err = dp
        .forward(normal([30, 5], 1), |m, x| {
            if current_replica().unwrap().index == 2 {
                panic!("replica two is broken");
            }
            m.forward(x)
        })
        .unwrap_err();
    match &err {
        DataParallelError::ReplicaPanicked {
            replica,
            device,
            message,
        } => {
            assert_eq!(*replica, 2);
            assert_eq!(device, "Cpu");
            assert!(message.contains("replica two is broken"));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("replica 2 on device Cpu panicked"));
    still_works(&mut dp);
}

#[test]
fn a_panic_on_the_single_device_is_an_error_too() {
    let mut dp = tutorial_dp(1);
    let err = dp
        .forward(normal([3, 5], 1), |_, _| -> Tensor<B, 2> { panic!("boom") })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::ReplicaPanicked { replica: 0, .. }),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn every_replica_panicking_reports_the_first() {
    let mut dp = tutorial_dp(4);
    let err = dp
        .forward(normal([30, 5], 1), |_, _| -> Tensor<B, 2> {
            panic!("all down")
        })
        .unwrap_err();
    assert!(
        matches!(err, DataParallelError::ReplicaPanicked { replica: 0, .. }),
        "{err}"
    );
    still_works(&mut dp);
}

#[test]
fn a_replica_that_returns_an_error() {
    let mut dp = tutorial_dp(4);
    let err = dp
        .try_forward(normal([30, 5], 1), |m, x| {
            if current_replica().unwrap().index == 1 {
                return Err(std::io::Error::other("disk full"));
            }
            Ok(m.forward(x))
        })
        .unwrap_err();
    match &err {
        DataParallelError::ReplicaFailed {
            replica, source, ..
        } => {
            assert_eq!(*replica, 1);
            assert_eq!(source.to_string(), "disk full");
        }
        other => panic!("unexpected {other}"),
    }
    still_works(&mut dp);
}
