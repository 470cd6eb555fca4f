//! Trainers fed by `dp_dataset::ShardedLoader` (a user's `Dataset` and `Batcher`, data read
//! from disk): batches prepared ahead on loader threads train exactly as batches read when
//! asked, and the loaded parts train as one device on the whole batch.

mod common;

use burn::backend::Autodiff;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_data_parallel::{DataParallelTrainer, Result as DpResult, Scatter, Trainer};
use common::zoo::{self, CLASSES};
use common::{cpu, cpus};
use dp_dataset::{
    ClassificationItem, ImageConfig, ImageFileBatcher, ImageFolder, ShardedLoader,
    SyntheticClassification, SyntheticConfig, SyntheticImages, write_image_folder,
};
use dp_model::{Classifier, Cnn};

type AB = Autodiff<common::B>;

/// A user's batch type: a struct, split across the devices through its own `Scatter`.
struct Batch<B: Backend> {
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
}

impl<B: Backend> Scatter<B> for Batch<B> {
    fn rows(&self, dim: usize) -> DpResult<Option<usize>> {
        (self.images.clone(), self.labels.clone()).rows(dim)
    }

    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        (self.images, self.labels)
            .scatter(dim, sizes, devices)
            .into_iter()
            .map(|(images, labels)| Batch { images, labels })
            .collect()
    }
}

/// A user's batcher: the image folder's files, decoded, as a `Batch`.
struct UserBatcher(ImageFileBatcher);

impl Batcher<AB, dp_dataset::ImageFile, Batch<AB>> for UserBatcher {
    fn batch(&self, files: Vec<dp_dataset::ImageFile>, device: &Device<AB>) -> Batch<AB> {
        let (images, labels) = self
            .0
            .batch(files, device)
            .expect("the test's images decode");
        Batch { images, labels }
    }
}

/// A CNN with batch norm trained for two epochs from an image folder on 3 devices, in global
/// batches of 32 of 70 rows (a last batch of 6) cut in 2 micro-batches (the last ones of 3
/// rows, fewer than the devices).
fn train_from_folder(
    cnn: &Cnn<AB>,
    folder: &std::path::Path,
    prefetch: usize,
    threads: usize,
) -> Cnn<AB> {
    let set = ImageFolder::open(folder).unwrap();
    let batcher = UserBatcher(set.batcher().with_normalization(0.5, 0.25));
    let mut trainer =
        DataParallelTrainer::new(zoo::copy(cnn), SgdConfig::new().init(), cpus(3)).unwrap();
    let loader = ShardedLoader::<AB, _, _>::new(set, batcher, cpu(), 32)
        .with_ranks(trainer.world_size(), trainer.rank())
        .unwrap()
        .with_seed(5)
        .with_micro_batches(2)
        .with_prefetch(prefetch)
        .with_threads(threads);
    for epoch in 0..2 {
        let mut batches = loader.epoch(epoch);
        while let Some(step) = batches.next_step() {
            for piece in &step {
                let part = &piece[trainer.part(piece.len()).unwrap()];
                let batch = batches.load(part).unwrap();
                trainer
                    .accumulate(batch, |m, b: Batch<AB>| m.loss(b.images, b.labels))
                    .unwrap();
            }
            trainer.apply(0.05).unwrap();
        }
    }
    assert_eq!(trainer.steps(), 6);
    trainer.finish().unwrap().0
}

#[test]
fn batches_prepared_ahead_train_a_cnn_exactly_as_batches_read_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = ImageConfig::new()
        .with_classes(CLASSES)
        .with_train_size(70)
        .with_noise(0.5);
    let images = SyntheticImages::new(&config);
    let items: Vec<_> = images.train.iter().collect();
    write_image_folder(dir.path(), &items, [1, 8, 8], [-3.0, 3.0]).unwrap();

    let cnn = zoo::cnn::<AB>();
    let plain = train_from_folder(&cnn, dir.path(), 0, 1);
    let ahead = train_from_folder(&cnn, dir.path(), 3, 2);
    let moved = zoo::param_diff(&plain.valid(), &cnn.valid(), &Default::default());
    assert!(moved > 1e-3, "training moved the parameters by {moved}");
    // Parameters and running statistics alike.
    let diff = zoo::param_diff(&plain.valid(), &ahead.valid(), &Default::default());
    assert!(diff <= 1e-6, "prefetch changed the parameters by {diff}");
}

/// A user's batcher of CSV-like rows into the tuple a trainer splits.
struct Rows;

impl<B: Backend> Batcher<B, ClassificationItem, (Tensor<B, 2>, Tensor<B, 1, Int>)> for Rows {
    fn batch(
        &self,
        items: Vec<ClassificationItem>,
        device: &Device<B>,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let rows = items.len();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        let values: Vec<f32> = items.into_iter().flat_map(|i| i.features).collect();
        (
            Tensor::from_data(TensorData::new(values, [rows, zoo::FEATURES]), device),
            Tensor::from_data(TensorData::new(labels, [rows]), device),
        )
    }
}

#[test]
fn loaded_parts_train_an_mlp_as_one_device_on_the_whole_batch() {
    let data = SyntheticClassification::new(
        &SyntheticConfig::new()
            .with_features(zoo::FEATURES)
            .with_classes(CLASSES)
            .with_train_size(50),
    );
    let rows: Vec<ClassificationItem> = data.train.iter().collect();
    let loader = |prefetch| {
        ShardedLoader::<AB, _, _>::new(InMemDataset::new(rows.clone()), Rows, cpu(), 16)
            .with_seed(3)
            .with_micro_batches(2)
            .with_prefetch(prefetch)
    };
    let mlp = zoo::mlp::<AB>();
    let lr = 0.1;

    // One device, plain Burn: each step's micro-batches weighted by their rows.
    let mut model = zoo::copy(&mlp);
    let mut optimizer = SgdConfig::new().init::<AB, dp_model::Mlp<AB>>();
    let single = loader(0);
    for epoch in 0..2 {
        let mut batches = single.epoch(epoch);
        while let Some(step) = batches.next_step() {
            let total: usize = step.iter().map(Vec::len).sum();
            let mut grads = GradientsAccumulator::new();
            for piece in &step {
                let (x, y) = batches.load(piece).unwrap();
                let loss = model
                    .loss(x, y)
                    .mul_scalar(piece.len() as f64 / total as f64);
                grads.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            model = optimizer.step(lr, model, grads.grads());
        }
    }

    // Three devices, parts prepared ahead; the last step's micro-batches have 1 row each.
    let mut trainer =
        DataParallelTrainer::new(zoo::copy(&mlp), SgdConfig::new().init(), cpus(3)).unwrap();
    let parallel = loader(2).with_threads(2);
    for epoch in 0..2 {
        let mut batches = parallel.epoch(epoch);
        while let Some(step) = batches.next_step() {
            for piece in &step {
                let part = &piece[trainer.part(piece.len()).unwrap()];
                let batch = batches.load(part).unwrap();
                trainer.accumulate(batch, |m, (x, y)| m.loss(x, y)).unwrap();
            }
            trainer.apply(lr).unwrap();
        }
    }
    assert_eq!(trainer.steps(), 8);
    let trained = trainer.finish().unwrap().0;
    let moved = zoo::param_diff(&model.valid(), &mlp.valid(), &Default::default());
    assert!(moved > 1e-3, "training moved the parameters by {moved}");
    let diff = zoo::param_diff(&model.valid(), &trained.valid(), &Default::default());
    assert!(diff <= 1e-5, "3 devices differ from one by {diff}");
}
