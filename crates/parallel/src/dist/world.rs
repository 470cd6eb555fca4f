//! The MPI environment: one per process, for the life of the process.

use super::{Communicator, ThreadCollectives};
use crate::{DataParallelError, Result};
use mpi::collective::{SystemOperation, UnsafeUserOperation};
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::*;

/// This process's place in the MPI job.
///
/// Created once per process; MPI cannot be started again after it is dropped. A program
/// started without `mpirun` is a job of one rank.
///
/// ```no_run
/// use burn_data_parallel::dist::Mpi;
///
/// let mpi = Mpi::init()?; // `mpirun -n 4 my-program` on a machine with 8 GPUs
/// mpi.ensure_same("configuration", b"lr=0.001 batch=256")?; // refused on every rank if not
/// let gpus: Vec<usize> = (0..8).collect();
/// let mine = mpi.share_of(&gpus); // rank r of this machine: GPUs 2r and 2r+1
/// println!("rank {} of {} drives {mine:?}", mpi.rank(), mpi.size());
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    /// Whether MPI lets any thread call it, one at a time.
    serialized: bool,
    local_rank: usize,
    local_size: usize,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank(), self.size())
    }
}

impl Mpi {
    /// Starts MPI, and makes a panic on this rank end the whole job with a message naming the
    /// rank, instead of leaving the other ranks waiting for it. A panic inside a replica is
    /// caught instead and returned as an error on every rank, like any failed step.
    pub fn init() -> Result<Self> {
        // One thread at a time talks to MPI: the calling thread, or, while it waits for the
        // replicas, the replica that sums synchronized batch norms' statistics.
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or(DataParallelError::MpiAlreadyInitialized)?;
        let world = universe.world();
        let rank = world.rank();
        // The ranks sharing this machine, in world order.
        let local = world.split_shared(rank);
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            // A replica's panic is caught and becomes an error that every rank learns of
            // before the all-reduce (`PeerFailed`); only other panics end the job here.
            if crate::current_replica().is_some() {
                return;
            }
            // One write, so that Open MPI cannot mix it with another rank's output.
            let line = format!("rank {rank}: panicked; aborting the MPI job\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            SimpleCommunicator::world().abort(101);
        }));
        Ok(Self {
            _universe: universe,
            serialized: threading >= mpi::Threading::Serialized,
            world,
            local_rank,
            local_size,
        })
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Number of ranks in the job.
    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// This rank's place among the ranks running on its own machine, `0..local_size`.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Number of ranks running on this rank's machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// This rank's share of its machine's devices `all` (the GPUs, say), so that the ranks of
    /// one machine do not all crowd onto the first GPU: the devices are dealt out in
    /// contiguous blocks, as evenly as possible, and where there are fewer devices than ranks,
    /// ranks share them in turn (local rank `l` gets device `l % all.len()`).
    ///
    /// `mpirun -n 8` on a machine with 8 GPUs gives each rank one GPU; `mpirun -n 2` gives each
    /// rank 4, which it drives in-process.
    pub fn share_of<D: Clone>(&self, all: &[D]) -> Vec<D> {
        crate::machine_share(all, self.local_rank, self.local_size)
    }

    /// Checks that every rank holds the same `value` (a configuration, serialised), before
    /// anything depends on it: on every rank, an error naming the first rank whose value
    /// differs from rank 0's. Collective.
    ///
    /// `what` names the value in the error ("configuration").
    pub fn ensure_same(&self, what: &str, value: &[u8]) -> Result<()> {
        let all = self.all_gather(&[super::agree::fingerprint(value)]);
        match all.iter().position(|&hash| hash != all[0]) {
            None => Ok(()),
            Some(rank) => Err(DataParallelError::RankDisagrees {
                rank,
                what: what.to_owned(),
            }),
        }
    }

    /// Ends the whole job at once with `code`, from any rank.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Every rank's `values`, in rank order, on every rank (each rank passing as many).
    /// Collective.
    pub fn all_gather(&self, values: &[u64]) -> Vec<u64> {
        Communicator::all_gather_u64(self, values)
    }

    /// `MPI_Reduce_scatter` of `buffer` by `op`, this rank's block written in place.
    ///
    /// # Safety
    /// `op` must be a valid MPI operation on `T`'s datatype.
    unsafe fn reduce_scatter_by<T: Equivalence + Copy + Default>(
        &self,
        buffer: &mut [T],
        counts: &[usize],
        op: mpi::ffi::MPI_Op,
    ) {
        let (at, mine) = block_of(counts, self.rank());
        let mut out = vec![T::default(); mine];
        let counts: Vec<mpi::Count> = counts.iter().map(|&c| c as mpi::Count).collect();
        // rsmpi 0.8 wraps only the equal-block form (`MPI_Reduce_scatter_block`).
        // SAFETY: `buffer` holds the sum of `counts` values of `T`, `out` this rank's count,
        // `counts` has one entry per rank of the communicator, `op` applies to `T` (this
        // function's contract); the call is blocking.
        unsafe {
            mpi::ffi::MPI_Reduce_scatter(
                buffer.as_ptr().cast(),
                out.as_mut_ptr().cast(),
                counts.as_ptr(),
                T::equivalent_datatype().as_raw(),
                op,
                self.world.as_raw(),
            );
        }
        buffer[at..at + mine].copy_from_slice(&out);
    }
}

/// MPI's collectives, each the MPI call of the same name on the job's world.
impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; values.len() * self.size()];
        self.world.all_gather_into(values, &mut out[..]);
        out
    }

    fn all_reduce_sum_f32(&self, values: &[f32]) -> Vec<f32> {
        let mut sum = vec![0.0f32; values.len()];
        self.world
            .all_reduce_into(values, &mut sum[..], SystemOperation::sum());
        sum
    }

    /// Rank `r`'s block of the element-wise sum of every rank's `buffer` (the `counts[r]`
    /// values after those of the blocks before it), written in place there; the rest of
    /// `buffer` is left as it was. Blocks may differ in size: nothing is padded.
    fn reduce_scatter_sum_f32(&self, buffer: &mut [f32], counts: &[usize]) {
        // SAFETY: MPI's own sum applies to `f32`.
        unsafe { self.reduce_scatter_by(buffer, counts, SystemOperation::sum().as_raw()) };
    }

    /// The element-wise sum of every rank's 16-bit `values`, added in `precision` (see
    /// `compress`). Collective.
    fn all_reduce_sum_u16(&self, values: &[u16], precision: super::GradientPrecision) -> Vec<u16> {
        let mut sum = vec![0u16; values.len()];
        // SAFETY: the function adds two buffers of `u16`, the type of both buffers here.
        let op = unsafe { UnsafeUserOperation::commutative(precision.sum_function()) };
        self.world.all_reduce_into(values, &mut sum[..], &op);
        sum
    }

    /// [`reduce_scatter_sum_f32`](Self::reduce_scatter_sum_f32) over 16-bit values added in
    /// `precision`.
    fn reduce_scatter_sum_u16(
        &self,
        buffer: &mut [u16],
        counts: &[usize],
        precision: super::GradientPrecision,
    ) {
        // SAFETY: the function adds two buffers of `u16`, the type of `buffer`.
        let op = unsafe { UnsafeUserOperation::commutative(precision.sum_function()) };
        // SAFETY: `op` applies to `u16`, and lives until the call returns.
        unsafe { self.reduce_scatter_by(buffer, counts, op.as_raw()) };
    }

    /// Every rank's block of `buffer` (rank `r`'s being the `counts[r]` values after those of
    /// the blocks before it), in every rank's `buffer`.
    fn all_gather_f32(&self, buffer: &mut [f32], counts: &[usize]) {
        let (at, mine) = block_of(counts, self.rank());
        let send = buffer[at..at + mine].to_vec();
        let displs: Vec<mpi::Count> = (0..counts.len())
            .map(|r| block_of(counts, r).0 as mpi::Count)
            .collect();
        let counts: Vec<mpi::Count> = counts.iter().map(|&c| c as mpi::Count).collect();
        let mut all = PartitionMut::new(buffer, &counts[..], &displs[..]);
        self.world.all_gather_varcount_into(&send[..], &mut all);
    }

    /// The element-wise sum of every rank's `values`, in every rank's.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    /// Every rank's `bytes` on rank 0 (in rank order; empty elsewhere). Collective.
    fn gather_bytes_to_0(&self, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        if self.rank() != 0 {
            self.world.process_at_rank(0).send(&bytes[..]);
            return Vec::new();
        }
        let mut all = vec![bytes];
        for rank in 1..self.size() {
            let (received, _) = self.world.process_at_rank(rank as i32).receive_vec::<u8>();
            all.push(received);
        }
        all
    }

    fn broadcast_bytes_from(&self, root: usize, buffer: &mut [u8]) {
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(buffer);
    }

    fn broadcast_u64_from(&self, root: usize, values: &mut [u64]) {
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(values);
    }

    fn broadcast_f32_from(&self, root: usize, values: &mut [f32]) {
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(values);
    }

    fn sums_in_16_bits(&self) -> bool {
        true
    }

    fn thread_collectives(&self) -> Option<Box<dyn ThreadCollectives>> {
        self.serialized
            .then(|| Box::new(WorldFromAnyThread) as Box<dyn ThreadCollectives>)
    }
}

/// The job's world, reached from a replica thread: MPI was started with `Serialized`
/// threading, and the trainer's thread waits for the replicas while one of them calls.
struct WorldFromAnyThread;

impl ThreadCollectives for WorldFromAnyThread {
    fn all_reduce_max_i64(&self, values: &mut [i64]) {
        let send = values.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::max());
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::sum());
    }
}

/// Where block `r` of blocks of `counts` values starts, and its length.
fn block_of(counts: &[usize], r: usize) -> (usize, usize) {
    (counts[..r].iter().sum(), counts[r])
}

#[cfg(test)]
mod tests {
    use crate::machine_share as share_of;

    #[test]
    fn every_device_goes_to_exactly_one_rank_when_there_are_enough() {
        for devices in 1..=9 {
            for ranks in 1..=devices {
                let all: Vec<usize> = (0..devices).collect();
                let shares: Vec<Vec<usize>> =
                    (0..ranks).map(|r| share_of(&all, r, ranks)).collect();
                assert_eq!(shares.concat(), all, "{devices} devices, {ranks} ranks");
                let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{sizes:?}");
            }
        }
    }

    #[test]
    fn ranks_share_devices_in_turn_when_there_are_fewer() {
        let all = ["gpu0", "gpu1"];
        let shares: Vec<Vec<&str>> = (0..5).map(|r| share_of(&all, r, 5)).collect();
        assert_eq!(
            shares,
            [["gpu0"], ["gpu1"], ["gpu0"], ["gpu1"], ["gpu0"]].map(Vec::from)
        );
        assert!(share_of::<u8>(&[], 0, 2).is_empty());
    }
}
