//! Gradients summed across the ranks in 16 bits, for slow networks: half the bytes on the wire,
//! at the price of exactness.
//!
//! Each rank rounds its gradient buffer to bf16 or f16; MPI sums the 16-bit buffers with a user
//! operation that adds two values in `f32` and rounds the sum back to 16 bits; each rank widens
//! the result to `f32`. The ranks step on the exact sum up to
//! [`GradientPrecision::error_bound`], and on the same bits: Open MPI's reductions hand every
//! rank the same result, and the ranks compare a fingerprint of it (an error, not ranks that
//! step apart, if they ever differed).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
#[cfg(feature = "mpi")]
use std::ffi::{c_int, c_void};

/// The precision in which the ranks sum their gradients
/// ([`DistributedTrainer::with_gradient_precision`](super::DistributedTrainer::with_gradient_precision)).
///
/// Only the gradient sums across ranks are rounded: each rank's own gradients, the sum over
/// its devices, the optimizer, the parameters and their all-gather (sharded optimizer state)
/// stay in `f32`. The presence flag that travels with each tensor's gradient is a count of
/// ranks, read only as "more than zero", which rounding never changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientPrecision {
    /// Exact: the sums of single-process training, up to the order of the additions.
    #[default]
    F32,
    /// bfloat16: `f32`'s range, 8 significant bits. Half the bytes; no overflow.
    Bf16,
    /// IEEE half precision: 11 significant bits but a range of `±65504`, and values under
    /// `6.1e-5` in magnitude lose bits (under `6e-8`, all of them). A sum out of range is an
    /// error ([`DataParallelError::Collective`](crate::DataParallelError::Collective)), not an infinity handed to the optimizer.
    F16,
}

impl GradientPrecision {
    /// Bytes per value on the wire.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// The unit roundoff of the rounding to 16 bits: the largest relative error of one
    /// rounding in the normal range (`0` for [`F32`](Self::F32), which adds no rounding of its
    /// own to the sums).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Self::F32 => 0.0,
            Self::Bf16 => 2f64.powi(-8),
            Self::F16 => 2f64.powi(-11),
        }
    }

    /// The most a sum over `ranks` ranks can differ from the exact sum of the ranks' `f32`
    /// values, for an element whose values have magnitudes adding up to `sum_abs`: each value
    /// is rounded once, and each partial sum once, whatever order MPI adds them in (no value
    /// goes through more than `ranks` roundings), plus, below the normal range (`6.1e-5` for
    /// f16, `1.2e-38` for bf16), half a step of the smallest spacing (`2^-25`, `2^-134`) per
    /// rounding (`2 ranks - 1` of them). `0` for [`F32`](Self::F32), which rounds as
    /// single-process training does (checked against it by the exactness tests instead).
    pub fn error_bound(self, ranks: usize, sum_abs: f64) -> f64 {
        let u = self.unit_roundoff();
        let roundings = ranks as i32;
        let relative = (1.0 + u).powi(roundings) - 1.0;
        let half_spacing = match self {
            Self::F32 => 0.0,
            Self::Bf16 => 2f64.powi(-134),
            Self::F16 => 2f64.powi(-25),
        };
        // Each rounding's own error is carried through the roundings after it.
        let absolute =
            (2 * ranks).saturating_sub(1) as f64 * half_spacing * (1.0 + u).powi(roundings);
        relative * sum_abs + absolute
    }

    /// The code the ranks compare.
    pub(crate) fn code(self) -> u64 {
        self as u64
    }

    /// The precision of `code` (`F32` for a code no precision has).
    pub(crate) fn from_code(code: u64) -> Self {
        [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .find(|p| p.code() == code)
            .unwrap_or(Self::F32)
    }

    /// `values` rounded to this precision's 16 bits (to nearest, ties to even).
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u16> {
        let mut bits = vec![0u16; values.len()];
        self.narrow(values, &mut bits);
        bits
    }

    /// `bits` widened to `f32` (exact); `None` where an f16 value overflowed (an infinity the
    /// gradients did not hold: `f32` values out of range become infinite in bf16 too, so a
    /// bf16 infinity is one the ranks' gradients already had).
    pub(crate) fn decode(self, bits: &[u16]) -> Option<Vec<f32>> {
        let mut values = vec![0.0; bits.len()];
        self.widen(bits, &mut values);
        if self == Self::F16 && values.iter().any(|v| v.is_infinite()) {
            return None;
        }
        Some(values)
    }

    /// `values` rounded into `bits`, by `half`'s slice conversions (vectorized where the CPU
    /// has the instructions).
    fn narrow(self, values: &[f32], bits: &mut [u16]) {
        match self {
            Self::F16 => bits
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(values),
            // `F32` is never encoded (the exchange sums f32 buffers itself); as bf16 if it were.
            Self::Bf16 | Self::F32 => bits
                .reinterpret_cast_mut::<bf16>()
                .convert_from_f32_slice(values),
        }
    }

    /// `bits` widened to `f32` (exact), infinities included.
    pub(crate) fn widened(self, bits: &[u16]) -> Vec<f32> {
        let mut values = vec![0.0; bits.len()];
        self.widen(bits, &mut values);
        values
    }

    /// `bits` widened into `values`.
    fn widen(self, bits: &[u16], values: &mut [f32]) {
        match self {
            Self::F16 => bits.reinterpret_cast::<f16>().convert_to_f32_slice(values),
            Self::Bf16 | Self::F32 => bits.reinterpret_cast::<bf16>().convert_to_f32_slice(values),
        }
    }

    /// The MPI user function that adds `invec` into `inoutvec`, element by element, in this
    /// precision.
    #[cfg(feature = "mpi")]
    pub(crate) fn sum_function(self) -> mpi::collective::UnsafeUserFunction {
        match self {
            Self::F16 => sum::<true>,
            Self::Bf16 | Self::F32 => sum::<false>,
        }
    }
}

/// A hash of a 16-bit sum, four values at a time, for the ranks to check that they hold the
/// same bits.
pub(crate) fn fingerprint(bits: &[u16]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ bits.len() as u64;
    for word in bits.chunks(4) {
        let value = word.iter().fold(0u64, |acc, &b| (acc << 16) | u64::from(b));
        hash = (hash ^ value)
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    hash
}

/// `into[i] = round(from[i] + into[i])`, the addition in `f32`.
#[cfg(any(feature = "mpi", test))]
pub(crate) fn add_into(precision: GradientPrecision, from: &[u16], into: &mut [u16]) {
    const CHUNK: usize = 1024;
    let (mut a, mut b) = ([0f32; CHUNK], [0f32; CHUNK]);
    for (from, into) in from.chunks(CHUNK).zip(into.chunks_mut(CHUNK)) {
        let n = from.len();
        precision.widen(from, &mut a[..n]);
        precision.widen(into, &mut b[..n]);
        for (x, y) in a[..n].iter().zip(&mut b[..n]) {
            *y += x;
        }
        precision.narrow(&b[..n], into);
    }
}

/// The MPI user operation over `u16` buffers: f16 values if `F16`, bf16 otherwise.
#[cfg(feature = "mpi")]
unsafe extern "C" fn sum<const F16: bool>(
    invec: *mut c_void,
    inoutvec: *mut c_void,
    len: *mut c_int,
    _datatype: *mut mpi::ffi::MPI_Datatype,
) {
    // SAFETY: MPI passes two buffers of `*len` elements of the datatype the collective was
    // given (the 16-bit unsigned type: `Mpi::all_reduce_sum_u16`), which do not overlap; an
    // empty block may come with null pointers, which are not read.
    let n = unsafe { usize::try_from(*len).unwrap_or(0) };
    if n == 0 || invec.is_null() || inoutvec.is_null() {
        return;
    }
    let (from, into) = unsafe {
        (
            std::slice::from_raw_parts(invec as *const u16, n),
            std::slice::from_raw_parts_mut(inoutvec as *mut u16, n),
        )
    };
    let precision = if F16 {
        GradientPrecision::F16
    } else {
        GradientPrecision::Bf16
    };
    add_into(precision, from, into);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sum of `ranks` as MPI could compute it: each rank's values rounded, then partial
    /// sums combined two at a time, each pair picked by `order` (a reduction tree of any
    /// shape), then the rest in a chain.
    fn reduce(
        precision: GradientPrecision,
        ranks: &[Vec<f32>],
        order: &[(usize, usize)],
    ) -> Vec<f32> {
        let mut partials: Vec<Vec<u16>> = ranks.iter().map(|r| precision.encode(r)).collect();
        for &(pick, into) in order {
            if partials.len() == 1 {
                break;
            }
            let from = partials.remove(pick % partials.len());
            let into = into % partials.len();
            add_into(precision, &from, &mut partials[into]);
        }
        while partials.len() > 1 {
            let from = partials.pop().unwrap();
            add_into(precision, &from, partials.last_mut().unwrap());
        }
        precision.decode(&partials[0]).unwrap()
    }

    /// The first element of `summed` farther from the exact sum of `ranks` than the bound.
    fn outside_bound(
        precision: GradientPrecision,
        ranks: &[Vec<f32>],
        summed: &[f32],
    ) -> Option<String> {
        summed.iter().enumerate().find_map(|(i, &got)| {
            let exact: f64 = ranks.iter().map(|r| f64::from(r[i])).sum();
            let sum_abs: f64 = ranks.iter().map(|r| f64::from(r[i]).abs()).sum();
            let bound = precision.error_bound(ranks.len(), sum_abs);
            let error = (f64::from(got) - exact).abs();
            (error > bound).then(|| {
                format!(
                    "{precision:?}, {} ranks, element {i}: {got} against {exact} ({error} > {bound})",
                    ranks.len()
                )
            })
        })
    }

    proptest! {
        #[test]
        fn sums_in_16_bits_stay_within_the_stated_bound(
            ranks in prop::collection::vec(
                prop::collection::vec(-1e3f32..1e3f32, 16), 1..9),
            scale in prop::sample::select(vec![1e-40f32, 1e-9, 1e-6, 1e-3, 1.0, 8.0]),
            order in prop::collection::vec((0usize..64, 0usize..64), 0..8),
        ) {
            let ranks: Vec<Vec<f32>> = ranks
                .into_iter()
                .map(|r| r.into_iter().map(|v| v * scale).collect())
                .collect();
            for precision in [GradientPrecision::Bf16, GradientPrecision::F16] {
                let summed = reduce(precision, &ranks, &order);
                prop_assert_eq!(outside_bound(precision, &ranks, &summed), None);
            }
        }
    }

    #[test]
    fn a_sum_that_lost_a_rank_is_outside_the_bound() {
        let ranks = vec![
            vec![1.0f32, -3.0, 0.5],
            vec![0.75, 2.0, 0.25],
            vec![0.5, 0.5, 0.5],
        ];
        for precision in [GradientPrecision::Bf16, GradientPrecision::F16] {
            let all = reduce(precision, &ranks, &[]);
            assert_eq!(outside_bound(precision, &ranks, &all), None);
            let without_last = reduce(precision, &ranks[..2], &[]);
            assert!(outside_bound(precision, &ranks, &without_last).is_some());
        }
    }

    #[test]
    fn an_f16_sum_out_of_range_is_refused_and_bf16_holds_it() {
        let big = vec![60_000.0f32, 1.0];
        let ranks = vec![big.clone(), big];
        let mut bits = GradientPrecision::F16.encode(&ranks[0]);
        add_into(
            GradientPrecision::F16,
            &GradientPrecision::F16.encode(&ranks[1]),
            &mut bits,
        );
        assert!(GradientPrecision::F16.decode(&bits).is_none());
        let summed = reduce(GradientPrecision::Bf16, &ranks, &[]);
        assert_eq!(
            outside_bound(GradientPrecision::Bf16, &ranks, &summed),
            None
        );
    }

    #[test]
    fn half_the_bytes_and_a_real_loss_of_precision() {
        assert_eq!(GradientPrecision::F32.bytes(), 4);
        assert_eq!(GradientPrecision::Bf16.bytes(), 2);
        assert_eq!(GradientPrecision::F16.bytes(), 2);
        // 1 + 2^-10 is not a bf16 value: compression does round.
        let bits = GradientPrecision::Bf16.encode(&[1.0 + 2f32.powi(-10)]);
        assert_eq!(GradientPrecision::Bf16.decode(&bits).unwrap(), vec![1.0]);
        for p in [
            GradientPrecision::F32,
            GradientPrecision::Bf16,
            GradientPrecision::F16,
        ] {
            assert_eq!(GradientPrecision::from_code(p.code()), p);
        }
    }

    #[test]
    fn the_fingerprint_tells_one_bit_apart() {
        let bits: Vec<u16> = (0..37).map(|i| i * 997).collect();
        let mut other = bits.clone();
        other[33] ^= 1;
        assert_eq!(fingerprint(&bits), fingerprint(&bits.clone()));
        assert_ne!(fingerprint(&bits), fingerprint(&other));
        assert_ne!(fingerprint(&bits), fingerprint(&bits[..36]));
    }

    #[cfg(feature = "mpi")]
    #[test]
    fn the_mpi_function_adds_in_place_and_ignores_empty_blocks() {
        let precision = GradientPrecision::Bf16;
        let mut into = precision.encode(&[1.5, -2.0, 0.25]);
        let mut from = precision.encode(&[0.5, 1.0, 0.25]);
        let mut len = 3;
        // SAFETY: two buffers of `len` u16 values.
        unsafe {
            (precision.sum_function())(
                from.as_mut_ptr().cast(),
                into.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null_mut(),
            );
        }
        assert_eq!(precision.decode(&into).unwrap(), vec![2.0, -1.0, 0.5]);
        let mut empty = 0;
        // SAFETY: an empty block with null buffers, as MPI may pass one.
        unsafe {
            (precision.sum_function())(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut empty,
                std::ptr::null_mut(),
            );
        }
    }
}
