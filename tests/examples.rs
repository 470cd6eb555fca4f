//! The examples run as a user runs them, and say what they claim: training lowers the loss
//! and reaches a held-out accuracy, the adaptive split gives the slowed device fewer rows,
//! burn-train writes its run.

mod common;

fn run(name: &str, args: &[&str]) -> String {
    let mut example = common::example(name);
    example.args(args);
    let (ok, stdout, stderr) = common::output(example);
    assert!(ok, "{name} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The numbers after `key` on each line that has it.
fn figures(stdout: &str, key: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|line| line.split(key).nth(1))
        .filter_map(|rest| {
            let number: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().ok()
        })
        .collect()
}

#[test]
fn your_own_loop_trains_on_two_devices_with_a_short_last_batch() {
    // 1000 rows in batches of 64: 15 full batches and one of 40.
    let out = run("own_loop", &["--devices", "2", "--epochs", "3"]);
    assert!(out.contains("Training on 2 CPU devices"), "{out}");
    let losses = figures(&out, "loss");
    let accuracy = figures(&out, "held-out accuracy");
    assert_eq!((losses.len(), accuracy.len()), (3, 3), "{out}");
    assert!(losses[2] < losses[0], "{out}");
    assert!(accuracy[2] > 50.0, "{out}");
}

#[test]
fn the_adaptive_split_gives_the_slowed_device_fewer_rows() {
    let out = run(
        "unequal_devices",
        &["--devices", "2", "--slow-down", "400", "--steps", "20"],
    );
    let last = out
        .lines()
        .rfind(|line| line.contains("rows per device"))
        .unwrap_or_else(|| panic!("{out}"));
    let rows: Vec<usize> = last
        .split('[')
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .map(|list| list.split(", ").filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows.iter().sum::<usize>(), 512, "{out}");
    // Equal at first (256 each); the slowed device ends with clearly fewer.
    assert!(rows[1] < rows[0] / 2, "{out}");
    assert!(out.contains("learnt shares"), "{out}");
}

#[cfg(feature = "burn-train")]
#[test]
fn the_burn_train_example_trains_on_two_devices_and_writes_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let out = run(
        "burn_train",
        &["--devices", "2", "--epochs", "2", "--dir", dir_arg],
    );
    assert!(out.contains("burn-train on 2 CPU devices"), "{out}");
    assert!(out.contains("Done"), "{out}");
    // burn-train's checkpointer wrote the model of each epoch.
    let checkpoints = dir.path().join("checkpoint");
    let names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap_or_else(|e| panic!("{}: {e}\n{out}", checkpoints.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("model-2")), "{names:?}");
}
