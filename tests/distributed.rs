//! Training across MPI ranks on one machine (feature `mpi`; needs Open MPI's `mpirun`): the
//! ranks end with the parameters of single-process training, and faults end the whole job
//! quickly with a message that names the rank.
#![cfg(feature = "mpi")]

mod common;

use common::tiny_config;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `dist_check` on `ranks` ranks of this machine.
fn mpirun(ranks: usize, args: &[&str]) -> (bool, String, Duration) {
    mpirun_binary(ranks, env!("CARGO_BIN_EXE_dist_check"), args)
}

/// Runs `dist_check` on `ranks` ranks, which must fail; returns what the job printed.
fn mpirun_failing(ranks: usize, args: &[&str]) -> String {
    let (ok, out, _) = mpirun(ranks, args);
    assert!(!ok, "the job must fail: {out}");
    out
}

/// Runs `binary` on `ranks` ranks of this machine.
fn mpirun_binary(ranks: usize, binary: &str, args: &[&str]) -> (bool, String, Duration) {
    let ranks = ranks.to_string();
    let mut all = vec!["-n", &ranks, binary];
    all.extend_from_slice(args);
    mpirun_raw(&all)
}

/// Runs `mpirun` with `args` after the options every run needs, and waits for it.
fn mpirun_raw(args: &[&str]) -> (bool, String, Duration) {
    let start = Instant::now();
    let (ok, text) = wait_bounded(spawn_mpirun(args), &format!("mpirun {args:?}"));
    (ok, text, start.elapsed())
}

/// Starts `mpirun` with `args` after the options every run needs.
fn spawn_mpirun(args: &[&str]) -> Child {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(args)
        // Containers often forbid the cross-memory attach Open MPI uses between local ranks.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts (apt install openmpi-bin)")
}

/// Waits for `job` and returns whether it succeeded and what it printed; gives up (and fails)
/// after a minute, so that a hang is a failure rather than a stuck suite.
fn wait_bounded(mut job: Child, what: &str) -> (bool, String) {
    let start = Instant::now();
    while job.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            panic!("{what} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = job.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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
    let out = mpirun_failing(2, &["--mismatch-rank", "1"]);
    assert!(
        out.contains("rank 1 holds a different model from rank 0"),
        "{out}"
    );
    assert!(!out.contains("step 0:"), "no step may run: {out}");
}

#[test]
fn nccl_is_refused_clearly_where_the_gradients_are_not_on_a_cuda_gpu() {
    let out = mpirun_failing(2, &["--transport", "nccl"]);
    assert!(
        out.contains("rank 0 cannot reduce gradients through NCCL")
            && (out.contains("no `cuda` feature") || out.contains("not on burn::backend::Cuda")),
        "{out}"
    );
    assert!(!out.contains("step 0"), "refused before any step: {out}");
}

#[test]
fn auto_and_mpi_transports_on_the_cpu_both_go_through_mpi() {
    for transport in ["auto", "mpi"] {
        let (ok, out, _) = mpirun(2, &["--transport", transport, "--steps", "3"]);
        assert!(ok, "{out}");
        assert!(out.contains("gradients summed through Mpi"), "{out}");
        assert_eq!(out.matches("PASS: 3 steps on 2 ranks").count(), 2, "{out}");
    }
}

#[test]
fn ranks_asking_for_different_transports_are_refused_not_left_waiting() {
    let out = mpirun_failing(2, &["--odd-transport-rank", "1"]);
    // Every rank reports the same mismatch: whichever Open MPI lets print names both.
    assert!(
        out.contains("rank 1 asks for the Mpi gradient transport and rank 0 for Auto"),
        "{out}"
    );
}

#[test]
fn ranks_with_different_row_counts_some_with_none_train_like_one_process() {
    // Contiguous parts by the chunk rule: 5 rows on 3 ranks are 2, 2 and 1; 2 rows on 3 ranks
    // are 1, 1 and 0. A plain average of the ranks' mean gradients would be off here.
    for rows in ["5", "2"] {
        let (ok, out, _) = mpirun(3, &["--uneven", "--global-batch", rows, "--steps", "10"]);
        assert!(ok, "{out}");
        assert_eq!(out.matches("PASS: 10 steps on 3 ranks").count(), 3, "{out}");
    }
}

#[test]
fn a_replica_that_panics_is_an_error_on_every_rank_not_an_abort() {
    let out = mpirun_failing(2, &["--replica-panic-rank", "1", "--fault-step", "3"]);
    // Open MPI ends the job when the first rank exits, so either rank's report may be the one
    // printed; each names the failing rank, the step and the panic.
    let rank_1_says = out.contains("rank 1: step 3 failed");
    let rank_0_says =
        out.contains("rank 0: step 3 failed") && out.contains("rank 1 failed at step 3 (");
    assert!(rank_1_says || rank_0_says, "{out}");
    assert!(
        out.contains("replica 0 on device Cpu panicked: fault injected in a replica at step 3"),
        "{out}"
    );
    assert!(!out.contains("aborting the MPI job"), "{out}");
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
    let out = mpirun_failing(2, &["--exit-rank", "1", "--fault-step", "3"]);
    // Open MPI names the process: [[job,1],1] is rank 1.
    assert!(
        out.contains(",1],1]") && out.contains("Exit code:    3"),
        "{out}"
    );
}

#[test]
fn a_rank_taking_more_steps_is_an_error_not_a_hang() {
    let out = mpirun_failing(2, &["--extra-step-rank", "1"]);
    assert!(
        out.contains("rank 1 is still training") || out.contains("rank 0 finished training"),
        "{out}"
    );
}

#[test]
fn a_rank_resuming_at_another_step_is_refused_at_its_first_step_on_every_rank() {
    let out = mpirun_failing(2, &["--resumed-rank", "1"]);
    // Whichever rank's report Open MPI lets print, it names the other rank and both steps.
    assert!(
        out.contains("rank 1 is at step 1 while this rank is at step 0")
            || out.contains("rank 0 is at step 0 while this rank is at step 1"),
        "{out}"
    );
    assert!(out.contains("step 0 failed"), "{out}");
}

#[test]
fn every_step_makes_one_gradient_all_reduce_over_all_parameters() {
    // dist_check refuses to pass unless its trainer counted one all-reduce per step carrying
    // every parameter's gradient and a flag per parameter tensor; the model is 8-16-3, 195
    // parameters in 4 tensors.
    let (ok, out, _) = mpirun(2, &["--steps", "4", "--devices-per-rank", "2"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("PASS: 4 steps on 2 ranks, 4 gradient all-reduces of 199 values (195")
            .count(),
        2,
        "{out}"
    );
}

#[test]
fn bench_measures_w3_over_mpi_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let bench = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--seconds", "0.02", "--workloads", "w3", "--devices", "1"])
        .args(["--mpi-ranks", "1,2", "--burn-train", "false", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, out) = wait_bounded(bench, "bench --mpi-ranks 1,2");
    assert!(ok, "{out}");
    // A measurement that fails is left out of the report, so count the MPI rows.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mpi: Vec<u64> = report["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["spec"]["runner"] == "MpiRanks")
        .map(|m| m["spec"]["devices"].as_u64().unwrap())
        .collect();
    assert_eq!(mpi, [1, 2], "{out}");
    let ratios = report["ratios"].to_string();
    assert!(ratios.contains("MPI: 2 ranks / 1 rank"), "{ratios}");
    // Fine-tuning rows: only the last layer (1024 * 10 weights and 10 biases, and a flag for
    // each tensor) travels, where training every layer sends all 1,323,018 parameters and 6
    // flags.
    let exchanged = |runner: &str| -> Vec<u64> {
        report["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["spec"]["runner"] == runner)
            .map(|m| m["exchanged_values"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(exchanged("MpiRanks"), [1_323_024, 1_323_024], "{out}");
    assert_eq!(exchanged("MpiRanksFineTune"), [10_252, 10_252], "{out}");
    assert!(
        ratios.contains("last layer trained / all layers trained"),
        "{ratios}"
    );
}

#[test]
fn the_train_example_runs_on_two_ranks_with_rank_0_speaking_and_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 2);
    let out = dir.path().join("run");
    let (config, out) = (config.as_str(), out.to_str().unwrap());
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
        stdout.contains("[rank 0] Gradients summed across the ranks through Mpi."),
        "{stdout}"
    );
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

/// The processes whose command line holds `needle`, with their environment.
#[cfg(target_os = "linux")]
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&environ).replace('\0', "\n")));
        }
    }
    found
}

#[test]
#[cfg(target_os = "linux")]
fn killing_a_rank_of_train_stops_the_job_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 100000);
    let out = dir.path().join("run");
    let (config, out_arg) = (config.as_str(), out.to_str().unwrap());
    let start = Instant::now();
    let train = env!("CARGO_BIN_EXE_train");
    let mut job = spawn_mpirun(&[
        "-n", "2", train, "--mpi", "--config", config, "--out", out_arg,
    ]);

    // Mid-run: after a few checkpoints, rank 1 is killed outright (no chance to clean up).
    let epochs_written = || {
        std::fs::read_to_string(out.join("latest"))
            .ok()
            .and_then(|name| name.trim().strip_prefix("epoch-")?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    while epochs_written() < 3 {
        assert!(
            job.try_wait().unwrap().is_none(),
            "train ended before it was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank_1 = processes_with(out_arg)
        .into_iter()
        .find(|(_, env)| env.lines().any(|l| l == "OMPI_COMM_WORLD_RANK=1"))
        .expect("rank 1 is running")
        .0;
    let killed = Command::new("kill")
        .args(["-9", &rank_1.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let (ok, text) = wait_bounded(job, "the job after rank 1 was killed");
    assert!(!ok, "{text}");
    assert!(
        text.contains("process rank 1 with PID") && text.contains("signal 9"),
        "Open MPI names the rank that died: {text}"
    );
    // No rank is left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(out_arg).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a rank still runs after the job ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // `latest` names a complete checkpoint, which a single process resumes from.
    let epoch = epochs_written();
    assert!(epoch >= 3);
    let resumed = Command::new(train)
        .args(["--config", config, "--out", out_arg, "--resume"])
        .args(["--epochs", &(epoch + 1).to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        text.contains("Resuming from")
            && text.contains(&format!("epoch-{epoch:04} (epoch {epoch},")),
        "{text}"
    );
    assert!(
        text.contains(&format!("epoch {}/{}", epoch + 1, epoch + 1)),
        "{text}"
    );
}

#[test]
fn ranks_started_with_other_settings_are_refused_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let train = env!("CARGO_BIN_EXE_train");
    // One job, two programs (MPMD): rank 1 gets another learning rate.
    let (ok, text, _) = mpirun_raw(&[
        "-n", "1", train, "--mpi", "--epochs", "1", "--out", out, ":", "-n", "1", train, "--mpi",
        "--epochs", "1", "--out", out, "--lr", "0.5",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "rank 1 has another configuration (config file, its overrides or --resume) than rank 0"
        ),
        "{text}"
    );
    assert!(
        !text.contains("epoch 1/1"),
        "refused before training: {text}"
    );
    assert!(!std::path::Path::new(out).join("latest").exists());
}

/// Every model of the zoo, on 2 and 3 ranks of 2 devices each, with SGD and with Adam and
/// weight decay: every rank ends with single-process training's parameters and buffers. The
/// fine-tuning model's frozen encoder never travels nor changes; the branch few rows take gets
/// no gradient on the steps where no rank has such a row.
fn zoo_model_trains_like_one_process(model: &str) {
    for ranks in [2, 3] {
        for optimizer in ["sgd", "adamw"] {
            let args = [
                "--model",
                model,
                "--optimizer",
                optimizer,
                "--devices-per-rank",
                "2",
                "--global-batch",
                "31",
            ];
            let (ok, out, _) = mpirun(ranks, &args);
            assert!(ok, "{model}, {optimizer}, {ranks} ranks: {out}");
            let pass = format!("PASS: 10 steps on {ranks} ranks");
            assert_eq!(out.matches(&pass).count(), ranks, "{out}");
        }
    }
}

#[test]
fn a_cnn_with_batch_norm_trains_like_one_process() {
    zoo_model_trains_like_one_process("cnn");
}

#[test]
fn a_transformer_trains_like_one_process() {
    zoo_model_trains_like_one_process("transformer");
}

#[test]
fn a_frozen_encoder_stays_frozen_across_ranks() {
    zoo_model_trains_like_one_process("finetune");
}

#[test]
fn tied_embeddings_train_like_one_process() {
    zoo_model_trains_like_one_process("tied");
}

#[test]
fn a_branch_no_rank_took_gets_no_gradient() {
    zoo_model_trains_like_one_process("branchy");
}
