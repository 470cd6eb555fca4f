//! Gradient combination on the first device, weighted by rows.
//!
//! For a mean loss, each replica's loss is scaled before its backward pass by its share of the
//! rows, `n_i / N`, so that the plain sum of the replicas' gradients is the gradient of the mean
//! over all `N` rows, however unevenly they were split (DDP's plain average of per-replica means
//! is off whenever the parts differ in size). The scaling rides on the backward pass, so a step
//! costs one addition per extra replica and no pass over the gradients. When micro-batches are
//! accumulated, `N` counts the rows so far and the earlier sum is rescaled once per micro-batch.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Gradients summed since the last optimizer step, on one device.
#[derive(Default)]
pub(crate) struct GradientSum {
    sum: GradientsParams,
    rows: usize,
    parts: usize,
    micro_batches: usize,
    /// The row count the sum is currently weighted for (rows of all processes).
    weighted_for: usize,
}

impl GradientSum {
    /// Micro-batches added since the last [`take`](Self::take), this process's parts empty or
    /// not.
    pub(crate) fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    pub(crate) fn weighted_for(&self) -> usize {
        self.weighted_for
    }

    pub(crate) fn set_weighted_for(&mut self, rows: usize) {
        self.weighted_for = rows;
    }

    /// This process's rows of every micro-batch added since the last [`take`](Self::take).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Adds a micro-batch: `parts` (one per replica, in replica order, none where this process
    /// had no rows) covering `rows` rows, on `device`.
    pub(crate) fn add<B, M>(
        &mut self,
        module: &M,
        parts: Vec<GradientsParams>,
        rows: usize,
        device: &B::Device,
    ) where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        self.parts += parts.len();
        self.micro_batches += 1;
        self.rows += rows;
        module.visit(&mut Add::<B> {
            sum: &mut self.sum,
            parts,
            device,
        });
    }

    /// Multiplies what was summed so far by `scale`.
    pub(crate) fn rescale<B, M>(&mut self, module: &M, scale: f64)
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        if self.parts > 0 && scale != 1.0 {
            module.visit(&mut Scale::<B> {
                grads: &mut self.sum,
                scale,
                _backend: std::marker::PhantomData,
            });
        }
    }

    /// The sum, leaving the accumulator empty.
    pub(crate) fn take(&mut self) -> GradientsParams {
        self.parts = 0;
        self.micro_batches = 0;
        self.rows = 0;
        self.weighted_for = 0;
        std::mem::take(&mut self.sum)
    }
}

/// Adds every part's gradient of each parameter into the sum, moving it to `device`.
struct Add<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    parts: Vec<GradientsParams>,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let mut total = self.sum.remove::<B::InnerBackend, D>(param.id);
        for part in &mut self.parts {
            // A parameter the loss did not reach has no gradient in that part.
            if let Some(grad) = part.remove::<B::InnerBackend, D>(param.id) {
                let grad = grad.to_device(self.device);
                total = Some(match total {
                    Some(total) => total + grad,
                    None => grad,
                });
            }
        }
        if let Some(total) = total {
            self.sum.register(param.id, total);
        }
    }
}

/// Multiplies every gradient by `scale`.
struct Scale<'a, B> {
    grads: &'a mut GradientsParams,
    scale: f64,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.scale));
        }
    }
}
