//! A module's parameters and gradients as one flat `f32` buffer, in the module's visiting
//! order, so that one collective moves them all (not one call per parameter).

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

/// Appends a tensor's values; a plain copy when they are already `f32` (the generic element
/// iterator is about 30 times slower).
fn append(buffer: &mut Vec<f32>, data: TensorData) {
    let data = data.convert::<f32>();
    match data.as_slice::<f32>() {
        Ok(values) => buffer.extend_from_slice(values),
        Err(_) => buffer.extend(data.iter::<f32>()),
    }
}

/// Shapes of the float parameters, in visiting order: what ranks compare before training.
pub(crate) fn shapes<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut shapes = Shapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}

/// Every float parameter's values, one after another.
pub(crate) fn params<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            append(
                &mut self.0,
                param.val().inner().flatten::<1>(0, D - 1).into_data(),
            );
        }
    }
    let mut values = Values(Vec::new());
    module.visit(&mut values);
    values.0
}

/// `module` with its float parameters read from `buffer` (as written by [`params`]), still
/// trainable and with the same parameter ids.
pub(crate) fn with_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    buffer: &[f32],
) -> M {
    struct Load<'a>(&'a [f32]);
    impl<B: AutodiffBackend> ModuleMapper<B> for Load<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|tensor| {
                let shape = tensor.shape();
                let (head, rest) = self.0.split_at(shape.num_elements().min(self.0.len()));
                self.0 = rest;
                Tensor::from_data(TensorData::new(head.to_vec(), shape), &tensor.device())
                    .require_grad()
            })
        }
    }
    module.map(&mut Load(buffer))
}

/// The gradients of every float parameter, one after another; zeros where `grads` has none
/// (a rank with no rows this step still takes part).
pub(crate) fn grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<f32> {
    struct Flatten<'a>(&'a GradientsParams, Vec<f32>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            match self.0.get::<B::InnerBackend, D>(param.id) {
                // Flattened first: burn-ndarray reads a transposed gradient (the weights')
                // element by element in `into_data`, about 20 times slower than a reshape.
                Some(grad) => append(&mut self.1, grad.flatten::<1>(0, D - 1).into_data()),
                None => {
                    let count = param.val().shape().num_elements();
                    self.1.extend(std::iter::repeat_n(0.0, count));
                }
            }
        }
    }
    let mut flat = Flatten(grads, Vec::new());
    module.visit(&mut flat);
    flat.1
}

/// Gradients for every float parameter of `module`, read from `buffer` (as written by
/// [`grads`]), on each parameter's device.
pub(crate) fn to_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    buffer: &[f32],
) -> GradientsParams {
    struct Unflatten<'a>(&'a [f32], GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let shape = value.shape();
            let (head, rest) = self.0.split_at(shape.num_elements().min(self.0.len()));
            self.0 = rest;
            let grad = Tensor::<B::InnerBackend, D>::from_data(
                TensorData::new(head.to_vec(), shape),
                &value.device(),
            );
            self.1.register(param.id, grad);
        }
    }
    let mut unflatten = Unflatten(buffer, GradientsParams::new());
    module.visit(&mut unflatten);
    unflatten.1
}
