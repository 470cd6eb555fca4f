//! The tutorial's model: one `Linear(input_size, output_size)` that reports its shapes.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Receives the input and output shape of every call of a [`TutorialModel`].
///
/// The model prints nothing itself: the caller decides what to do with what it saw (the
/// tutorial prints it; a test collects it). Under data parallelism every replica reports, from
/// its own thread, so an observer must be `Sync`.
///
/// Any `Fn(&[usize], &[usize]) + Sync` closure is an observer, and so is `()`, which ignores
/// everything.
pub trait ShapeObserver: Sync {
    /// Called once per forward call with the input and output dimensions.
    fn observe(&self, input: &[usize], output: &[usize]);
}

impl<F: Fn(&[usize], &[usize]) + Sync> ShapeObserver for F {
    fn observe(&self, input: &[usize], output: &[usize]) {
        self(input, output);
    }
}

impl ShapeObserver for () {
    fn observe(&self, _input: &[usize], _output: &[usize]) {}
}

/// Sizes of a [`TutorialModel`].
#[derive(Config, Debug)]
pub struct TutorialModelConfig {
    /// Features in each input row.
    #[config(default = 5)]
    pub input_size: usize,
    /// Features in each output row.
    #[config(default = 2)]
    pub output_size: usize,
}

impl TutorialModelConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TutorialModel<B> {
        TutorialModel {
            fc: LinearConfig::new(self.input_size, self.output_size).init(device),
        }
    }
}

/// The tutorial's `Model`: `self.fc = nn.Linear(input_size, output_size)`.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use dp_model::TutorialModelConfig;
/// use std::sync::Mutex;
///
/// let device = Default::default();
/// let model = TutorialModelConfig::new().init::<NdArray>(&device);
/// let seen = Mutex::new(Vec::new());
/// let y = model.forward(Tensor::<NdArray, 2>::ones([3, 5], &device), &|i: &[usize], o: &[usize]| {
///     seen.lock().unwrap().push((i.to_vec(), o.to_vec()))
/// });
/// assert_eq!(y.dims(), [3, 2]);
/// assert_eq!(seen.into_inner().unwrap(), [(vec![3, 5], vec![3, 2])]);
/// ```
#[derive(Module, Debug)]
pub struct TutorialModel<B: Backend> {
    /// The one layer.
    pub fc: Linear<B>,
}

impl<B: Backend> TutorialModel<B> {
    /// Applies the layer to the last dimension of `input` and tells `observer` both shapes.
    pub fn forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
        observer: &impl ShapeObserver,
    ) -> Tensor<B, D> {
        let input_dims = input.dims();
        let output = self.fc.forward(input);
        observer.observe(&input_dims, &output.dims());
        output
    }
}
