//! The training example, run as a user runs it: it learns, checkpoints, resumes and stops
//! cleanly on bad input.

mod common;

use common::{report, tiny_config, train};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn latest(out: &Path) -> String {
    std::fs::read_to_string(out.join("latest")).unwrap()
}

#[test]
fn the_defaults_reach_90_percent_held_out_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = train(dir.path(), &["--devices", "2"]);
    assert!(ok, "{stderr}");
    let report = report(dir.path());
    let accuracy = report["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}\n{stdout}");
    assert_eq!(report["epochs"].as_array().unwrap().len(), 5);
    assert_eq!(report["devices"].as_array().unwrap().len(), 2);
    assert!(stdout.contains("epoch 5/5"), "{stdout}");
}

#[test]
fn a_tiny_config_runs_end_to_end_and_resuming_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let straight = dir.path().join("straight");
    let (ok, _, stderr) = train(&straight, &["--config", &config, "--devices", "3"]);
    assert!(ok, "{stderr}");
    assert_eq!(latest(&straight), "epoch-0002");

    let resumed = dir.path().join("resumed");
    let (ok, _, stderr) = train(
        &resumed,
        &["--config", &config, "--devices", "3", "--epochs", "1"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(report(&resumed)["epochs"].as_array().unwrap().len(), 1);
    let (ok, stdout, stderr) = train(
        &resumed,
        &["--config", &config, "--devices", "3", "--resume"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Resuming from"), "{stdout}");
    assert!(
        !stdout.contains("epoch 1/2"),
        "epoch 1 is not trained again: {stdout}"
    );

    let (a, b) = (report(&straight), report(&resumed));
    let (a, b) = (
        a["epochs"].as_array().unwrap(),
        b["epochs"].as_array().unwrap(),
    );
    assert_eq!(b.len(), 2);
    for (x, y) in a.iter().zip(b) {
        let loss = (x["train_loss"].as_f64().unwrap() - y["train_loss"].as_f64().unwrap()).abs();
        assert!(loss <= 1e-6, "{x} vs {y}");
        assert_eq!(x["test_accuracy"], y["test_accuracy"]);
    }
}

/// `--split adaptive` on CPU replicas of unequal widths trains exactly as the `torch.chunk`
/// split does, and says how it split.
#[test]
fn an_adaptive_split_trains_as_the_chunk_split_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let runs: Vec<(Value, String)> = [
        &[][..],
        &["--split", "adaptive", "--threads-per-device", "2,1,1"],
    ]
    .iter()
    .enumerate()
    .map(|(i, extra)| {
        let out = dir.path().join(format!("run{i}"));
        let args = [&["--config", &config, "--devices", "3"][..], extra].concat();
        let (ok, stdout, stderr) = train(&out, &args);
        assert!(ok, "{stderr}");
        (report(&out), stdout)
    })
    .collect();
    let [(chunk, _), (adaptive, stdout)] = &runs[..] else {
        unreachable!()
    };
    assert!(stdout.contains("(shares "), "{stdout}");
    let epochs = |r: &Value| r["epochs"].as_array().unwrap().clone();
    for (x, y) in epochs(chunk).iter().zip(&epochs(adaptive)) {
        for key in ["train_loss", "test_loss"] {
            let diff = (x[key].as_f64().unwrap() - y[key].as_f64().unwrap()).abs();
            assert!(diff <= 1e-5, "{key}: {x} vs {y}");
        }
        assert_eq!(y["shares"].as_array().unwrap().len(), 3, "{y}");
    }
    let (ok, _, stderr) = train(
        &dir.path().join("bad"),
        &[
            "--config",
            &config,
            "--devices",
            "3",
            "--threads-per-device",
            "2,1",
        ],
    );
    assert!(!ok && stderr.contains("one count per device"), "{stderr}");
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let out = dir.path().join("run");
    let (ok, _, stderr) = train(&out, &["--config", &config, "--epochs", "1"]);
    assert!(ok, "{stderr}");
    let state = std::fs::read(out.join("epoch-0001/state.json")).unwrap();

    // A learning rate this large sends the weights to infinity within a step or two.
    let (ok, _, stderr) = train(
        &out,
        &[
            "--config",
            &config,
            "--resume",
            "--epochs",
            "3",
            "--lr",
            "1e30",
            "--allow-change",
            "lr",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("non-finite loss") && stderr.contains("step "),
        "{stderr}"
    );
    assert!(stderr.contains("last checkpoint"), "{stderr}");
    assert_eq!(latest(&out), "epoch-0001");
    assert_eq!(
        std::fs::read(out.join("epoch-0001/state.json")).unwrap(),
        state
    );

    // The checkpoint still loads and training goes on from it.
    let (ok, stdout, stderr) = train(&out, &["--config", &config, "--resume"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("epoch 2/2"), "{stdout}");
}

#[test]
fn a_checkpoint_of_another_model_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let out = dir.path().join("run");
    let (ok, _, stderr) = train(&out, &["--config", &config, "--epochs", "1"]);
    assert!(ok, "{stderr}");
    let model = std::fs::read(out.join("epoch-0001/model.mpk")).unwrap();

    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        r#"{"data": {"features": 8, "classes": 3}, "hidden_sizes": [4, 4]}"#,
    )
    .unwrap();
    let (ok, _, stderr) = train(&out, &["--config", other.to_str().unwrap(), "--resume"]);
    assert!(!ok);
    assert!(stderr.contains("was made for the model"), "{stderr}");
    assert_eq!(latest(&out), "epoch-0001");
    assert_eq!(
        std::fs::read(out.join("epoch-0001/model.mpk")).unwrap(),
        model
    );

    // Starting afresh over an existing run is refused too, rather than overwriting it.
    let (ok, _, stderr) = train(&out, &["--config", &config]);
    assert!(!ok);
    assert!(stderr.contains("--resume"), "{stderr}");
}

#[test]
fn bad_configs_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.json");
    std::fs::write(&typo, r#"{"data": {"nois": 1.0}}"#).unwrap();
    let (ok, _, stderr) = train(dir.path(), &["--config", typo.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("unknown key `data.nois`"), "{stderr}");
    let (ok, _, stderr) = train(dir.path(), &["--batch-size", "0"]);
    assert!(!ok);
    assert!(stderr.contains("batch_size"), "{stderr}");
    // Settings that would panic inside Burn or report a meaningless figure are refused
    // first, naming the key.
    for (config, key) in [
        (r#"{"data": {"test_size": 0}}"#, "data.test_size is 0"),
        (r#"{"hidden_sizes": [16, 0]}"#, "hidden_sizes[1] is 0"),
        (
            r#"{"model": "cnn", "images": {"size": 1}}"#,
            "images.size is 1",
        ),
        (r#"{"model": "cnn", "widths": [8, 0]}"#, "widths[1] is 0"),
        (
            r#"{"model": "transformer", "sequences": {"test_size": 0}}"#,
            "sequences.test_size",
        ),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, config).unwrap();
        let (ok, stdout, stderr) = train(dir.path(), &["--config", path.to_str().unwrap()]);
        assert!(!ok, "{config}: {stdout}");
        assert!(stderr.contains(key), "{config}: {stderr}");
        assert!(!stderr.contains("panicked"), "{config}: {stderr}");
    }
}

#[test]
fn a_resume_with_other_settings_is_refused_unless_they_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let out = dir.path().join("run");
    let (ok, _, stderr) = train(&out, &["--config", &config, "--epochs", "1"]);
    assert!(ok, "{stderr}");
    let state = std::fs::read(out.join("epoch-0001/state.json")).unwrap();

    // Another learning rate, batch size or seed; another data set from another config.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        r#"{"data": {"features": 8, "classes": 3, "train_size": 600, "test_size": 200,
                      "noise": 3.0, "seed": 99},
            "hidden_sizes": [16], "batch_size": 50, "epochs": 2, "lr": 0.01}"#,
    )
    .unwrap();
    let other = other.to_str().unwrap();
    for (args, differences) in [
        (
            vec!["--config", &config, "--lr", "0.02"],
            vec!["lr: 0.01 -> 0.02"],
        ),
        (
            vec!["--config", &config, "--batch-size", "40", "--seed", "7"],
            vec!["batch_size: 50 -> 40", "seed: 42 -> 7"],
        ),
        (
            vec!["--config", other],
            vec!["data.noise: 0.5 -> 3.0", "data.seed"],
        ),
    ] {
        let mut all = args.clone();
        all.push("--resume");
        let (ok, stdout, stderr) = train(&out, &all);
        assert!(!ok, "{args:?}: {stdout}");
        for difference in differences {
            assert!(stderr.contains(difference), "{args:?}: {stderr}");
        }
        assert!(stderr.contains("--allow-change"), "{stderr}");
        assert_eq!(latest(&out), "epoch-0001");
        assert_eq!(
            std::fs::read(out.join("epoch-0001/state.json")).unwrap(),
            state
        );
    }

    // Named, the change is allowed, and each epoch's report keeps what it ran with.
    let (ok, _, stderr) = train(
        &out,
        &[
            "--config",
            &config,
            "--lr",
            "0.02",
            "--resume",
            "--allow-change",
            "lr",
        ],
    );
    assert!(ok, "{stderr}");
    let epochs = report(&out)["epochs"].as_array().unwrap().clone();
    let lrs: Vec<f64> = epochs
        .iter()
        .map(|e| e["settings"]["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, [0.01, 0.02]);
}

/// Flips 16 bytes in the middle of `path`.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 16] {
        *byte ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupted_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    for file in ["optimizer.mpk", "model.mpk", "state.json"] {
        let out = dir.path().join(file);
        let (ok, _, stderr) = train(&out, &["--config", &config, "--epochs", "1"]);
        assert!(ok, "{stderr}");
        corrupt(&out.join("epoch-0001").join(file));
        let (ok, stdout, stderr) = train(&out, &["--config", &config, "--resume"]);
        assert!(!ok, "{file}: {stdout}");
        assert!(
            stderr.contains(&format!("{file} does not match its checksum")),
            "{file}: {stderr}"
        );
    }
}

/// A checkpoint that does not fit on the disk: the error says so, the partial folder goes,
/// and the last complete checkpoint stays the latest. The disk is a small tmpfs mounted in a
/// mount namespace of the test's own (`unshare`), which leaves the machine's mounts alone.
#[test]
fn a_full_disk_is_reported_and_the_last_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 3);
    // Measure one checkpoint (in tmpfs pages), then give the disk room for it and the
    // `latest` pointer, with a page to spare, but not for a second checkpoint beside it.
    let probe = dir.path().join("probe");
    let (ok, _, stderr) = train(&probe, &["--config", &config, "--epochs", "1"]);
    assert!(ok, "{stderr}");
    let size: u64 = std::fs::read_dir(probe.join("epoch-0001"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len().div_ceil(4096) * 4096)
        .sum();
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={} tmpfs {disk} || exit 99; {train} --out {disk}/run --config \
         {config}; status=$?; echo LEFT $(ls -A {disk}/run); exit $status",
        size + 2 * 4096,
        disk = disk.display(),
        train = env!("CARGO_BIN_EXE_train"),
    );
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("unshare starts (util-linux)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_ne!(
        output.status.code(),
        Some(99),
        "cannot mount a tmpfs: {stderr}"
    );
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("epoch 1/3"), "{stdout}{stderr}");
    // What the disk holds afterwards: the first checkpoint and the pointer to it, nothing
    // half-written.
    let left = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LEFT "))
        .unwrap_or_default();
    assert_eq!(left, "epoch-0001 latest", "{stdout}");
    assert!(
        stderr.contains("cannot write the checkpoint of epoch 2")
            && stderr.contains("the disk is full")
            && stderr.contains("epoch-0001, is intact"),
        "{stderr}"
    );
}

#[test]
fn folders_left_by_a_crash_while_checkpointing_are_ignored_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 1);
    let out = dir.path().join("run");
    let (ok, _, stderr) = train(&out, &["--config", &config]);
    assert!(ok, "{stderr}");
    // What a crash part-way through writing epochs 2 and 7 leaves behind.
    for name in [".epoch-0002.tmp", ".epoch-0007.tmp"] {
        std::fs::create_dir_all(out.join(name)).unwrap();
        std::fs::write(out.join(name).join("model.mpk"), b"half a model").unwrap();
    }
    assert_eq!(latest(&out), "epoch-0001");

    let (ok, stdout, stderr) = train(&out, &["--config", &config, "--resume", "--epochs", "2"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("epoch-0001 (epoch 1,"), "{stdout}");
    assert_eq!(latest(&out), "epoch-0002");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A small run of `model` (`cnn` or `transformer`) for `epochs` epochs, written to
/// `dir/<model>.json`.
fn small_config(dir: &Path, model: &str, epochs: usize) -> String {
    let sizes = match model {
        "cnn" => r#""images": {"train_size": 512, "test_size": 256}, "widths": [8, 8]"#,
        _ => {
            r#""sequences": {"train_size": 512, "test_size": 256},
               "transformer": {"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32}"#
        }
    };
    let path = dir.join(format!("{model}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"model": "{model}", {sizes}, "epochs": {epochs}, "batch_size": 64, "lr": 0.01}}"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// `--model cnn` (batch norm: its running statistics are in the checkpoint) and `--model
/// transformer` learn their data, and a run resumed from a checkpoint goes on exactly as an
/// uninterrupted one. (The README's accuracies are those of the default, larger runs.)
fn learns_and_resumes(model: &str, accuracy_at_least: f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), model, 3);
    let straight = dir.path().join("straight");
    let (ok, stdout, stderr) = train(&straight, &["--config", &config, "--devices", "2"]);
    assert!(ok, "{stderr}");
    let accuracy = report(&straight)["final_test_accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= accuracy_at_least,
        "{model}: {accuracy}\n{stdout}"
    );

    let resumed = dir.path().join("resumed");
    let args = ["--config", &config, "--devices", "2"];
    let (ok, _, stderr) = train(&resumed, &[&args[..], &["--epochs", "1"]].concat());
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = train(&resumed, &[&args[..], &["--resume"]].concat());
    assert!(ok, "{stderr}");
    let (a, b) = (report(&straight), report(&resumed));
    let (a, b) = (
        a["epochs"].as_array().unwrap(),
        b["epochs"].as_array().unwrap(),
    );
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(b) {
        let loss = (x["train_loss"].as_f64().unwrap() - y["train_loss"].as_f64().unwrap()).abs();
        assert!(loss <= 1e-6, "{model}: {x} vs {y}");
        assert_eq!(x["test_accuracy"], y["test_accuracy"]);
    }
}

#[test]
fn a_cnn_learns_and_resumes_exactly() {
    learns_and_resumes("cnn", 0.5);
}

#[test]
fn a_transformer_learns_and_resumes_exactly() {
    learns_and_resumes("transformer", 0.7);
}

#[test]
fn a_checkpoint_of_one_model_kind_is_refused_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), "transformer", 1);
    let out = dir.path().join("run");
    let (ok, _, stderr) = train(&out, &["--config", &config]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = train(
        &out,
        &[
            "--config", &config, "--model", "mlp", "--resume", "--epochs", "2",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("was made for the model \"transformer\""),
        "{stderr}"
    );
}

/// A learning-rate schedule (warm-up, then cosine) is in every checkpoint: a resumed run
/// continues it exactly, and each epoch's report says the rate it ended at.
#[test]
fn a_scheduled_run_resumes_on_the_same_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 3);
    let schedule = [
        "--config",
        &config,
        "--devices",
        "2",
        "--schedule",
        "cosine",
        "--warmup-steps",
        "3",
        "--min-lr",
        "0.0001",
        "--schedule-steps",
        "35",
    ];
    let straight = dir.path().join("straight");
    let (ok, _, stderr) = train(&straight, &schedule);
    assert!(ok, "{stderr}");
    let resumed = dir.path().join("resumed");
    let (ok, _, stderr) = train(&resumed, &[&schedule[..], &["--epochs", "1"]].concat());
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = train(&resumed, &[&schedule[..], &["--resume"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Resuming from"), "{stdout}");

    let (a, b) = (report(&straight), report(&resumed));
    let (a, b) = (
        a["epochs"].as_array().unwrap(),
        b["epochs"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    let lrs: Vec<f64> = a.iter().map(|e| e["lr"].as_f64().unwrap()).collect();
    // 12 steps an epoch: the rate falls along the cosine (after the warm-up) to its floor at
    // step 36 (Burn's cosine gives its start at the first step, its floor 35 steps later).
    assert!(lrs[0] > lrs[1] && lrs[1] > lrs[2], "{lrs:?}");
    assert!((lrs[2] - 0.0001).abs() < 1e-9, "{lrs:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["lr"], y["lr"], "{x} vs {y}");
        let loss = (x["train_loss"].as_f64().unwrap() - y["train_loss"].as_f64().unwrap()).abs();
        assert!(loss <= 1e-6, "{x} vs {y}");
        assert_eq!(x["test_accuracy"], y["test_accuracy"]);
    }

    // A schedule changed on resume (allowed by name) is replayed, not loaded into a scheduler
    // of another shape: constant for an epoch, then cosine from where it would be.
    let changed = dir.path().join("changed");
    let constant = ["--config", &config, "--devices", "2", "--epochs", "1"];
    let (ok, _, stderr) = train(&changed, &constant);
    assert!(ok, "{stderr}");
    let cosine = [&schedule[..], &["--resume", "--allow-change", "schedule"]].concat();
    let (ok, _, stderr) = train(&changed, &cosine);
    assert!(ok, "{stderr}");
    let epochs = report(&changed)["epochs"].as_array().unwrap().clone();
    let lrs: Vec<f64> = epochs.iter().map(|e| e["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs[0], 0.01, "{lrs:?}");
    assert_eq!(
        &lrs[1..],
        &[a[1]["lr"].as_f64().unwrap(), a[2]["lr"].as_f64().unwrap()]
    );
}

/// `--sync-bn`: the CNN trained on 2 and 3 devices (3 with 2 micro-batches per batch, whose
/// parts of the short last batch have 1 or 2 rows) has one device's losses every epoch; with
/// Burn's `BatchNorm` (per part) it does not.
#[test]
fn sync_batch_norm_trains_the_cnn_as_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_cnn_config(dir.path(), 2);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args = [&["--config", config.as_str()][..], extra].concat();
        let (ok, _, stderr) = train(&out, &args);
        assert!(ok, "{stderr}");
        common::epoch_losses(&report(&out))
    };
    let one = run("one", &["--devices", "1"]);
    let two = run("two", &["--devices", "2"]);
    let three = run("three", &["--devices", "3", "--accumulate", "2"]);
    let one_accumulated = run("one-acc", &["--devices", "1", "--accumulate", "2"]);
    assert!(
        common::max_loss_diff(&one, &two) <= 1e-5,
        "{one:?} vs {two:?}"
    );
    let diff = common::max_loss_diff(&one_accumulated, &three);
    assert!(diff <= 1e-5, "{one_accumulated:?} vs {three:?}");
    // The same config with Burn's BatchNorm, normalized per device's part, moves away.
    let plain = dir.path().join("plain.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("true", "false");
    std::fs::write(&plain, text).unwrap();
    let out = dir.path().join("plain");
    let (ok, _, stderr) = train(
        &out,
        &["--config", plain.to_str().unwrap(), "--devices", "2"],
    );
    assert!(ok, "{stderr}");
    let per_part = common::epoch_losses(&report(&out));
    assert!(
        common::max_loss_diff(&one, &per_part) > 1e-4,
        "{one:?} vs {per_part:?}"
    );
}

/// `--shard-optimizer` in one process: with the gradient sum and the optimizer step spread over
/// the devices, the CNN (batch norm, Adam) on 3 devices with 2 micro-batches per batch trains
/// the same numbers as with the step on the first device, and resumes from its checkpoint the
/// same (the whole optimizer state is in it).
#[test]
fn a_sharded_step_trains_as_the_step_on_the_first_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), "cnn", 2);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let base = [
            "--config",
            config.as_str(),
            "--devices",
            "3",
            "--accumulate",
            "2",
        ];
        let (ok, stdout, stderr) = train(&out, &[&base[..], extra].concat());
        assert!(ok, "{stderr}");
        (common::epoch_losses(&report(&out)), stdout)
    };
    let (plain, _) = run("plain", &[]);
    let (sharded, said) = run("sharded", &["--shard-optimizer"]);
    assert!(
        said.contains("optimizer step are spread over the devices"),
        "{said}"
    );
    assert_eq!(plain, sharded);
    // One more epoch, from the sharded run's checkpoint and from the plain one's.
    let (plain, _) = run("plain", &["--epochs", "3", "--resume"]);
    let (sharded, _) = run(
        "sharded",
        &["--epochs", "3", "--resume", "--shard-optimizer"],
    );
    assert_eq!(plain.len(), 3);
    assert_eq!(plain, sharded);
}
