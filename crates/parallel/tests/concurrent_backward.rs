//! Replicas run their backward passes at the same time, and Burn 0.21's autodiff graph
//! registry is global to the process: a `backward()` on one thread can free graph steps that
//! another thread is still building and lose a gradient without an error (tracel-ai/burn#5573,
//! fixed after 0.21). Its trigger is a parameter reused after a backward pass whose next
//! operation is a concatenation; a trainer accumulating micro-batches does exactly that on
//! replica 0. This stress run checks every round against single-device training, so a lost
//! gradient fails it.

mod common;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_data_parallel::DataParallelTrainer;
use common::zoo::{AB, param_diff};
use common::{cpu, cpus};
use std::collections::HashSet;

#[derive(Module, Debug)]
struct Concat<B: Backend> {
    left: Param<Tensor<B, 2>>,
    right: Param<Tensor<B, 2>>,
}

impl<B: Backend> Concat<B> {
    /// `x @ [left, right]`, squared and averaged: the concatenation is the op the race needs.
    fn loss(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let weights = Tensor::cat(vec![self.left.val(), self.right.val()], 1);
        x.matmul(weights).powi_scalar(2).mean()
    }
}

fn seeded<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<AB, D> {
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &cpu())
}

#[test]
fn four_replicas_accumulating_for_300_rounds_never_lose_a_gradient() {
    let start = Concat {
        left: Param::from_tensor(seeded([16, 16], 1)),
        right: Param::from_tensor(seeded([16, 16], 2)),
    };
    let mut reference = start.clone().fork(&cpu());
    let mut optimizer = SgdConfig::new().init::<AB, Concat<AB>>();
    let mut trainer =
        DataParallelTrainer::new(start.fork(&cpu()), SgdConfig::new().init(), cpus(4)).unwrap();
    for round in 0..300u64 {
        let micro: Vec<Tensor<AB, 2>> = (0..3).map(|i| seeded([12, 16], 10 * round + i)).collect();
        for x in &micro {
            trainer
                .accumulate(x.clone(), |m: &Concat<AB>, x| m.loss(x))
                .unwrap();
        }
        trainer.apply(0.01).unwrap();

        let loss = reference.loss(Tensor::cat(micro, 0));
        let grads = GradientsParams::from_grads(loss.backward(), &reference);
        reference = optimizer.step(0.01, reference, grads);
        let diff = param_diff(trainer.module(), &reference, &HashSet::new());
        assert!(diff <= 1e-5, "round {round}: parameters differ by {diff}");
    }
}
