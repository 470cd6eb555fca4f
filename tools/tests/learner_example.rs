//! `tools/learner`, an ordinary burn-train program, run as a user runs it: on 2 CPU
//! devices with `DataParallelStrategy` against the same program on burn-train's
//! `SingleDevice`, and resumed from its checkpoint.
#![cfg(feature = "burn-train")]

#[allow(dead_code)] // this binary uses the learner helpers only
mod common;

use common::learner::{learner_with, metric_diff, parameter_diff};
use std::path::Path;

/// Runs `learner` in `dir` with `args`; its summary (JSON).
fn learner(dir: &Path, args: &[&str]) -> serde_json::Value {
    learner_with(&[], dir, args)
}

const PROGRAM: &[&str] = &[
    "--optimizer",
    "sgd",
    "--epochs",
    "2",
    "--train-size",
    "300",
    "--valid-size",
    "70",
    "--batch-size",
    "32",
    "--accumulate",
    "2",
];

#[test]
fn the_learner_example_on_2_devices_trains_as_burn_trains_single_device() {
    let single_dir = tempfile::tempdir().unwrap();
    let parallel_dir = tempfile::tempdir().unwrap();
    let single = learner(
        single_dir.path(),
        &[PROGRAM, &["--strategy", "single"]].concat(),
    );
    let parallel = learner(
        parallel_dir.path(),
        &[PROGRAM, &["--devices", "2"]].concat(),
    );
    assert!(parallel["error"].is_null(), "{}", parallel["error"]);
    let diff = parameter_diff(&single, &parallel);
    assert!(diff < 1e-5, "parameters off by {diff}");
    let metrics = metric_diff(
        &single_dir.path().join("run"),
        &parallel_dir.path().join("run"),
    );
    assert!(metrics < 1e-5, "metrics off by {metrics}");
}

#[test]
fn the_learner_example_resumes_from_its_checkpoint() {
    let whole_dir = tempfile::tempdir().unwrap();
    let resumed_dir = tempfile::tempdir().unwrap();
    let adam = [
        "--epochs",
        "3",
        "--train-size",
        "200",
        "--devices",
        "2",
        "--patience",
        "9",
    ];
    let whole = learner(whole_dir.path(), &adam);
    let mut first = adam.to_vec();
    first[1] = "1";
    learner(resumed_dir.path(), &first);
    let resumed = learner(
        resumed_dir.path(),
        &[&adam[..], &["--resume", "1"]].concat(),
    );
    let diff = parameter_diff(&whole, &resumed);
    assert!(diff < 1e-6, "the resumed run is off by {diff}");
}
