//! Evaluation on the inference module, each row counted once across devices and ranks.

use super::DataParallelTrainer;
use super::metric::Partial;
use crate::{Metric, Replicate, Result, Scatter};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::{AutodiffBackend, Backend};

impl<B, M, O> DataParallelTrainer<B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    /// Combines `metric` over every row of `set`, split across the devices by the trainer's
    /// split policy (which learns nothing from it) and with its threads, on the inference
    /// module (`valid()`): sums added, means weighted; see
    /// [`Trainer::evaluate`](crate::Trainer::evaluate).
    pub fn evaluate<I, V, F, const K: usize>(&self, set: I, metric: F) -> Result<[f64; K]>
    where
        M::InnerModule: Replicate<B::InnerBackend> + Sync,
        I: Scatter<B::InnerBackend>,
        V: Into<Metric> + Send,
        F: Fn(&M::InnerModule, I) -> [V; K] + Sync,
    {
        self.evaluate_parts(set, metric)?.finish()
    }

    /// This process's metrics over `set`, not yet combined into values.
    pub(crate) fn evaluate_parts<I, V, F, const K: usize>(
        &self,
        set: I,
        metric: F,
    ) -> Result<Partial>
    where
        M::InnerModule: Replicate<B::InnerBackend> + Sync,
        I: Scatter<B::InnerBackend>,
        V: Into<Metric> + Send,
        F: Fn(&M::InnerModule, I) -> [V; K] + Sync,
    {
        // Made for this evaluation and dropped with it: kept, its handles on the parameters
        // would make the next optimizer step write new buffers instead of updating in place.
        let mut parallel = self.parallel().sibling(self.module().valid())?;
        let parts = parallel.parallel_apply(set, |m, part| metric(m, part))?;
        let mut partial = Partial::empty(K);
        for part in parts {
            partial.add(part.into_iter().map(Into::into))?;
        }
        Ok(partial)
    }
}

/// Rows `rank * n / ranks .. (rank + 1) * n / ranks` of `set` along `dim`, on `devices[0]`, or
/// `None` where that is no row: every row in exactly one rank's part.
pub(crate) fn part_of<B: Backend, I: Scatter<B>>(
    set: I,
    dim: usize,
    rank: usize,
    ranks: usize,
    devices: &[B::Device],
) -> Result<Option<I>> {
    let rows = set.rows(dim)?.unwrap_or(0);
    let std::ops::Range { start, end } = crate::rank_rows(rows, rank, ranks);
    if start == end {
        return Ok(None);
    }
    if rows == end - start {
        return Ok(Some(set));
    }
    let sizes: Vec<usize> = [start, end - start, rows - end]
        .into_iter()
        .filter(|&n| n > 0)
        .collect();
    let mine = usize::from(start > 0);
    let on = vec![devices[0].clone(); sizes.len()];
    Ok(set.scatter(dim, &sizes, &on).into_iter().nth(mine))
}
