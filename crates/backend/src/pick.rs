//! Picks the backend and the devices, as the tutorial does with
//! `cuda:0 if available else cpu`: every CUDA GPU when the `cuda` feature is on and a GPU is
//! there, the CPU device (repeated `--devices` times) otherwise.

use burn::tensor::backend::AutodiffBackend;

/// A program to run on whichever backend was found.
pub trait Job {
    /// Runs on `devices` of backend `B`; `label` names them for messages ("CPU devices", ...).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()>;

    /// CPU devices to run on when none were requested and there is no GPU.
    fn default_cpu_devices(&self) -> usize {
        1
    }

    /// Prints which backend was picked (a multi-process program prints from one rank).
    fn announce(&self, line: std::fmt::Arguments) {
        println!("{line}");
    }

    /// This process's place among the processes running on its machine, `(local rank, local
    /// size)`: they share the machine's GPUs, each taking its block of them
    /// ([`burn_data_parallel::machine_share`]). `(0, 1)`, all of them, by default; an MPI
    /// program gives `(mpi.local_rank(), mpi.local_size())`.
    fn machine_share(&self) -> (usize, usize) {
        (0, 1)
    }
}

/// Runs `job` on the GPUs if there are any, else on the CPU, with `requested` devices
/// (default: every GPU, or [`Job::default_cpu_devices`]).
pub fn run_on_available<J: Job>(requested: Option<usize>, job: J) -> anyhow::Result<()> {
    let cpu_devices = requested.unwrap_or_else(|| job.default_cpu_devices());
    share_cpu_threads(Some(cpu_devices));
    #[cfg(feature = "cuda")]
    {
        let gpus = match burn_data_parallel::cuda_availability() {
            Ok(_) => {
                let (local_rank, local_size) = job.machine_share();
                let all = burn_data_parallel::cuda_devices();
                burn_data_parallel::machine_share(&all, local_rank, local_size)
            }
            Err(why) => {
                job.announce(format_args!("CUDA: {why}."));
                Vec::new()
            }
        };
        if let Some(first) = gpus.first() {
            let count = requested.unwrap_or(gpus.len());
            let devices: Vec<_> = gpus.iter().cycle().take(count).cloned().collect();
            let label = if count <= gpus.len() {
                "GPUs".to_owned()
            } else {
                format!("replicas on {} GPUs", gpus.len())
            };
            job.announce(format_args!("Using CUDA ({first:?} first)."));
            return job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(devices, &label);
        }
        job.announce(format_args!(
            "No CUDA GPU available: running on the CPU instead."
        ));
    }
    run_on_cpu(cpu_devices, job)
}

/// Burn's Flex backend (feature `flex`): its matrix products go through `gemm`, which takes a
/// transposed operand as it is where burn-ndarray copies it, and run on the calling thread's
/// rayon pool, so each replica's worker bounds its replica's threads without any setting.
#[cfg(feature = "flex")]
fn run_on_cpu<J: Job>(count: usize, job: J) -> anyhow::Result<()> {
    use burn::backend::{Autodiff, Flex};
    job.run::<Autodiff<Flex>>(vec![Default::default(); count], "CPU devices")
}

#[cfg(all(feature = "ndarray", not(feature = "flex")))]
fn run_on_cpu<J: Job>(count: usize, job: J) -> anyhow::Result<()> {
    use burn::backend::{Autodiff, NdArray};
    job.run::<Autodiff<NdArray>>(vec![Default::default(); count], "CPU devices")
}

/// Shares the cores between the replicas (and the ranks of this machine) with the library's
/// [`burn_data_parallel::share_cpu_cores`], once: a program that starts threads before
/// [`run_on_available`] (MPI does) calls this first, and the call in [`run_on_available`] then
/// does nothing, since `share_cpu_cores` must run while the program has a single thread.
pub fn share_cpu_threads(replicas: Option<usize>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the first call comes before any other thread (see above); later ones do nothing.
    ONCE.call_once(|| unsafe {
        burn_data_parallel::share_cpu_cores(replicas.unwrap_or(1));
    });
}

#[cfg(not(any(feature = "ndarray", feature = "flex")))]
fn run_on_cpu<J: Job>(_count: usize, _job: J) -> anyhow::Result<()> {
    anyhow::bail!(
        "no GPU to run on, and this build has no CPU backend (enable feature `ndarray` or `flex`)"
    )
}
