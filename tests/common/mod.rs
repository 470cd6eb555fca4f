//! Running an example as a user runs it. Cargo gives tests the path of a package's binaries,
//! not of its examples; `cargo test` builds the examples next to the test binaries, in
//! `target/<profile>/examples/`, before running any test.

use std::path::PathBuf;
use std::process::Command;

/// The built example `name`, to run.
pub fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let path: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("test binaries live in target/<profile>/deps");
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let built = built.unwrap_or_else(|_| {
        panic!(
            "{} is not built: `cargo test --workspace` builds the examples before it runs the \
             tests (a test run with `--test` alone does not; `cargo build --examples` first)",
            path.display()
        )
    });
    // A test run with `--test` alone would otherwise run an example older than its source.
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let written = std::fs::metadata(&source).and_then(|m| m.modified());
    assert!(
        written.is_ok_and(|written| written <= built),
        "{} is older than {}: `cargo build --examples` first",
        path.display(),
        source.display()
    );
    Command::new(path)
}

/// Runs `command`: whether it succeeded, its stdout and stderr.
pub fn output(mut command: Command) -> (bool, String, String) {
    let out = command.output().expect("the example starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
