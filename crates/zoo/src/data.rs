//! Seeded batches for each kind of zoo model, from a generator of their own (the backend's
//! global one is shared by threads, and by the model's initialization): the same seed gives
//! the same batch on every rank, backend and device. Values lie in [-2, 2); the targets are
//! classes in `0..CLASSES`. Each function makes its batch on the backend's default device; the
//! `_on` forms take the device.

use crate::{CLASSES, LENGTH, VOCAB};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A batch of inputs and their targets.
pub type Batch<B, X> = (X, Tensor<B, 1, Int>);

fn targets<B: Backend>(rows: usize, rng: &mut StdRng, device: &B::Device) -> Tensor<B, 1, Int> {
    let y: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    Tensor::from_data(TensorData::new(y, [rows]), device)
}

/// Values in [-2, 2) of `shape`, then `shape[0]` targets, from `seed`.
pub fn uniform_on<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    device: &B::Device,
) -> Batch<B, Tensor<B, D>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let x = Tensor::from_data(TensorData::new(values, shape), device);
    (x, targets(shape[0], &mut rng, device))
}

/// Rows of [`FEATURES`](crate::FEATURES) features ([`mlp`](crate::models::mlp),
/// [`branchy`](crate::models::branchy)).
pub fn rows<B: Backend>(rows: usize, seed: u64) -> Batch<B, Tensor<B, 2>> {
    rows_on(rows, seed, &Default::default())
}

/// [`rows`] on `device`.
pub fn rows_on<B: Backend>(rows: usize, seed: u64, device: &B::Device) -> Batch<B, Tensor<B, 2>> {
    uniform_on([rows, crate::FEATURES], seed, device)
}

/// 1x6x6 images ([`cnn`](crate::models::cnn)).
pub fn images<B: Backend>(rows: usize, seed: u64) -> Batch<B, Tensor<B, 4>> {
    images_on(rows, seed, &Default::default())
}

/// [`images`] on `device`.
pub fn images_on<B: Backend>(rows: usize, seed: u64, device: &B::Device) -> Batch<B, Tensor<B, 4>> {
    uniform_on([rows, 1, 6, 6], seed, device)
}

/// Sequences of 1 to `LENGTH` tokens in `1..VOCAB`, padded with 0 ([`transformer`],
/// [`tied`]).
///
/// [`transformer`]: crate::models::transformer
/// [`tied`]: crate::models::tied
pub fn tokens<B: Backend>(rows: usize, seed: u64) -> Batch<B, Tensor<B, 2, Int>> {
    tokens_on(rows, seed, &Default::default())
}

/// [`tokens`] on `device`.
pub fn tokens_on<B: Backend>(
    rows: usize,
    seed: u64,
    device: &B::Device,
) -> Batch<B, Tensor<B, 2, Int>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..rows)
        .flat_map(|_| {
            let len = rng.random_range(1..=LENGTH);
            let mut row: Vec<i64> = (0..len)
                .map(|_| rng.random_range(1..VOCAB as i64))
                .collect();
            row.resize(LENGTH, 0);
            row
        })
        .collect();
    let x = Tensor::from_data(TensorData::new(ids, [rows, LENGTH]), device);
    (x, targets(rows, &mut rng, device))
}
