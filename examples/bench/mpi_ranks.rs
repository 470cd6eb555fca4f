//! W3 over MPI ranks (feature `mpi`): each rank, one process under `mpirun`, trains on its
//! `256 / ranks` rows of the global batch with one CPU device, and the gradients are summed by
//! one all-reduce per step. Every rank runs the same fixed number of steps (a step is
//! collective); rank 0 reports.

use crate::spec::Spec;

#[cfg(not(feature = "mpi"))]
pub fn measure(_spec: &Spec) -> anyhow::Result<()> {
    anyhow::bail!("MPI ranks need a build with `--features mpi`")
}

#[cfg(feature = "mpi")]
pub fn measure(spec: &Spec) -> anyhow::Result<()> {
    use crate::spec::Measurement;
    use crate::workloads::{W3_BATCH, W3_LR, median, mlp_config, w3_batch};
    use burn::backend::Autodiff;
    // The CPU backend the other rows of the report use.
    #[cfg(feature = "flex")]
    use burn::backend::Flex as Cpu;
    #[cfg(not(feature = "flex"))]
    use burn::backend::NdArray as Cpu;
    use burn::module::Module;
    use burn::optim::SgdConfig;
    use burn::tensor::backend::Backend;
    use burn_data_parallel::dist::{DistributedTrainer, Mpi};
    use burn_data_parallel::{DataParallelTrainer, LossReduction};
    use dp_model::Classifier;
    use std::time::Instant;

    type B = Autodiff<Cpu>;
    let mpi = Mpi::init()?;
    let device = Default::default();
    let model = mlp_config().init::<B>(&device).fork(&device);
    let model = if spec.runner == crate::spec::Runner::MpiRanksFineTune {
        model.freeze_hidden_layers()
    } else {
        model
    };
    let local = DataParallelTrainer::new(model, SgdConfig::new().init(), vec![device])?;
    let mut trainer = DistributedTrainer::new(&mpi, local, LossReduction::Mean)?;
    let (x, y) = w3_batch::<B>(&device);
    let rows = W3_BATCH.div_ceil(mpi.size());
    let start_row = (mpi.rank() * rows).min(W3_BATCH);
    let end_row = (start_row + rows).min(W3_BATCH);
    let (x, y) = (
        x.narrow(0, start_row, end_row - start_row),
        y.narrow(0, start_row, end_row - start_row),
    );
    let mut step = || -> anyhow::Result<()> {
        trainer.step(W3_LR, (x.clone(), y.clone()), |m, (x, y)| m.loss(x, y))?;
        Ok(())
    };
    for _ in 0..5 {
        step()?;
    }
    let iterations = ((spec.seconds * 25.0) as usize).max(10);
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        step()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    let exchanged = trainer.exchange_stats();
    trainer.finish()?;
    let (_, median_seconds) = median(samples);
    if mpi.rank() == 0 {
        let measurement = Measurement {
            spec: spec.clone(),
            backend: B::name(&device),
            iterations,
            median_seconds,
            rows_per_second: W3_BATCH as f64 / median_seconds,
            exchanged_values: Some(exchanged.values / exchanged.all_reduces.max(1)),
        };
        println!("RESULT {}", serde_json::to_string(&measurement)?);
    }
    Ok(())
}
