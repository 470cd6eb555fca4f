//! How inputs are split into one part per replica, and how the replicas' outputs are merged.
//!
//! [`Scatter`] and [`Gather`] are implemented for tensors of any rank and kind, for tuples of up
//! to six of them, for `Vec`s, and (input only) for [`Whole`] values that every replica receives
//! entire. Implement them for your own input and output types to pass those through
//! [`DataParallel`](crate::DataParallel).

mod tensor;
mod tuple;
mod vec;
mod whole;

pub use whole::{ToDevice, Whole};

use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;

/// An input that can be split along one dimension into one part per replica.
///
/// Your own batch type splits by delegating to the tuple of its tensors:
///
/// ```
/// use burn::tensor::backend::Backend;
/// use burn::tensor::{Int, Tensor};
/// use burn_data_parallel::{Result, Scatter};
///
/// struct Batch<B: Backend> {
///     images: Tensor<B, 4>,
///     labels: Tensor<B, 1, Int>,
/// }
///
/// impl<B: Backend> Scatter<B> for Batch<B> {
///     fn rows(&self, dim: usize) -> Result<Option<usize>> {
///         (self.images.clone(), self.labels.clone()).rows(dim)
///     }
///
///     fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
///         (self.images, self.labels)
///             .scatter(dim, sizes, devices)
///             .into_iter()
///             .map(|(images, labels)| Batch { images, labels })
///             .collect()
///     }
/// }
/// ```
pub trait Scatter<B: Backend>: Sized + Send {
    /// The size along `dim` of the tensors to split, or `None` when nothing in `self` is split
    /// (every replica receives it whole).
    ///
    /// Errors when `dim` does not exist, or when two tensors disagree: nothing is ever truncated.
    fn rows(&self, dim: usize) -> Result<Option<usize>>;

    /// Splits `self` into `sizes.len()` parts along `dim`, part `i` having `sizes[i]` rows and
    /// living on `devices[i]`.
    ///
    /// Called only after [`rows`](Scatter::rows) succeeded, with non-zero sizes summing to its
    /// answer and with at least as many devices as sizes. Must return exactly one part per size.
    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self>;
}

/// An output that can be merged from the parts the replicas return.
pub trait Gather<B: Backend>: Sized + Send {
    /// Merges `parts`, in replica order, into one value on `device`, concatenating along `dim`,
    /// so that row `i` of the result comes from row `i` of the input.
    fn gather(parts: Vec<Self>, dim: usize, device: &B::Device) -> Result<Self>;

    /// The size along `dim` of every tensor of this output that [`gather`](Gather::gather)
    /// concatenates: each must be the rows of the input part it was computed from, or the
    /// concatenation would not line up with the input (a mean over the part, a loss, rows
    /// repeated). Checked by [`DataParallel`](crate::DataParallel) before it gathers. The
    /// default, for a type that does not say, is nothing to check.
    fn output_rows(&self, dim: usize) -> Vec<usize> {
        let _ = dim;
        Vec::new()
    }
}

/// Combines the row counts of two members of one input.
pub(crate) fn merge_rows(
    dim: usize,
    acc: Option<usize>,
    next: Option<usize>,
) -> Result<Option<usize>> {
    match (acc, next) {
        (Some(expected), Some(found)) if expected != found => Err(DataParallelError::RowMismatch {
            dim,
            expected,
            found,
        }),
        (Some(rows), _) | (None, Some(rows)) => Ok(Some(rows)),
        (None, None) => Ok(None),
    }
}
