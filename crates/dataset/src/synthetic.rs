//! A learnable classification set: Gaussian clusters, one per class, with a held-out split.

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};

/// How to draw a [`SyntheticClassification`] set.
#[derive(Config, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Features per row.
    #[config(default = 32)]
    pub features: usize,
    /// Classes, one Gaussian cluster each.
    #[config(default = 10)]
    pub classes: usize,
    /// Rows in the training split.
    #[config(default = 8192)]
    pub train_size: usize,
    /// Rows in the held-out split.
    #[config(default = 2048)]
    pub test_size: usize,
    /// Standard deviation of each row around its class centre (centres are standard normal):
    /// the larger, the harder.
    #[config(default = 1.5)]
    pub noise: f32,
    /// Seed: the same seed gives the same centres and rows.
    #[config(default = 7)]
    pub seed: u64,
}

/// One row and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationItem {
    /// The row.
    pub features: Vec<f32>,
    /// Its class, in `0..classes`.
    pub label: usize,
}

/// A train split and a held-out split drawn from the same clusters.
pub struct SyntheticClassification {
    /// Rows to train on.
    pub train: InMemDataset<ClassificationItem>,
    /// Rows never trained on, to measure accuracy.
    pub test: InMemDataset<ClassificationItem>,
}

impl SyntheticClassification {
    /// Draws both splits.
    ///
    /// ```
    /// use burn::data::dataset::Dataset;
    /// use dp_dataset::{SyntheticClassification, SyntheticConfig};
    ///
    /// let data = SyntheticClassification::new(&SyntheticConfig::new().with_train_size(100).with_test_size(20));
    /// assert_eq!((data.train.len(), data.test.len()), (100, 20));
    /// ```
    pub fn new(config: &SyntheticConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let centres: Vec<Vec<f32>> = (0..config.classes)
            .map(|_| {
                (0..config.features)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect()
            })
            .collect();
        let noise = Normal::new(0.0, config.noise.max(0.0)).unwrap_or_else(|_| {
            Normal::new(0.0, 1.0).expect("the standard normal distribution is valid")
        });
        let mut draw = |count: usize| -> Vec<ClassificationItem> {
            (0..count)
                .map(|_| {
                    let label = rng.random_range(0..config.classes.max(1));
                    let features = centres
                        .get(label)
                        .map(|centre| centre.iter().map(|c| c + noise.sample(&mut rng)).collect())
                        .unwrap_or_default();
                    ClassificationItem { features, label }
                })
                .collect()
        };
        let train = draw(config.train_size);
        let test = draw(config.test_size);
        Self {
            train: InMemDataset::new(train),
            test: InMemDataset::new(test),
        }
    }
}

/// Rows and their classes, stacked.
#[derive(Debug, Clone)]
pub struct ClassificationBatch<B: Backend> {
    /// `[rows, features]`.
    pub inputs: Tensor<B, 2>,
    /// `[rows]`, class indices.
    pub targets: Tensor<B, 1, Int>,
}

/// Stacks [`ClassificationItem`]s into a [`ClassificationBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ClassificationBatcher;

impl<B: Backend> Batcher<B, ClassificationItem, ClassificationBatch<B>> for ClassificationBatcher {
    fn batch(&self, items: Vec<ClassificationItem>, device: &B::Device) -> ClassificationBatch<B> {
        let rows = items.len();
        let features = items.first().map_or(0, |item| item.features.len());
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let values: Vec<f32> = items.into_iter().flat_map(|item| item.features).collect();
        ClassificationBatch {
            inputs: Tensor::from_data(TensorData::new(values, [rows, features]), device),
            targets: Tensor::from_data(TensorData::new(labels, [rows]), device),
        }
    }
}

/// The rows of `dataset` at `indices`, as one batch.
pub fn batch_of<B: Backend>(
    dataset: &impl Dataset<ClassificationItem>,
    indices: &[usize],
    device: &B::Device,
) -> ClassificationBatch<B> {
    let items = indices.iter().filter_map(|&i| dataset.get(i)).collect();
    ClassificationBatcher.batch(items, device)
}
