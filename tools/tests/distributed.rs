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
fn wait_bounded(job: Child, what: &str) -> (bool, String) {
    wait_at_most(job, what, Duration::from_secs(60))
}

/// [`wait_bounded`] with another limit.
fn wait_at_most(mut job: Child, what: &str, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    while job.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = job.kill();
            panic!("{what} still running after {} s", limit.as_secs());
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

/// Rank 1 made slow (2 ms of sleep per row): with `with_rank_split(Adaptive)` it gets fewer
/// rows of each global batch within a few steps, and training still equals one process on the
/// whole batches.
#[test]
fn a_slow_rank_gets_fewer_rows_and_training_stays_exact() {
    let (ok, out, _) = mpirun(
        2,
        &[
            "--balance-ranks",
            "--slow-rank",
            "1",
            "--global-batch",
            "64",
            "--steps",
            "8",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.matches("PASS: 8 steps on 2 ranks").count(), 2, "{out}");
    let rows = |rank: usize| -> Vec<usize> {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("[rank {rank}] rows per step [")))
            .unwrap_or_else(|| panic!("no rows from rank {rank}: {out}"));
        let list = line.split('[').nth(2).unwrap().split(']').next().unwrap();
        list.split(", ").map(|n| n.parse().unwrap()).collect()
    };
    let (fast, slow) = (rows(0), rows(1));
    // The chunk rule while the first timing warms up, then fewer rows for the slow rank.
    assert_eq!(
        (&fast[..2], &slow[..2]),
        (&[32, 32][..], &[32, 32][..]),
        "{out}"
    );
    for (f, s) in fast.iter().zip(&slow) {
        assert_eq!(f + s, 64, "{out}");
    }
    assert!(slow[3..].iter().all(|&r| (1..=12).contains(&r)), "{out}");
}

#[test]
fn ranks_that_split_batches_otherwise_are_refused() {
    let out = mpirun_failing(2, &["--balance-ranks", "--odd-balance-rank", "1"]);
    assert!(
        out.contains("splits the global batches between the ranks otherwise"),
        "{out}"
    );
    // Rank 1 asks for its part of 29 rows where rank 0 asks for 30: row 29 would be lost.
    let out = mpirun_failing(2, &["--balance-ranks", "--short-part-rank", "1"]);
    assert!(
        out.contains("after asking `Trainer::part` for their parts of [Some(30), Some(29)] rows"),
        "{out}"
    );
    assert!(!out.contains("PASS"), "{out}");
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
    // Rank 0 has moved on to evaluating and finishing; rank 1 to an eleventh step.
    assert!(
        out.contains("rank 1 is still training")
            || out.contains("rank 0 finished training")
            || out.contains("rank 1 accumulates micro-batch 1 while this rank evaluates")
            || out.contains("rank 0 evaluates 2 metrics while this rank accumulates"),
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
        out.matches(
            "PASS: 4 steps on 2 ranks, 4 gradient all-reduces (0 reduce-scatters, 0 all-gathers) \
             of about 199 values (195"
        )
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
    // Eight MPI rows of W3 (1.3 M parameters) in a debug build, beside the suite's other jobs.
    let (ok, out) = wait_at_most(bench, "bench --mpi-ranks 1,2", Duration::from_secs(300));
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
    // Sharded Adam: 1 rank takes the all-reduce path; 2 ranks hand the reduce-scatter and the
    // all-gather the all-reduce's buffer each, and the largest shard of the state is smaller
    // than the whole (whole tensors: the 1024x1024 weight is 79% of the parameters).
    assert_eq!(
        exchanged("MpiRanksSharded"),
        [1_323_024, 2_646_048],
        "{out}"
    );
    let state = |runner: &str| -> Vec<u64> {
        report["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["spec"]["runner"] == runner)
            .map(|m| m["optimizer_bytes"].as_u64().unwrap())
            .collect()
    };
    let (whole, sharded) = (state("MpiRanksAdam"), state("MpiRanksSharded"));
    assert_eq!(sharded[0], whole[0], "{out}");
    assert!(sharded[1] < whole[1] * 85 / 100, "{whole:?} {sharded:?}");
    assert!(ratios.contains("state sharded / not sharded"), "{ratios}");
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
            "rank 1 has another configuration (config file, its overrides, --data, \
             --test-data, --resume, --allow-change or --balance-ranks) than rank 0"
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

#[test]
fn micro_batches_accumulate_into_one_all_reduce_per_step_and_train_like_one_process() {
    // dist_check counts the all-reduces (one per step) and compares every rank's parameters
    // with one step per global batch in one process.
    for (ranks, devices, optimizer) in [(2, "1", "sgd"), (3, "2", "adam")] {
        let args = [
            "--accumulate",
            "3",
            "--steps",
            "6",
            "--devices-per-rank",
            devices,
            "--optimizer",
            optimizer,
        ];
        let (ok, out, _) = mpirun(ranks, &args);
        assert!(ok, "{out}");
        let pass = format!("PASS: 6 steps on {ranks} ranks, 6 gradient all-reduces");
        assert_eq!(out.matches(&pass).count(), ranks, "{out}");
    }
    let (ok, out, _) = mpirun(1, &["--accumulate", "4", "--steps", "3"]);
    assert!(ok, "{out}");
    // Attention with a padding mask, tied embeddings and a frozen encoder accumulate alike.
    for model in ["transformer", "tied", "finetune"] {
        let args = [
            "--model",
            model,
            "--accumulate",
            "3",
            "--steps",
            "4",
            "--optimizer",
            "adamw",
        ];
        let (ok, out, _) = mpirun(2, &args);
        assert!(ok, "{model}: {out}");
        let pass = "PASS: 4 steps on 2 ranks, 4 gradient all-reduces";
        assert_eq!(out.matches(pass).count(), 2, "{model}: {out}");
    }
}

#[test]
fn a_rank_accumulating_another_number_of_micro_batches_is_refused_on_every_rank() {
    let out = mpirun_failing(2, &["--accumulate", "2", "--extra-micro-batch-rank", "1"]);
    assert!(
        out.contains("rank 1 accumulates micro-batch 3 while this rank applies 2")
            || out.contains("rank 0 applies 2 accumulated micro-batches while this rank accumulates micro-batch 3"),
        "{out}"
    );
}

/// ZeRO stage 1: 20 Adam steps with each rank keeping the state of its shard only (of uneven
/// sizes: whole tensors), against single-process training, for models with and without
/// buffers and frozen parameters. dist_check also checks the collectives (one reduce-scatter
/// and one all-gather per step, of about one all-reduce's values), each rank's state (at most
/// 1/ranks of the whole, within 10% and one tensor's), and that rank 0 gathers the whole state.
#[test]
fn a_sharded_optimizer_state_trains_like_an_unsharded_one() {
    for ranks in [2, 3] {
        for model in ["mlp", "transformer", "cnn", "finetune"] {
            let args = [
                "--model",
                model,
                "--optimizer",
                "adam",
                "--sharded",
                "--steps",
                "20",
                "--devices-per-rank",
                "2",
            ];
            let (ok, out, _) = mpirun(ranks, &args);
            assert!(ok, "{model} on {ranks} ranks: {out}");
            let pass = format!(
                "PASS: 20 steps on {ranks} ranks, 0 gradient all-reduces (20 reduce-scatters, 20 all-gathers)"
            );
            assert_eq!(out.matches(&pass).count(), ranks, "{out}");
        }
    }
    let (ok, out, _) = mpirun(
        2,
        &["--sharded", "--accumulate", "2", "--optimizer", "adamw"],
    );
    assert!(ok, "{out}");
}

#[test]
fn ranks_that_disagree_on_sharding_are_refused_before_any_step() {
    for sharded in [true, false] {
        let mut args = vec!["--odd-sharding-rank", "1"];
        if sharded {
            args.push("--sharded");
        }
        let out = mpirun_failing(2, &args);
        assert!(out.contains("shards its optimizer state"), "{out}");
        assert!(
            !out.contains("step 0: loss"),
            "refused before any step: {out}"
        );
    }
}

#[test]
fn evaluation_across_ranks_counts_every_held_out_row_once() {
    // 37 held-out rows: not a multiple of 2 or 3. dist_check fails unless the ranks' sums of
    // correct rows and of the loss equal one process evaluating every row.
    for ranks in [1, 2, 3] {
        for held_out in ["37", "2"] {
            let args = [
                "--steps",
                "2",
                "--held-out",
                held_out,
                "--devices-per-rank",
                "2",
            ];
            let (ok, out, _) = mpirun(ranks, &args);
            assert!(ok, "{ranks} ranks, {held_out} rows: {out}");
            assert_eq!(out.matches("PASS").count(), ranks, "{out}");
        }
    }
}

/// The epochs of a `train` run's report: (training loss, held-out accuracy, held-out loss).
fn epochs_of(out: &std::path::Path) -> Vec<(f64, f64, f64)> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    report["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_f64().unwrap();
            (f("train_loss"), f("test_accuracy"), f("test_loss"))
        })
        .collect()
}

fn assert_same_epochs(found: &[(f64, f64, f64)], expected: &[(f64, f64, f64)], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}");
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        // Within 1e-5, relative above 1: one device and two in one process already differ by
        // about 1e-6 after three epochs (the rows are summed in another order).
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(
            close(f.0, e.0) && f.1 == e.1 && close(f.2, e.2),
            "{what}, epoch {}: {f:?} where the uninterrupted run has {e:?}",
            i + 1
        );
    }
}

/// A config whose sizes divide by no world size of the test: 601 training rows, 203 held-out,
/// global batches of 50 (ranks 3 take 16, 17 and 17 rows).
fn uneven_config(dir: &std::path::Path) -> String {
    let path = dir.join("uneven.json");
    std::fs::write(
        &path,
        r#"{"data": {"features": 8, "classes": 3, "train_size": 601, "test_size": 203, "noise": 0.5},
            "hidden_sizes": [16], "batch_size": 50, "epochs": 3, "lr": 0.01}"#,
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `train` on `ranks` ranks (one plain process for 0) with `args`; returns its stdout.
fn train(ranks: usize, args: &[&str]) -> String {
    let train = env!("CARGO_BIN_EXE_train");
    if ranks == 0 {
        let output = Command::new(train).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return text;
    }
    let mut all = vec!["--mpi"];
    all.extend_from_slice(args);
    let (ok, text, _) = mpirun_binary(ranks, train, &all);
    assert!(ok, "{text}");
    text
}

#[test]
fn a_checkpoint_resumes_at_another_world_size_with_the_uninterrupted_losses() {
    let dir = tempfile::tempdir().unwrap();
    let config = uneven_config(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (whole, split, sharded) = (path("whole"), path("split"), path("sharded"));
    let base = |out: &str, epochs: &'static str| -> Vec<String> {
        ["--config", &config, "--out", out, "--epochs", epochs]
            .map(str::to_owned)
            .to_vec()
    };
    let strs = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    let run = |ranks: usize, args: Vec<String>, extra: &[&str]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        train(ranks, &all)
    };

    // One process, three epochs without a stop.
    run(0, base(&whole, "3"), &[]);
    let expected = epochs_of(std::path::Path::new(&whole));

    // Two ranks for two epochs, then three ranks, each keeping its shard of the Adam state,
    // for the third: the whole state was in the checkpoint.
    run(2, base(&split, "2"), &[]);
    let text = run(3, base(&split, "3"), &["--resume", "--shard-optimizer"]);
    assert!(
        text.contains("(epoch 2, step 26, trained on 2 ranks)"),
        "{}: {text}",
        strs(&base(&split, "3"))
    );
    assert_same_epochs(
        &epochs_of(std::path::Path::new(&split)),
        &expected,
        "2 ranks, then 3 sharded",
    );

    // Two ranks sharded for one epoch (rank 0 gathers the shards into the checkpoint), then
    // three ranks for one, then one process for the last.
    run(2, base(&sharded, "1"), &["--shard-optimizer"]);
    // The three ranks split the global batches by their measured speed.
    run(3, base(&sharded, "2"), &["--resume", "--balance-ranks"]);
    let text = run(0, base(&sharded, "3"), &["--resume"]);
    assert!(text.contains("trained on 3 ranks"), "{text}");
    assert_same_epochs(
        &epochs_of(std::path::Path::new(&sharded)),
        &expected,
        "2 ranks sharded, then 3 balanced, then 1 process",
    );
}

#[test]
fn the_train_example_accumulates_micro_batches_across_ranks_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = uneven_config(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (one, many) = (path("one"), path("many"));
    train(0, &["--config", &config, "--out", &one, "--epochs", "2"]);
    let text = train(
        2,
        &[
            "--config",
            &config,
            "--out",
            &many,
            "--epochs",
            "2",
            "--accumulate",
            "3",
            "--balance-ranks",
        ],
    );
    assert!(
        text.contains("global batches of 50 in 3 micro-batches")
            && text.contains("split by the ranks' measured speed"),
        "{text}"
    );
    assert_same_epochs(
        &epochs_of(std::path::Path::new(&many)),
        &epochs_of(std::path::Path::new(&one)),
        "2 ranks, 3 micro-batches per step, parts by the ranks' speed",
    );
}

/// Batch norm with micro-batches across ranks: the ranks combine their running statistics
/// after every micro-batch, as one process does, so parameters and statistics end as one
/// process's over the same parts (dist_check's reference), including micro-batches of one row
/// per rank and ranks with no rows.
#[test]
fn batch_norm_with_accumulation_across_ranks_is_one_process_s() {
    let cases: [(usize, &[&str]); 4] = [
        (2, &[]),
        (3, &["--devices-per-rank", "2", "--sharded"]),
        // Chunk parts of 9 rows on 4 ranks: 3, 3, 3 and none; micro-batches of one row each.
        (4, &["--uneven", "--global-batch", "9"]),
        (2, &["--optimizer", "adam", "--global-batch", "25"]),
    ];
    for (ranks, extra) in cases {
        let mut args = vec!["--model", "cnn", "--accumulate", "3", "--steps", "4"];
        args.extend_from_slice(extra);
        let (ok, out, _) = mpirun(ranks, &args);
        assert!(ok, "{args:?}: {out}");
        let pass = format!("PASS: 4 steps on {ranks} ranks");
        assert_eq!(out.matches(&pass).count(), ranks, "{args:?}: {out}");
    }
}

/// A loss with its own denominator (a class-weighted mean): the same step as one process on
/// the union, across ranks and micro-batches.
#[test]
fn a_weighted_mean_loss_across_ranks_is_one_process_s() {
    let cases: [(usize, &[&str]); 3] = [
        (2, &["--model", "transformer", "--accumulate", "2"]),
        (3, &["--model", "cnn", "--uneven", "--global-batch", "11"]),
        (
            2,
            &[
                "--model",
                "mlp",
                "--accumulate",
                "3",
                "--sharded",
                "--optimizer",
                "adam",
            ],
        ),
    ];
    for (ranks, extra) in cases {
        let mut args = vec!["--loss", "weighted", "--steps", "4"];
        args.extend_from_slice(extra);
        let (ok, out, _) = mpirun(ranks, &args);
        assert!(ok, "{args:?}: {out}");
        let pass = format!("PASS: 4 steps on {ranks} ranks");
        assert_eq!(out.matches(&pass).count(), ranks, "{args:?}: {out}");
    }
}

/// Each rank's `PARAMS` summary, in rank order.
fn params_of(out: &str) -> Vec<Vec<f64>> {
    let mut ranks: Vec<(usize, Vec<f64>)> = out
        .lines()
        .filter_map(|line| {
            let rank = line
                .strip_prefix("[rank ")?
                .split(']')
                .next()?
                .parse()
                .ok()?;
            let values = line.split(" PARAMS ").nth(1)?;
            Some((
                rank,
                values.split(' ').map(|v| v.parse().unwrap()).collect(),
            ))
        })
        .collect();
    ranks.sort_by_key(|(rank, _)| *rank);
    ranks.into_iter().map(|(_, values)| values).collect()
}

#[test]
fn a_seeded_run_with_dropout_repeats_across_ranks() {
    let run = |seed: &str| {
        let args = [
            "--dropout",
            "0.3",
            "--seed",
            seed,
            "--accumulate",
            "2",
            "--steps",
            "4",
        ];
        let (ok, out, _) = mpirun(2, &args);
        assert!(ok, "{out}");
        let params = params_of(&out);
        assert_eq!(params.len(), 2, "{out}");
        params
    };
    let (first, again, other) = (run("9"), run("9"), run("10"));
    let diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert!(diff(&first[0], &first[1]) == 0.0, "ranks differ: {first:?}");
    assert!(
        diff(&first[0], &again[0]) <= 1e-5,
        "{first:?} then {again:?}"
    );
    assert!(
        diff(&first[0], &other[0]) > 1e-4,
        "seeds 9 and 10: {first:?}, {other:?}"
    );
}

/// Every call's defining settings are compared across ranks: a rank with another learning
/// rate, kind of loss, seed, held-out set or global batch gets an error on every rank, not a
/// wrong number.
#[test]
fn ranks_that_disagree_on_a_setting_are_refused_on_every_rank() {
    let cases: [(&[&str], &str); 7] = [
        (&["--odd-lr-rank", "1"], "with learning rate"),
        (&["--odd-loss-rank", "1"], "micro-batch 1 with loss a "),
        (
            &["--seed", "3", "--odd-seed-rank", "1"],
            "micro-batch 1 with seed",
        ),
        (
            &["--short-held-out-rank", "1"],
            "evaluates 2 metrics with held-out rows 3",
        ),
        (&["--extra-metric-rank", "1"], "evaluates 3 metrics"),
        // Not a setting, but as silent: every loss function runs `backward()` itself.
        (
            &["--backward-in-loss", "--fault-step", "2"],
            "step 2: no trainable parameter received a gradient from any replica or rank",
        ),
        // Rank 1 asks for its part of 29 rows where rank 0 asks for 30, with no rank split.
        (
            &["--short-part-rank", "1"],
            "after asking `Trainer::part` for their parts of [Some(30), Some(29)] rows",
        ),
    ];
    for (args, text) in cases {
        let mut all = vec!["--steps", "4"];
        all.extend_from_slice(args);
        let out = mpirun_failing(2, &all);
        assert!(out.contains(text), "{args:?}: {out}");
        assert!(!out.contains("PASS"), "{args:?}: {out}");
    }
}

/// `train --model cnn --accumulate 3` on two ranks gives the numbers of one process whose two
/// devices make the same parts (batch norm normalizes each part by its own statistics), short
/// last batch and running statistics included (they decide the held-out figures).
#[test]
fn the_train_example_accumulates_a_cnn_across_ranks_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    // 198 rows in global batches of 48: micro-batches of 16, and a last batch of 6 (2 each),
    // every part even, so that two devices and two ranks cut them alike.
    let config = dir.path().join("cnn.json");
    std::fs::write(
        &config,
        r#"{"model": "cnn", "images": {"train_size": 198, "test_size": 64}, "widths": [4, 4],
            "batch_size": 48, "epochs": 2, "lr": 0.01, "accumulate": 3}"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (one, many) = (path("one"), path("many"));
    train(0, &["--config", config, "--out", &one, "--devices", "2"]);
    train(2, &["--config", config, "--out", &many, "--devices", "1"]);
    assert_eq!(epochs_of(std::path::Path::new(&one)).len(), 2);
    assert_same_epochs(
        &epochs_of(std::path::Path::new(&many)),
        &epochs_of(std::path::Path::new(&one)),
        "a CNN on 2 ranks, 3 micro-batches per step",
    );
}

/// `tools/learner`, an ordinary burn-train program, on 2 ranks (of 1 and of 2 devices)
/// against the same program on burn-train's `SingleDevice`: parameters and every metric value
/// rank 0 logged (training and validation).
#[cfg(feature = "burn-train")]
#[test]
fn the_learner_example_on_2_ranks_trains_as_burn_trains_single_device() {
    use common::learner::{learner_with, metric_diff, parameter_diff};
    let program = [
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
    let single_dir = tempfile::tempdir().unwrap();
    let single = learner_with(
        &[],
        single_dir.path(),
        &[&program[..], &["--strategy", "single"]].concat(),
    );
    let mpirun = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "2",
    ];
    for devices in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let args = [&program[..], &["--mpi", "--devices", devices]].concat();
        let ranks = learner_with(&mpirun, dir.path(), &args);
        assert!(ranks["error"].is_null(), "{}", ranks["error"]);
        let diff = parameter_diff(&single, &ranks);
        assert!(
            diff < 1e-5,
            "{devices} devices per rank: parameters off by {diff}"
        );
        let metrics = metric_diff(&single_dir.path().join("run"), &dir.path().join("run"));
        assert!(
            metrics < 1e-5,
            "{devices} devices per rank: metrics off by {metrics}"
        );
    }

    // The CNN with batch norm on 2 ranks of 1 device equals one process of 2 devices cutting
    // the same parts (batches of 32 and a last of 12: halves either way), running statistics
    // included, which the ranks average after every batch.
    let cnn = [&program[..], &["--model", "cnn"]].concat();
    let local_dir = tempfile::tempdir().unwrap();
    let local = learner_with(
        &[],
        local_dir.path(),
        &[&cnn[..], &["--devices", "2"]].concat(),
    );
    let dir = tempfile::tempdir().unwrap();
    let args = [&cnn[..], &["--mpi", "--devices", "1"]].concat();
    let ranks = learner_with(&mpirun, dir.path(), &args);
    let diff = parameter_diff(&local, &ranks);
    assert!(diff < 1e-5, "CNN on 2 ranks: parameters off by {diff}");
    let metrics = metric_diff(&local_dir.path().join("run"), &dir.path().join("run"));
    assert!(metrics < 1e-5, "CNN on 2 ranks: metrics off by {metrics}");

    // Early stopping, decided by rank 0 from the validation loss (which a learning rate of 1
    // makes worse after the first epoch), ends every rank after the same epoch.
    let diverging = [
        "--lr",
        "1",
        "--epochs",
        "6",
        "--patience",
        "1",
        "--train-size",
        "300",
    ];
    let epochs = |dir: &std::path::Path| std::fs::read_dir(dir.join("run/train")).unwrap().count();
    let single_dir = tempfile::tempdir().unwrap();
    let args = [&diverging[..], &["--strategy", "single"]].concat();
    learner_with(&[], single_dir.path(), &args);
    let dir = tempfile::tempdir().unwrap();
    let args = [&diverging[..], &["--mpi", "--devices", "1"]].concat();
    learner_with(&mpirun, dir.path(), &args);
    let stopped = epochs(single_dir.path());
    assert!(stopped < 6, "the single-device run did not stop early");
    assert_eq!(epochs(dir.path()), stopped);
}

/// `train --data`: an image folder read from disk by each rank (its part of every
/// micro-batch only, prepared ahead on loader threads) trains as one process with 2 devices
/// reading the same batches when asked.
#[test]
fn ranks_reading_an_image_folder_ahead_train_like_one_process_reading_it_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let [train_dir, test_dir] = common::files::image_folders(dir.path(), 1, 150, 40);
    let config = dir.path().join("cnn.json");
    std::fs::write(
        &config,
        r#"{"model": "cnn", "widths": [4, 4], "batch_size": 48, "epochs": 2, "lr": 0.01,
            "accumulate": 3}"#,
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (one, many) = (dir.path().join("one"), dir.path().join("many"));
    let data = [
        "--config".to_owned(),
        path(&config),
        "--data".to_owned(),
        path(&train_dir),
        "--test-data".to_owned(),
        path(&test_dir),
    ];
    let data: Vec<&str> = data.iter().map(String::as_str).collect();
    let (one_out, many_out) = (path(&one), path(&many));
    train(
        0,
        &[
            &data[..],
            &["--out", &one_out, "--devices", "2", "--prefetch", "0"],
        ]
        .concat(),
    );
    train(
        2,
        &[
            &data[..],
            &[
                "--out",
                &many_out,
                "--devices",
                "1",
                "--prefetch",
                "3",
                "--loader-threads",
                "2",
            ],
        ]
        .concat(),
    );
    assert_eq!(epochs_of(&one).len(), 2);
    assert_same_epochs(
        &epochs_of(&many),
        &epochs_of(&one),
        "a CNN from an image folder on 2 ranks, 3 micro-batches per step",
    );
}

/// An image that only one rank reads and cannot decode stops every rank with an error (the
/// rank that read it naming the file) instead of leaving the others waiting in the step.
#[test]
fn an_image_one_rank_cannot_decode_stops_every_rank_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let [train_dir, test_dir] = common::files::image_folders(dir.path(), 1, 40, 8);
    let bad = common::files::damage_an_image(&train_dir);
    let out = dir.path().join("out");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (train_dir, test_dir, out) = (path(&train_dir), path(&test_dir), path(&out));
    let args = [
        "--mpi",
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        &out,
        "--data",
        &train_dir,
        "--test-data",
        &test_dir,
    ];
    let (ok, text, _) = mpirun_binary(2, env!("CARGO_BIN_EXE_train"), &args);
    assert!(!ok, "{text}");
    let name = bad.file_name().unwrap().to_str().unwrap();
    assert!(
        text.contains(name) && text.contains("cannot decode the image"),
        "{text}"
    );
    assert!(
        text.contains("could not load its part of the batch"),
        "{text}"
    );
}

/// `SyncBatchNorm` across ranks: the CNN trained by 2 ranks of 2 devices (Adam), by 3 ranks of
/// 2 devices with an uneven batch and the optimizer state sharded, and by 3 ranks of which one
/// has no row, ends with the parameters and statistics of one device on the whole batches.
#[test]
fn sync_batch_norm_across_ranks_equals_one_device_on_the_whole_batch() {
    for (ranks, args) in [
        (2, &["--optimizer", "adam", "--devices-per-rank", "2"][..]),
        (
            3,
            &[
                "--devices-per-rank",
                "2",
                "--uneven",
                "--global-batch",
                "5",
                "--sharded",
            ][..],
        ),
        (3, &["--uneven", "--global-batch", "2"][..]),
    ] {
        let args = [&["--model", "sync-cnn", "--steps", "4"][..], args].concat();
        let (ok, out, _) = mpirun(ranks, &args);
        assert!(ok, "{args:?}: {out}");
        let pass = format!("PASS: 4 steps on {ranks} ranks");
        assert_eq!(out.matches(&pass).count(), ranks, "{args:?}: {out}");
        // Two layers of 4 and 6 (or 7) channels, 4 micro-batches: per micro-batch 8 sums with
        // values (2 forward and 2 backward per layer) and the header that ends it, on every
        // rank, the one without rows too.
        assert_eq!(out.matches("36 batch-norm sums").count(), ranks, "{out}");
    }
}

/// A replica failing on one rank while the others wait in a synchronized batch norm is an
/// error on every rank, not a hang.
#[test]
fn a_rank_failing_inside_a_sync_batch_norm_step_is_an_error_on_every_rank() {
    let out = mpirun_failing(
        2,
        &[
            "--model",
            "sync-cnn",
            "--replica-panic-rank",
            "1",
            "--fault-step",
            "2",
        ],
    );
    // Open MPI ends the job when the first rank exits: either rank's report may be printed,
    // each naming rank 1.
    assert!(
        out.contains("rank 1: step 2 failed")
            || out.contains("rank 1 failed while this replica waited for it"),
        "{out}"
    );
    assert!(!out.contains("aborting the MPI job"), "{out}");
}

/// Of 3 ranks, the one that fails is the one the others name.
#[test]
fn the_ranks_waiting_in_a_sync_batch_norm_name_the_rank_that_failed() {
    let out = mpirun_failing(
        3,
        &[
            "--model",
            "sync-cnn",
            "--replica-panic-rank",
            "2",
            "--fault-step",
            "2",
        ],
    );
    // Open MPI ends the job when the first rank exits: whichever of ranks 0 and 1 reported
    // names rank 2, and none blames another rank.
    let others_reported = ["rank 0: step 2 failed", "rank 1: step 2 failed"]
        .iter()
        .any(|line| out.contains(line));
    if others_reported {
        assert!(
            out.contains("rank 2 failed while this replica waited for it"),
            "{out}"
        );
    }
    for wrong in ["rank 0 failed while", "rank 1 failed while"] {
        assert!(!out.contains(wrong), "{out}");
    }
}

/// `train --sync-bn` on 2 ranks of one device and of two, and with 2 micro-batches per batch,
/// has one device's epoch losses.
#[test]
fn the_train_example_with_sync_bn_on_two_ranks_has_one_devices_losses() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_cnn_config(dir.path(), 2);
    for accumulate in ["1", "2"] {
        let one = dir.path().join(format!("one-{accumulate}"));
        let args = [
            "--config",
            &config,
            "--devices",
            "1",
            "--accumulate",
            accumulate,
        ];
        let (ok, _, stderr) = common::train(&one, &args);
        assert!(ok, "{stderr}");
        let one = common::epoch_losses(&common::report(&one));
        for devices in ["1", "2"] {
            let out = dir.path().join(format!("ranks-{devices}-{accumulate}"));
            let args = [
                "--mpi",
                "--config",
                &config,
                "--devices",
                devices,
                "--accumulate",
                accumulate,
                "--out",
                out.to_str().unwrap(),
            ];
            let (ok, text, _) = mpirun_binary(2, env!("CARGO_BIN_EXE_train"), &args);
            assert!(ok, "{text}");
            let ranks = common::epoch_losses(&common::report(&out));
            let diff = common::max_loss_diff(&one, &ranks);
            assert!(
                diff <= 1e-5,
                "{devices} devices per rank, accumulate {accumulate}: {one:?} vs {ranks:?}"
            );
        }
    }
}

/// Runs `scale` on `ranks` ranks and returns the JSON after `prefix` in its output.
fn scale_json(ranks: usize, prefix: &str, args: &[&str]) -> serde_json::Value {
    let (ok, out, _) = mpirun_binary(ranks, env!("CARGO_BIN_EXE_scale"), args);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix}line: {out}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn gradient_sums_in_16_bits_drift_a_little_and_keep_the_ranks_in_step() {
    let drift = |ranks: usize, precision: &str, optimizer: &str, sharded: bool| {
        let mut args = vec![
            "--mpi",
            "--drift",
            "8",
            "--batch",
            "60",
            "--model",
            "mlp-48",
            "--precision",
            precision,
            "--optimizer",
            optimizer,
        ];
        if sharded {
            args.push("--shard-optimizer");
        }
        let d = scale_json(ranks, "DRIFT ", &args);
        assert_eq!(d["ranks_agree"], true, "{d}");
        assert_eq!(d["steps"], 8, "{d}");
        d["relative"].as_f64().unwrap()
    };
    // Exact sums: the two runs the drift compares are the same run.
    assert_eq!(drift(2, "f32", "sgd", false), 0.0);
    // Sharded, the gradients are reduce-scattered in 16 bits (the parameters still gathered
    // in f32).
    for (ranks, precision, optimizer, sharded) in [
        (2, "bf16", "sgd", false),
        (3, "bf16", "adam", false),
        (3, "f16", "sgd", false),
        (3, "bf16", "adam", true),
    ] {
        let relative = drift(ranks, precision, optimizer, sharded);
        // Rounded, so not exact; and close.
        assert!(
            relative > 0.0 && relative < 1e-2,
            "{ranks} ranks, {precision}, {optimizer}, sharded {sharded}: {relative}"
        );
    }
}

#[test]
fn an_f16_sum_out_of_range_is_an_error_on_every_rank_not_an_infinity() {
    // Gradients of about 1e7 fit f32 but not f16 (65504): all-reduced on 2 ranks, and
    // reduce-scattered (each rank checks its own block, the ranks agree) on 3.
    for (ranks, sharded) in [(2, false), (3, true)] {
        let mut args = vec![
            "--mpi",
            "--drift",
            "2",
            "--batch",
            "60",
            "--model",
            "mlp-48",
            "--precision",
            "f16",
            "--loss-scale",
            "1e9",
        ];
        if sharded {
            args.push("--shard-optimizer");
        }
        let (ok, out, _) = mpirun_binary(ranks, env!("CARGO_BIN_EXE_scale"), &args);
        assert!(!ok, "{out}");
        assert!(out.contains("out of F16's range"), "{out}");
        assert!(!out.contains("DRIFT"), "{out}");
    }
    // The same gradients in bf16 (f32's range) train.
    let d = scale_json(
        2,
        "DRIFT ",
        &[
            "--mpi",
            "--drift",
            "2",
            "--batch",
            "60",
            "--model",
            "mlp-48",
            "--precision",
            "bf16",
            "--loss-scale",
            "1e9",
        ],
    );
    assert_eq!(d["ranks_agree"], true, "{d}");
}

#[test]
fn gradient_sums_in_16_bits_carry_half_the_bytes_and_time_their_host_copies() {
    let bytes = |precision: &str| {
        let p = scale_json(
            2,
            "POINT ",
            &[
                "--mpi",
                "--model",
                "mlp-48",
                "--batch",
                "32",
                "--seconds",
                "0",
                "--min-steps",
                "2",
                "--precision",
                precision,
            ],
        );
        assert_eq!(p["ranks"], 2, "{p}");
        assert!(p["phases"]["host"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["phases"]["exchange"].as_f64().unwrap() > 0.0, "{p}");
        (
            p["bytes_per_step"].as_f64().unwrap(),
            p["params"].as_f64().unwrap(),
        )
    };
    // One all-reduce a step of every parameter's gradient and a flag per parameter tensor
    // (3 weights, 3 biases).
    let (f32_bytes, params) = bytes("f32");
    assert_eq!(f32_bytes, 4.0 * (params + 6.0));
    assert_eq!(bytes("bf16").0, 2.0 * (params + 6.0));
}

#[test]
fn ranks_asking_for_different_gradient_precisions_are_refused_on_every_rank() {
    let binary = env!("CARGO_BIN_EXE_scale");
    let common = [
        "--mpi",
        "--model",
        "mlp-48",
        "--batch",
        "8",
        "--seconds",
        "0",
    ];
    let mut args = vec!["-n", "1", binary];
    args.extend(common);
    args.extend(["--precision", "f16", ":", "-n", "1", binary]);
    args.extend(common);
    args.extend(["--precision", "bf16"]);
    let (ok, out, _) = mpirun_raw(&args);
    assert!(!ok, "{out}");
    // Open MPI may end the job before the second rank prints.
    assert!(
        out.contains("rank 1 asks for gradient sums in Bf16 and rank 0 in F16"),
        "{out}"
    );
}
