//! Values that every replica receives entire, moved to its device.

use super::Scatter;
use crate::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{BasicOps, Tensor};
use std::sync::Arc;

/// An input that is not split: every replica receives its own copy, on its own device.
///
/// Use it for a mask shared by all rows, a scale factor, a configuration: anything that PyTorch
/// would pass to every replica unchanged.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use burn_data_parallel::{DataParallel, Whole};
///
/// let device = Default::default();
/// let linear = burn::nn::LinearConfig::new(3, 3).init::<NdArray>(&device);
/// let mut dp = DataParallel::new(linear, vec![device; 2]).unwrap();
/// let x = Tensor::<NdArray, 2>::ones([6, 3], &device);
/// let bias = Tensor::<NdArray, 1>::from_data([1.0, 2.0, 3.0], &device);
/// // Each replica sees 3 rows of `x` and all of `bias`.
/// let y = dp
///     .forward((x, Whole(bias)), |_, (x, Whole(bias))| x + bias.unsqueeze())
///     .unwrap();
/// assert_eq!(y.dims(), [6, 3]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Whole<T>(pub T);

impl<B: Backend, T: ToDevice<B> + Clone + Send> Scatter<B> for Whole<T> {
    fn rows(&self, _dim: usize) -> Result<Option<usize>> {
        Ok(None)
    }

    fn scatter(self, _dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        devices[..sizes.len()]
            .iter()
            .map(|device| Whole(self.0.clone().to_device(device)))
            .collect()
    }
}

/// Moves a value to a device; for values that live on no device, the identity.
///
/// Implemented for tensors, plain values, `String`, `Arc`, `Option` and `Vec`. Implement it
/// (usually as the identity) to pass your own types in a [`Whole`].
pub trait ToDevice<B: Backend> {
    /// `self`, on `device`.
    fn to_device(self, device: &B::Device) -> Self;
}

impl<B: Backend, const D: usize, K: BasicOps<B>> ToDevice<B> for Tensor<B, D, K> {
    fn to_device(self, device: &B::Device) -> Self {
        Tensor::to_device(self, device)
    }
}

macro_rules! host_values {
    ($($ty:ty),*) => {$(
        impl<B: Backend> ToDevice<B> for $ty {
            fn to_device(self, _device: &B::Device) -> Self {
                self
            }
        }
    )*};
}

host_values!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    &'static str
);

impl<B: Backend, T: ?Sized> ToDevice<B> for Arc<T> {
    fn to_device(self, _device: &B::Device) -> Self {
        self
    }
}

impl<B: Backend, T: ToDevice<B>> ToDevice<B> for Option<T> {
    fn to_device(self, device: &B::Device) -> Self {
        self.map(|value| value.to_device(device))
    }
}

impl<B: Backend, T: ToDevice<B>> ToDevice<B> for Vec<T> {
    fn to_device(self, device: &B::Device) -> Self {
        self.into_iter()
            .map(|value| value.to_device(device))
            .collect()
    }
}
