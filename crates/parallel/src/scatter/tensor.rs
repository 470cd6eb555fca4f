//! Tensors of any rank and kind: split with `split_with_sizes`, merged with `cat`.

use super::{Gather, Scatter};
use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{BasicOps, Tensor};

impl<B, const D: usize, K> Scatter<B> for Tensor<B, D, K>
where
    B: Backend,
    K: BasicOps<B>,
    Self: Send,
{
    fn rows(&self, dim: usize) -> Result<Option<usize>> {
        if dim >= D {
            return Err(DataParallelError::DimOutOfRange { dim, rank: D });
        }
        Ok(Some(self.dims()[dim]))
    }

    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        if let [_] = sizes {
            return vec![self.to_device(&devices[0])];
        }
        // Not `Tensor::chunk`: it panics on some sizes (5 rows in 4 chunks) and cannot follow a
        // custom policy.
        self.split_with_sizes(sizes.to_vec(), dim)
            .into_iter()
            .zip(devices)
            .map(|(part, device)| part.to_device(device))
            .collect()
    }
}

impl<B, const D: usize, K> Gather<B> for Tensor<B, D, K>
where
    B: Backend,
    K: BasicOps<B>,
    Self: Send,
{
    fn output_rows(&self, dim: usize) -> Vec<usize> {
        self.dims().get(dim).copied().into_iter().collect()
    }

    fn gather(parts: Vec<Self>, dim: usize, device: &B::Device) -> Result<Self> {
        if dim >= D {
            return Err(DataParallelError::DimOutOfRange { dim, rank: D });
        }
        let Some(first) = parts.first().map(Tensor::dims) else {
            return Err(DataParallelError::NothingToGather);
        };
        // `Tensor::cat` panics on a mismatch; checking first turns it into an error.
        for (replica, part) in parts.iter().enumerate().skip(1) {
            let found = part.dims();
            let agrees = (0..D).all(|d| d == dim || found[d] == first[d]);
            if !agrees {
                return Err(DataParallelError::GatherShapeMismatch {
                    dim,
                    replica,
                    expected: first.to_vec(),
                    found: found.to_vec(),
                });
            }
        }
        let mut parts: Vec<Self> = parts.into_iter().map(|p| p.to_device(device)).collect();
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Ok(Tensor::cat(parts, dim))
    }
}
