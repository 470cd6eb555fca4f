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
