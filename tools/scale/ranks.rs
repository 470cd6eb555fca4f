//! The point over the ranks of an MPI job (`--mpi`), and the drift of 16-bit gradient sums.

use crate::measure::{self, Exchanged};
use crate::{Args, OptimizerKind, Precision};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_data_parallel::dist::{DistributedTrainer, GradientPrecision, GradientTransport, Mpi};
use burn_data_parallel::{DataParallelTrainer, ShardableRecord, Trainer};
use dp_model::Mlp;
use serde::Serialize;

pub struct Job<'a> {
    pub args: Args,
    pub mpi: &'a std::rc::Rc<Mpi>,
}

impl dp_backend::Job for Job<'_> {
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _label: &str) -> anyhow::Result<()> {
        let Job { args, mpi } = self;
        // Seeded, so that a point's run repeats.
        B::seed(&devices[0], 7);
        let model = args.model_config()?.init::<B>(&devices[0]);
        match args.optimizer {
            OptimizerKind::Sgd => run(
                &args,
                mpi,
                model,
                burn::optim::SgdConfig::new().init(),
                devices,
            ),
            OptimizerKind::Adam => run(
                &args,
                mpi,
                model,
                burn::optim::AdamConfig::new().init(),
                devices,
            ),
        }
    }

    fn announce(&self, line: std::fmt::Arguments) {
        if self.mpi.rank() == 0 {
            eprintln!("{line}");
        }
    }

    fn machine_share(&self) -> (usize, usize) {
        (self.mpi.local_rank(), self.mpi.local_size())
    }
}

fn precision(p: Precision) -> GradientPrecision {
    match p {
        Precision::F32 => GradientPrecision::F32,
        Precision::Bf16 => GradientPrecision::Bf16,
        Precision::F16 => GradientPrecision::F16,
    }
}

/// A trainer over the ranks, summing in `p` (through MPI's host copies where `p` compresses),
/// the optimizer state sharded if asked.
fn trainer<B, O>(
    args: &Args,
    mpi: &std::rc::Rc<Mpi>,
    model: Mlp<B>,
    optimizer: O,
    devices: Vec<B::Device>,
    p: Precision,
) -> anyhow::Result<DistributedTrainer<B, Mlp<B>, O>>
where
    B: AutodiffBackend,
    O: Optimizer<Mlp<B>, B>,
    O::Record: ShardableRecord<B>,
{
    let local = DataParallelTrainer::new(model, optimizer, devices)?;
    let transport = match p {
        Precision::F32 => GradientTransport::Auto,
        _ => GradientTransport::Mpi,
    };
    let trainer = DistributedTrainer::with_transport(mpi.clone(), local, transport)?
        .with_gradient_precision(precision(p))?;
    Ok(if args.shard_optimizer {
        trainer.with_sharded_optimizer()?
    } else {
        trainer
    })
}

fn run<B, O>(
    args: &Args,
    mpi: &std::rc::Rc<Mpi>,
    model: Mlp<B>,
    optimizer: O,
    devices: Vec<B::Device>,
) -> anyhow::Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<Mlp<B>, B> + Clone,
    O::Record: ShardableRecord<B>,
{
    if let Some(steps) = args.drift {
        return drift(args, mpi, model, optimizer, devices, steps);
    }
    let mut trainer = trainer(args, mpi, model, optimizer, devices, args.precision)?;
    let exchanged = |t: &DistributedTrainer<B, Mlp<B>, O>| {
        let stats = t.exchange_stats();
        Exchanged {
            time: stats.time,
            host_time: stats.host_time,
            bytes: stats.bytes,
        }
    };
    let rank_0s = |v: u64| mpi.all_gather(&[v])[0];
    let measured = measure::point(args, &mut trainer, exchanged, rank_0s)?;
    trainer.finish()?;
    let slowest = mpi
        .all_gather(&[measured.phases.compute.to_bits()])
        .into_iter()
        .map(f64::from_bits)
        .fold(0.0, f64::max);
    if mpi.rank() == 0 {
        let point = measured.finish_with(args, mpi.size(), slowest);
        println!("POINT {}", serde_json::to_string(&point)?);
    }
    Ok(())
}

/// How far `--precision`'s sums take training from exact sums.
#[derive(Serialize)]
struct Drift {
    model: String,
    params: usize,
    batch: usize,
    ranks: usize,
    optimizer: OptimizerKind,
    precision: Precision,
    steps: usize,
    /// The largest difference of a parameter after the last step.
    max_abs: f64,
    /// The parameters' distance over the exact run's norm, after the last step.
    relative: f64,
    /// The same after each step.
    relative_by_step: Vec<f64>,
    /// The training loss of each run at each step (compressed, exact).
    loss: Vec<(f64, f64)>,
    /// Whether every rank ends with the same parameters, to the bit.
    ranks_agree: bool,
}

fn drift<B, O>(
    args: &Args,
    mpi: &std::rc::Rc<Mpi>,
    model: Mlp<B>,
    optimizer: O,
    devices: Vec<B::Device>,
    steps: usize,
) -> anyhow::Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<Mlp<B>, B> + Clone,
    O::Record: ShardableRecord<B>,
{
    let device = devices[0].clone();
    // Burn initializes parameters when first read, each clone on its own: both runs load one
    // record instead.
    let exact_model = model.clone().load_record(model.clone().into_record());
    let model = model.clone().load_record(exact_model.clone().into_record());
    let mut compressed = trainer(
        args,
        mpi,
        model,
        optimizer.clone(),
        devices.clone(),
        args.precision,
    )?;
    let mut exact = trainer(args, mpi, exact_model, optimizer, devices, Precision::F32)?;
    let lr = measure::lr(args.optimizer);
    let mut relative_by_step = Vec::with_capacity(steps);
    let mut loss = Vec::with_capacity(steps);
    for step in 0..steps {
        let batch = measure::batch::<B, _>(args, &compressed, &device, step as u64 + 1)?;
        let a = compressed.step(lr, batch.clone(), measure::loss(args))?;
        let b = exact.step(lr, batch, measure::loss(args))?;
        loss.push((a.loss, b.loss));
        relative_by_step.push(distance(compressed.module(), exact.module()).1);
    }
    let (max_abs, relative) = distance(compressed.module(), exact.module());
    let mine = params(compressed.module());
    let fingerprint = mine.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
    });
    let all = mpi.all_gather(&[fingerprint]);
    let ranks_agree = all.iter().all(|&f| f == all[0]);
    let params = compressed.module().num_params();
    compressed.finish()?;
    exact.finish()?;
    if mpi.rank() == 0 {
        let drift = Drift {
            model: args.model.clone(),
            params,
            batch: args.batch,
            ranks: mpi.size(),
            optimizer: args.optimizer,
            precision: args.precision,
            steps,
            max_abs,
            relative,
            relative_by_step,
            loss,
            ranks_agree,
        };
        println!("DRIFT {}", serde_json::to_string(&drift)?);
    }
    Ok(())
}

/// Every float parameter of `module`, in visiting order.
fn params<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>().into_vec::<f32>();
            self.0.extend(values.unwrap_or_default());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// The largest difference between two modules' parameters, and their distance over `b`'s norm.
fn distance<B: Backend, M: Module<B>>(a: &M, b: &M) -> (f64, f64) {
    let (a, b) = (params(a), params(b));
    let mut max: f64 = 0.0;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = f64::from(*x) - f64::from(*y);
        max = max.max(d.abs());
        diff += d * d;
        norm += f64::from(*y) * f64::from(*y);
    }
    (max, (diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}
