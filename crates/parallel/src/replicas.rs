//! The replica lifecycle: how a module is copied onto another device, and which copies are
//! kept.
//!
//! Replica 0 is the module itself (it lives on the first device), so one device means no copy
//! at all. The other replicas come in two kinds ([`Link`]):
//! - **detached** copies, made the first time their device is needed and kept across calls
//!   until the module changes: for inference, and for the trainers, which run a backward pass
//!   per replica. PyTorch instead re-broadcasts every parameter on every forward call.
//! - **connected** copies, made on every call of a module that is being trained through
//!   [`DataParallel`](crate::DataParallel) itself: their parameters are differentiable device
//!   moves of the module's, as PyTorch's `replicate` makes them, so one `backward()` on the
//!   gathered output reaches the module's parameters through every replica.
//!
//! Either way a replica's buffers (BatchNorm's running statistics, Burn's `RunningState`) are
//! its own. Burn 0.21 shares a `RunningState` between every clone of a module and moves it in
//! place in `fork` and `to_device`, so a plain `module.clone().fork(device)` would move the
//! module's statistics to the replica's device and let every replica update one value.

use crate::by_id::ById;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, HasAutodiffModule, Module};
use burn::tensor::backend::Backend;

/// A module that data parallelism can copy onto other devices, each copy with buffers of its
/// own. Every `#[derive(Module)]` type built from Burn's modules implements it.
///
/// Burn 0.21 makes a module with fresh buffers only when it moves a module onto an autodiff
/// backend and back (`from_inner`, `valid`); the copy goes through `Autodiff<B>` to get them,
/// whatever `B` is. No tensor data is copied.
pub trait Replicate<B: Backend>: Module<B> {
    /// A clone of `self` whose buffers are not shared with `self`. Its parameters hold the same
    /// values, detached from any autodiff graph and requiring no gradient.
    fn unaliased(&self) -> Self;
}

impl<B, M> Replicate<B> for M
where
    B: Backend,
    M: Module<B> + HasAutodiffModule<Autodiff<B>>,
{
    fn unaliased(&self) -> Self {
        // Without `no_grad`, the trip through `Autodiff<B>` would record a step per parameter in
        // Burn's autodiff graph registry, which only the next `backward()` clears.
        let detached = self.clone().no_grad();
        <M as HasAutodiffModule<Autodiff<B>>>::TrainModule::from_inner(detached).valid()
    }
}

/// How a replica's parameters relate to the module's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Leaves of their own (`fork`): gradients stay on the replica.
    Detached,
    /// Device moves of the module's parameters (`to_device`): gradients flow back to them.
    Connected,
}

/// A replica of `module` on `device`, with buffers of its own.
pub(crate) fn replica<B: Backend, M: Replicate<B>>(
    module: &M,
    device: &B::Device,
    link: Link,
) -> M {
    // The unaliased copy's parameters are detached; the module's own tensors go back in, so
    // that `fork` keeps which ones require a gradient and `to_device` links them to the graph.
    let copy = module.unaliased().map(&mut ById::of(module));
    match link {
        Link::Detached => copy.fork(device),
        Link::Connected => copy.to_device(device),
    }
}

/// The copies of a module on devices `1..` that are kept between calls: `copies[i]` lives on
/// `devices[i + 1]`.
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

    /// The copies kept, leaving none.
    pub(crate) fn take(&mut self) -> Vec<M> {
        std::mem::take(&mut self.copies)
    }

    /// Keeps `copies` (for devices `1..`, in order) in place of any made so far.
    pub(crate) fn set(&mut self, copies: Vec<M>) {
        self.builds += copies.len();
        self.copies = copies;
    }

    /// Copies made since creation, refreshes included.
    #[cfg(test)]
    pub(crate) fn builds(&self) -> usize {
        self.builds
    }

    /// Makes sure that the first `count` devices have a detached replica, and returns them in
    /// order, the module itself first.
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
        M: Replicate<B>,
    {
        while self.copies.len() + 1 < count {
            let device = &devices[self.copies.len() + 1];
            self.copies.push(replica(module, device, Link::Detached));
            self.builds += 1;
        }
        std::iter::once(module)
            .chain(&self.copies[..count - 1])
            .collect()
    }
}

/// Puts `module` on `device` with its parameters materialized and its buffers up to date.
///
/// Burn creates parameters lazily; `devices()` forces them into existence, so that the clones
/// made afterwards share one set of weights instead of each drawing their own. A `RunningState`
/// keeps each thread's last update apart until it is read back on that thread or saved; saving
/// a clone folds them in now, before replicas on other threads read the value.
pub(crate) fn place_on<B: Backend, M: Module<B>>(module: M, device: &B::Device) -> M {
    let module = if module.devices().iter().all(|d| d == device) {
        module
    } else {
        module.fork(device)
    };
    settle(&module);
    module
}

/// Folds the pending per-thread updates of `module`'s buffers into their value.
pub(crate) fn settle<B: Backend, M: Module<B>>(module: &M) {
    let _ = module.clone().into_record();
}
