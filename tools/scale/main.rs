//! One point of the scaling curves (BENCHMARKS.md, "Scaling"): an MLP of a chosen size
//! trained on a batch of a chosen size, over `--devices` replicas in this process and, under
//! `mpirun` with `--mpi`, over the ranks of the job; prints one JSON line (`POINT {...}`) with
//! the step's time split: forward and backward, the sum over this process's replicas, the
//! exchange between the ranks, the copies to and from the host, and the optimizer step.
//!
//! ```text
//! cargo run --release -p dp-tools --bin scale -- --model mlp-4096 --batch 256 --devices 2
//! cargo build --release -p dp-tools --features mpi --bin scale
//! mpirun -n 4 target/release/scale --mpi --model w3 --precision bf16
//! mpirun -n 2 target/release/scale --mpi --drift 50 --precision bf16   # drift from f32
//! ```
//!
//! `scripts/cost-curves.sh` sweeps these points, `scripts/emulated-cluster.sh` runs them over a
//! rate-limited network, and `benchmarks/scaling.py` draws the curves and fits the cost model.

mod measure;
#[cfg(feature = "mpi")]
mod ranks;

use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, ValueEnum};
use dp_model::MlpConfig;

/// Measures one point of the cost curves, or, with `--drift`, how far 16-bit gradient sums take
/// training from exact sums.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// `w3` (the bench's W3: 256-1024-1024-10, 1.3M parameters) or `mlp-H` (1024-H-H-1024:
    /// `mlp-48` has 0.1M parameters, `mlp-4096` 25.2M).
    #[arg(long, default_value = "w3")]
    pub model: String,
    /// Rows of the global batch (over every rank).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Micro-batches of `--batch` rows accumulated into each optimizer step (one exchange
    /// per step, whatever their number).
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Replicas in this process (CPU devices, or GPUs).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Seconds to measure, after a warm-up of three steps.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Fewest steps timed, however long they take.
    #[arg(long, default_value_t = 5)]
    pub min_steps: usize,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// One rank of an MPI job (feature `mpi`, started by `mpirun`).
    #[arg(long)]
    pub mpi: bool,
    /// Each rank keeps the optimizer state of its shard (ZeRO stage 1, `--mpi`): a
    /// reduce-scatter and an all-gather in place of the all-reduce.
    #[arg(long)]
    pub shard_optimizer: bool,
    /// Precision of the gradient sums across ranks (`--mpi`).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Instead of timing: trains this many steps twice, with `--precision` and with exact
    /// sums, and prints how far the parameters drifted apart (`DRIFT {...}`).
    #[arg(long)]
    pub drift: Option<usize>,
    /// Multiplies the loss, and so the gradients (to push them out of f16's range in the
    /// tests).
    #[arg(long, default_value_t = 1.0)]
    pub loss_scale: f64,
    /// A label recorded with the point (the script puts the network's bandwidth there).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Args {
    /// The model's configuration.
    pub fn model_config(&self) -> anyhow::Result<MlpConfig> {
        if self.model == "w3" {
            return Ok(MlpConfig::new(256, vec![1024, 1024], 10));
        }
        let width = self
            .model
            .strip_prefix("mlp-")
            .and_then(|w| w.parse::<usize>().ok())
            .filter(|&w| w > 0)
            .ok_or_else(|| anyhow::anyhow!("--model is `w3` or `mlp-WIDTH`, not {}", self.model))?;
        Ok(MlpConfig::new(1024, vec![width, width], 1024))
    }
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.model_config()?;
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.micro_batches > 0, "--micro-batches must be at least 1");
    anyhow::ensure!(args.min_steps > 0, "--min-steps must be at least 1");
    if args.mpi {
        #[cfg(feature = "mpi")]
        {
            // Before MPI starts its threads.
            dp_backend::share_cpu_threads(Some(args.devices));
            let mpi = std::rc::Rc::new(burn_data_parallel::dist::Mpi::init()?);
            let devices = args.devices;
            return dp_backend::run_on_available(Some(devices), ranks::Job { args, mpi: &mpi });
        }
        #[cfg(not(feature = "mpi"))]
        anyhow::bail!("--mpi needs a build with `--features mpi`");
    }
    anyhow::ensure!(
        args.drift.is_none() && args.precision == Precision::F32 && !args.shard_optimizer,
        "--drift, --precision and --shard-optimizer are for training across ranks: add --mpi"
    );
    let devices = args.devices;
    dp_backend::run_on_available(Some(devices), Local(args))
}

/// The point measured in this one process.
struct Local(Args);

impl dp_backend::Job for Local {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _label: &str) -> anyhow::Result<()> {
        let args = self.0;
        // Seeded, so that a point's run repeats.
        B::seed(&devices[0], 7);
        let model = args.model_config()?.init::<B>(&devices[0]);
        let point = match args.optimizer {
            OptimizerKind::Sgd => {
                local_point(&args, model, burn::optim::SgdConfig::new().init(), devices)?
            }
            OptimizerKind::Adam => {
                local_point(&args, model, burn::optim::AdamConfig::new().init(), devices)?
            }
        };
        println!("POINT {}", serde_json::to_string(&point.finish(&args, 1))?);
        Ok(())
    }
}

fn local_point<B, O>(
    args: &Args,
    model: dp_model::Mlp<B>,
    optimizer: O,
    devices: Vec<B::Device>,
) -> anyhow::Result<measure::Measured>
where
    B: AutodiffBackend,
    O: burn::optim::Optimizer<dp_model::Mlp<B>, B>,
{
    let mut trainer = burn_data_parallel::DataParallelTrainer::new(model, optimizer, devices)?;
    measure::point(args, &mut trainer, |_| Default::default(), |v| v)
}
