//! `Vec`s: every element is split, and replica `i` receives the `i`-th part of each element.

use super::{Gather, Scatter, merge_rows};
use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;

impl<B: Backend, T: Scatter<B>> Scatter<B> for Vec<T> {
    fn rows(&self, dim: usize) -> Result<Option<usize>> {
        self.iter()
            .try_fold(None, |rows, item| merge_rows(dim, rows, item.rows(dim)?))
    }

    fn scatter(self, dim: usize, sizes: &[usize], devices: &[B::Device]) -> Vec<Self> {
        let len = self.len();
        let mut per_replica: Vec<Vec<T>> = sizes.iter().map(|_| Vec::with_capacity(len)).collect();
        for item in self {
            for (replica, part) in per_replica
                .iter_mut()
                .zip(item.scatter(dim, sizes, devices))
            {
                replica.push(part);
            }
        }
        per_replica
    }
}

impl<B: Backend, T: Gather<B>> Gather<B> for Vec<T> {
    fn output_rows(&self, dim: usize) -> Vec<usize> {
        self.iter().flat_map(|item| item.output_rows(dim)).collect()
    }

    fn gather(parts: Vec<Self>, dim: usize, device: &B::Device) -> Result<Self> {
        let expected = parts.first().map_or(0, Vec::len);
        if let Some((replica, found)) = parts
            .iter()
            .map(Vec::len)
            .enumerate()
            .find(|&(_, len)| len != expected)
        {
            return Err(DataParallelError::GatherLengthMismatch {
                replica,
                expected,
                found,
            });
        }
        let mut columns: Vec<Vec<T>> = (0..expected)
            .map(|_| Vec::with_capacity(parts.len()))
            .collect();
        for part in parts {
            for (column, item) in columns.iter_mut().zip(part) {
                column.push(item);
            }
        }
        columns
            .into_iter()
            .map(|column| T::gather(column, dim, device))
            .collect()
    }
}
