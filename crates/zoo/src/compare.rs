//! How far apart two results are: tensors, modules' parameters, gradients. Every measure is
//! infinite where the two cannot be compared (other shapes, other parameters, a value that is
//! not a number), so that nothing compares equal by accident.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use std::collections::HashSet;

/// The largest absolute difference between two tensors.
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

/// [`max_abs_diff`] relative to the largest value of `b` where that exceeds 1.
pub fn relative_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    let size: f32 = if b.shape().num_elements() == 0 {
        0.0
    } else {
        b.clone().abs().max().into_scalar().elem()
    };
    max_abs_diff(a, b) / size.max(1.0)
}

/// The largest absolute difference between the float parameters (and buffers) of two modules.
pub fn max_param_diff<B: Backend, M: Module<B>>(a: &M, b: &M) -> f32 {
    max_param_diff_except(a, b, &HashSet::new())
}

/// [`max_param_diff`] over the float tensors not in `skip` (a model's running statistics, which
/// follow their own rule).
pub fn max_param_diff_except<B: Backend, M: Module<B>>(
    a: &M,
    b: &M,
    skip: &HashSet<ParamId>,
) -> f32 {
    // A buffer (BatchNorm's running statistics) keeps each thread's last update apart until it
    // is saved or read back on that thread: saving a clone folds them in.
    let _ = (a.clone().into_record(), b.clone().into_record());
    let (a, b) = (values::<B, M>(a, skip), values::<B, M>(b, skip));
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    let mut diff = 0.0f32;
    for ((_, va), (_, vb)) in a.iter().zip(&b) {
        if va.len() != vb.len() {
            return f32::INFINITY;
        }
        for (x, y) in va.iter().zip(vb) {
            diff = diff.max(gap(*x, *y));
        }
    }
    diff
}

/// `|x - y|`, infinite where either is not a number (`f32::max` would drop a NaN).
fn gap(x: f32, y: f32) -> f32 {
    let gap = (x - y).abs();
    if gap.is_nan() { f32::INFINITY } else { gap }
}

/// The largest difference between the float tensors of two modules that are not in `skip`,
/// relative to the largest value when that exceeds 1.
pub fn param_diff<B: Backend, M: Module<B>>(a: &M, b: &M, skip: &HashSet<ParamId>) -> f32 {
    let (a, b) = (values::<B, M>(a, skip), values::<B, M>(b, skip));
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    let mut diff = 0.0f32;
    let mut size = 0.0f32;
    for ((ia, va), (ib, vb)) in a.iter().zip(&b) {
        if ia != ib || va.len() != vb.len() {
            return f32::INFINITY;
        }
        for (x, y) in va.iter().zip(vb) {
            diff = diff.max(gap(*x, *y));
            size = size.max(y.abs());
        }
    }
    diff / size.max(1.0)
}

/// Every float tensor of a module not in `skip`, with its id, in visiting order.
pub fn values<B: Backend, M: Module<B>>(
    module: &M,
    skip: &HashSet<ParamId>,
) -> Vec<(ParamId, Vec<f32>)> {
    struct Collect<'a>(&'a HashSet<ParamId>, Vec<(ParamId, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.contains(&param.id) {
                return;
            }
            let data = param.val().into_data().convert::<f32>();
            let values = data.to_vec().expect("a float tensor reads as f32 values");
            self.1.push((param.id, values));
        }
    }
    let mut collect = Collect(skip, Vec::new());
    module.visit(&mut collect);
    collect.1
}

/// Ids of the float tensors of `module`.
pub fn ids<B: Backend, M: Module<B>>(module: &M) -> HashSet<ParamId> {
    values::<B, M>(module, &HashSet::new())
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The largest difference between two gradients of the parameters of `module` that require
/// one, relative to the largest gradient value when that exceeds 1; also the largest gradient
/// value, so that a check can tell a gradient was there at all. A parameter with a gradient
/// in one and not the other is an infinite difference.
pub fn grad_diff<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    a: &GradientsParams,
    b: &GradientsParams,
) -> (f32, f32) {
    struct Diff<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        diff: f32,
        size: f32,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Diff<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let a = self.a.get::<B::InnerBackend, D>(param.id);
            let b = self.b.get::<B::InnerBackend, D>(param.id);
            match (a, b) {
                (Some(a), Some(b)) => {
                    let size: f32 = b.clone().abs().max().into_scalar().elem();
                    self.size = self.size.max(size);
                    self.diff = self.diff.max(max_abs_diff(a, b));
                }
                (None, None) => {}
                _ => self.diff = f32::INFINITY,
            }
        }
    }
    let mut diff = Diff {
        a,
        b,
        diff: 0.0,
        size: 0.0,
    };
    module.visit(&mut diff);
    (diff.diff / diff.size.max(1.0), diff.size)
}
