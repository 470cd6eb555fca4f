//! What every example and tool of this workspace does before and after its own work: pick the
//! backend and the devices ([`run_on_available`] with a [`Job`]: every CUDA GPU when the
//! `cuda` feature is on and a GPU is there, the CPU otherwise, saying why), allocate with
//! mimalloc (feature `mimalloc`), and end on an error with one write ([`report`]).
//!
//! ```no_run
//! use burn::tensor::backend::AutodiffBackend;
//! use dp_backend::{Job, report, run_on_available};
//!
//! struct Hello;
//!
//! impl Job for Hello {
//!     fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
//!         println!("{} {label}", devices.len());
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     report(run_on_available(Some(2), Hello))
//! }
//! ```

mod allocator;
mod exit;
mod pick;

pub use exit::report;
pub use pick::{Job, run_on_available, share_cpu_threads};
