//! `cargo bench -p burn-data-parallel`: the per-call cost of `DataParallel` on the tutorial's
//! workload, and a small training step, on CPU devices. The full report (W1-W3, scaling,
//! burn-train) is the `bench` binary: `cargo run --release --bin bench`.

use burn::backend::{Autodiff, NdArray};
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::{Distribution, Tensor};
use burn_data_parallel::{DataParallel, DataParallelTrainer};
use divan::Bencher;

type B = NdArray;
type AB = Autodiff<NdArray>;

fn main() {
    divan::main();
}

/// W1: `Linear(5, 2)` on 30 rows, called directly.
#[divan::bench]
fn tutorial_plain(bencher: Bencher) {
    let device = Default::default();
    let model = LinearConfig::new(5, 2).init::<B>(&device);
    let x = Tensor::<B, 2>::random([30, 5], Distribution::Default, &device);
    bencher.bench_local(|| model.forward(x.clone()));
}

/// W1 through `DataParallel` on 1, 2 and 4 CPU devices.
#[divan::bench(args = [1, 2, 4])]
fn tutorial_data_parallel(bencher: Bencher, devices: usize) {
    let device = Default::default();
    let model = LinearConfig::new(5, 2).init::<B>(&device);
    let mut dp = DataParallel::new(model, vec![device; devices]).unwrap();
    let x = Tensor::<B, 2>::random([30, 5], Distribution::Default, &device);
    bencher.bench_local(|| dp.forward(x.clone(), |m, x| m.forward(x)).unwrap());
}

/// One SGD step of a `Linear(64, 8)` on 128 rows, on 1 and 2 CPU devices.
#[divan::bench(args = [1, 2])]
fn small_training_step(bencher: Bencher, devices: usize) {
    let device = Default::default();
    let model: Linear<AB> = LinearConfig::new(64, 8).init(&device);
    let mut trainer =
        DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device; devices]).unwrap();
    let x = Tensor::<AB, 2>::random([128, 64], Distribution::Default, &device);
    let y = Tensor::<AB, 2>::random([128, 8], Distribution::Default, &device);
    bencher.bench_local(|| {
        trainer
            .step(0.01, (x.clone(), y.clone()), |m, (x, y)| {
                (m.forward(x) - y).powi_scalar(2).mean()
            })
            .unwrap()
    });
}
