//! Training across MPI ranks on one machine (feature `mpi`; needs Open MPI's `mpirun`): the
//! ranks end with the parameters of single-process training, and faults end the whole job
//! quickly with a message that names the rank.
#![cfg(feature = "mpi")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `dist_check` on `ranks` ranks of this machine.
fn mpirun(ranks: usize, args: &[&str]) -> (bool, String, Duration) {
    mpirun_binary(ranks, env!("CARGO_BIN_EXE_dist_check"), args)
}

/// Runs `binary` on `ranks` ranks of this machine; gives up (and fails) after a minute, so
/// that a hang is a failure rather than a stuck suite.
fn mpirun_binary(ranks: usize, binary: &str, args: &[&str]) -> (bool, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &ranks.to_string(),
        ])
        .arg(binary)
        .args(args)
        // Containers often forbid the cross-memory attach Open MPI uses between local ranks.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts (apt install openmpi-bin)");
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mpirun -n {ranks} {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, start.elapsed())
}

#[test]
fn two_ranks_train_like_one_process() {
    let (ok, out, _) = mpirun(2, &["--steps", "10"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("PASS: 10 steps on 2 ranks").count(), 2, "{out}");
}

#[test]
fn three_ranks_of_two_devices_each_with_an_uneven_batch() {
    // 31 rows on 3 ranks: 11 each, one row repeated, as PyTorch's DistributedSampler does.
    let (ok, out, _) = mpirun(
        3,
        &[
            "--steps",
            "10",
            "--global-batch",
            "31",
            "--devices-per-rank",
            "2",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.matches("PASS: 10 steps on 3 ranks").count(), 3, "{out}");
}

#[test]
fn a_rank_with_another_model_is_refused_before_any_step() {
    let (ok, out, _) = mpirun(2, &["--mismatch-rank", "1"]);
    assert!(!ok);
    assert!(
        out.contains("rank 1 holds a different model from rank 0"),
        "{out}"
    );
    assert!(!out.contains("step 0:"), "no step may run: {out}");
}

#[test]
fn a_rank_that_panics_ends_the_job_and_is_named() {
    let (ok, out, took) = mpirun(3, &["--panic-rank", "1", "--fault-step", "3"]);
    assert!(!ok);
    assert!(out.contains("rank 1: panicked"), "{out}");
    assert!(took < Duration::from_secs(60));
}

#[test]
fn a_rank_that_exits_ends_the_job() {
    let (ok, out, _) = mpirun(2, &["--exit-rank", "1", "--fault-step", "3"]);
    assert!(!ok);
    // Open MPI names the process: [[job,1],1] is rank 1.
    assert!(
        out.contains(",1],1]") && out.contains("Exit code:    3"),
        "{out}"
    );
}

#[test]
fn a_rank_taking_more_steps_is_an_error_not_a_hang() {
    let (ok, out, _) = mpirun(2, &["--extra-step-rank", "1"]);
    assert!(!ok);
    assert!(
        out.contains("rank 1 is still training") || out.contains("rank 0 finished training"),
        "{out}"
    );
}

#[test]
fn the_train_example_runs_on_two_ranks_with_rank_0_speaking_and_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"data": {"features": 8, "classes": 3, "train_size": 600, "test_size": 200, "noise": 0.5},
            "hidden_sizes": [16], "batch_size": 50, "epochs": 2, "lr": 0.01}"#,
    )
    .unwrap();
    let out = dir.path().join("run");
    let (config, out) = (config.to_str().unwrap(), out.to_str().unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec!["--mpi", "--config", config, "--out", out];
        args.extend_from_slice(extra);
        let (ok, text, _) = mpirun_binary(2, env!("CARGO_BIN_EXE_train"), &args);
        (ok, text)
    };
    let (ok, stdout) = run(&[]);
    assert!(ok, "{stdout}");
    let out = std::path::Path::new(out);
    assert!(stdout.contains("[rank 0] epoch 2/2"), "{stdout}");
    assert!(
        !stdout.contains("[rank 1]"),
        "only rank 0 prints by default: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap(),
        "epoch-0002"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(
        report["final_test_accuracy"].as_f64().unwrap() >= 0.9,
        "{report}"
    );

    let (ok, stdout) = run(&["--resume", "--epochs", "3", "--log-all-ranks"]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("[rank 1] Resuming from"), "{stdout}");
    assert!(stdout.contains("[rank 0] epoch 3/3"), "{stdout}");
}
