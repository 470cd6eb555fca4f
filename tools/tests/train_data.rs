//! `train --data`: the example trains on files (an image folder, MNIST's IDX files, CSV
//! rows), with or without batches prepared ahead, and explains bad data instead of panicking.

mod common;

use common::{files, report, train};
use serde_json::Value;
use std::path::Path;

fn epochs(report: &Value) -> Vec<(f64, f64)> {
    common::epoch_pairs(report, "train_loss", "test_accuracy")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small CNN for 3 epochs on 2 devices, written to `dir/cnn.json`.
fn cnn(dir: &Path) -> Vec<String> {
    let config = dir.join("cnn.json");
    let text = r#"{"model": "cnn", "widths": [8, 8], "epochs": 3, "batch_size": 32, "lr": 0.01}"#;
    std::fs::write(&config, text).unwrap();
    ["--config", path(&config), "--devices", "2"]
        .map(String::from)
        .to_vec()
}

#[test]
fn an_image_folder_trains_the_cnn_the_same_with_and_without_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let [train_dir, test_dir] = files::image_folders(dir.path(), 1, 384, 128);
    let data = ["--data", path(&train_dir), "--test-data", path(&test_dir)];
    let plain = dir.path().join("plain");
    let cnn = cnn(dir.path());
    let cnn: Vec<&str> = cnn.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = train(&plain, &[&cnn[..], &data, &["--prefetch", "0"]].concat());
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("1-channel images") && stdout.contains("384 training rows"),
        "{stdout}"
    );
    let ahead = dir.path().join("ahead");
    let args = [
        &cnn[..],
        &data,
        &["--prefetch", "3", "--loader-threads", "2"],
    ]
    .concat();
    let (ok, _, stderr) = train(&ahead, &args);
    assert!(ok, "{stderr}");
    let (plain, ahead) = (epochs(&report(&plain)), epochs(&report(&ahead)));
    for ((a_loss, a_accuracy), (b_loss, b_accuracy)) in plain.iter().zip(&ahead) {
        assert!((a_loss - b_loss).abs() <= 1e-6, "{plain:?} vs {ahead:?}");
        assert_eq!(a_accuracy, b_accuracy);
    }
    let accuracy = plain.last().unwrap().1;
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}\n{stdout}");
}

#[test]
fn colour_images_mnist_files_and_csv_rows_train_their_models() {
    let dir = tempfile::tempdir().unwrap();
    let cnn = cnn(dir.path());
    let cnn: Vec<&str> = cnn.iter().map(String::as_str).collect();
    let colour = dir.path().join("colour");
    std::fs::create_dir(&colour).unwrap();
    let [train_dir, test_dir] = files::image_folders(&colour, 3, 256, 128);
    let out = dir.path().join("rgb");
    let data = ["--data", path(&train_dir), "--test-data", path(&test_dir)];
    let (ok, stdout, stderr) = train(&out, &[&cnn[..], &data].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("3-channel images"), "{stdout}");
    let accuracy = report(&out)["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.8, "colour images: {accuracy}\n{stdout}");

    let mnist = files::mnist(dir.path(), 384, 128);
    let out = dir.path().join("mnist-run");
    let (ok, stdout, stderr) = train(&out, &[&cnn[..], &["--data", path(&mnist)]].concat());
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("MNIST's IDX files") && stdout.contains("128 held-out"),
        "{stdout}"
    );
    let accuracy = report(&out)["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "IDX files: {accuracy}\n{stdout}");

    let [train_csv, test_csv] = files::csv(dir.path(), 600, 200);
    let out = dir.path().join("csv-run");
    let args = [
        "--data",
        path(&train_csv),
        "--test-data",
        path(&test_csv),
        "--epochs",
        "3",
        "--batch-size",
        "50",
        "--lr",
        "0.01",
        "--devices",
        "3",
    ];
    let (ok, stdout, stderr) = train(&out, &args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("an MLP 8 -> ") && stdout.contains("-> 3"),
        "{stdout}"
    );
    let accuracy = report(&out)["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "CSV rows: {accuracy}\n{stdout}");
}

/// Something done to the data around a run.
type Step<'a> = Box<dyn Fn() + 'a>;

#[test]
fn bad_data_is_explained_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let [train_dir, test_dir] = files::image_folders(dir.path(), 1, 64, 32);
    let mnist = files::mnist(dir.path(), 64, 32);
    let [train_csv, _] = files::csv(dir.path(), 50, 20);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let short_row = write("short.csv", "1,2,3,4,5,6,7,8,0\n1,2,3,0\n");
    let high_label = write("high.csv", "1,2,3,4,5,6,7,8,9\n");
    let empty_class = dir.path().join("train").join("class-9");
    let truncated = mnist.join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&truncated).unwrap();
    let out = dir.path().join("out");
    let image = |extra: &[&'static str]| -> Vec<&str> {
        [
            &[
                "--model",
                "cnn",
                "--data",
                path(&train_dir),
                "--test-data",
                path(&test_dir),
            ][..],
            extra,
        ]
        .concat()
    };
    // Arguments, what to break before the run, the message expected, how to repair after.
    let cases: Vec<(Vec<&str>, Step, &str, Step)> = vec![
        (
            vec!["--data", path(&train_csv), "--test-data", path(&short_row)],
            Box::new(|| {}),
            "short.csv: line 2 has 4 fields, expected 9",
            Box::new(|| {}),
        ),
        (
            vec!["--data", path(&train_csv), "--test-data", path(&high_label)],
            Box::new(|| {}),
            "high.csv: line 1 has label 9, outside the 3 classes",
            Box::new(|| {}),
        ),
        (
            vec!["--data", path(&train_csv)],
            Box::new(|| {}),
            "give its held-out set with --test-data",
            Box::new(|| {}),
        ),
        (
            image(&[]),
            Box::new(|| std::fs::create_dir(&empty_class).unwrap()),
            "class-9 is missing: the images of class \"class-9\"",
            Box::new(|| std::fs::remove_dir(&empty_class).unwrap()),
        ),
        (
            vec!["--model", "cnn", "--data", path(&mnist)],
            Box::new(|| std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap()),
            "t10k-images-idx3-ubyte: truncated",
            Box::new(|| std::fs::write(&truncated, &bytes).unwrap()),
        ),
        (
            vec!["--model", "transformer", "--data", path(&train_csv)],
            Box::new(|| {}),
            "the transformer trains on synthetic sequences only",
            Box::new(|| {}),
        ),
    ];
    for (args, before, expected, after) in cases {
        before();
        let (ok, _, stderr) = train(&out, &args);
        after();
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // An image that cannot be decoded, found while training: the run stops naming it.
    let bad = files::damage_an_image(&train_dir);
    let (ok, _, stderr) = train(&out, &image(&["--epochs", "1"]));
    assert!(
        !ok && stderr.contains(bad.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("cannot decode the image"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A measurement too long for every test run (figures in BENCHMARKS.md): `train --data` on an
/// image folder of MNIST's size (28x28) at 1x and 10x its number of images, one epoch on 2
/// devices; prints each run's peak resident memory and checks it stays flat. Run it optimized:
/// `cargo test --release -p dp-tools --test train_data -- --ignored --nocapture`.
#[test]
#[ignore]
fn peak_memory_of_an_image_folder_run_at_1x_and_10x() {
    let mut peaks = Vec::new();
    for images in [6_000, 60_000] {
        let dir = tempfile::tempdir().unwrap();
        let [train_dir, test_dir] = files::sized_image_folders(dir.path(), 1, 28, images, 1000);
        let out = dir.path().join("out");
        let args = [
            "--model",
            "cnn",
            "--epochs",
            "1",
            "--devices",
            "2",
            "--batch-size",
            "64",
            "--data",
            path(&train_dir),
            "--test-data",
            path(&test_dir),
        ];
        let (ok, stdout, stderr) = train(&out, &args);
        assert!(ok, "{stderr}");
        let report = report(&out);
        let peak = report["peak_memory_bytes"].as_u64().unwrap();
        println!(
            "{images} images of 28x28: peak {:.1} MiB, {:.0} samples/s\n{stdout}",
            peak as f64 / (1 << 20) as f64,
            report["samples_per_second"].as_f64().unwrap()
        );
        peaks.push(peak);
    }
    let ratio = peaks[1] as f64 / peaks[0] as f64;
    println!("peak at 10x / peak at 1x: {ratio:.3}");
    // The images' own storage is on disk: ten times as many may add their paths, not a copy.
    assert!(
        ratio < 1.2,
        "peak memory grew {ratio:.2}x with 10x the images"
    );
}
