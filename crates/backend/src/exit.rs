//! How a binary ends on an error.
//!
//! Rust prints the error of a `main` returning `Result` piece by piece, one write per
//! formatted part. Under `mpirun` every rank usually fails with the same message at the same
//! moment, and Open MPI forwards each piece as it comes, so the pieces of the ranks mixed into
//! one unreadable line ("Error: Error: rank rank 1 has another 1 has another ..."). One write
//! of the whole message keeps each rank's message whole: a write of less than `PIPE_BUF` to a
//! pipe is never split.

use std::io::Write;
use std::process::ExitCode;

/// Ends `main`: success, or the error with its causes (as Rust would print it) and a failure
/// status.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("Error: {error:?}\n");
            // Nothing is left to tell the user with if stderr itself is gone.
            let _ = std::io::stderr().lock().write_all(message.as_bytes());
            ExitCode::FAILURE
        }
    }
}
