//! Devices of unequal speed (a new GPU beside an old one): `Adaptive` learns each device's
//! speed from its timings and gives it rows in proportion, so the fast device does not wait
//! for the slow one. The step stays the one a single device would take on the whole batch,
//! whatever the split, since each part's gradient is weighted by its rows.
//!
//! On the CPU, `--slow-down` stands in for the slower device: the last replica sleeps that many
//! microseconds per row it is given.
//!
//! ```text
//! cargo run --release --example unequal_devices -- --devices 2 --slow-down 200
//! ```

use burn::optim::AdamConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use burn_data_parallel::{Adaptive, DataParallelTrainer, current_replica};
use clap::Parser;
use dp_model::{Classifier, MlpConfig};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Devices to train on (default: every GPU, or 2 CPU devices).
    #[arg(long)]
    devices: Option<usize>,
    /// Microseconds the last replica sleeps per row, standing in for a slower device.
    #[arg(long, default_value_t = 200)]
    slow_down: u64,
    #[arg(long, default_value_t = 30)]
    steps: usize,
}

struct Unequal(Args);

impl dp_backend::Job for Unequal {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        let args = self.0;
        let (device, last) = (devices[0].clone(), devices.len() - 1);
        B::seed(&device, 7);
        let model = MlpConfig::new(32, vec![256], 10).init::<B>(&device);
        println!(
            "{} {label}, the last one slowed by {} µs a row",
            devices.len(),
            args.slow_down
        );
        let mut trainer = DataParallelTrainer::new(model, AdamConfig::new().init(), devices)?
            .with_split_policy(Adaptive::new());
        for step in 1..=args.steps {
            let x = Tensor::<B, 2>::random([512, 32], Distribution::Default, &device);
            // The class: which of the first 10 features is largest.
            let y = x
                .clone()
                .slice([0..512, 0..10])
                .argmax(1)
                .squeeze_dim::<1>(1);
            let stats = trainer.step(1e-2, (x, y), |model, (x, y)| {
                if last > 0 && current_replica().is_some_and(|r| r.index == last) {
                    let rows = x.dims()[0] as u64;
                    std::thread::sleep(Duration::from_micros(args.slow_down * rows));
                }
                model.loss(x, y)
            })?;
            if step % 5 == 0 || step == 1 {
                let rows: Vec<usize> = stats.replicas.iter().map(|r| r.rows).collect();
                let slowest = stats.replicas.iter().map(|r| r.compute).max();
                println!(
                    "step {step:>2}: rows per device {rows:?}, slowest replica {:.1} ms, loss {:.4}",
                    slowest.unwrap_or_default().as_secs_f64() * 1e3,
                    stats.loss
                );
            }
        }
        if let Some(shares) = trainer.split_policy().shares() {
            let shares: Vec<String> = shares
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect();
            println!("learnt shares: {}", shares.join(", "));
        }
        Ok(())
    }

    fn default_cpu_devices(&self) -> usize {
        2
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    dp_backend::report(dp_backend::run_on_available(args.devices, Unequal(args)))
}
