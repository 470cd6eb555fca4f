//! The PyTorch habit: call the wrapped model, compute the loss on the gathered output, call
//! `backward()`, read the gradients of `dp.module()`. Every replica's rows reach the gradient,
//! whatever the backend's devices, the split and the number of replicas.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn_data_parallel::{Balanced, Chunk, DataParallel, SplitPolicy};
use common::zoo::AB;
use common::{B, cpu, cpus};

/// The case: a two-parameter model (`Linear(1, 1)` with its bias).
fn two_parameters() -> Linear<AB> {
    LinearConfig::new(1, 1).init::<AB>(&cpu()).fork(&cpu())
}

fn data(rows: usize) -> (Tensor<AB, 2>, Tensor<AB, 2>) {
    let x: Vec<f32> = (0..rows).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let y: Vec<f32> = (0..rows).map(|i| (i as f32 * 0.11).cos()).collect();
    (
        Tensor::from_data(burn::tensor::TensorData::new(x, [rows, 1]), &cpu()),
        Tensor::from_data(burn::tensor::TensorData::new(y, [rows, 1]), &cpu()),
    )
}

fn loss(out: Tensor<AB, 2>, y: Tensor<AB, 2>) -> Tensor<AB, 1> {
    (out - y).powi_scalar(2).mean()
}

fn gradient(grads: &GradientsParams, model: &Linear<AB>) -> Vec<f32> {
    let weight = grads
        .get::<B, 2>(model.weight.id)
        .expect("a weight gradient");
    let bias = grads
        .get::<B, 1>(model.bias.as_ref().unwrap().id)
        .expect("a bias gradient");
    let mut values = weight.into_data().to_vec::<f32>().unwrap();
    values.extend(bias.into_data().to_vec::<f32>().unwrap());
    values
}

fn check(devices: usize, rows: usize, policy: impl SplitPolicy + 'static) {
    let model = two_parameters();
    let (x, y) = data(rows);
    let plain = loss(model.forward(x.clone()), y.clone());
    let expected = gradient(
        &GradientsParams::from_grads(plain.backward(), &model),
        &model,
    );

    let mut dp = DataParallel::new(model, cpus(devices))
        .unwrap()
        .with_split_policy(policy);
    let out = dp.forward(x, |m, x| m.forward(x)).unwrap();
    let grads = GradientsParams::from_grads(loss(out, y).backward(), dp.module());
    let found = gradient(&grads, dp.module());
    for (f, e) in found.iter().zip(&expected) {
        assert!(
            (f - e).abs() <= 1e-5 * e.abs().max(1.0),
            "{rows} rows on {devices}: gradient {found:?}, plain {expected:?}"
        );
    }
}

#[test]
fn every_split_and_replica_count_gives_the_plain_gradient() {
    for devices in 1..=4 {
        for rows in [1, 2, 3, 5, 7, 10, 30, 33] {
            check(devices, rows, Chunk);
            check(devices, rows, Balanced);
        }
    }
}

#[test]
fn gradients_reach_the_inputs_through_the_split() {
    let model = two_parameters();
    // A leaf of its own for each pass: a leaf used again after a `backward()` is the trigger
    // of Burn 0.21's race with other threads' backward passes (tracel-ai/burn#5573), and the
    // other tests of this binary run beside this one.
    let (x, y) = data(10);
    let (x_plain, _) = data(10);
    let (x, x_plain) = (x.require_grad(), x_plain.require_grad());
    let plain = loss(model.forward(x_plain.clone()), y.clone());
    let expected = x_plain.grad(&plain.backward()).unwrap();

    let mut dp = DataParallel::new(model, cpus(4)).unwrap();
    let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    let found = x.grad(&loss(out, y).backward()).unwrap();
    found
        .into_data()
        .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
}

#[test]
fn per_replica_losses_from_parallel_apply_reach_the_module_too() {
    let model = two_parameters();
    let (x, y) = data(30);
    let plain = loss(model.forward(x.clone()), y.clone());
    let expected = gradient(
        &GradientsParams::from_grads(plain.backward(), &model),
        &model,
    );

    let mut dp = DataParallel::new(model, cpus(4)).unwrap();
    // Each replica returns its summed squared error; their sum over 30 rows is the mean.
    let parts = dp
        .parallel_apply((x, y), |m, (x, y)| (m.forward(x) - y).powi_scalar(2).sum())
        .unwrap();
    let total = parts
        .into_iter()
        .map(|p| p.to_device(&cpu()))
        .reduce(|a, b| a + b)
        .unwrap()
        .div_scalar(30.0);
    let found = gradient(
        &GradientsParams::from_grads(total.backward(), dp.module()),
        dp.module(),
    );
    for (f, e) in found.iter().zip(&expected) {
        assert!((f - e).abs() <= 1e-5, "{found:?} against {expected:?}");
    }
}
