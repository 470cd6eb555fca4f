//! W3 as a burn-train program, on burn-train 0.21's own multi-device training and on this
//! library's `DataParallelStrategy` (feature `burn-train`).
//!
//! burn-train cuts the dataset into one contiguous slice per device and runs full batches of
//! each slice, so its global batch is `devices x batch_size`: the per-device batch size is set
//! to `256 / devices` to train on the same global batch as the other runners. (It also sums the
//! per-device gradients rather than averaging them; the speed is unaffected.)

use crate::spec::{Measurement, Spec};
use burn::tensor::backend::AutodiffBackend;

/// Which strategy runs the burn-train program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// burn-train's `ExecutionStrategy::MultiDevice` (per-device batches of `256 / devices`).
    Multi,
    /// `DataParallelStrategy` (global batches of 256, split across the devices).
    Strategy,
}

#[cfg(not(feature = "burn-train"))]
pub fn measure<B: AutodiffBackend>(
    _spec: &Spec,
    _devices: Vec<B::Device>,
    _run: Run,
) -> anyhow::Result<Measurement> {
    anyhow::bail!("burn-train is not compiled in: build with `--features burn-train`")
}

#[cfg(feature = "burn-train")]
pub use with_burn_train::measure;

#[cfg(feature = "burn-train")]
mod with_burn_train {
    use super::*;
    use crate::workloads::{W3_BATCH, W3_LR, mlp_config};
    use burn::data::dataloader::DataLoaderBuilder;
    use burn::data::dataloader::batcher::Batcher;
    use burn::data::dataset::InMemDataset;
    use burn::module::Module;
    use burn::optim::SgdConfig;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Int, Tensor, TensorData};
    use burn::train::{
        ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
        SupervisedTraining, TrainOutput, TrainStep,
    };
    use dp_model::Mlp;
    use std::time::Instant;

    #[derive(Module, Debug)]
    pub struct Classifier<B: Backend> {
        mlp: Mlp<B>,
    }

    #[derive(Clone, Debug)]
    pub struct Batch<B: Backend> {
        x: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
    }

    #[derive(Clone, Debug)]
    struct Item {
        x: Vec<f32>,
        y: i64,
    }

    #[derive(Clone, Default)]
    struct Stack;

    impl<B: Backend> Batcher<B, Item, Batch<B>> for Stack {
        fn batch(&self, items: Vec<Item>, device: &B::Device) -> Batch<B> {
            let n = items.len();
            let ys: Vec<i64> = items.iter().map(|i| i.y).collect();
            let xs: Vec<f32> = items.into_iter().flat_map(|i| i.x).collect();
            Batch {
                x: Tensor::from_data(TensorData::new(xs, [n, 256]), device),
                y: Tensor::from_data(TensorData::new(ys, [n]), device),
            }
        }
    }

    impl<B: Backend> Classifier<B> {
        fn output(&self, batch: Batch<B>) -> ClassificationOutput<B> {
            let logits = self.mlp.forward(batch.x);
            let loss = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits.clone(), batch.y.clone());
            ClassificationOutput::new(loss, logits, batch.y)
        }
    }

    impl<B: AutodiffBackend> TrainStep for Classifier<B> {
        type Input = Batch<B>;
        type Output = ClassificationOutput<B>;
        fn step(&self, batch: Batch<B>) -> TrainOutput<ClassificationOutput<B>> {
            let item = self.output(batch);
            TrainOutput::new(self, item.loss.backward(), item)
        }
    }

    impl<B: Backend> InferenceStep for Classifier<B> {
        type Input = Batch<B>;
        type Output = ClassificationOutput<B>;
        fn step(&self, batch: Batch<B>) -> ClassificationOutput<B> {
            self.output(batch)
        }
    }

    fn items(count: usize) -> Vec<Item> {
        (0..count)
            .map(|i| Item {
                x: (0..256)
                    .map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0 - 0.5)
                    .collect(),
                y: (i % 10) as i64,
            })
            .collect()
    }

    /// The batch can be split across devices: the tuple of its tensors can.
    impl<B: Backend> burn_data_parallel::Scatter<B> for Batch<B> {
        fn rows(&self, dim: usize) -> burn_data_parallel::Result<Option<usize>> {
            (self.x.clone(), self.y.clone()).rows(dim)
        }

        fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
            (self.x, self.y)
                .scatter(dim, sizes, devices)
                .into_iter()
                .map(|(x, y)| Batch { x, y })
                .collect()
        }
    }

    pub fn measure<B: AutodiffBackend>(
        spec: &Spec,
        devices: Vec<B::Device>,
        run: Run,
    ) -> anyhow::Result<Measurement> {
        let device = devices[0].clone();
        // burn-train's multi-device strategy gives each device full batches of its own.
        let per_device = match run {
            Run::Multi => W3_BATCH / devices.len(),
            Run::Strategy => W3_BATCH,
        };
        // Enough steps to last about `spec.seconds` at a few thousand samples per second, in
        // one epoch (burn-train's start-up is included, as a user would pay it).
        let steps = ((spec.seconds * 20.0) as usize).max(10);
        let train = items(steps * W3_BATCH);
        let dl_train = DataLoaderBuilder::<B, Item, Batch<B>>::new(Stack)
            .batch_size(per_device)
            .build(InMemDataset::new(train));
        let dl_valid =
            DataLoaderBuilder::<B::InnerBackend, Item, Batch<B::InnerBackend>>::new(Stack)
                .batch_size(W3_BATCH)
                .build(InMemDataset::new(items(W3_BATCH)));
        let model = Classifier {
            mlp: mlp_config().init::<B>(&device),
        }
        .fork(&device);
        let dir = std::env::temp_dir().join(format!("dp-burn-train-{}", std::process::id()));
        let strategy = match run {
            Run::Strategy => burn_data_parallel::DataParallelStrategy::new(devices.clone()).into(),
            Run::Multi if devices.len() == 1 => ExecutionStrategy::single(device.clone()).into(),
            Run::Multi => {
                ExecutionStrategy::multi(devices.clone(), MultiDeviceOptim::OptimMainDevice).into()
            }
        };
        let training = SupervisedTraining::new(&dir, dl_train, dl_valid)
            .with_training_strategy(strategy)
            .num_epochs(1);
        let learner = Learner::new(model, SgdConfig::new().init::<B, Classifier<B>>(), W3_LR);
        let start = Instant::now();
        let _ = training.launch(learner);
        let seconds = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        let median_seconds = seconds / steps as f64;
        Ok(Measurement {
            spec: spec.clone(),
            backend: B::name(&device),
            iterations: steps,
            median_seconds,
            rows_per_second: W3_BATCH as f64 / median_seconds,
            exchanged_values: None,
            optimizer_bytes: None,
            exchange_seconds: None,
            compute_seconds: None,
            replica_rows: None,
            load_seconds: None,
            phases: None,
            traffic: None,
        })
    }
}
