#![allow(dead_code)] // each test binary uses some of these
//! Running `tools/learner` and comparing its runs: parameters and burn-train's logged
//! metric values.

use std::path::Path;
use std::process::Command;

/// Runs `learner` in `dir` with `args` (after `launcher`, such as `mpirun -n 2`, if any);
/// its summary (JSON).
pub fn learner_with(launcher: &[&str], dir: &Path, args: &[&str]) -> serde_json::Value {
    let summary = dir.join("summary.json");
    let program = env!("CARGO_BIN_EXE_learner");
    let mut command = match launcher.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    };
    let out = command
        .args(args)
        // Containers often forbid the cross-memory attach Open MPI uses between local ranks.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .arg("--dir")
        .arg(dir.join("run"))
        .arg("--summary")
        .arg(&summary)
        .output()
        .expect("learner starts");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "learner {args:?} failed:\n{text}");
    serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap()
}

/// The largest difference between two runs' parameters.
pub fn parameter_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let values = |v: &serde_json::Value| -> Vec<f64> {
        v["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Every metric value burn-train logged in `run` (per split, epoch and metric, in order).
pub fn metrics(run: &Path) -> Vec<(String, Vec<f64>)> {
    let mut files = Vec::new();
    for split in ["train", "valid"] {
        for epoch in std::fs::read_dir(run.join(split)).unwrap() {
            for file in std::fs::read_dir(epoch.unwrap().path()).unwrap() {
                files.push(file.unwrap().path());
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let values = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter_map(|line| line.split(',').next()?.trim().parse::<f64>().ok())
                .collect();
            (
                path.strip_prefix(run).unwrap().display().to_string(),
                values,
            )
        })
        .collect()
}

/// The largest difference between the metric values of two runs, which logged the same
/// metrics and items.
pub fn metric_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (metrics(a), metrics(b));
    let names = |m: &[(String, Vec<f64>)]| -> Vec<(String, usize)> {
        m.iter().map(|(name, v)| (name.clone(), v.len())).collect()
    };
    assert_eq!(names(&a), names(&b));
    assert!(
        a.iter().any(|(name, _)| name.contains("Learning_Rate")),
        "{:?}",
        names(&a)
    );
    let mut worst: f64 = 0.0;
    for ((_, va), (_, vb)) in a.iter().zip(&b) {
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}
