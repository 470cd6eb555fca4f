//! Replicas are made once per device, kept across calls, and made again after the module
//! changes: counted by `DataParallel::replica_builds`, which only the crate's own tests see.

use super::common::zoo::AB;
use super::common::*;
use crate::DataParallel;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;

#[test]
fn replicas_are_made_once_and_reused() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    assert_eq!(dp.replica_builds(), 0, "no copy before the first call");
    for _ in 0..5 {
        dp.forward(normal([30, 5], 1), |m, x| m.forward(x)).unwrap();
    }
    // Replica 0 is the module itself: three copies for four devices, made once.
    assert_eq!(dp.replica_builds(), 3);
    // A small batch uses fewer devices and still makes no copy.
    dp.forward(normal([5, 5], 2), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 3);
}

#[test]
fn copies_are_made_only_for_devices_that_are_used() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    dp.forward(normal([2, 5], 1), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 1);
    dp.forward(normal([30, 5], 1), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 3);
}

#[test]
fn one_device_makes_no_copy() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(1)).unwrap();
    dp.forward(normal([30, 5], 1), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 0);
}

#[test]
fn replicas_follow_a_changed_module() {
    let mut dp = DataParallel::new(linear(5, 2), cpus(4)).unwrap();
    let x = normal([30, 5], 7);
    let before = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();

    dp.set_module(with_scaled_weight(dp.module(), -2.0));
    let after = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 6, "every copy made again once");
    // Every replica, not only replica 0, now computes with the new weights.
    assert!(max_abs_diff(after.clone(), dp.module().forward(x.clone())) <= 1e-6);
    assert!(max_abs_diff(after, before) > 1e-3);

    // Changing the weights in place through `module_mut` refreshes them too.
    let changed = with_scaled_weight(dp.module(), 3.0);
    dp.module_mut().weight = changed.weight;
    let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
    assert_eq!(dp.replica_builds(), 9);
    assert!(max_abs_diff(out, dp.module().forward(x)) <= 1e-6);
}

#[test]
fn each_device_keeps_its_worker_thread_across_calls() {
    use crate::current_replica;
    use std::sync::Mutex;
    let mut dp = DataParallel::new(linear(5, 2), cpus(3)).unwrap();
    let seen = Mutex::new(Vec::new());
    for _ in 0..4 {
        dp.forward(normal([9, 5], 1), |m, x| {
            let replica = current_replica().unwrap().index;
            let thread = std::thread::current();
            seen.lock()
                .unwrap()
                .push((replica, thread.id(), thread.name().map(str::to_owned)));
            m.forward(x)
        })
        .unwrap();
    }
    let seen = seen.into_inner().unwrap();
    for replica in 0..3 {
        let threads: Vec<_> = seen.iter().filter(|s| s.0 == replica).collect();
        assert_eq!(threads.len(), 4);
        assert!(
            threads.iter().all(|s| s.1 == threads[0].1),
            "replica {replica} moved threads"
        );
        assert_eq!(
            threads[0].2.as_deref(),
            Some(format!("dp-replica-{replica}.0").as_str())
        );
    }
}

/// A two-parameter model (`Linear(1, 1)` with its bias) on an autodiff backend.
fn two_parameters() -> Linear<AB> {
    LinearConfig::new(1, 1).init::<AB>(&cpu()).fork(&cpu())
}

#[test]
fn inference_keeps_its_replicas_and_training_makes_none_to_keep() {
    // Evaluation (no autodiff): replicas are made once and kept.
    let mut eval = DataParallel::new(LinearConfig::new(1, 1).init::<B>(&cpu()), cpus(4)).unwrap();
    for _ in 0..3 {
        eval.forward(Tensor::<B, 2>::ones([8, 1], &cpu()), |m, x| m.forward(x))
            .unwrap();
    }
    assert_eq!(eval.replica_builds(), 3);
    // Training through the wrapper links fresh replicas to the module every call: none kept.
    let mut train = DataParallel::new(two_parameters(), cpus(4)).unwrap();
    for _ in 0..3 {
        train
            .forward(Tensor::<AB, 2>::ones([8, 1], &cpu()), |m, x| m.forward(x))
            .unwrap();
    }
    assert_eq!(train.replica_builds(), 0);
    // A frozen module trains nothing: its replicas are kept as for inference.
    let mut frozen = DataParallel::new(two_parameters().no_grad(), cpus(4)).unwrap();
    for _ in 0..3 {
        frozen
            .forward(Tensor::<AB, 2>::ones([8, 1], &cpu()), |m, x| m.forward(x))
            .unwrap();
    }
    assert_eq!(frozen.replica_builds(), 3);
}

/// A sharded optimizer step builds the replicas for the next call itself, from the owners' new
/// values (the step on the first device leaves them to be copied when next used); every
/// trainable parameter of the module and of those replicas requires a gradient, and the
/// replicas are used as they are.
#[test]
fn a_sharded_step_leaves_trainable_replicas_for_the_next_call() {
    use crate::DataParallelTrainer;
    use burn::module::{ModuleVisitor, Param};
    use burn::optim::AdamConfig;
    struct Trainable(Vec<bool>);
    impl ModuleVisitor<AB> for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            self.0.push(param.val().is_require_grad());
        }
    }
    let trainable = |m: &Linear<AB>| {
        let mut seen = Trainable(Vec::new());
        m.visit(&mut seen);
        seen.0
    };
    let model: Linear<AB> = LinearConfig::new(5, 2).init(&Default::default());
    for sharded in [false, true] {
        let mut trainer =
            DataParallelTrainer::new(model.clone(), AdamConfig::new().init(), cpus(3)).unwrap();
        if sharded {
            trainer = trainer.with_sharded_step();
        }
        let x = Tensor::<AB, 2>::ones([6, 5], &Default::default());
        let loss = |m: &Linear<AB>, x: Tensor<AB, 2>| m.forward(x).mean();
        trainer.accumulate(x.clone(), loss).unwrap();
        let before = trainer.parallel().replica_builds();
        trainer.apply(0.1).unwrap();
        let built = trainer.parallel().replica_builds() - before;
        assert_eq!(built, if sharded { 2 } else { 0 }, "sharded: {sharded}");
        trainer.accumulate(x.clone(), loss).unwrap();
        assert_eq!(trainer.parallel().replica_builds(), before + 2);
        assert_eq!(trainable(trainer.module()), vec![true, true]);
        trainer.apply(0.1).unwrap();
        let kept = trainer.parallel_mut().take_replicas();
        assert_eq!(kept.len(), if sharded { 2 } else { 0 });
        for replica in &kept {
            assert_eq!(trainable(replica), vec![true, true]);
        }
    }
}
