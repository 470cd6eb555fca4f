//! Multi-process training check, run under `mpirun` (feature `mpi`): every rank trains on its
//! shard of the same global batches, and every rank's parameters must end equal to plain
//! single-process training on those batches. Flags inject the faults the tests exercise.
//!
//! ```text
//! cargo build --release --features mpi --bin dist_check
//! mpirun --allow-run-as-root --oversubscribe -n 2 target/release/dist_check
//! ```
//!
//! Built with `--features cuda,mpi` on a machine with GPUs, each rank trains on its share of
//! the GPUs (`Mpi::share_of`), and `--transport nccl` checks the NCCL path.

#[path = "common/allocator.rs"]
mod allocator;
#[path = "common/backend.rs"]
mod backend;
#[path = "common/compare.rs"]
mod compare;
#[path = "common/exit.rs"]
mod exit;

use anyhow::Context;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_data_parallel::dist::{DistributedTrainer, GradientTransport, Mpi};
use burn_data_parallel::{DataParallelTrainer, LossReduction, chunk_sizes};
use clap::Parser;
use compare::max_param_diff;
use dp_dataset::ShardedSampler;
use dp_model::{Classifier, Mlp, MlpConfig};

/// Trains on every rank's shard of seeded global batches and compares with single-process
/// training.
#[derive(Debug, Parser)]
struct Args {
    /// Steps to train.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Rows of each global batch, split across the ranks.
    #[arg(long, default_value_t = 30)]
    global_batch: usize,
    /// CPU devices (threads) each rank drives.
    #[arg(long, default_value_t = 1)]
    devices_per_rank: usize,
    /// Largest parameter difference allowed against single-process training.
    #[arg(long, default_value_t = 1e-5)]
    tolerance: f32,
    /// This rank builds a different model (it must be refused before any step).
    #[arg(long)]
    mismatch_rank: Option<usize>,
    /// This rank panics at --fault-step.
    #[arg(long)]
    panic_rank: Option<usize>,
    /// This rank exits at --fault-step without a word.
    #[arg(long)]
    exit_rank: Option<usize>,
    /// This rank takes one step more than the others.
    #[arg(long)]
    extra_step_rank: Option<usize>,
    /// This rank resumes as if one step had already been taken (it must be refused at the first
    /// step, on every rank).
    #[arg(long)]
    resumed_rank: Option<usize>,
    /// This rank's replica panics at --fault-step (a caught panic: an error on every rank).
    #[arg(long)]
    replica_panic_rank: Option<usize>,
    /// Split each global batch in contiguous parts by the chunk rule instead of
    /// DistributedSampler's padded shards, so that ranks hold different row counts (some none).
    #[arg(long)]
    uneven: bool,
    /// The step at which the faults happen.
    #[arg(long, default_value_t = 3)]
    fault_step: usize,
    /// The engine that sums the gradients across ranks.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// This rank asks for another transport than --transport (it must be refused).
    #[arg(long)]
    odd_transport_rank: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Transport {
    Auto,
    Mpi,
    Nccl,
}

impl From<Transport> for GradientTransport {
    fn from(transport: Transport) -> Self {
        match transport {
            Transport::Auto => Self::Auto,
            Transport::Mpi => Self::Mpi,
            Transport::Nccl => Self::Nccl,
        }
    }
}

fn main() -> std::process::ExitCode {
    exit::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before MPI starts its threads.
    backend::share_cpu_threads(Some(args.devices_per_rank));
    let mpi = Mpi::init()?;
    backend::run_on_available(Some(args.devices_per_rank), Check { args, mpi })
}

struct Check {
    args: Args,
    mpi: Mpi,
}

impl backend::Job for Check {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _: &str) -> anyhow::Result<()> {
        check::<B>(&self.args, &self.mpi, devices)
    }

    #[cfg(feature = "cuda")]
    fn announce(&self, line: std::fmt::Arguments) {
        if self.mpi.rank() == 0 {
            println!("[rank 0] {line}");
        }
    }

    #[cfg(feature = "cuda")]
    fn gpus(
        &self,
        all: Vec<burn::backend::cuda::CudaDevice>,
    ) -> Vec<burn::backend::cuda::CudaDevice> {
        self.mpi.share_of(&all)
    }
}

fn check<B: AutodiffBackend>(
    args: &Args,
    mpi: &Mpi,
    devices: Vec<B::Device>,
) -> anyhow::Result<()> {
    let (rank, size) = (mpi.rank(), mpi.size());
    let device = devices[0].clone();

    // Each rank starts from different weights: the broadcast must make them rank 0's.
    B::seed(&device, 1 + rank as u64);
    let hidden = if args.mismatch_rank == Some(rank) {
        17
    } else {
        16
    };
    let model: Mlp<B> = MlpConfig::new(8, vec![hidden], 3)
        .init(&device)
        .fork(&device);
    let taken = usize::from(args.resumed_rank == Some(rank));
    let local =
        DataParallelTrainer::new(model, SgdConfig::new().init(), devices)?.with_steps_taken(taken);
    let transport = match (args.odd_transport_rank == Some(rank), args.transport) {
        (false, transport) => transport.into(),
        (true, Transport::Mpi) => GradientTransport::Auto,
        (true, _) => GradientTransport::Mpi,
    };
    let mut trainer =
        DistributedTrainer::with_transport(mpi, local, LossReduction::Mean, transport)
            .with_context(|| format!("rank {rank}: cannot start training"))?;
    if rank == 0 {
        println!(
            "[rank 0] gradients summed through {:?}",
            trainer.transport()
        );
    }

    let initial = trainer.module().clone();
    let mut reference = initial.clone();
    let mut reference_optim = SgdConfig::new().init::<B, Mlp<B>>();
    // Each rank's rows of a global batch, by DistributedSampler's rules: when the ranks do not
    // divide the batch, some rows are repeated, and single-process training sees the same rows.
    let indices_of = |r: usize| -> anyhow::Result<Vec<i64>> {
        if args.uneven {
            let sizes = chunk_sizes(args.global_batch, size);
            let start: usize = sizes.iter().take(r).sum();
            let len = sizes.get(r).copied().unwrap_or(0);
            return Ok((start..start + len).map(|i| i as i64).collect());
        }
        let sampler = ShardedSampler::new(args.global_batch, size, r)?.with_shuffle(false);
        Ok(sampler.indices().into_iter().map(|i| i as i64).collect())
    };
    let as_tensor = |indices: Vec<i64>| {
        let n = indices.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [n]), &device)
    };
    let shard = as_tensor(indices_of(rank)?);
    let union = as_tensor(
        (0..size)
            .map(indices_of)
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat(),
    );
    let loss = |m: &Mlp<B>, (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>)| m.loss(x, y);
    let steps = args.steps + usize::from(args.extra_step_rank == Some(rank));
    for step in 0..steps {
        if step == args.fault_step && args.panic_rank == Some(rank) {
            panic!("fault injected at step {step}");
        }
        if step == args.fault_step && args.exit_rank == Some(rank) {
            std::process::exit(3);
        }
        let replica_panics = step == args.fault_step && args.replica_panic_rank == Some(rank);
        let (x, y) = global_batch::<B>(step, args.global_batch, &device);
        let stats = trainer
            .step(
                0.1,
                (
                    x.clone().select(0, shard.clone()),
                    y.clone().select(0, shard.clone()),
                ),
                |m: &Mlp<B>, batch| {
                    assert!(
                        !replica_panics,
                        "fault injected in a replica at step {step}"
                    );
                    loss(m, batch)
                },
            )
            .with_context(|| format!("rank {rank}: step {step} failed"))?;
        let l = loss(
            &reference,
            (x.select(0, union.clone()), y.select(0, union.clone())),
        );
        let reference_loss: f32 = l.clone().into_scalar().elem();
        let grads = GradientsParams::from_grads(l.backward(), &reference);
        reference = reference_optim.step(0.1, reference, grads);
        if rank == 0 {
            println!(
                "[rank 0] step {step}: loss {:.6} (single process {reference_loss:.6})",
                stats.loss
            );
        }
    }
    let exchanged = trainer.exchange_stats();
    // Every rank finishes before any checks its own figures: a rank leaving early would leave
    // the others waiting in `finish`.
    let (model, _) = trainer
        .finish()
        .with_context(|| format!("rank {rank}: cannot finish"))?;
    // One all-reduce per step, over every parameter at once.
    let params = model.num_params();
    anyhow::ensure!(
        exchanged.all_reduces == steps && exchanged.values == steps * params,
        "rank {rank}: {steps} steps of {params} parameters exchanged {exchanged:?}"
    );
    let moved = max_param_diff(&model, &initial);
    anyhow::ensure!(
        moved > 1e-4,
        "rank {rank}: training did not move the parameters ({moved:e})"
    );
    let diff = max_param_diff(&model, &reference);
    anyhow::ensure!(
        diff <= args.tolerance,
        "rank {rank}: parameters differ from single-process training by {diff:e}"
    );
    println!(
        "[rank {rank}] PASS: {steps} steps on {size} ranks, {} gradient all-reduces of {params} \
         values, max parameter difference {diff:e}",
        exchanged.all_reduces
    );
    Ok(())
}

/// The same seeded global batch on every rank.
fn global_batch<B: AutodiffBackend>(
    step: usize,
    rows: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + step as u64);
    let x: Vec<f32> = (0..rows * 8).map(|_| rng.random_range(-2.0..2.0)).collect();
    let y: Vec<i64> = (0..rows).map(|_| rng.random_range(0..3)).collect();
    (
        Tensor::from_data(TensorData::new(x, [rows, 8]), device),
        Tensor::from_data(TensorData::new(y, [rows]), device),
    )
}
