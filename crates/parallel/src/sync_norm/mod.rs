//! Synchronized batch normalization: [`SyncBatchNorm`], the batch norm whose statistics are
//! those of the whole global batch across replicas and ranks.
//!
//! - [`layer`](self::layer): the module (Burn's `BatchNorm`, record and all).
//! - [`op`](self::op): the autodiff sum over replicas and ranks, forward and backward.
//! - [`group`](self::group): the replicas of one process meeting at each layer.
//! - [`context`](self::context): which meetings the current thread takes part in.
//!
//! Across ranks the totals go through [`RankSum`], implemented over MPI in `dist`.

mod context;
mod error;
mod group;
mod layer;
mod op;

#[cfg(feature = "burn-train")]
pub(crate) use context::refuse;
pub(crate) use context::{Reseed, abandon, forward_done, join};
pub use error::SyncNormError;
pub(crate) use group::{Finish, Group, RankSum};
pub use layer::SyncBatchNorm;
pub(crate) use op::sum;

use burn::module::{Module, ModuleVisitor};
use burn::tensor::backend::Backend;

/// Whether `module` holds a [`SyncBatchNorm`] (asked where ranks decide whether to exchange).
pub(crate) fn contains<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Find(bool);
    impl<B: Backend> ModuleVisitor<B> for Find {
        fn enter_module(&mut self, _: &str, container_type: &str) {
            self.0 |= container_type == "Struct:SyncBatchNorm";
        }
    }
    let mut find = Find(false);
    module.visit(&mut find);
    find.0
}
