//! W3 over MPI ranks (feature `mpi`): each rank, one process under `mpirun`, trains on its
//! part of the global batch of 256 rows (`rank_rows`: 128 each on 2 ranks, 85, 85 and 86 on 3) with one CPU device, and the gradients are summed by
//! one all-reduce per step (or reduce-scattered, and the parameters all-gathered, with the
//! optimizer state sharded). Every rank runs the same fixed number of steps (a step is
//! collective); rank 0 reports, with the largest optimizer state of any rank.

use crate::spec::Spec;

#[cfg(not(feature = "mpi"))]
pub fn measure(_spec: &Spec) -> anyhow::Result<()> {
    anyhow::bail!("MPI ranks need a build with `--features mpi`")
}

#[cfg(feature = "mpi")]
pub fn measure(spec: &Spec) -> anyhow::Result<()> {
    use crate::spec::Runner;
    use crate::workloads::mlp_config;
    use burn::backend::Autodiff;
    // The CPU backend the other rows of the report use.
    #[cfg(feature = "flex")]
    use burn::backend::Flex as Cpu;
    #[cfg(not(feature = "flex"))]
    use burn::backend::NdArray as Cpu;
    use burn::module::Module;
    use burn::optim::{AdamConfig, SgdConfig};
    use burn_data_parallel::dist::Mpi;

    type B = Autodiff<Cpu>;
    let mpi = std::rc::Rc::new(Mpi::init()?);
    let device = Default::default();
    let model = mlp_config().init::<B>(&device).fork(&device);
    let model = if spec.runner == Runner::MpiRanksFineTune {
        model.freeze_hidden_layers()
    } else {
        model
    };
    match spec.runner {
        Runner::MpiRanksAdam | Runner::MpiRanksSharded => {
            let sharded = spec.runner == Runner::MpiRanksSharded;
            run(spec, &mpi, model, AdamConfig::new().init(), sharded)
        }
        _ => run(spec, &mpi, model, SgdConfig::new().init(), false),
    }
}

#[cfg(feature = "mpi")]
fn run<B, M, O>(
    spec: &Spec,
    mpi: &std::rc::Rc<burn_data_parallel::dist::Mpi>,
    model: M,
    optimizer: O,
    sharded: bool,
) -> anyhow::Result<()>
where
    B: burn::tensor::backend::AutodiffBackend,
    M: dp_model::Classifier<B, Input = burn::tensor::Tensor<B, 2>>
        + burn::module::AutodiffModule<B>
        + burn_data_parallel::Replicate<B>
        + Sync,
    O: burn::optim::Optimizer<M, B>,
    O::Record: burn_data_parallel::ShardableRecord<B>,
{
    use crate::spec::Measurement;
    use crate::workloads::{W3_BATCH, W3_LR, median, w3_batch};
    use burn_data_parallel::dist::DistributedTrainer;
    use burn_data_parallel::{DataParallelTrainer, Trainer};
    use std::time::Instant;

    let device = model.devices()[0].clone();
    let local = DataParallelTrainer::new(model, optimizer, vec![device.clone()])?;
    let mut trainer = DistributedTrainer::new(mpi.clone(), local)?;
    if sharded {
        trainer = trainer.with_sharded_optimizer()?;
    }
    let (x, y) = w3_batch::<B>(&device);
    let std::ops::Range {
        start: start_row,
        end: end_row,
    } = burn_data_parallel::rank_rows(W3_BATCH, mpi.rank(), mpi.size());
    let (x, y) = (
        x.narrow(0, start_row, end_row - start_row),
        y.narrow(0, start_row, end_row - start_row),
    );
    let step = |trainer: &mut DistributedTrainer<B, M, O>| -> anyhow::Result<f64> {
        let stats = trainer.step(W3_LR, (x.clone(), y.clone()), |m, (x, y)| m.loss(x, y))?;
        Ok(stats.replicas.iter().map(|r| r.compute.as_secs_f64()).sum())
    };
    for _ in 0..5 {
        step(&mut trainer)?;
    }
    let iterations = ((spec.seconds * 25.0) as usize).max(10);
    let mut samples = Vec::with_capacity(iterations);
    let mut compute = 0.0;
    let exchanged_before = trainer.exchange_stats();
    for _ in 0..iterations {
        let t = Instant::now();
        compute += step(&mut trainer)?;
        samples.push(t.elapsed().as_secs_f64());
    }
    let exchanged = trainer.exchange_stats();
    let collectives = exchanged.all_reduces + exchanged.reduce_scatters.max(exchanged.all_gathers);
    // A rank that cannot measure its state still takes part in the gather.
    let bytes = trainer.optimizer_state_bytes();
    let sent = bytes.as_ref().map_or(u64::MAX, |&b| b as u64);
    let largest = mpi_max(mpi, sent);
    bytes?;
    anyhow::ensure!(
        largest != u64::MAX,
        "a rank could not measure its optimizer state"
    );
    trainer.finish()?;
    let (_, median_seconds) = median(samples);
    if mpi.rank() == 0 {
        let measurement = Measurement {
            spec: spec.clone(),
            backend: B::name(&device),
            iterations,
            median_seconds,
            rows_per_second: W3_BATCH as f64 / median_seconds,
            exchanged_values: Some(exchanged.values / collectives.max(1)),
            optimizer_bytes: Some(largest as usize),
            exchange_seconds: Some(
                (exchanged.time - exchanged_before.time).as_secs_f64() / iterations as f64,
            ),
            compute_seconds: Some(compute / iterations as f64),
            replica_rows: None,
            load_seconds: None,
            phases: None,
            traffic: None,
        };
        println!("RESULT {}", serde_json::to_string(&measurement)?);
    }
    Ok(())
}

/// The largest of every rank's `value`, on every rank.
#[cfg(feature = "mpi")]
fn mpi_max(mpi: &burn_data_parallel::dist::Mpi, value: u64) -> u64 {
    mpi.all_gather(&[value]).into_iter().max().unwrap_or(value)
}
