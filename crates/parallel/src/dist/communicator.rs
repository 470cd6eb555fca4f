//! The process group a [`DistributedTrainer`](super::DistributedTrainer) trains over: the seam
//! between the training step and the engine that moves numbers between processes. [`Mpi`]
//! (feature `mpi`) implements it; another engine (a cluster's own collectives library, a test
//! double) implements it too, without editing this crate. NCCL, for CUDA ranks, is a data plane
//! only: it is set up through a communicator's control plane (the ranks exchange its id and
//! agree on it here) and carries the gradients alone.
//!
//! [`Mpi`]: super::Mpi

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

    /// The element-wise sum of every rank's 16-bit `values` (`f16` or `bf16` bits), each addition made in `f32` and rounded back to `precision`. The default widens
    /// to `f32`, sums with [`all_reduce_sum_f32`](Self::all_reduce_sum_f32) and rounds once:
    /// within the same bound, but it sends 32 bits a value; MPI sends 16.
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
