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

/// The gradients of every float parameter, one after another, as one tensor on the device of
/// the module's first parameter; zeros where `grads` has none (a rank with no rows this step
/// still takes part). Built on the device so that a GPU transport never leaves it.
pub(crate) fn grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Tensor<B::InnerBackend, 1> {
    struct Flatten<'a, B: AutodiffBackend>(&'a GradientsParams, Vec<Tensor<B::InnerBackend, 1>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let part = match self.0.get::<B::InnerBackend, D>(param.id) {
                // A plain reshape, cheap even for the transposed gradients of weights.
                Some(grad) => grad.flatten::<1>(0, D - 1),
                None => Tensor::zeros([value.shape().num_elements()], &value.device()),
            };
            let part = match self.1.first() {
                Some(first) => part.to_device(&first.device()),
                None => part,
            };
            self.1.push(part);
        }
    }
    let mut flat = Flatten::<B>(grads, Vec::new());
    module.visit(&mut flat);
    if flat.1.is_empty() {
        return Tensor::zeros([0], &Default::default());
    }
    Tensor::cat(flat.1, 0)
}

/// Gradients for every float parameter of `module`, read from `flat` (as written by
/// [`grads`]), on each parameter's device.
pub(crate) fn to_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    flat: Tensor<B::InnerBackend, 1>,
) -> GradientsParams {
    struct Unflatten<B: AutodiffBackend>(Tensor<B::InnerBackend, 1>, usize, GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let shape = value.shape();
            let count = shape.num_elements();
            let grad: Tensor<B::InnerBackend, D> = self
                .0
                .clone()
                .slice(self.1..self.1 + count)
                .reshape(shape)
                .to_device(&value.device());
            self.1 += count;
            self.2.register(param.id, grad);
        }
    }
    let mut unflatten = Unflatten::<B>(flat, 0, GradientsParams::new());
    module.visit(&mut unflatten);
    unflatten.2
}
