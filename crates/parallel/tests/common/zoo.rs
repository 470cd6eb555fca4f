//! The model zoo under test (`dp-zoo`: each model's tiny configuration, seeded data,
//! single-device reference and comparisons), on this suite's autodiff backend.
// Each test binary uses a part of what is re-exported here.
#![allow(unused_imports)]

pub use dp_zoo::compare::{grad_diff, ids, param_diff, relative_diff, values};
pub use dp_zoo::data::{images, rows, tokens};
pub use dp_zoo::models::*;
pub use dp_zoo::reference::{cross_entropy, reference_loss};
pub use dp_zoo::{CLASSES, FEATURES, for_each_model};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;

pub type AB = Autodiff<super::B>;

/// An independent copy of a trainable module on `AB` (see `dp_zoo::reference::copy`).
pub fn copy<M: AutodiffModule<AB>>(module: &M) -> M {
    dp_zoo::reference::copy::<AB, M>(module)
}
