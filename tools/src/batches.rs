//! Seeded batches for the programs that check data parallelism (`check`, `dist_check`): the
//! same seed gives the same batch on every rank and every backend, from a generator of its own.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// `rows` class targets in `0..classes`.
fn targets<B: Backend>(
    rows: usize,
    classes: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let y: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..classes as i64))
        .collect();
    Tensor::from_data(TensorData::new(y, [rows]), device)
}

/// Values in [-2, 2) of shape `shape`, and their targets.
pub fn uniform<B: Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    classes: usize,
    device: &B::Device,
) -> (Tensor<B, D>, Tensor<B, 1, Int>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let x = Tensor::from_data(TensorData::new(values, shape), device);
    (x, targets(shape[0], classes, &mut rng, device))
}

/// `rows` sequences of 1 to `length` tokens in `1..vocab`, padded with 0, and their targets.
pub fn tokens<B: Backend>(
    seed: u64,
    rows: usize,
    vocab: usize,
    length: usize,
    classes: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..rows)
        .flat_map(|_| {
            let len = rng.random_range(1..=length);
            let mut row: Vec<i64> = (0..len)
                .map(|_| rng.random_range(1..vocab as i64))
                .collect();
            row.resize(length, 0);
            row
        })
        .collect();
    let x = Tensor::from_data(TensorData::new(ids, [rows, length]), device);
    (x, targets(rows, classes, &mut rng, device))
}
