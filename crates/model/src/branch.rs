//! A branch not always taken: some rows go through an extra layer, so its parameters get no
//! gradient from a batch (or a replica's part of one) without such rows.

use crate::Classifier;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

/// Sizes of a [`Branchy`] model.
#[derive(Config, Debug, PartialEq)]
pub struct BranchyConfig {
    /// Features per row.
    pub input: usize,
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Classes, the width of the output.
    pub classes: usize,
    /// Rows whose first feature exceeds this go through the expert layer too.
    #[config(default = 1.0)]
    pub threshold: f32,
}

impl BranchyConfig {
    /// A model with these sizes on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Branchy<B> {
        Branchy {
            base: LinearConfig::new(self.input, self.hidden).init(device),
            expert: LinearConfig::new(self.input, self.hidden).init(device),
            head: LinearConfig::new(self.hidden, self.classes).init(device),
            activation: Relu::new(),
            threshold: self.threshold,
        }
    }
}

/// `head(relu(base(x) + expert(x)))` for the rows whose first feature exceeds the threshold,
/// `head(relu(base(x)))` for the others. The expert runs only on the rows that need it.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use dp_model::{BranchyConfig, Classifier};
///
/// let model = BranchyConfig::new(3, 8, 2).init::<NdArray>(&Default::default());
/// let x = Tensor::<NdArray, 2>::from_data([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]], &Default::default());
/// assert_eq!(model.logits(x).dims(), [2, 2]); // row 0 takes the branch, row 1 does not
/// ```
#[derive(Module, Debug)]
pub struct Branchy<B: Backend> {
    base: Linear<B>,
    /// Used only for the rows that take the branch.
    pub expert: Linear<B>,
    head: Linear<B>,
    activation: Relu,
    threshold: f32,
}

impl<B: Backend> Branchy<B> {
    /// The rows of `x` that take the branch (read on the host).
    pub fn branch_rows(&self, x: &Tensor<B, 2>) -> Vec<i64> {
        let [rows, _] = x.dims();
        let taken = x
            .clone()
            .slice([0..rows, 0..1])
            .greater_elem(self.threshold)
            .into_data();
        taken
            .iter::<bool>()
            .enumerate()
            .filter_map(|(row, take)| take.then_some(row as i64))
            .collect()
    }
}

impl<B: Backend> Classifier<B> for Branchy<B> {
    type Input = Tensor<B, 2>;

    fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let taken = self.branch_rows(&x);
        let mut hidden = self.base.forward(x.clone());
        if !taken.is_empty() {
            let count = taken.len();
            let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(taken, [count]), &x.device());
            let extra = self.expert.forward(x.select(0, rows.clone()));
            hidden = hidden.select_assign(0, rows, extra, IndexingUpdateOp::Add);
        }
        self.head.forward(self.activation.forward(hidden))
    }
}
