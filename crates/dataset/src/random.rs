//! The tutorial's `RandomDataset`: `length` rows of `size` standard-normal values.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// `length` rows of `size` standard-normal `f32`, drawn once from `seed`
/// (PyTorch: `torch.randn(length, size)`).
#[derive(Debug, Clone)]
pub struct RandomDataset {
    size: usize,
    values: Vec<f32>,
}

impl RandomDataset {
    /// Draws the rows. The same `seed` gives the same rows.
    pub fn new(size: usize, length: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let values = (0..size * length)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Self { size, values }
    }

    /// Values per row.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Dataset<Vec<f32>> for RandomDataset {
    fn get(&self, index: usize) -> Option<Vec<f32>> {
        let start = index.checked_mul(self.size)?;
        self.values
            .get(start..start.checked_add(self.size)?)
            .map(<[f32]>::to_vec)
    }

    fn len(&self) -> usize {
        self.values.len().checked_div(self.size).unwrap_or(0)
    }
}

/// Stacks rows of equal length into a `[rows, size]` tensor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowBatcher;

impl<B: Backend> Batcher<B, Vec<f32>, Tensor<B, 2>> for RowBatcher {
    fn batch(&self, items: Vec<Vec<f32>>, device: &B::Device) -> Tensor<B, 2> {
        let rows = items.len();
        let size = items.first().map_or(0, Vec::len);
        let values: Vec<f32> = items.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(values, [rows, size]), device)
    }
}
