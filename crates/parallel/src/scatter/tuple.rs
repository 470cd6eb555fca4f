//! Tuples: each member is split (or given whole) on its own; members that are split must agree
//! on their rows.

use super::{Gather, Scatter, merge_rows};
use crate::Result;
use burn::tensor::backend::Backend;

macro_rules! tuple_impls {
    ($($ty:ident $var:ident $idx:tt),+) => {
        impl<Bk: Backend, $($ty: Scatter<Bk>),+> Scatter<Bk> for ($($ty,)+) {
            fn rows(&self, dim: usize) -> Result<Option<usize>> {
                let rows = None;
                $(let rows = merge_rows(dim, rows, self.$idx.rows(dim)?)?;)+
                Ok(rows)
            }

            fn scatter(self, dim: usize, sizes: &[usize], devices: &[Bk::Device]) -> Vec<Self> {
                let mut parts = ($(self.$idx.scatter(dim, sizes, devices).into_iter(),)+);
                let mut out = Vec::with_capacity(sizes.len());
                // Stops at the shortest member; DataParallel reports a short count as an error.
                while let ($(Some($var),)+) = ($(parts.$idx.next(),)+) {
                    out.push(($($var,)+));
                }
                out
            }
        }

        impl<Bk: Backend, $($ty: Gather<Bk>),+> Gather<Bk> for ($($ty,)+) {
            fn gather(parts: Vec<Self>, dim: usize, device: &Bk::Device) -> Result<Self> {
                let mut columns = ($(Vec::<$ty>::with_capacity(parts.len()),)+);
                for part in parts {
                    $(columns.$idx.push(part.$idx);)+
                }
                Ok(($($ty::gather(columns.$idx, dim, device)?,)+))
            }

            fn output_rows(&self, dim: usize) -> Vec<usize> {
                let mut rows = Vec::new();
                $(rows.extend(self.$idx.output_rows(dim));)+
                rows
            }
        }
    };
}

tuple_impls!(A a 0);
tuple_impls!(A a 0, B b 1);
tuple_impls!(A a 0, B b 1, C c 2);
tuple_impls!(A a 0, B b 1, C c 2, D d 3);
tuple_impls!(A a 0, B b 1, C c 2, D d 3, E e 4);
tuple_impls!(A a 0, B b 1, C c 2, D d 3, E e 4, F f 5);
