//! The several-processes example on 2 MPI ranks (feature `mpi`, Open MPI's `mpirun`; CI builds
//! the examples with `mpi` first): rank 0 reports, the loss falls, and it matches the same
//! program on 1 rank, since the step is the one a single device takes on the global batch.
#![cfg(feature = "mpi")]

mod common;

use std::process::Command;

fn mpirun(ranks: usize) -> String {
    let program = common::example("processes").get_program().to_owned();
    let mut mpirun = Command::new("mpirun");
    mpirun
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &ranks.to_string(),
        ])
        .arg(program)
        .args(["--devices", "1", "--epochs", "2"])
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    let (ok, stdout, stderr) = common::output(mpirun);
    let text = format!("{stdout}{stderr}");
    assert!(ok, "{text}");
    text
}

/// `(loss, accuracy)` of each epoch rank 0 printed.
fn epochs(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("epoch "))
        .filter_map(|line| {
            let loss = line
                .split("loss ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let accuracy = line
                .split("accuracy ")
                .nth(1)?
                .trim_end_matches('%')
                .parse()
                .ok()?;
            Some((loss, accuracy))
        })
        .collect()
}

#[test]
fn two_ranks_train_as_one_process_does() {
    let two = mpirun(2);
    assert!(
        two.contains("rank 0 of 2") && two.contains("rank 1 of 2"),
        "{two}"
    );
    let (one, two) = (epochs(&mpirun(1)), epochs(&two));
    assert_eq!((one.len(), two.len()), (2, 2), "{one:?} {two:?}");
    assert!(two[1].0 < two[0].0, "{two:?}");
    for ((loss_1, acc_1), (loss_2, acc_2)) in one.iter().zip(&two) {
        assert!((loss_1 - loss_2).abs() < 1e-3, "{one:?} {two:?}");
        assert!((acc_1 - acc_2).abs() < 0.5, "{one:?} {two:?}");
    }
}
