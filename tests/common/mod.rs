//! What the example tests share.

use std::path::Path;

/// Writes a small, easy training problem (it trains in well under a second per epoch) for
/// `epochs` epochs to `dir/tiny.json`, and returns its path.
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
