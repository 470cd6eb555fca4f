//! A transport of the user's own behind `DistributedTrainer`: the `Communicator` trait is
//! implemented outside the crate, and a trainer over a one-rank group takes exactly the steps
//! of the local trainer it wraps (a CNN with batch norm, Adam, a short last batch), through
//! the whole distributed path (agreement on each call, the flattened gradient exchange, the
//! 16-bit path's default widening).

mod common;

use burn::optim::AdamConfig;
use burn_data_parallel::dist::{Communicator, DistributedTrainer, GradientPrecision};
use burn_data_parallel::{DataParallelTrainer, Trainer};
use common::cpus;
use common::zoo::{self, AB};
use dp_model::Classifier;
use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;

/// One process alone, counting the collectives it is asked for.
#[derive(Default)]
struct Solo {
    calls: Cell<usize>,
}

impl Solo {
    fn called(&self) {
        self.calls.set(self.calls.get() + 1);
    }
}

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
        self.called();
        values.to_vec()
    }
    fn all_reduce_sum_f32(&self, values: &[f32]) -> Vec<f32> {
        self.called();
        values.to_vec()
    }
    fn reduce_scatter_sum_f32(&self, _: &mut [f32], _: &[usize]) {
        self.called();
    }
    fn all_gather_f32(&self, _: &mut [f32], _: &[usize]) {
        self.called();
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {
        self.called();
    }
    fn gather_bytes_to_0(&self, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        self.called();
        vec![bytes]
    }
    fn broadcast_bytes_from(&self, _: usize, _: &mut [u8]) {
        self.called();
    }
}

/// Three Adam steps of a CNN with batch norm on 2 devices, batches of 10, 10 and 7 rows.
fn train<T: Trainer<AB, dp_model::Cnn<AB>>>(mut trainer: T) -> dp_model::Cnn<AB> {
    for (step, rows) in [10, 10, 7].into_iter().enumerate() {
        let (x, y) = zoo::images::<AB>(rows, 40 + step as u64);
        trainer
            .accumulate((x, y), |m, (x, y)| m.loss(x, y))
            .unwrap();
        trainer.apply(1e-2).unwrap();
    }
    trainer.finish().unwrap().0
}

#[test]
fn a_user_transport_trains_exactly_as_the_local_trainer() {
    let cnn = zoo::cnn::<AB>();
    let local = |cnn| DataParallelTrainer::new(cnn, AdamConfig::new().init(), cpus(2)).unwrap();
    let expected = train(local(zoo::copy(&cnn)));

    for precision in [GradientPrecision::F32, GradientPrecision::Bf16] {
        let solo = Rc::new(Solo::default());
        let group: Rc<dyn Communicator> = solo.clone();
        let trainer = DistributedTrainer::new(group, local(zoo::copy(&cnn)))
            .unwrap()
            .with_gradient_precision(precision)
            .unwrap();
        assert_eq!((trainer.rank(), trainer.world_size()), (0, 1));
        let trained = train(trainer);
        let diff = zoo::param_diff(&trained, &expected, &HashSet::new());
        match precision {
            GradientPrecision::F32 => assert!(diff < 1e-6, "{diff}"),
            // One rank's gradients rounded to bf16 and back: close, not equal.
            _ => assert!(diff > 0.0 && diff < 5e-2, "{diff}"),
        }
        // The trainer went through the transport: joining, every call's agreement, the sums.
        assert!(solo.calls.get() > 10, "{}", solo.calls.get());
    }
}
