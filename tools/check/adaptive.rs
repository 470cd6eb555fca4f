//! The adaptive split on this machine's devices: the last replica is made slow (a sleep per
//! row), its share must fall, and the parameters after the steps must be those of
//! single-device training on the same batches.

use crate::Outcome;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_data_parallel::{Adaptive, Chunk, DataParallelTrainer, SplitPolicy, current_replica};
use dp_model::{Classifier, Mlp, MlpConfig};
use dp_zoo::compare::max_param_diff;
use std::time::Duration;

const ROWS: usize = 64;
const STEPS: usize = 8;
/// SGD: Adam would amplify the rounding of near-zero gradients over the steps (see `LR` in
/// main.rs) and test that rather than the split.
const LR: f64 = 0.1;

pub fn checks<B: AutodiffBackend>(
    devices: &[B::Device],
    tolerance: f32,
) -> anyhow::Result<Vec<Outcome>> {
    if devices.len() < 2 {
        return Ok(Vec::new());
    }
    let d = &devices[0];
    let slow = devices.len() - 1;
    let start: Mlp<B> = MlpConfig::new(16, vec![32], 4).init::<B>(d).fork(d);
    let batches: Vec<(Tensor<B, 2>, Tensor<B, 1, Int>)> = (0..STEPS)
        .map(|_| {
            let x = Tensor::random([ROWS, 16], Distribution::Normal(0.0, 1.0), d);
            let y = Tensor::<B, 1>::random([ROWS], Distribution::Uniform(0.0, 4.0), d).int();
            (x, y)
        })
        .collect();

    let mut reference = start.clone();
    let mut optimizer = SgdConfig::new().init::<B, Mlp<B>>();
    for (x, y) in batches.clone() {
        let grads = GradientsParams::from_grads(reference.loss(x, y).backward(), &reference);
        reference = optimizer.step(LR, reference, grads);
    }

    let mut trainer = DataParallelTrainer::new(start, SgdConfig::new().init(), devices.to_vec())?
        .with_split_policy(Adaptive::new());
    let mut slow_rows = Vec::new();
    for batch in batches {
        let stats = trainer.step(LR, batch, |m: &Mlp<B>, (x, y)| {
            if current_replica().is_some_and(|r| r.index == slow) {
                std::thread::sleep(Duration::from_millis(x.dims()[0] as u64));
            }
            m.loss(x, y)
        })?;
        slow_rows.push(stats.replicas.get(slow).map_or(0, |r| r.rows));
    }
    let first = Chunk
        .sizes(ROWS, devices.len())
        .get(slow)
        .copied()
        .unwrap_or(0);
    let last = slow_rows.last().copied().unwrap_or(0);
    Ok(vec![
        Outcome::new(
            format!("{STEPS} SGD steps with an adaptive split, the last replica slowed"),
            max_param_diff(trainer.module(), &reference),
            tolerance,
        ),
        Outcome::check(
            "the adaptive split takes rows off the slowed replica".into(),
            (1..first.max(2)).contains(&last),
            format!(
                "its rows per step {slow_rows:?} (torch.chunk gives it {first}); shares {:?}",
                trainer.split_policy().shares()
            ),
        ),
    ])
}
