//! The MPI environment: one per process, for the life of the process.

use crate::{DataParallelError, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// This process's place in the MPI job.
///
/// Created once per process; MPI cannot be started again after it is dropped. A program
/// started without `mpirun` is a job of one rank.
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank(), self.size())
    }
}

impl Mpi {
    /// Starts MPI, and makes a panic on this rank end the whole job with a message naming the
    /// rank, instead of leaving the other ranks waiting for it.
    pub fn init() -> Result<Self> {
        // Only the calling thread talks to MPI; replicas run on other threads but never call it.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or(
            DataParallelError::Distributed {
                message: "MPI is already initialised in this process".into(),
            },
        )?;
        let world = universe.world();
        let rank = world.rank();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            eprintln!("rank {rank}: panicked; aborting the MPI job");
            SimpleCommunicator::world().abort(101);
        }));
        Ok(Self {
            _universe: universe,
            world,
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

    /// Ends the whole job at once with `code`, from any rank.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    pub(crate) fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; values.len() * self.size()];
        self.world.all_gather_into(values, &mut out[..]);
        out
    }

    pub(crate) fn all_reduce_sum_f32(&self, buffer: &mut [f32]) {
        let send = buffer.to_vec();
        self.world
            .all_reduce_into(&send[..], buffer, SystemOperation::sum());
    }

    pub(crate) fn all_reduce_sum_f64(&self, value: f64) -> f64 {
        let mut out = 0.0f64;
        self.world
            .all_reduce_into(&value, &mut out, SystemOperation::sum());
        out
    }

    pub(crate) fn broadcast_f32_from_0(&self, buffer: &mut [f32]) {
        self.world.process_at_rank(0).broadcast_into(buffer);
    }
}
