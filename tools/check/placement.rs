//! Where buffers live, and what replicas draw: on distinct devices (GPUs) the module's running
//! statistics must stay on the first device and each replica's on its own device, in
//! evaluation and in training; and in training, replicas must not all apply the same dropout
//! masks. On the CPU all devices are one, so only a machine with GPUs can fail the first two.

use crate::Outcome;
use burn::module::{AutodiffModule, Module};
use burn::optim::SgdConfig;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_data_parallel::{DataParallel, DataParallelTrainer, current_replica};
use dp_model::{Classifier, Cnn, CnnConfig, MlpConfig};
use std::sync::Mutex;

pub fn checks<B: AutodiffBackend>(devices: &[B::Device]) -> anyhow::Result<Vec<Outcome>> {
    let d = &devices[0];
    let model = CnnConfig::new(3, 4).init::<B>(d).fork(d);
    let images = |rows: usize| Tensor::<B, 4>::ones([rows, 3, 12, 12], d);
    let targets = |rows: usize| Tensor::<B, 1, burn::tensor::Int>::zeros([rows], d);
    let rows = 4 * devices.len();
    let mut out = Vec::new();

    let seen = Mutex::new(Vec::new());
    let mut dp = DataParallel::new(model.valid(), devices.to_vec())?;
    dp.forward(images(rows).inner(), |m, x| {
        record(&seen, m, devices);
        m.logits(x)
    })?;
    out.push(placed(
        "evaluation",
        dp.module(),
        d,
        seen.into_inner().unwrap_or_default(),
    ));

    let seen = Mutex::new(Vec::new());
    let mut trainer = DataParallelTrainer::new(model, SgdConfig::new().init(), devices.to_vec())?;
    trainer.step(0.1, (images(rows), targets(rows)), |m: &Cnn<B>, (x, y)| {
        record(&seen, m, devices);
        m.loss(x, y)
    })?;
    out.push(placed(
        "a training step",
        trainer.module(),
        d,
        seen.into_inner().unwrap_or_default(),
    ));

    if devices.len() > 1 {
        let mlp = MlpConfig::new(16, vec![256], 4)
            .with_dropout(0.5)
            .init::<B>(d)
            .fork(d);
        // Every row is the same: replicas' outputs differ only by their masks.
        let mut dp = DataParallel::new(mlp, devices.to_vec())?;
        let rows = 2 * devices.len();
        let y = dp.forward(Tensor::<B, 2>::ones([rows, 16], d), |m, x| m.logits(x))?;
        let first = y.clone().narrow(0, 0, 2);
        let second = y.narrow(0, 2, 2).to_device(d);
        let diff: f32 =
            burn::tensor::ElementConversion::elem((first - second).abs().max().into_scalar());
        out.push(Outcome::check(
            "dropout: replicas 0 and 1 draw different masks".into(),
            diff > 1e-3,
            format!("largest difference between their outputs {diff:e}"),
        ));
    }
    Ok(out)
}

/// Notes, from inside a replica, whether its batch norms' statistics are on its device.
fn record<Bk: Backend>(seen: &Mutex<Vec<(usize, bool)>>, model: &Cnn<Bk>, devices: &[Bk::Device]) {
    let Some(replica) = current_replica() else {
        return;
    };
    let home = &devices[replica.index];
    let at_home = stats_devices(model).iter().all(|d| d == home);
    seen.lock()
        .expect("no replica panics here")
        .push((replica.index, at_home));
}

fn stats_devices<Bk: Backend>(model: &Cnn<Bk>) -> Vec<Bk::Device> {
    model
        .blocks
        .iter()
        .flat_map(|b| {
            [
                b.norm.running_mean().value().device(),
                b.norm.running_var().value().device(),
            ]
        })
        .collect()
}

fn placed<Bk: Backend>(
    when: &str,
    module: &Cnn<Bk>,
    first: &Bk::Device,
    replicas: Vec<(usize, bool)>,
) -> Outcome {
    let module_home = stats_devices(module).iter().all(|d| d == first);
    let away: Vec<usize> = replicas
        .iter()
        .filter(|(_, home)| !home)
        .map(|(index, _)| *index)
        .collect();
    Outcome::check(
        format!("batch-norm statistics stay on their devices in {when}"),
        module_home && away.is_empty() && !replicas.is_empty(),
        format!(
            "the module's on the first device: {module_home}; {} replicas looked, away from \
             their device: {away:?}",
            replicas.len()
        ),
    )
}
