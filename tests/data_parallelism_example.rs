//! The tutorial example, run as a user runs it: its lines match the tutorial's shapes.

mod common;

fn run(args: &[&str]) -> (bool, String, String) {
    let mut example = common::example("data_parallelism");
    example.args(args);
    common::output(example)
}

fn in_model(rows: usize) -> String {
    format!("\tIn Model: input size [{rows}, 5] output size [{rows}, 2]")
}

fn outside(rows: usize) -> String {
    format!("Outside: input size [{rows}, 5] output_size [{rows}, 2]")
}

/// Lines the tutorial prints for 100 rows in batches of 30 with these chunk sizes.
fn expected(full: &[usize], last: &[usize]) -> Vec<String> {
    let mut lines = Vec::new();
    for (batch, chunks) in [(30, full), (30, full), (30, full), (10, last)] {
        lines.extend(chunks.iter().map(|&rows| in_model(rows)));
        lines.push(outside(batch));
    }
    lines
}

/// Drops the line a CUDA build prints before falling back to the CPU.
fn tutorial_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("No CUDA GPU"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn four_cpu_devices_print_the_tutorials_splits() {
    let (ok, stdout, stderr) = run(&["--devices", "4"]);
    assert!(ok, "{stderr}");
    let mut want = vec!["Let's use 4 CPU devices!".to_owned()];
    want.extend(expected(&[8, 8, 8, 6], &[3, 3, 3, 1]));
    assert_eq!(tutorial_lines(&stdout), want);
}

#[test]
fn one_device_runs_the_whole_batch_without_the_banner() {
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(tutorial_lines(&stdout), expected(&[30], &[10]));
}

#[test]
fn flags_change_the_shapes() {
    let (ok, stdout, stderr) = run(&[
        "--devices",
        "3",
        "--batch-size",
        "7",
        "--data-size",
        "9",
        "--input-size",
        "4",
        "--output-size",
        "3",
    ]);
    assert!(ok, "{stderr}");
    let want = [
        "Let's use 3 CPU devices!",
        "\tIn Model: input size [3, 4] output size [3, 3]",
        "\tIn Model: input size [3, 4] output size [3, 3]",
        "\tIn Model: input size [1, 4] output size [1, 3]",
        "Outside: input size [7, 4] output_size [7, 3]",
        "\tIn Model: input size [1, 4] output size [1, 3]",
        "\tIn Model: input size [1, 4] output size [1, 3]",
        "Outside: input size [2, 4] output_size [2, 3]",
    ];
    assert_eq!(tutorial_lines(&stdout), want);
}

#[test]
fn help_explains_the_flags_and_bad_values_are_refused() {
    let (ok, stdout, _) = run(&["--help"]);
    assert!(ok);
    for flag in [
        "--input-size",
        "--output-size",
        "--batch-size",
        "--data-size",
        "--devices",
        "--seed",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
    let (ok, _, stderr) = run(&["--devices", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--devices"), "{stderr}");
}
