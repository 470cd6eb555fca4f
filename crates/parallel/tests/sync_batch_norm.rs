//! `SyncBatchNorm` in `DataParallelTrainer`: training on several devices equals Burn's
//! `BatchNorm` on one device and the whole batch (outputs, gradients, parameters after Adam
//! steps, running statistics), for 1D and 2D batch norms, on uneven splits, with the adaptive
//! split, accumulated micro-batches and seeded runs; calls that cannot synchronize fail.

mod common;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_data_parallel::{
    Adaptive, Chunk, DataParallel, DataParallelError, DataParallelTrainer, SyncBatchNorm,
    SyncNormError,
};
use common::{cpu, cpus, max_param_diff};
use std::sync::Mutex;

type AB = Autodiff<common::B>;

const TOLERANCE: f32 = 1e-5;

/// One test at a time: Burn's random generator is one per process, and the seeded runs repeat
/// only when no other test draws from it meanwhile (models are initialized from it too).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: Mutex<()> = Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Module, Debug)]
enum Norm<B: Backend> {
    Plain(BatchNorm<B>),
    Sync(SyncBatchNorm<B>),
}

impl<B: Backend> Norm<B> {
    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Norm::Plain(norm) => norm.forward(x),
            Norm::Sync(norm) => norm.forward(x),
        }
    }
}

/// A 2D batch norm after a convolution, or a 1D one after a linear layer, then a head. The
/// layers before the batch norm have no bias, as usual: its gradient is zero up to rounding,
/// which Adam would scale up to a step of its own.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    conv: Option<Conv2d<B>>,
    linear: Option<Linear<B>>,
    norm: Norm<B>,
    /// Dropout before and after the batch norm (seeded runs).
    dropout: Option<Dropout>,
    head: Linear<B>,
}

const CLASSES: usize = 3;

impl<B: Backend> Net<B> {
    fn new(two_d: bool) -> Self {
        let device = Default::default();
        let (conv, linear, channels, features) = if two_d {
            let conv = Conv2dConfig::new([1, 4], [3, 3])
                .with_bias(false)
                .init(&device);
            (Some(conv), None, 4, 4 * 3 * 3)
        } else {
            let linear = LinearConfig::new(25, 6).with_bias(false).init(&device);
            (None, Some(linear), 6, 6)
        };
        let norm = SyncBatchNorm::new(&BatchNormConfig::new(channels), &device);
        Net {
            conv,
            linear,
            norm: Norm::Sync(norm),
            dropout: None,
            head: LinearConfig::new(features, CLASSES).init(&device),
        }
    }

    fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let drop = |x: Tensor<B, 4>| match &self.dropout {
            Some(dropout) => dropout.forward(x),
            None => x,
        };
        let x = drop(x);
        let hidden: Tensor<B, 2> = match (&self.conv, &self.linear) {
            (Some(conv), _) => drop(relu(self.norm.forward(conv.forward(x)))).flatten(1, 3),
            (None, Some(linear)) => relu(self.norm.forward(linear.forward(x.flatten(1, 3)))),
            (None, None) => unreachable!("a net has a conv or a linear layer"),
        };
        self.head.forward(hidden)
    }

    fn loss(&self, x: Tensor<B, 4>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        common::zoo::cross_entropy(self.logits(x), y)
    }
}

impl Net<AB> {
    /// The same net with Burn's `BatchNorm`, parameters and statistics of its own (pending
    /// updates of the running statistics folded in).
    fn plain(&self) -> Self {
        let copy = common::zoo::copy(self);
        let norm = match copy.norm {
            Norm::Sync(norm) => Norm::Plain(norm.into()),
            plain => plain,
        };
        Net { norm, ..copy }
    }
}

/// Images and their labels.
type Batch = (Tensor<AB, 4>, Tensor<AB, 1, Int>);

fn batch(rows: usize, seed: u64) -> Batch {
    let x = common::normal([rows, 1, 5, 5], seed).add_scalar(0.5);
    let y: Vec<i64> = (0..rows as i64)
        .map(|r| (r * 7 + seed as i64) % 3)
        .collect();
    let y = Tensor::from_data(TensorData::new(y, [rows]), &cpu());
    (Tensor::from_inner(x), Tensor::from_inner(y))
}

/// One device: Burn's `BatchNorm`, `steps` Adam steps on the batches, each step's batches
/// accumulated with their rows' weight.
fn reference(net: Net<AB>, steps: &[Vec<Batch>]) -> Net<AB> {
    let mut net = net.plain();
    let mut adam = AdamConfig::new().init();
    for micro_batches in steps {
        let total: usize = micro_batches.iter().map(|(x, _)| x.dims()[0]).sum();
        let mut sum = GradientsAccumulator::new();
        for (x, y) in micro_batches.iter().cloned() {
            let weight = x.dims()[0] as f64 / total as f64;
            let grads = net.loss(x, y).mul_scalar(weight).backward();
            sum.accumulate(&net, GradientsParams::from_grads(grads, &net));
        }
        net = adam.step(1e-2, net, sum.grads());
    }
    net
}

fn trained(
    trainer: &mut DataParallelTrainer<AB, Net<AB>, impl Optimizer<Net<AB>, AB>>,
    steps: &[Vec<Batch>],
) -> Net<AB> {
    for micro_batches in steps {
        for batch in micro_batches.iter().cloned() {
            trainer
                .accumulate(batch, |net: &Net<AB>, (x, y)| net.loss(x, y))
                .expect("the micro-batch trains");
        }
        trainer.apply(1e-2).expect("the step applies");
    }
    plain_copy(trainer.module())
}

/// A trained module as `Net::plain` gives it, to compare with the reference.
fn plain_copy(net: &Net<AB>) -> Net<AB> {
    net.plain()
}

fn assert_same(a: &Net<AB>, b: &Net<AB>, what: &str) {
    let diff = max_param_diff::<AB, _>(a, b);
    assert!(
        diff <= TOLERANCE,
        "{what}: parameters and statistics differ by {diff}"
    );
}

fn steps(sizes: &[&[usize]]) -> Vec<Vec<Batch>> {
    let mut seed = 0;
    sizes
        .iter()
        .map(|micro| {
            micro
                .iter()
                .map(|&rows| {
                    seed += 1;
                    batch(rows, seed)
                })
                .collect()
        })
        .collect()
}

#[test]
fn adam_steps_on_uneven_splits_equal_one_device_on_the_whole_batch() {
    let _generator = exclusive();
    for two_d in [false, true] {
        for (devices, rows) in [(2, 7), (3, 10), (4, 30), (4, 10)] {
            let net = Net::<AB>::new(two_d);
            let start = common::zoo::copy(&net);
            // Chunk cuts 30 rows on 4 devices as 8, 8, 8, 6 and 10 as 3, 3, 3, 1.
            let batches = steps(&[&[rows], &[rows], &[rows]]);
            let expected = reference(common::zoo::copy(&net), &batches);
            let mut trainer =
                DataParallelTrainer::new(net, AdamConfig::new().init(), cpus(devices))
                    .unwrap()
                    .with_split_policy(Chunk);
            let got = trained(&mut trainer, &batches);
            // The run moved from where it started: a wrong normalization would show.
            assert!(max_param_diff::<AB, _>(&got, &start.plain()) > 1e-3);
            let what = format!("2D {two_d}, {devices} devices, {rows} rows");
            assert_same(&got, &expected.plain(), &what);
        }
    }
}

#[test]
fn accumulated_micro_batches_and_the_adaptive_split_equal_one_device() {
    let _generator = exclusive();
    for two_d in [false, true] {
        let net = Net::<AB>::new(two_d);
        // Micro-batches of 9 and 5 rows; the last step's second one has 2 rows for 3 devices.
        let batches = steps(&[&[9, 5], &[12, 4], &[7, 2]]);
        let expected = reference(common::zoo::copy(&net), &batches);
        let mut trainer = DataParallelTrainer::new(net, AdamConfig::new().init(), cpus(3))
            .unwrap()
            .with_split_policy(Adaptive::new());
        let got = trained(&mut trainer, &batches);
        assert_same(
            &got,
            &expected.plain(),
            &format!("2D {two_d}, accumulated, adaptive"),
        );
    }
}

#[test]
fn outputs_and_gradients_equal_one_device() {
    let _generator = exclusive();
    for two_d in [false, true] {
        let net = Net::<AB>::new(two_d);
        let (x, y) = batch(10, 99);
        let reference = net.plain();
        // One forward pass: each updates the running statistics.
        let expected_logits = reference.logits(x.clone());
        let loss = common::zoo::cross_entropy(expected_logits.clone(), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &reference);
        // SGD at rate 1: the parameters move by exactly the gradient.
        let expected = SgdConfig::new()
            .init::<AB, Net<AB>>()
            .step(1.0, reference, grads);

        let outputs = Mutex::new(Vec::new());
        let mut trainer = DataParallelTrainer::new(net, SgdConfig::new().init(), cpus(4))
            .unwrap()
            .with_split_policy(Chunk);
        let stats = trainer
            .step(1.0, (x, y), |net: &Net<AB>, (x, y)| {
                let logits = net.logits(x);
                let index = burn_data_parallel::current_replica().unwrap().index;
                outputs
                    .lock()
                    .unwrap()
                    .push((index, logits.clone().inner()));
                common::zoo::cross_entropy(logits, y)
            })
            .unwrap();
        let mut outputs = outputs.into_inner().unwrap();
        outputs.sort_by_key(|(index, _)| *index);
        let logits = Tensor::cat(outputs.into_iter().map(|(_, l)| l).collect(), 0);
        let diff = common::max_abs_diff(logits, expected_logits.inner());
        assert!(diff <= TOLERANCE, "2D {two_d}: outputs differ by {diff}");
        let loss: f32 = loss_value(&stats);
        assert!(loss.is_finite());
        let what = format!("2D {two_d}: SGD step");
        assert_same(&plain_copy(trainer.module()), &expected.plain(), &what);
    }
}

fn loss_value(stats: &burn_data_parallel::BatchStats) -> f32 {
    stats.loss as f32
}

#[test]
fn a_seeded_run_repeats_and_trains_as_one_device() {
    let _generator = exclusive();
    let start = Net::<AB>::new(true);
    let run = |seed: Option<u64>| {
        let net = common::zoo::copy(&start);
        let mut trainer = DataParallelTrainer::new(net, AdamConfig::new().init(), cpus(3))
            .unwrap()
            .with_split_policy(Chunk);
        if let Some(seed) = seed {
            trainer = trainer.with_seed(seed);
        }
        trained(&mut trainer, &steps(&[&[10], &[7]]))
    };
    // Seeded, the forward passes run in turns, passed on at each synchronized layer.
    let (a, b) = (run(Some(3)), run(Some(3)));
    assert_same(&a, &b, "the same seed twice");
    let expected = reference(common::zoo::copy(&start), &steps(&[&[10], &[7]]));
    assert_same(
        &a,
        &expected.plain(),
        "seeded (no dropout) against one device",
    );
}

#[test]
fn data_parallel_forward_refuses_to_train_it_on_several_devices() {
    let _generator = exclusive();
    let net = Net::<AB>::new(true);
    let mut parallel = DataParallel::new(net.clone(), cpus(2)).unwrap();
    let (x, _) = batch(6, 1);
    let err = parallel
        .forward(x.clone(), |net: &Net<AB>, x| net.logits(x))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataParallelError::SyncBatchNorm {
                source: SyncNormError::NotSynchronized { .. },
                ..
            }
        ),
        "{err}"
    );
    // Evaluation uses the running statistics: any split gives one device's outputs.
    let valid = net.valid();
    let expected = valid.logits(x.clone().inner());
    let mut parallel = DataParallel::new(valid, cpus(2)).unwrap();
    let got = parallel
        .forward(x.inner(), |net: &Net<common::B>, x| net.logits(x))
        .unwrap();
    assert!(common::max_abs_diff(got, expected) <= TOLERANCE);
}

/// A replica failing before the layer, with the forward passes concurrent or in seeded turns
/// (the first or a later one in turn), fails the step with its own error, and nobody waits.
#[test]
fn a_replica_failing_before_the_layer_fails_the_step_with_its_own_error() {
    let _generator = exclusive();
    // A hang is a failure here, not a test that never ends.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fail_replicas_in_turn_and_not();
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the failing steps ended (a replica waited for ever otherwise)");
}

fn fail_replicas_in_turn_and_not() {
    // Before the layer's meetings, or after them (the others then wait in the backward pass).
    for (seed, after) in [
        (None, false),
        (Some(5), false),
        (None, true),
        (Some(5), true),
    ] {
        for failing in [0, 1] {
            let net = Net::<AB>::new(true);
            let mut trainer =
                DataParallelTrainer::new(net, SgdConfig::new().init(), cpus(3)).unwrap();
            if let Some(seed) = seed {
                trainer = trainer.with_seed(seed);
            }
            let err = trainer
                .step(0.1, batch(9, 4), |net: &Net<AB>, (x, y)| {
                    let fails = burn_data_parallel::current_replica().unwrap().index == failing;
                    if fails && !after {
                        panic!("replica {failing}'s data is bad");
                    }
                    let loss = net.loss(x, y);
                    if fails {
                        panic!("replica {failing}'s loss is bad");
                    }
                    loss
                })
                .unwrap_err();
            assert!(
                matches!(&err, DataParallelError::ReplicaPanicked { replica, message, .. }
                    if *replica == failing && message.contains("bad")),
                "seed {seed:?}, replica {failing}, after the layer {after}: {err}"
            );
            // The trainer goes on with the next step.
            trainer
                .step(0.1, batch(9, 4), |net: &Net<AB>, (x, y)| net.loss(x, y))
                .unwrap();
        }
    }
}

#[test]
fn a_batch_norm_record_loads_into_a_sync_batch_norm_and_back() {
    let _generator = exclusive();
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let device = cpu();
    let mut norm = BatchNormConfig::new(3).init::<common::B>(&device);
    norm.gamma = burn::module::Param::from_tensor(Tensor::from_floats([1.5, 2.0, 2.5], &device));
    norm.running_mean = RunningState::new(Tensor::from_floats([0.1, 0.2, 0.3], &device));
    let bytes = recorder.record(norm.clone().into_record(), ()).unwrap();
    let sync = SyncBatchNorm::new(&BatchNormConfig::new(3), &device)
        .load_record(recorder.load(bytes, &device).unwrap());
    let x = common::normal([4, 3, 2, 2], 8);
    assert!(common::max_abs_diff(sync.forward(x.clone()), norm.forward(x.clone())) == 0.0);
    let bytes = recorder.record(sync.into_record(), ()).unwrap();
    let back = BatchNormConfig::new(3)
        .init::<common::B>(&device)
        .load_record(recorder.load(bytes, &device).unwrap());
    assert!(common::max_abs_diff(back.forward(x.clone()), norm.forward(x)) == 0.0);
}

/// With dropout before and after the batch norm, a seeded run repeats (each replica draws
/// from its own seed again when its turn comes back after the layer) and another seed differs.
#[test]
fn seeded_dropout_around_the_layer_repeats_and_another_seed_differs() {
    let _generator = exclusive();
    let start = Net {
        dropout: Some(DropoutConfig::new(0.3).init()),
        ..Net::<AB>::new(true)
    };
    let run = |seed: u64| {
        let mut trainer =
            DataParallelTrainer::new(common::zoo::copy(&start), AdamConfig::new().init(), cpus(3))
                .unwrap()
                .with_split_policy(Chunk)
                .with_seed(seed);
        trained(&mut trainer, &steps(&[&[10], &[7]]))
    };
    let (a, b, c) = (run(3), run(3), run(4));
    let same = max_param_diff::<AB, _>(&a, &b);
    assert!(same <= TOLERANCE, "the same seed twice: {same}");
    let other = max_param_diff::<AB, _>(&a, &c);
    assert!(other > 1e-4, "another seed: {other}");
}
