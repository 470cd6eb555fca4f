//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod zoo;

use burn::backend::NdArray;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub type B = NdArray;

pub fn cpu() -> <B as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}

/// `n` replicas of the CPU device, each of which gets its own thread.
pub fn cpus(n: usize) -> Vec<<B as burn::tensor::backend::BackendTypes>::Device> {
    vec![cpu(); n]
}

pub fn linear(input: usize, output: usize) -> Linear<B> {
    LinearConfig::new(input, output).init(&cpu())
}

/// Seeded values in [-2, 2), from a generator of their own: the backend's global generator is
/// shared by the test threads, so reseeding it would not make a draw reproducible.
pub fn normal<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), &cpu())
}

/// `module` with its weight multiplied by `factor`: a changed module whatever the global
/// generator did.
pub fn with_scaled_weight(module: &Linear<B>, factor: f32) -> Linear<B> {
    let mut changed = module.clone();
    changed.weight = burn::module::Param::from_tensor(module.weight.val().mul_scalar(factor));
    changed
}

pub fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).abs().max().into_scalar()
}

/// Every float parameter of a module, flattened, in visiting order.
pub fn params<Bk: Backend, M: burn::module::Module<Bk>>(module: &M) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl<Bk: Backend> burn::module::ModuleVisitor<Bk> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Bk, D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// The largest difference between two modules' parameters.
pub fn max_param_diff<Bk: Backend, M: burn::module::Module<Bk>>(a: &M, b: &M) -> f32 {
    let (a, b) = (params::<Bk, M>(a), params::<Bk, M>(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}
