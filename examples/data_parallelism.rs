//! PyTorch's "Data Parallelism" tutorial on Burn: a `Linear(5, 2)` over 100 random rows in
//! shuffled batches of 30, each batch split across the devices by `DataParallel`.
//!
//! ```text
//! cargo run --release --example data_parallelism -- --devices 4          # CPU, 4 replicas
//! cargo run --release --features cuda --example data_parallelism         # every GPU
//! ```

use anyhow::Context;
use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_data_parallel::{DataParallel, current_replica};
use clap::Parser;
use dp_dataset::{RandomDataset, RowBatcher};
use dp_model::TutorialModelConfig;
use std::sync::Mutex;

/// PyTorch's "Data Parallelism" tutorial on Burn: each batch is split across the devices, every
/// replica reports the shapes it sees, and the outputs are gathered back in order.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Features in each input row.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    input_size: u64,
    /// Features in each output row.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    output_size: u64,
    /// Rows per batch.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Rows in the random dataset.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    data_size: u64,
    /// Devices to split each batch across. With CUDA: every GPU by default (a number above the
    /// GPU count puts several replicas on one GPU). On the CPU: the CPU device repeated this many
    /// times, each replica on its own thread (default 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    devices: Option<u64>,
    /// Seed for the data, its shuffling and the model's weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    dp_backend::report(try_main())
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    dp_backend::run_on_available(args.devices.map(|n| n as usize), Tutorial(args))
}

struct Tutorial(Args);

impl dp_backend::Job for Tutorial {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        // The tutorial only runs forward: no autodiff graph.
        run::<B::InnerBackend>(&self.0, devices, label)
    }
}

/// The tutorial's script, on any backend.
fn run<B: Backend>(args: &Args, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
    let device = devices[0].clone();
    B::seed(&device, args.seed);
    let model = TutorialModelConfig::new()
        .with_input_size(args.input_size as usize)
        .with_output_size(args.output_size as usize)
        .init::<B>(&device);
    if devices.len() > 1 {
        println!("Let's use {} {label}!", devices.len());
    }
    let mut model = DataParallel::new(model, devices)?;

    let dataset = RandomDataset::new(args.input_size as usize, args.data_size as usize, args.seed);
    let loader = DataLoaderBuilder::<B, _, _>::new(RowBatcher)
        .batch_size(args.batch_size as usize)
        .shuffle(args.seed)
        .set_device(device)
        .build(dataset);

    // Replicas report from their own threads; lines are printed in replica order once the batch
    // is done, so that the output reads like the tutorial's.
    let reports = Mutex::new(Vec::new());
    let observer = |input: &[usize], output: &[usize]| {
        let replica = current_replica().map_or(0, |r| r.index);
        let line = format!("\tIn Model: input size {input:?} output size {output:?}");
        if let Ok(mut reports) = reports.lock() {
            reports.push((replica, line));
        }
    };

    for input in loader.iter() {
        let input_dims = input.dims();
        let output = model
            .forward(input, |replica, x| replica.forward(x, &observer))
            .context("data-parallel forward failed")?;
        let mut lines = std::mem::take(
            &mut *reports
                .lock()
                .map_err(|_| anyhow::anyhow!("a replica panicked while reporting"))?,
        );
        lines.sort_by_key(|(replica, _)| *replica);
        for (_, line) in lines {
            println!("{line}");
        }
        println!(
            "Outside: input size {input_dims:?} output_size {:?}",
            output.dims()
        );
    }
    Ok(())
}
