//! The `scale` benchmark's point in one process: every phase of its time split is measured
//! and adds up to no more than the step (the MPI points are in `tests/distributed.rs`).

use std::process::Command;

/// Runs `scale` with `args` and returns its `POINT` line's JSON.
fn point(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("POINT "))
        .unwrap_or_else(|| panic!("no POINT line: {stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_point_on_two_replicas_splits_its_step_into_phases() {
    let p = point(&[
        "--model",
        "mlp-48",
        "--batch",
        "32",
        "--devices",
        "2",
        "--micro-batches",
        "2",
        "--seconds",
        "0",
        "--min-steps",
        "3",
    ]);
    // 1024-48-48-1024 with biases.
    assert_eq!(
        p["params"],
        1024 * 48 + 48 + 48 * 48 + 48 + 48 * 1024 + 1024
    );
    assert_eq!(p["devices"], 2);
    assert_eq!(p["mpi"], false);
    assert!(p["steps"].as_u64().unwrap() >= 3, "{p}");
    let phase = |name: &str| p["phases"][name].as_f64().unwrap();
    let step = phase("step");
    assert!(phase("compute") > 0.0 && phase("combine") > 0.0, "{p}");
    assert!(phase("optimizer") > 0.0, "{p}");
    // No ranks, nothing exchanged.
    assert_eq!(phase("exchange"), 0.0);
    assert_eq!(p["bytes_per_step"], 0.0);
    // Each phase is part of every step, so its median is at most the step's (the medians of
    // the phases need not add up to the step's).
    for name in [
        "compute",
        "wait",
        "combine",
        "exchange",
        "host",
        "optimizer",
    ] {
        assert!(phase(name) <= step, "{name}: {p}");
    }
    let samples = p["samples_per_second"].as_f64().unwrap();
    assert!((samples * step - 64.0).abs() < 1e-6, "{p}");
}

#[test]
fn a_point_refuses_what_needs_mpi_without_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(["--precision", "bf16", "--seconds", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("add --mpi"), "{stderr}");
}
