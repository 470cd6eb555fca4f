//! Several processes, on one machine or several: one MPI rank per process (feature `mpi`),
//! each with devices of its own. Every rank reads the same global batches, trains on its part
//! of each, and the ranks sum their gradients once per step: the step is the one a single
//! device would take on the whole global batch.
//!
//! ```text
//! cargo build --release --features mpi --example processes
//! mpirun -n 2 target/release/examples/processes --devices 1
//! ```

use burn::data::dataset::Dataset;
use burn::optim::AdamConfig;
use burn::tensor::backend::AutodiffBackend;
use burn_data_parallel::dist::{DistributedTrainer, Mpi};
use burn_data_parallel::{DataParallelTrainer, Trainer};
use clap::Parser;
use dp_dataset::{ShardedSampler, SyntheticClassification, SyntheticConfig, batch_of};
use dp_model::{Classifier, MlpConfig};
use std::rc::Rc;

#[derive(Parser)]
struct Args {
    /// Devices of each rank (default: its share of the machine's GPUs, or one CPU device).
    #[arg(long)]
    devices: Option<usize>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Rows of each global batch, over every rank.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

struct Processes {
    args: Args,
    mpi: Rc<Mpi>,
}

impl dp_backend::Job for Processes {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        let Processes { args, mpi } = self;
        let (rank, ranks) = (mpi.rank(), mpi.size());
        let config = SyntheticConfig::new()
            .with_train_size(1000)
            .with_test_size(500);
        let data = SyntheticClassification::new(&config);
        let device = devices[0].clone();
        B::seed(&device, 7);
        // Every rank starts from rank 0's parameters, whatever it initialized.
        let model = MlpConfig::new(config.features, vec![64], config.classes).init::<B>(&device);
        println!("rank {rank} of {ranks}: {} {label}", devices.len());
        let local = DataParallelTrainer::new(model, AdamConfig::new().init(), devices)?;
        let mut trainer = DistributedTrainer::new(mpi.clone(), local)?;

        // The same shuffled global batches on every rank (same length, same seed).
        let mut sampler = ShardedSampler::new(data.train.len(), ranks, rank)?.with_seed(7);
        let test: Vec<usize> = (0..data.test.len()).collect();
        for epoch in 1..=args.epochs {
            sampler.set_epoch(epoch as u64);
            let (mut loss, mut steps) = (0.0, 0);
            for global in sampler.global_batches(args.batch_size) {
                let part = &global[trainer.part(global.len())?];
                let batch = batch_of::<B>(&data.train, part, &device);
                let stats =
                    trainer.step(1e-2, (batch.inputs, batch.targets), |model, (x, y)| {
                        model.loss(x, y)
                    })?;
                loss += stats.loss; // the whole global batch's loss, the same on every rank
                steps += 1;
            }
            // Every rank gives the whole held-out set; each evaluates its part, and the ranks'
            // counts are added up.
            let held_out = batch_of::<B::InnerBackend>(&data.test, &test, &device);
            let [correct] = trainer
                .evaluate((held_out.inputs, held_out.targets), |model, (x, y)| {
                    [model.correct(x, y) as f64]
                })?;
            if rank == 0 {
                println!(
                    "epoch {epoch}: loss {:.4}, held-out accuracy {:.1}%",
                    loss / steps as f64,
                    100.0 * correct / test.len() as f64
                );
            }
        }
        trainer.finish()?;
        Ok(())
    }

    fn announce(&self, line: std::fmt::Arguments) {
        if self.mpi.rank() == 0 {
            println!("{line}");
        }
    }

    fn machine_share(&self) -> (usize, usize) {
        (self.mpi.local_rank(), self.mpi.local_size())
    }
}

fn main() -> std::process::ExitCode {
    let run = || -> anyhow::Result<()> {
        let args = Args::parse();
        // Before MPI starts its threads: the cores are shared between this machine's ranks.
        dp_backend::share_cpu_threads(args.devices);
        let mpi = Rc::new(Mpi::init()?);
        dp_backend::run_on_available(args.devices, Processes { args, mpi })
    };
    dp_backend::report(run())
}
