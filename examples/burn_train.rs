//! A burn-train program (`SupervisedTraining` with its metrics, checkpoints and progress) on
//! every device: the one change is the training strategy, `DataParallelStrategy`. Each batch of
//! the loader is split across the devices, and the step is the one a single device would take.
//!
//! ```text
//! cargo run --release --example burn_train -- --devices 2
//! ```
//!
//! The model is `dp_model::Mlp`, which implements burn-train's `TrainStep` and `InferenceStep`
//! on `(inputs, targets)` batches; your own model does the same.

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::optim::AdamConfig;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use burn_data_parallel::DataParallelStrategy;
use clap::Parser;
use dp_dataset::{ClassificationItem, SyntheticClassification, SyntheticConfig};
use dp_model::MlpConfig;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// Devices to train on (default: every GPU, or 2 CPU devices).
    #[arg(long)]
    devices: Option<usize>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Where burn-train writes its logs and checkpoints.
    #[arg(long, default_value = "runs/burn_train")]
    dir: PathBuf,
}

/// Rows of features and their classes, as the model's `TrainStep` takes them.
#[derive(Clone)]
struct Rows;

impl<B: Backend> Batcher<B, ClassificationItem, (Tensor<B, 2>, Tensor<B, 1, Int>)> for Rows {
    fn batch(
        &self,
        items: Vec<ClassificationItem>,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let (rows, width) = (items.len(), items.first().map_or(0, |i| i.features.len()));
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let features: Vec<f32> = items.into_iter().flat_map(|item| item.features).collect();
        (
            Tensor::from_data(TensorData::new(features, [rows, width]), device),
            Tensor::from_data(TensorData::new(labels, [rows]), device),
        )
    }
}

struct Program(Args);

impl dp_backend::Job for Program {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, label: &str) -> anyhow::Result<()> {
        let args = self.0;
        let config = SyntheticConfig::new()
            .with_train_size(2000)
            .with_test_size(500);
        let data = SyntheticClassification::new(&config);
        let device = devices[0].clone();
        B::seed(&device, 7);
        let model = MlpConfig::new(config.features, vec![64], config.classes).init::<B>(&device);
        println!("burn-train on {} {label}", devices.len());

        // The one line that differs from a single-device program.
        let strategy = Arc::new(DataParallelStrategy::<B>::new(devices));
        let train = DataLoaderBuilder::new(Rows)
            .batch_size(64)
            .shuffle(7)
            .build(data.train);
        let valid = DataLoaderBuilder::new(Rows).batch_size(64).build(data.test);
        let result = SupervisedTraining::new(&args.dir, train, valid)
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
            .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
            .num_epochs(args.epochs)
            .summary()
            .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
        // burn-train's strategy interface cannot return an error: the strategy keeps it.
        if let Some(error) = strategy.take_error() {
            return Err(error.into());
        }
        drop(result);
        println!("Done: metrics and checkpoints in {}", args.dir.display());
        Ok(())
    }

    fn default_cpu_devices(&self) -> usize {
        2
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    dp_backend::report(dp_backend::run_on_available(args.devices, Program(args)))
}
