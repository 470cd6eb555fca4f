//! The model zoo under test: every model of `dp-model`, tiny, with seeded batches, and the
//! single-device references that data parallelism must reproduce.
//!
//! A model whose training forward pass depends on the whole batch it is given (BatchNorm) is
//! checked against "ghost batch" single-device training: the same parts, each normalized with
//! its own statistics, their mean losses weighted by rows. For every other model that reference
//! is plain single-device training on the whole batch.

use super::{B, cpu};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_data_parallel::Scatter;
use dp_model::{
    Branchy, BranchyConfig, Classifier, Cnn, CnnConfig, Mlp, MlpConfig, TextClassifier,
    TextClassifierConfig, TiedEmbeddings, TiedEmbeddingsConfig,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashSet;

pub type AB = Autodiff<B>;

/// Classes of every zoo model (the tied model predicts one of `VOCAB` tokens).
pub const CLASSES: usize = 3;
const VOCAB: usize = 12;
const LENGTH: usize = 6;

/// A zoo model on `AB`, its parameters created once so that copies share them.
pub fn mlp() -> Mlp<AB> {
    MlpConfig::new(6, vec![16], CLASSES)
        .init::<AB>(&cpu())
        .fork(&cpu())
}

pub fn mlp_with_dropout() -> Mlp<AB> {
    MlpConfig::new(6, vec![64], CLASSES)
        .with_dropout(0.5)
        .init::<AB>(&cpu())
        .fork(&cpu())
}

pub fn cnn() -> Cnn<AB> {
    CnnConfig::new(1, CLASSES)
        .with_widths(vec![4, 6])
        .init::<AB>(&cpu())
        .fork(&cpu())
}

pub fn transformer() -> TextClassifier<AB> {
    TextClassifierConfig::new(VOCAB, LENGTH, CLASSES)
        .with_d_model(8)
        .with_heads(2)
        .with_layers(1)
        .with_d_ff(16)
        .init::<AB>(&cpu())
        .fork(&cpu())
}

pub fn frozen_transformer() -> TextClassifier<AB> {
    transformer().freeze_encoder()
}

pub fn frozen_cnn() -> Cnn<AB> {
    cnn().freeze_features()
}

pub fn tied() -> TiedEmbeddings<AB> {
    TiedEmbeddingsConfig::new(VOCAB)
        .with_d_model(8)
        .init::<AB>(&cpu())
        .fork(&cpu())
}

pub fn branchy() -> Branchy<AB> {
    BranchyConfig::new(5, 8, CLASSES)
        .init::<AB>(&cpu())
        .fork(&cpu())
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn targets<Bk: Backend>(rows: usize, classes: usize, rng: &mut StdRng) -> Tensor<Bk, 1, Int> {
    let y: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..classes) as i64)
        .collect();
    Tensor::from_data(TensorData::new(y, [rows]), &Default::default())
}

fn uniform<Bk: Backend, const D: usize>(shape: [usize; D], rng: &mut StdRng) -> Tensor<Bk, D> {
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// Rows of 6 features (5 for `branchy`), from a generator of their own: the backend's global
/// one is shared by the test threads.
pub fn rows<Bk: Backend>(rows: usize, seed: u64) -> (Tensor<Bk, 2>, Tensor<Bk, 1, Int>) {
    let mut rng = rng(seed);
    (
        uniform([rows, 6], &mut rng),
        targets(rows, CLASSES, &mut rng),
    )
}

pub fn branch_rows<Bk: Backend>(rows: usize, seed: u64) -> (Tensor<Bk, 2>, Tensor<Bk, 1, Int>) {
    let mut rng = rng(seed);
    (
        uniform([rows, 5], &mut rng),
        targets(rows, CLASSES, &mut rng),
    )
}

pub fn images<Bk: Backend>(rows: usize, seed: u64) -> (Tensor<Bk, 4>, Tensor<Bk, 1, Int>) {
    let mut rng = rng(seed);
    (
        uniform([rows, 1, 6, 6], &mut rng),
        targets(rows, CLASSES, &mut rng),
    )
}

/// Token sequences of 1 to `LENGTH` tokens, padded.
pub fn tokens<Bk: Backend>(rows: usize, seed: u64) -> (Tensor<Bk, 2, Int>, Tensor<Bk, 1, Int>) {
    let mut rng = rng(seed);
    let ids: Vec<i64> = (0..rows)
        .flat_map(|_| {
            let len = rng.random_range(1..=LENGTH);
            let mut row: Vec<i64> = (0..len)
                .map(|_| rng.random_range(1..VOCAB) as i64)
                .collect();
            row.resize(LENGTH, 0);
            row
        })
        .collect();
    let x = Tensor::from_data(TensorData::new(ids, [rows, LENGTH]), &Default::default());
    (x, targets(rows, CLASSES, &mut rng))
}

/// An independent copy of a trainable module: same parameter ids and values, parameters and
/// buffers of its own.
pub fn copy<M: AutodiffModule<AB>>(module: &M) -> M {
    M::from_inner(module.valid())
}

/// Mean cross-entropy of `logits` against `targets`.
pub fn cross_entropy<Bk: Backend>(
    logits: Tensor<Bk, 2>,
    targets: Tensor<Bk, 1, Int>,
) -> Tensor<Bk, 1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets)
}

/// The single-device loss that data parallelism must reproduce when it splits `batch` into
/// parts of `sizes` rows: for `ghost` models, each part's mean loss weighted by its rows;
/// otherwise the mean loss over the whole batch.
pub fn reference_loss<M>(
    model: &M,
    batch: (M::Input, Tensor<AB, 1, Int>),
    sizes: &[usize],
    ghost: bool,
) -> Tensor<AB, 1>
where
    M: Classifier<AB>,
    M::Input: Scatter<AB>,
{
    if !ghost {
        return model.loss(batch.0, batch.1);
    }
    let total: usize = sizes.iter().sum();
    batch
        .scatter(0, sizes, &vec![cpu(); sizes.len()])
        .into_iter()
        .zip(sizes)
        .map(|((x, y), &rows)| model.loss(x, y).mul_scalar(rows as f64 / total as f64))
        .reduce(|a, b| a + b)
        .expect("at least one part")
}

/// The largest difference between two gradients of the parameters of `module` that require
/// one, relative to the largest gradient value when that exceeds 1; also the largest gradient
/// value, so that a test can tell a gradient was there at all.
pub fn grad_diff<M: Module<AB>>(
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
    impl ModuleVisitor<AB> for Diff<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let (a, b) = (self.a.get::<B, D>(param.id), self.b.get::<B, D>(param.id));
            match (a, b) {
                (Some(a), Some(b)) => {
                    let size: f32 = b.clone().abs().max().into_scalar();
                    let diff: f32 = (a - b).abs().max().into_scalar();
                    self.size = self.size.max(size);
                    self.diff = self.diff.max(diff);
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

/// The largest difference between the float tensors of two modules that are not in `skip`,
/// relative to the largest value when that exceeds 1; infinite when they have other tensors.
pub fn param_diff<Bk: Backend, M: Module<Bk>>(a: &M, b: &M, skip: &HashSet<ParamId>) -> f32 {
    let (a, b) = (values::<Bk, M>(a, skip), values::<Bk, M>(b, skip));
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
            diff = diff.max((x - y).abs());
            size = size.max(y.abs());
        }
    }
    diff / size.max(1.0)
}

/// Every float tensor of a module with its id, in visiting order.
pub fn values<Bk: Backend, M: Module<Bk>>(
    module: &M,
    skip: &HashSet<ParamId>,
) -> Vec<(ParamId, Vec<f32>)> {
    struct Collect<'a>(&'a HashSet<ParamId>, Vec<(ParamId, Vec<f32>)>);
    impl<Bk: Backend> ModuleVisitor<Bk> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            if self.0.contains(&param.id) {
                return;
            }
            let values = param.val().into_data().convert::<f32>().to_vec().unwrap();
            self.1.push((param.id, values));
        }
    }
    let mut collect = Collect(skip, Vec::new());
    module.visit(&mut collect);
    collect.1
}

/// Ids of the float tensors of `module`.
pub fn ids<Bk: Backend, M: Module<Bk>>(module: &M) -> HashSet<ParamId> {
    values::<Bk, M>(module, &HashSet::new())
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The running statistics of a CNN's batch norms: its buffers.
pub fn cnn_buffers<Bk: Backend>(model: &Cnn<Bk>) -> HashSet<ParamId> {
    model
        .blocks
        .iter()
        .flat_map(|block| {
            let mut found = ids::<Bk, _>(block.norm.running_mean());
            found.extend(ids::<Bk, _>(block.norm.running_var()));
            found
        })
        .collect()
}
