//! How far apart two results are, for the programs that check data parallelism against a
//! single device (`check`, `dist_check`).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// The largest absolute difference between two tensors; infinite when their shapes differ, so
/// that nothing compares equal by accident.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    if a.dims() != b.dims() {
        return f32::INFINITY;
    }
    if a.shape().num_elements() == 0 {
        return 0.0;
    }
    let b = b.to_device(&a.device());
    (a - b).abs().max().into_scalar().elem()
}

/// The largest absolute difference between the float parameters (and buffers) of two modules;
/// infinite when they do not have the same parameters.
pub fn max_param_diff<B: Backend, M: Module<B>>(a: &M, b: &M) -> f32 {
    // A buffer (BatchNorm's running statistics) keeps each thread's last update apart until it
    // is saved or read back on that thread: saving a clone folds them in.
    let _ = (a.clone().into_record(), b.clone().into_record());
    struct Collect<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().flatten(0, D - 1));
        }
    }
    let (mut ca, mut cb) = (Collect(Vec::new()), Collect(Vec::new()));
    a.visit(&mut ca);
    b.visit(&mut cb);
    if ca.0.len() != cb.0.len() {
        return f32::INFINITY;
    }
    ca.0.into_iter()
        .zip(cb.0)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}
