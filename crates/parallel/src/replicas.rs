//! The replica lifecycle: one copy of the module per extra device, made the first time that
//! device is needed, kept across calls, and dropped when the module changes.
//!
//! Replica 0 is the module itself (it lives on the first device), so one device means no copy
//! at all. PyTorch instead re-broadcasts every parameter on every forward call.

use burn::module::Module;
use burn::tensor::backend::Backend;

/// The copies of a module on devices `1..`: `copies[i]` lives on `devices[i + 1]`.
#[derive(Debug)]
pub(crate) struct Replicas<M> {
    copies: Vec<M>,
    builds: usize,
}

impl<M> Default for Replicas<M> {
    fn default() -> Self {
        Self {
            copies: Vec::new(),
            builds: 0,
        }
    }
}

impl<M> Replicas<M> {
    /// Forgets every copy: the module's parameters changed.
    pub(crate) fn invalidate(&mut self) {
        self.copies.clear();
    }

    /// Copies made since creation, refreshes included.
    pub(crate) fn builds(&self) -> usize {
        self.builds
    }

    /// Makes sure that the first `count` devices have a replica, and returns them in order.
    ///
    /// `module` must already live on `devices[0]` with its parameters materialized (see
    /// [`place_on`]), or every copy would draw its own random initialisation.
    pub(crate) fn ensure<'a, B>(
        &'a mut self,
        module: &'a M,
        devices: &[B::Device],
        count: usize,
    ) -> Vec<&'a M>
    where
        B: Backend,
        M: Module<B>,
    {
        while self.copies.len() + 1 < count {
            let device = &devices[self.copies.len() + 1];
            // `fork`, not `to_device`: on an autodiff backend `to_device` would tie the copy to
            // the original's graph.
            self.copies.push(module.clone().fork(device));
            self.builds += 1;
        }
        std::iter::once(module)
            .chain(&self.copies[..count - 1])
            .collect()
    }
}

/// Puts `module` on `device` with its parameters materialized.
///
/// Burn creates parameters lazily; `devices()` forces them into existence, so that the clones
/// made afterwards share one set of weights instead of each drawing their own.
pub(crate) fn place_on<B: Backend, M: Module<B>>(module: M, device: &B::Device) -> M {
    if module.devices().iter().all(|d| d == device) {
        module
    } else {
        module.fork(device)
    }
}
