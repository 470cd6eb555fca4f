//! The process group a [`DistributedTrainer`](super::DistributedTrainer) trains over: the seam
//! between the training step and the engine that moves numbers between processes. `Mpi`
//! (feature `mpi`) implements it; another engine (a cluster's own collectives library, a test
//! double) implements it too, without editing this crate. NCCL, for CUDA ranks, is a data plane
//! only: it is set up through a communicator's control plane (the ranks exchange its id and
//! agree on it here) and carries the gradients alone.

use super::GradientPrecision;

/// A group of processes ("ranks") that call the same collectives in the same order.
///
/// Every method is collective: each rank of the group calls it, in the same order, with
/// buffers of the lengths the method states, and blocks until its part is done. Every rank
/// receives the same result, bit for bit (the trainer relies on it: ranks holding different
/// sums would drift apart). There is no error path: as MPI's default error handler does, an
/// engine that cannot complete a collective ends the process (a partial result would be a
/// silently wrong step). The trainer makes every other failure (a rank's batch, its loss, its
/// settings) a small all-gather first, so that every rank learns of it and returns the same
/// error instead of waiting.
///
/// ```
/// use burn_data_parallel::dist::Communicator;
///
/// /// One process alone: every collective returns its own values.
/// struct Solo;
///
/// impl Communicator for Solo {
///     fn rank(&self) -> usize { 0 }
///     fn size(&self) -> usize { 1 }
///     fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> { values.to_vec() }
///     fn all_reduce_sum_f32(&self, values: &[f32]) -> Vec<f32> { values.to_vec() }
///     fn reduce_scatter_sum_f32(&self, _: &mut [f32], _: &[usize]) {}
///     fn all_gather_f32(&self, _: &mut [f32], _: &[usize]) {}
///     fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
///     fn gather_bytes_to_0(&self, bytes: Vec<u8>) -> Vec<Vec<u8>> { vec![bytes] }
///     fn broadcast_bytes_from(&self, _: usize, _: &mut [u8]) {}
/// }
/// assert_eq!(Solo.all_gather_u64(&[3, 4]), [3, 4]);
/// ```
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// Every rank's `values`, in rank order (each rank passing as many).
    fn all_gather_u64(&self, values: &[u64]) -> Vec<u64>;

    /// The element-wise sum of every rank's `values`.
    fn all_reduce_sum_f32(&self, values: &[f32]) -> Vec<f32>;

    /// Rank `r`'s block of the element-wise sum of every rank's `buffer` (the `counts[r]`
    /// values after those of the blocks before it), written in place there; the rest of
    /// `buffer` is left as it was. `counts` has one entry per rank, summing to `buffer.len()`.
    fn reduce_scatter_sum_f32(&self, buffer: &mut [f32], counts: &[usize]);

    /// Every rank's block of `buffer` (blocks as in
    /// [`reduce_scatter_sum_f32`](Self::reduce_scatter_sum_f32)), in every rank's `buffer`.
    fn all_gather_f32(&self, buffer: &mut [f32], counts: &[usize]);

    /// The element-wise sum of every rank's `values`, in every rank's.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);

    /// Every rank's `bytes` on rank 0, in rank order (empty on the other ranks).
    fn gather_bytes_to_0(&self, bytes: Vec<u8>) -> Vec<Vec<u8>>;

    /// Rank `root`'s `buffer` in every rank's (every rank passing as many bytes).
    fn broadcast_bytes_from(&self, root: usize, buffer: &mut [u8]);

    /// The element-wise sum of every rank's 16-bit `values` (`f16` or `bf16` bits, in
    /// `precision`), within [`GradientPrecision::error_bound`] of the exact sum, the same bits
    /// on every rank. `Mpi` sends the 16 bits and rounds each partial sum back to them. The
    /// default widens to `f32`, sums with [`all_reduce_sum_f32`](Self::all_reduce_sum_f32) and
    /// rounds once (within the bound too), sending 32 bits a value: a transport that sends 16
    /// overrides this and [`sums_in_16_bits`](Self::sums_in_16_bits).
    fn all_reduce_sum_u16(&self, values: &[u16], precision: GradientPrecision) -> Vec<u16> {
        let wide = precision.widened(values);
        precision.encode(&self.all_reduce_sum_f32(&wide))
    }

    /// [`reduce_scatter_sum_f32`](Self::reduce_scatter_sum_f32) over 16-bit values added in
    /// `precision` (the default as for [`all_reduce_sum_u16`](Self::all_reduce_sum_u16)).
    fn reduce_scatter_sum_u16(
        &self,
        buffer: &mut [u16],
        counts: &[usize],
        precision: GradientPrecision,
    ) {
        let mut wide = precision.widened(buffer);
        self.reduce_scatter_sum_f32(&mut wide, counts);
        buffer.copy_from_slice(&precision.encode(&wide));
    }

    /// Whether [`all_reduce_sum_u16`](Self::all_reduce_sum_u16) and
    /// [`reduce_scatter_sum_u16`](Self::reduce_scatter_sum_u16) send 16 bits a value (what the
    /// trainer's [`ExchangeStats::bytes`](super::ExchangeStats::bytes) counts); `false` for
    /// the defaults.
    fn sums_in_16_bits(&self) -> bool {
        false
    }

    /// Collectives that replica threads may call while the thread owning this communicator
    /// waits for them, one thread at a time: where the ranks sum synchronized batch norms'
    /// statistics during the forward and backward passes. `None` (the default): a module with
    /// a `SyncBatchNorm` is refused on more than one rank.
    fn thread_collectives(&self) -> Option<Box<dyn ThreadCollectives>> {
        None
    }

    /// Rank `root`'s `values` in every rank's.
    fn broadcast_u64_from(&self, root: usize, values: &mut [u64]) {
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast_bytes_from(root, &mut bytes);
        for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(8)) {
            *value = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
    }

    /// Rank `root`'s `values` in every rank's.
    fn broadcast_f32_from(&self, root: usize, values: &mut [f32]) {
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast_bytes_from(root, &mut bytes);
        for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
    }
}

/// Collectives callable from a thread other than the one owning the [`Communicator`], one
/// thread at a time (MPI's `Serialized` threading), each rank making the same calls in the
/// same order.
pub trait ThreadCollectives: Send + Sync {
    /// The element-wise maximum of every rank's `values`, in every rank's.
    fn all_reduce_max_i64(&self, values: &mut [i64]);

    /// The element-wise sum of every rank's `values`, in every rank's.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
}

/// `text` as rank `root` has it, on every rank (its first 512 bytes): so that every rank's
/// error says why, even when the job ends before `root` has printed its own.
pub(crate) fn share_text_from(
    comm: &dyn Communicator,
    root: usize,
    text: Option<String>,
) -> String {
    let mut buffer = [0u8; 512];
    if comm.rank() == root
        && let Some(text) = text
    {
        let bytes = text.as_bytes();
        let len = bytes.len().min(buffer.len());
        buffer[..len].copy_from_slice(&bytes[..len]);
    }
    comm.broadcast_bytes_from(root, &mut buffer);
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    //! The trait's provided methods on a group of threads: every collective is built on one
    //! all-gather of bytes.

    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    struct Shared {
        barrier: Barrier,
        slots: Mutex<Vec<Vec<u8>>>,
    }

    struct Member {
        rank: usize,
        size: usize,
        shared: Arc<Shared>,
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn bytes_of(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    impl Member {
        fn exchange(&self, mine: Vec<u8>) -> Vec<Vec<u8>> {
            self.shared.slots.lock().unwrap()[self.rank] = mine;
            self.shared.barrier.wait();
            let all = self.shared.slots.lock().unwrap().clone();
            // Nobody writes the next call's values before every rank has read these.
            self.shared.barrier.wait();
            all
        }

        /// Every rank's f32 values summed in rank order.
        fn sum(&self, values: &[f32]) -> Vec<f32> {
            let all = self.exchange(bytes_of(values));
            let mut sum = vec![0.0f32; values.len()];
            for bytes in &all {
                for (s, v) in sum.iter_mut().zip(f32s(bytes)) {
                    *s += v;
                }
            }
            sum
        }
    }

    impl Communicator for Member {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
            let mine = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let all = self.exchange(mine).concat();
            all.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        fn all_reduce_sum_f32(&self, values: &[f32]) -> Vec<f32> {
            self.sum(values)
        }
        fn reduce_scatter_sum_f32(&self, buffer: &mut [f32], counts: &[usize]) {
            let sum = self.sum(buffer);
            let at: usize = counts[..self.rank].iter().sum();
            let mine = at..at + counts[self.rank];
            buffer[mine.clone()].copy_from_slice(&sum[mine]);
        }
        fn all_gather_f32(&self, buffer: &mut [f32], counts: &[usize]) {
            let at: usize = counts[..self.rank].iter().sum();
            let mine = bytes_of(&buffer[at..at + counts[self.rank]]);
            let all: Vec<f32> = self.exchange(mine).iter().flat_map(|b| f32s(b)).collect();
            buffer.copy_from_slice(&all);
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) {
            let mine = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let all = self.exchange(mine);
            values.fill(0.0);
            for bytes in &all {
                for (s, c) in values.iter_mut().zip(bytes.chunks_exact(8)) {
                    *s += f64::from_le_bytes(c.try_into().unwrap());
                }
            }
        }
        fn gather_bytes_to_0(&self, bytes: Vec<u8>) -> Vec<Vec<u8>> {
            let all = self.exchange(bytes);
            if self.rank == 0 { all } else { Vec::new() }
        }
        fn broadcast_bytes_from(&self, root: usize, buffer: &mut [u8]) {
            let all = self.exchange(buffer.to_vec());
            buffer.copy_from_slice(&all[root]);
        }
    }

    /// Runs `f` on each rank of a group of `size` threads; every rank's result, in rank order.
    fn on_ranks<T: Send>(size: usize, f: impl Fn(&Member) -> T + Sync) -> Vec<T> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    let member = Member {
                        rank,
                        size,
                        shared: shared.clone(),
                    };
                    let f = &f;
                    scope.spawn(move || f(&member))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn values(rank: usize) -> Vec<f32> {
        let r = rank as f32;
        vec![
            1.0 + r,
            -2.5 * r,
            0.125,
            1000.0 / (1.0 + r),
            3.0e-3 * r,
            -7.75,
        ]
    }

    #[test]
    fn the_default_16_bit_sum_is_within_the_bound_and_the_same_on_every_rank() {
        for precision in [GradientPrecision::Bf16, GradientPrecision::F16] {
            let sums = on_ranks(3, |m| {
                let bits = precision.encode(&values(m.rank));
                m.all_reduce_sum_u16(&bits, precision)
            });
            assert!(sums.iter().all(|s| *s == sums[0]), "{sums:?}");
            let sum = precision.widened(&sums[0]);
            for (i, got) in sum.iter().enumerate() {
                let parts: Vec<f32> = (0..3).map(|r| values(r)[i]).collect();
                let exact: f64 = parts.iter().map(|&v| f64::from(v)).sum();
                let abs: f64 = parts.iter().map(|&v| f64::from(v).abs()).sum();
                let error = (f64::from(*got) - exact).abs();
                assert!(
                    error <= precision.error_bound(3, abs),
                    "{precision:?} [{i}]: {error}"
                );
            }
            // Not the f32 sum: the values went through 16 bits.
            assert_ne!(
                sum,
                on_ranks(3, |m| m.all_reduce_sum_f32(&values(m.rank)))[0]
            );
        }
    }

    #[test]
    fn the_default_16_bit_reduce_scatter_writes_each_rank_its_block_only() {
        let precision = GradientPrecision::Bf16;
        let counts = [2, 0, 4];
        let out = on_ranks(3, |m| {
            let mut bits = precision.encode(&values(m.rank));
            m.reduce_scatter_sum_u16(&mut bits, &counts, precision);
            bits
        });
        let sum = on_ranks(3, |m| {
            let bits = precision.encode(&values(m.rank));
            m.all_reduce_sum_u16(&bits, precision)
        })[0]
            .clone();
        let blocks = [0..2, 2..2, 2..6];
        for (rank, bits) in out.iter().enumerate() {
            let own = precision.encode(&values(rank));
            for i in 0..6 {
                let expected = if blocks[rank].contains(&i) {
                    sum[i]
                } else {
                    own[i]
                };
                assert_eq!(bits[i], expected, "rank {rank}, value {i}");
            }
        }
    }

    #[test]
    fn broadcasts_and_shared_texts_come_from_the_root() {
        let out = on_ranks(3, |m| {
            let mut u = [m.rank as u64 * 10, u64::MAX - m.rank as u64];
            m.broadcast_u64_from(1, &mut u);
            let mut f = [
                f32::from_bits(0x7fc0_0001 + m.rank as u32),
                -0.0,
                m.rank as f32,
            ];
            m.broadcast_f32_from(2, &mut f);
            let text = share_text_from(m, 2, Some(format!("rank {} failed", m.rank)));
            (u, f.map(f32::to_bits), text)
        });
        for (u, f, text) in &out {
            assert_eq!(*u, [10, u64::MAX - 1]);
            assert_eq!(*f, [0x7fc0_0003, (-0.0f32).to_bits(), 2.0f32.to_bits()]);
            assert_eq!(text, "rank 2 failed");
        }
    }
}
