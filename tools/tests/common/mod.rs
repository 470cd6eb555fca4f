//! What the example tests share.

use std::path::Path;
use std::process::Command;

/// Writes a small, easy training problem (it trains in well under a second per epoch) for
/// `epochs` epochs to `dir/tiny.json`, and returns its path.
#[allow(dead_code)]
pub fn tiny_config(dir: &Path, epochs: usize) -> String {
    let path = dir.join("tiny.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"data": {{"features": 8, "classes": 3, "train_size": 600, "test_size": 200, "noise": 0.5}},
                "hidden_sizes": [16], "batch_size": 50, "epochs": {epochs}, "lr": 0.01}}"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[allow(dead_code)]
/// A small CNN run with `SyncBatchNorm` (8x8 images, 200 rows in batches of 48: a short last
/// batch of 8), written to `dir/sync-cnn.json`. The rate is low because Adam scales rounding
/// in a near-zero gradient (the convolutions' biases, which batch norm cancels) up to a step
/// in proportion to it: at 0.01 the held-out loss moves by 1.4e-5 between two splits.
pub fn sync_cnn_config(dir: &Path, epochs: usize) -> String {
    let path = dir.join("sync-cnn.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"model": "cnn", "images": {{"train_size": 200, "test_size": 64}}, "widths": [4, 4],
                "sync_batch_norm": true, "batch_size": 48, "epochs": {epochs}, "lr": 0.002}}"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[allow(dead_code)]
/// Each epoch's training and held-out losses in a report.
pub fn epoch_losses(report: &serde_json::Value) -> Vec<(f64, f64)> {
    epoch_pairs(report, "train_loss", "test_loss")
}

/// Each epoch's values of keys `a` and `b` in a report.
#[allow(dead_code)]
pub fn epoch_pairs(report: &serde_json::Value, a: &str, b: &str) -> Vec<(f64, f64)> {
    report["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[a].as_f64().unwrap(), e[b].as_f64().unwrap()))
        .collect()
}

#[allow(dead_code)]
/// The largest difference between two runs' epoch losses.
pub fn max_loss_diff(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.0 - y.0).abs().max((x.1 - y.1).abs()))
        .fold(0.0, f64::max)
}

#[cfg(feature = "burn-train")]
pub mod learner;

#[allow(dead_code)]
pub mod files;

/// Runs the `train` example with `--out out` and `args`: whether it succeeded, its output and
/// its errors.
#[allow(dead_code)]
pub fn train(out: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("--out")
        .arg(out)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the train binary starts");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The `report.json` a `train` run wrote to `out`.
#[allow(dead_code)]
pub fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}
