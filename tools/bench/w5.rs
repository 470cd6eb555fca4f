//! W5: the CNN trained from an image folder on disk (every image decoded each time its batch
//! is made) on 2 devices, against the same images preloaded in memory, each with batches
//! prepared ahead (`ShardedLoader::with_prefetch`) or read when the step asks.

use crate::spec::{Runner, Spec};
use anyhow::Context;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::optim::SgdConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn_data_parallel::{DataParallelTrainer, Trainer};
use dp_dataset::{
    DataError, ImageBatcher, ImageConfig, ImageFolder, ShardedLoader, SyntheticImages,
    write_image_folder,
};
use dp_model::{Classifier, Cnn, CnnConfig};

/// Rows per step.
pub const W5_BATCH: usize = 64;
/// 2048 grayscale 28x28 PNGs (MNIST's size) in 10 classes.
const IMAGES: usize = 2048;
const SIZE: usize = 28;
const CLASSES: usize = 10;
/// Loader threads, where batches are prepared ahead.
pub const W5_LOADER_THREADS: usize = 1;

type Labelled<B> = (Tensor<B, 4>, Tensor<B, 1, Int>);

/// Per-step seconds of the W5 configuration `spec` on `devices`, and the median seconds to
/// load one step's batch alone.
pub fn w5<B: AutodiffBackend>(
    spec: &Spec,
    devices: Vec<B::Device>,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let dir = std::env::temp_dir().join(format!("dp-bench-w5-{}", std::process::id()));
    let images = SyntheticImages::new(
        &ImageConfig::new()
            .with_size(SIZE)
            .with_classes(CLASSES)
            .with_train_size(IMAGES)
            .with_test_size(1),
    );
    let items: Vec<_> = images.train.iter().collect();
    write_image_folder(&dir, &items, [1, SIZE, SIZE], [-3.0, 3.0])?;
    let folder = ImageFolder::open(&dir);
    let result = folder.map_err(anyhow::Error::from).and_then(|folder| {
        let device = devices[0].clone();
        let model = CnnConfig::new(1, CLASSES).init::<B>(&device);
        let trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), devices.clone())?;
        match spec.runner {
            Runner::FromDisk { prefetch } => {
                let batcher = folder.batcher().with_normalization(0.5, 0.25);
                let loader = ShardedLoader::new(folder, batcher, device, W5_BATCH);
                steps(spec, &devices, trainer, loader, prefetch)
            }
            Runner::Preloaded { prefetch } => {
                let batcher =
                    Preloaded(ImageBatcher::new(folder.shape()).with_normalization(0.5, 0.25));
                let memory = InMemDataset::new(folder.decode_all()?);
                let loader = ShardedLoader::new(memory, batcher, device, W5_BATCH);
                steps(spec, &devices, trainer, loader, prefetch)
            }
            other => anyhow::bail!("W5 has no runner {other:?}"),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Preloaded images, batched as the folder's files are (a batch that cannot fail).
#[derive(Clone, Copy)]
struct Preloaded(ImageBatcher);

impl<B: Backend> Batcher<B, dp_dataset::ImageItem, Result<Labelled<B>, DataError>> for Preloaded {
    fn batch(
        &self,
        items: Vec<dp_dataset::ImageItem>,
        device: &B::Device,
    ) -> Result<Labelled<B>, DataError> {
        Ok(self.0.batch(items, device))
    }
}

/// Times one training step per iteration, epoch after epoch, from `loader`.
fn steps<B, I, T>(
    spec: &Spec,
    devices: &[B::Device],
    mut trainer: T,
    loader: ShardedLoader<B, I, Result<Labelled<B>, DataError>>,
    prefetch: usize,
) -> anyhow::Result<(Vec<f64>, f64)>
where
    B: AutodiffBackend,
    I: Send + Sync + 'static,
    T: Trainer<B, Cnn<B>>,
{
    let loader = loader
        .with_seed(1)
        .with_prefetch(prefetch)
        .with_threads(W5_LOADER_THREADS);
    let mut epoch_number = 0;
    let mut epoch = loader.epoch(0);
    let mut failed = None;
    let samples = crate::workloads::time::<B>(spec.seconds, devices, || {
        if failed.is_some() {
            return;
        }
        let batch = match epoch.next() {
            Some(batch) => batch,
            None => {
                epoch_number += 1;
                epoch = loader.epoch(epoch_number);
                epoch.next().expect("an epoch has a batch")
            }
        };
        let step = batch
            .context("the loader")
            .and_then(|batch| batch.context("the image folder"))
            .and_then(|batch| {
                trainer
                    .step(crate::workloads::W3_LR, batch, |m, (x, y)| m.loss(x, y))
                    .context("the training step")
            });
        if let Err(error) = step {
            failed = Some(error);
        }
    });
    match failed {
        Some(error) => Err(error),
        None => Ok((samples, load_alone(&loader)?)),
    }
}

/// The median seconds to read and batch one step's rows on this thread, nothing else running.
fn load_alone<B: Backend, I: Send + Sync + 'static>(
    loader: &ShardedLoader<B, I, Result<Labelled<B>, DataError>>,
) -> anyhow::Result<f64> {
    let mut epoch = loader.epoch(0);
    let mut seconds = Vec::new();
    while let Some(step) = epoch.next_step().filter(|_| seconds.len() < 20) {
        let start = std::time::Instant::now();
        let batch = loader.load(&step[0])??;
        let _ = B::sync(loader.device());
        seconds.push(start.elapsed().as_secs_f64());
        drop(batch);
    }
    Ok(crate::workloads::median(seconds).1)
}
