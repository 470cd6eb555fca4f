//! Small labelled images a convolutional network can learn: one pattern per class, shifted and
//! noisy.

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};

/// How to draw a [`SyntheticImages`] set.
#[derive(Config, Debug, PartialEq)]
pub struct ImageConfig {
    /// Channels per image.
    #[config(default = 1)]
    pub channels: usize,
    /// Height and width, in pixels.
    #[config(default = 8)]
    pub size: usize,
    /// Classes, one pattern each.
    #[config(default = 4)]
    pub classes: usize,
    /// Images in the training split.
    #[config(default = 2048)]
    pub train_size: usize,
    /// Images in the held-out split.
    #[config(default = 512)]
    pub test_size: usize,
    /// Standard deviation of the noise added to every pixel (patterns are standard normal).
    #[config(default = 1.0)]
    pub noise: f32,
    /// Seed: the same seed gives the same patterns and images.
    #[config(default = 7)]
    pub seed: u64,
}

/// One image, `channels * size * size` values in channel, row, column order, and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageItem {
    /// The pixels.
    pub pixels: Vec<f32>,
    /// Its class, in `0..classes`.
    pub label: usize,
}

/// A train split and a held-out split: each image is its class's pattern, moved by up to one
/// pixel in each direction (wrapping around), plus noise.
///
/// ```
/// use burn::data::dataset::Dataset;
/// use dp_dataset::{ImageConfig, SyntheticImages};
///
/// let data = SyntheticImages::new(&ImageConfig::new().with_train_size(10).with_test_size(3));
/// assert_eq!((data.train.len(), data.test.len()), (10, 3));
/// assert_eq!(data.train.get(0).unwrap().pixels.len(), 64);
/// ```
pub struct SyntheticImages {
    /// Images to train on.
    pub train: InMemDataset<ImageItem>,
    /// Images never trained on, to measure accuracy.
    pub test: InMemDataset<ImageItem>,
}

impl SyntheticImages {
    /// Draws both splits.
    pub fn new(config: &ImageConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let (channels, size) = (config.channels, config.size);
        let pixels = channels * size * size;
        let patterns: Vec<Vec<f32>> = (0..config.classes)
            .map(|_| {
                (0..pixels)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect()
            })
            .collect();
        let noise = Normal::new(0.0, config.noise.max(0.0)).unwrap_or_else(|_| {
            Normal::new(0.0, 1.0).expect("the standard normal distribution is valid")
        });
        let mut draw = |count: usize| -> Vec<ImageItem> {
            (0..count)
                .map(|_| {
                    let label = rng.random_range(0..config.classes.max(1));
                    let (dy, dx) = (rng.random_range(0..3), rng.random_range(0..3));
                    let pattern = &patterns[label];
                    let mut image = vec![0.0; pixels];
                    for c in 0..channels {
                        for y in 0..size {
                            for x in 0..size {
                                let from =
                                    (y + size + dy - 1) % size * size + (x + size + dx - 1) % size;
                                image[c * size * size + y * size + x] =
                                    pattern[c * size * size + from] + noise.sample(&mut rng);
                            }
                        }
                    }
                    ImageItem {
                        pixels: image,
                        label,
                    }
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

/// Images stacked as `[rows, channels, size, size]`, and their classes `[rows]`.
pub fn image_batch<B: Backend>(
    items: &[ImageItem],
    config: &ImageConfig,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    ImageBatcher::new([config.channels, config.size, config.size]).stack(items.iter(), device)
}

/// Stacks [`ImageItem`]s of one shape (channels, height, width) into `[rows, channels, height,
/// width]` images and their classes `[rows]`, optionally normalized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageBatcher {
    shape: [usize; 3],
    normalize: Option<[f32; 2]>,
}

impl ImageBatcher {
    /// Batches images of `shape`: channels, height, width, their values as they are.
    pub fn new(shape: [usize; 3]) -> Self {
        Self {
            shape,
            normalize: None,
        }
    }

    /// Maps every value `v` to `(v - mean) / std`: pixels read from files (`0..=1`) centred
    /// as a network with batch normalization trains best on (its running statistics then
    /// track a mean that is small beside the spread).
    pub fn with_normalization(mut self, mean: f32, std: f32) -> Self {
        self.normalize = Some([mean, std]);
        self
    }
}

impl ImageBatcher {
    /// `items`, in order, as one batch on `device`.
    fn stack<'a, B: Backend>(
        &self,
        items: impl ExactSizeIterator<Item = &'a ImageItem>,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let rows = items.len();
        let [channels, height, width] = self.shape;
        let mut values = Vec::with_capacity(rows * channels * height * width);
        let mut labels = Vec::with_capacity(rows);
        for item in items {
            values.extend_from_slice(&item.pixels);
            labels.push(item.label as i64);
        }
        if let Some([mean, std]) = self.normalize {
            values.iter_mut().for_each(|v| *v = (*v - mean) / std);
        }
        (
            Tensor::from_data(
                TensorData::new(values, [rows, channels, height, width]),
                device,
            ),
            Tensor::from_data(TensorData::new(labels, [rows]), device),
        )
    }
}

impl<B: Backend> Batcher<B, ImageItem, (Tensor<B, 4>, Tensor<B, 1, Int>)> for ImageBatcher {
    fn batch(
        &self,
        items: Vec<ImageItem>,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        self.stack(items.iter(), device)
    }
}
