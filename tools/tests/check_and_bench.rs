//! The `check` and `bench` binaries run on the CPU as they would on a GPU machine.

use std::process::Command;

#[test]
fn check_passes_on_cpu_devices() {
    let out = Command::new(env!("CARGO_BIN_EXE_check"))
        .args(["--devices", "3"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // `--features flex` (CI runs this test so too) must switch the CPU backend.
    let backend = if cfg!(feature = "flex") {
        "(autodiff<flex>)"
    } else {
        "(autodiff<ndarray>)"
    };
    assert!(stdout.contains(backend), "{stdout}");
}

#[test]
fn bench_writes_a_report_with_every_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--seconds",
            "0.02",
            "--workloads",
            "w1,w3,w4",
            "--devices",
            "1,2",
            "--burn-train",
            "false",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("### W1") && stdout.contains("### W3"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let measurements = report["measurements"].as_array().unwrap();
    // W1: plain, x1, x2; W3: plain twice, x1 twice, x2, forward + backward() through
    // DataParallel x1 and x2, x2 seeded, x2 sharded, Adam x1 and x2, sharded Adam x2, and the
    // ceiling of x2 where there are two cores for the two replicas; W4: each replica alone,
    // two equal replicas, and the three splits.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(measurements.len(), 21 + usize::from(cpus >= 2), "{stdout}");
    // Every trainer row of W3 says where its steps' time went and what the replicas moved.
    let trainer_rows: Vec<_> = measurements
        .iter()
        .filter(|m| m["phases"].is_object())
        .collect();
    assert_eq!(trainer_rows.len(), 8, "{stdout}");
    for m in &trainer_rows {
        let phases = &m["phases"];
        let replicas = m["spec"]["devices"].as_u64().unwrap() as usize;
        assert_eq!(
            phases["replica_compute"].as_array().unwrap().len(),
            replicas
        );
        assert!(phases["step"].as_f64().unwrap() > 0.0);
        assert_eq!(m["traffic"]["sent"].as_array().unwrap().len(), replicas);
    }
    assert!(stdout.contains("| optimizer step |"), "{stdout}");
    assert!(
        measurements
            .iter()
            .all(|m| m["rows_per_second"].as_f64().unwrap() > 0.0)
    );
    let ratios = report["ratios"].as_array().unwrap();
    let has = |start: &str| {
        ratios
            .iter()
            .any(|r| r["what"].as_str().unwrap().starts_with(start))
    };
    assert!(has("scaling"), "{ratios:?}");
    for split in ["torch.chunk", "Balanced", "Adaptive"] {
        assert!(
            has(&format!(
                "DataParallel x2, {split} split, 1 thread per replica / ideal"
            )),
            "{ratios:?}"
        );
    }
    assert!(
        has("DataParallel x2, Adaptive split, 1 thread per replica / torch.chunk split"),
        "{ratios:?}"
    );
    // Every W4 row with two replicas says how it split the batch, every row summing to 256.
    for m in measurements
        .iter()
        .filter(|m| m["spec"]["workload"] == "W4" && m["spec"]["devices"] == 2)
    {
        let rows = m["replica_rows"].as_array().unwrap();
        assert_eq!(
            rows.iter().map(|r| r.as_u64().unwrap()).sum::<u64>(),
            256,
            "{m}"
        );
    }
    assert!(
        has("forward + backward() through DataParallel x2"),
        "{ratios:?}"
    );
    assert!(
        has("seeded DataParallelTrainer x2 / unseeded x2"),
        "{ratios:?}"
    );
}
