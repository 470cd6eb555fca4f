//! Your own training loop: a Burn `DataLoader` over your `Dataset`, your `Batcher` making your
//! own batch type, and a `DataParallelTrainer` taking each batch's step on every device: the
//! step one device would take on the whole batch, the short last batch included.
//!
//! ```text
//! cargo run --release --example own_loop -- --devices 2
//! ```

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::optim::AdamConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_data_parallel::{DataParallelTrainer, Scatter};
use clap::Parser;
use dp_dataset::{ClassificationItem, SyntheticClassification, SyntheticConfig};
use dp_model::{Classifier, MlpConfig};

#[derive(Parser)]
struct Args {
    /// Devices to train on (default: every GPU, or one CPU device).
    #[arg(long)]
    devices: Option<usize>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Rows per batch (the training set's 1000 rows leave a last batch of 40 at 64).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

/// Your batch type. `Scatter` says how it splits across the devices: here, row by row, as the
/// tuple of its tensors does. (Burn's `DataLoader` asks for `Clone` and `Debug`.)
#[derive(Clone, Debug)]
struct Batch<B: Backend> {
    features: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
}

impl<B: Backend> Scatter<B> for Batch<B> {
    fn rows(&self, dim: usize) -> burn_data_parallel::Result<Option<usize>> {
        (self.features.clone(), self.labels.clone()).rows(dim)
    }

    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        let parts = (self.features, self.labels).scatter(dim, sizes, devices);
        parts
            .into_iter()
            .map(|(features, labels)| Batch { features, labels })
            .collect()
    }
}

/// Your batcher: items of your dataset in, your batch out.
#[derive(Clone)]
struct RowsBatcher;

impl<B: Backend> Batcher<B, ClassificationItem, Batch<B>> for RowsBatcher {
    fn batch(&self, items: Vec<ClassificationItem>, device: &B::Device) -> Batch<B> {
        let (rows, width) = (items.len(), items.first().map_or(0, |i| i.features.len()));
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let features: Vec<f32> = items.into_iter().flat_map(|item| item.features).collect();
        Batch {
            features: Tensor::from_data(TensorData::new(features, [rows, width]), device),
            labels: Tensor::from_data(TensorData::new(labels, [rows]), device),
        }
    }
}

struct OwnLoop(Args);

impl dp_backend::Job for OwnLoop {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        let args = self.0;
        let config = SyntheticConfig::new()
            .with_train_size(1000)
            .with_test_size(500);
        let data = SyntheticClassification::new(&config);
        let device = devices[0].clone();
        B::seed(&device, 7);
        let model = MlpConfig::new(config.features, vec![64], config.classes).init::<B>(&device);
        println!("Training on {} {label}", devices.len());
        let mut trainer = DataParallelTrainer::new(model, AdamConfig::new().init(), devices)?;

        let train = DataLoaderBuilder::<B, _, _>::new(RowsBatcher)
            .batch_size(args.batch_size)
            .shuffle(7)
            .set_device(device.clone())
            .build(data.train);
        // The held-out set as one batch, split across the devices by `evaluate`.
        let test_rows = data.test.len();
        let test: Batch<B::InnerBackend> = RowsBatcher.batch(data.test.iter().collect(), &device);

        for epoch in 1..=args.epochs {
            let (mut loss, mut rows) = (0.0, 0);
            for batch in train.iter() {
                let stats = trainer.step(1e-2, batch, |model, batch: Batch<B>| {
                    model.loss(batch.features, batch.labels)
                })?;
                loss += stats.loss * stats.rows as f64;
                rows += stats.rows;
            }
            let [correct] = trainer.evaluate(test.clone(), |model, batch: Batch<_>| {
                [model.correct(batch.features, batch.labels) as f64]
            })?;
            println!(
                "epoch {epoch}: loss {:.4}, held-out accuracy {:.1}%",
                loss / rows as f64,
                100.0 * correct / test_rows as f64
            );
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    dp_backend::report(dp_backend::run_on_available(args.devices, OwnLoop(args)))
}
