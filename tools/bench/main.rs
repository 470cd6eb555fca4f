//! The benchmark report: W1 (the tutorial's per-call cost), W2 (MLP inference) and W3 (MLP
//! training step) over 1, 2 and 4 devices, beside the plain model, W4 (W3 on two replicas
//! of unequal speed, split three ways), and, when asked (`--workloads w5`), W5 (a CNN trained
//! from an image folder on disk against the same images in memory, prefetch on and off),
//! printed as Markdown and saved as JSON.
//!
//! ```text
//! cargo run --release -p dp-tools --bin bench                                  # CPU, about two minutes
//! cargo run --release -p dp-tools --features burn-train --bin bench      # with burn-train beside
//! cargo run --release -p dp-tools --features blas --bin bench -- --json bench-blas.json
//! ```
//!
//! Every configuration runs in a child process of its own, because burn-ndarray's matrix
//! multiply reads its thread count (`MATMUL_NUM_THREADS`) once per process.

mod burn_train;
mod mpi_ranks;
mod report;
mod spec;
mod w5;
mod workloads;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use dp_tools::split::Split;
use spec::{Measurement, Runner, Spec, Workload};
use std::path::PathBuf;
use std::process::Command;

/// Measures DataParallel against the plain model (and burn-train) on fixed workloads, and
/// writes the figures as a Markdown table and a JSON report.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds to measure each configuration (after a warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Device counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    devices: Vec<usize>,
    /// Workloads to measure, among w1 (tutorial), w2 (inference), w3 (training), w4 (unequal)
    /// and w5 (image-folder; it writes 2048 small PNGs to the temporary folder, and removes
    /// them).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
    workloads: Vec<String>,
    /// Also run W3 with burn-train's multi-device training (needs `--features burn-train`).
    #[arg(long, action = clap::ArgAction::Set, default_value_t = cfg!(feature = "burn-train"))]
    burn_train: bool,
    /// Also run W3 over this many MPI ranks of one device each, under `mpirun` (needs
    /// `--features mpi` and Open MPI), e.g. `--mpi-ranks 1,2`.
    #[arg(long, value_delimiter = ',')]
    mpi_ranks: Vec<usize>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-report.json")]
    json: PathBuf,
    /// Also write the Markdown tables to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Runs one configuration, given as JSON, and prints its result (used by the report).
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.child {
        let spec: Spec = serde_json::from_str(spec)?;
        if spec.over_mpi() {
            return mpi_ranks::measure(&spec);
        }
        return dp_backend::run_on_available(Some(spec.devices), Child(spec));
    }
    let cuda = cfg!(feature = "cuda") && gpu_present();
    let specs = plan(&args, cuda)?;
    let mut measurements = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        eprint!(
            "[{}/{}] {:?} {} ... ",
            i + 1,
            specs.len(),
            spec.workload,
            spec.label()
        );
        match run_child(spec) {
            Ok(m) => {
                eprintln!("{:.0} rows/s", m.rows_per_second);
                measurements.push(m);
            }
            Err(e) => eprintln!("failed: {e:#}"),
        }
    }
    let report = report::Report::new(measurements, std::env::args().collect());
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.json.display()))?;
    eprintln!("JSON report: {}", args.json.display());
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_present() -> bool {
    match burn_data_parallel::cuda_availability() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("No CUDA GPU available (CUDA: {why}): measuring on the CPU instead.");
            false
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_present() -> bool {
    false
}

/// The configurations to measure. On the CPU, each data-parallel configuration with several
/// devices runs with one matrix-multiply thread per replica (equal resources per replica), and
/// the single-device ones with the default threads and with one thread, so that both "scaling
/// at equal resources" and "best against best" can be read off.
fn plan(args: &Args, cuda: bool) -> anyhow::Result<Vec<Spec>> {
    let mut specs = Vec::new();
    let one = if cuda { None } else { Some(1) };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spec = |workload, runner, devices, threads| Spec {
        workload,
        runner,
        devices,
        threads,
        seconds: args.seconds,
        split: Split::Chunk,
    };
    for name in &args.workloads {
        let workload = match name.to_ascii_lowercase().as_str() {
            "w1" | "tutorial" => Workload::Tutorial,
            "w2" | "inference" => Workload::Inference,
            "w3" | "training" => Workload::Training,
            "w4" | "unequal" => Workload::UnequalReplicas,
            "w5" | "image-folder" => Workload::ImageFolder,
            other => anyhow::bail!(
                "unknown workload {other} (w1 or tutorial, w2 or inference, w3 or training, \
                 w4 or unequal, w5 or image-folder)"
            ),
        };
        if workload == Workload::ImageFolder {
            // In memory and from disk, each read ahead or when asked, on 2 devices.
            for prefetch in [0, 2] {
                specs.push(spec(workload, Runner::Preloaded { prefetch }, 2, one));
                specs.push(spec(workload, Runner::FromDisk { prefetch }, 2, one));
            }
            continue;
        }
        if workload == Workload::UnequalReplicas {
            // Each replica alone, then both under each split, all in this run.
            specs.push(spec(workload, Runner::ReplicaAlone(0), 1, one));
            specs.push(spec(workload, Runner::ReplicaAlone(1), 1, one));
            specs.push(spec(workload, Runner::EqualReplicas, 2, one));
            for split in [Split::Chunk, Split::Balanced, Split::Adaptive] {
                specs.push(Spec {
                    split,
                    ..spec(workload, Runner::DataParallel, 2, one)
                });
            }
            continue;
        }
        specs.push(spec(workload, Runner::Plain, 1, None));
        if workload != Workload::Tutorial && !cuda {
            specs.push(spec(workload, Runner::Plain, 1, one));
        }
        for &devices in &args.devices {
            if workload == Workload::Tutorial {
                let threads = if devices > 1 { one } else { None };
                specs.push(spec(workload, Runner::DataParallel, devices, threads));
                continue;
            }
            if devices == 1 {
                specs.push(spec(workload, Runner::DataParallel, 1, None));
            }
            if !cuda || devices > 1 {
                specs.push(spec(workload, Runner::DataParallel, devices, one));
            }
            if workload == Workload::Training && (!cuda || devices > 1) {
                specs.push(spec(workload, Runner::ForwardBackward, devices, one));
            }
            if workload == Workload::Training && devices > 1 {
                specs.push(spec(workload, Runner::Seeded, devices, one));
                specs.push(spec(workload, Runner::Sharded, devices, one));
            }
            if workload == Workload::Training && (!cuda || devices > 1) {
                specs.push(spec(workload, Runner::Adam, devices, one));
            }
            if workload == Workload::Training && devices > 1 {
                specs.push(spec(workload, Runner::ShardedAdam, devices, one));
            }
            if workload == Workload::Training && args.burn_train {
                specs.push(spec(workload, Runner::BurnTrain, devices, one));
                specs.push(spec(workload, Runner::BurnTrainStrategy, devices, one));
            }
            // One replica's share alone bounds the scaling only where each replica has a core.
            if workload == Workload::Training && devices > 1 && devices <= cpus && !cuda {
                specs.push(spec(workload, Runner::Ceiling, devices, one));
            }
        }
        if workload == Workload::Training {
            for &ranks in &args.mpi_ranks {
                specs.push(spec(workload, Runner::MpiRanks, ranks, Some(1)));
                specs.push(spec(workload, Runner::MpiRanksFineTune, ranks, Some(1)));
                specs.push(spec(workload, Runner::MpiRanksAdam, ranks, Some(1)));
                specs.push(spec(workload, Runner::MpiRanksSharded, ranks, Some(1)));
            }
        }
    }
    Ok(specs)
}

/// Runs `spec` in a child process with its thread settings, and reads its result.
fn run_child(spec: &Spec) -> anyhow::Result<Measurement> {
    let mut command = if spec.over_mpi() {
        let mut mpirun = Command::new("mpirun");
        mpirun
            .args([
                "--allow-run-as-root",
                "--oversubscribe",
                "-n",
                &spec.devices.to_string(),
            ])
            .arg(std::env::current_exe()?)
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        mpirun
    } else {
        Command::new(std::env::current_exe()?)
    };
    command.arg("--child").arg(serde_json::to_string(spec)?);
    if let Some(threads) = spec.threads {
        // matrixmultiply's pool (ndarray) and OpenBLAS's (feature `blas`) serve every replica.
        command.env("MATMUL_NUM_THREADS", threads.to_string());
        command.env("OPENBLAS_NUM_THREADS", threads.to_string());
        if let Some(global) = spec.rayon_threads() {
            command.env("RAYON_NUM_THREADS", global.to_string());
        }
    }
    let output = command.output().context("cannot start the measurement")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("the measurement printed no result")?;
    Ok(serde_json::from_str(line)?)
}

struct Child(Spec);

impl dp_backend::Job for Child {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _label: &str) -> anyhow::Result<()> {
        let measurement = match self.0.single_device_pool() {
            Some(threads) => rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?
                .install(|| workloads::measure::<B>(&self.0, devices))?,
            None => workloads::measure::<B>(&self.0, devices)?,
        };
        println!("RESULT {}", serde_json::to_string(&measurement)?);
        Ok(())
    }
}
