//! How the ranks sum their flattened gradients: MPI on a host copy, or NCCL on the GPU.
//!
//! The choice is made once, collectively, when the trainer joins the ranks: every rank must
//! take part in the same calls whatever it finds locally, so each says whether it could use
//! NCCL and they go the same way.

use super::{Communicator, GradientPrecision};
use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The engine that sums gradients across ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientTransport {
    /// NCCL where every rank can use it (features `cuda` and `mpi`, the `burn::backend::Cuda`
    /// backend, `libnccl.so` on the library path, one GPU per rank), MPI otherwise.
    #[default]
    Auto,
    /// MPI's all-reduce on a host copy of the buffer: any backend, any machine.
    Mpi,
    /// NCCL's all-reduce in GPU memory, bootstrapped over MPI; refused with
    /// [`DataParallelError::NcclUnavailable`] where a rank cannot use it.
    Nccl,
}

/// What the gradient exchange has carried: an optimizer step makes one all-reduce over every
/// parameter at once (never one per parameter, nor one per micro-batch), or, with the optimizer
/// state sharded, one reduce-scatter of the gradients and one all-gather of the parameters.
/// Counted where each collective is made, once it has succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeStats {
    /// All-reduces of gradients completed.
    pub all_reduces: usize,
    /// Reduce-scatters of gradients completed (sharded optimizer state).
    pub reduce_scatters: usize,
    /// All-gathers of updated parameters completed (sharded optimizer state).
    pub all_gathers: usize,
    /// Values these collectives carried, from this rank, all together (the length of the
    /// buffer each was given).
    pub values: usize,
    /// Bytes those values took in the buffers handed to the engine: 4 per value, 2 for
    /// gradients summed in 16 bits ([`GradientPrecision`]).
    pub bytes: usize,
    /// Time spent in them, copies to and from the host included: waiting for the slowest
    /// rank to arrive counts here too.
    pub time: std::time::Duration,
    /// The part of [`time`](Self::time) spent copying the buffers to and from the host (and
    /// rounding them to 16 bits and back where asked) around MPI's collectives; zero with
    /// NCCL, which sums in GPU memory. On a backend that queues its work (a GPU), the copy to
    /// the host also waits for the flattening of the gradients to finish.
    pub host_time: std::time::Duration,
    /// Sums of synchronized batch norms' statistics across the ranks: per micro-batch, two
    /// per layer in the forward pass and two in the backward pass, each a small all-reduce of
    /// a header then one of the values, and one header alone that ends the micro-batch
    /// (`4 · layers + 1`).
    pub norm_sums: usize,
    /// Values those sums carried from this rank, all together.
    pub norm_values: usize,
    /// Time spent in them, waits for the other ranks included.
    pub norm_time: std::time::Duration,
}

/// The engine chosen for this run, and what it has carried.
pub(crate) struct Exchange {
    engine: Engine,
    stats: ExchangeStats,
    /// The precision of the gradient sums (reduce-scatters and all-reduces).
    pub(crate) precision: GradientPrecision,
}

enum Engine {
    Host,
    #[cfg(feature = "cuda")]
    Nccl(super::nccl::NcclComm),
}

impl Exchange {
    fn new(engine: Engine) -> Self {
        Self {
            engine,
            stats: ExchangeStats::default(),
            precision: GradientPrecision::F32,
        }
    }

    pub(crate) fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Picks the transport for gradients that live on `device`. Collective.
    pub(crate) fn open<B: Backend>(
        group: &dyn Communicator,
        device: &B::Device,
        wanted: GradientTransport,
    ) -> Result<Self> {
        // The same message on every rank, whichever rank's Open MPI lets print.
        let asked = group.all_gather_u64(&[wanted as u64]);
        if let Some(rank) = asked.iter().position(|&a| a != asked[0]) {
            let of = |code: u64| {
                use GradientTransport::*;
                [Auto, Mpi, Nccl]
                    .into_iter()
                    .find(|&t| t as u64 == code)
                    .unwrap_or(Auto)
            };
            return Err(DataParallelError::TransportMismatch {
                rank,
                asked: of(asked[rank]),
                rank_0: of(asked[0]),
            });
        }
        if wanted == GradientTransport::Mpi {
            return Ok(Self::new(Engine::Host));
        }
        let refuse = |(rank, reason): (usize, String)| match wanted {
            GradientTransport::Nccl => Err(DataParallelError::NcclUnavailable { rank, reason }),
            _ => Ok(Self::new(Engine::Host)),
        };
        #[cfg(feature = "cuda")]
        {
            match super::nccl::NcclComm::negotiate::<B>(group, device) {
                Ok(comm) => Ok(Self::new(Engine::Nccl(comm))),
                Err(refusal) => refuse(refusal),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            // The first calls of `NcclComm::negotiate`, so that ranks of both builds agree.
            let ready = group.all_gather_u64(&[0]);
            let rank = ready.iter().position(|&r| r == 0).unwrap_or(0);
            let reason = "this build has no `cuda` feature".to_string();
            refuse((
                rank,
                super::communicator::share_text_from(group, rank, Some(reason)),
            ))
        }
    }

    /// Which transport this is.
    pub(crate) fn kind(&self) -> GradientTransport {
        match self.engine {
            Engine::Host => GradientTransport::Mpi,
            #[cfg(feature = "cuda")]
            Engine::Nccl(_) => GradientTransport::Nccl,
        }
    }

    /// The element-wise sum of every rank's `flat`. Collective.
    pub(crate) fn all_reduce_sum<B: Backend>(
        &mut self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>> {
        self.run(group, flat, Collective::AllReduce)
    }

    /// `flat`, cut into blocks of `counts` values (one per rank), with block `rank` replaced
    /// by the sum of every rank's block `rank`. Collective.
    pub(crate) fn reduce_scatter_sum<B: Backend>(
        &mut self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
        counts: &[usize],
    ) -> Result<Tensor<B, 1>> {
        self.run(group, flat, Collective::ReduceScatter(counts))
    }

    /// `flat`, cut into blocks of `counts` values, with every block `r` replaced by rank `r`'s.
    /// Collective.
    pub(crate) fn all_gather<B: Backend>(
        &mut self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
        counts: &[usize],
    ) -> Result<Tensor<B, 1>> {
        self.run(group, flat, Collective::AllGather(counts))
    }

    /// Whether the engine needs blocks of one size (NCCL); MPI takes any.
    pub(crate) fn needs_equal_blocks(&self) -> bool {
        self.kind() == GradientTransport::Nccl
    }

    fn run<B: Backend>(
        &mut self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
        collective: Collective<'_>,
    ) -> Result<Tensor<B, 1>> {
        let values = flat.dims()[0];
        if let Collective::ReduceScatter(counts) | Collective::AllGather(counts) = collective
            && (counts.len() != group.size() || counts.iter().sum::<usize>() != values)
        {
            return Err(DataParallelError::Collective {
                operation: collective.op(),
                reason: format!("a buffer of {values} values is not {counts:?}"),
            });
        }
        let start = std::time::Instant::now();
        // Parameters are all-gathered exactly: only sums are rounded.
        let precision = match collective {
            Collective::AllGather(_) => GradientPrecision::F32,
            _ => self.precision,
        };
        let (out, host_time) = self.engine.run(group, flat, collective, precision)?;
        self.stats.time += start.elapsed();
        self.stats.host_time += host_time;
        // A transport without 16-bit sums of its own widens them to f32 (the trait's default).
        let bytes = if precision == GradientPrecision::F32 || group.sums_in_16_bits() {
            precision.bytes()
        } else {
            GradientPrecision::F32.bytes()
        };
        self.stats.bytes += values * bytes;
        match collective {
            Collective::AllReduce => self.stats.all_reduces += 1,
            Collective::ReduceScatter(_) => self.stats.reduce_scatters += 1,
            Collective::AllGather(_) => self.stats.all_gathers += 1,
        }
        self.stats.values += values;
        Ok(out)
    }
}

/// A collective over one flat `f32` buffer, in place: every rank passes the whole buffer, cut
/// for the last two into one block per rank, of the given lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Collective<'a> {
    /// Every value summed over the ranks.
    AllReduce,
    /// Rank `r`'s block `r` summed over the ranks; the other blocks are left as they were.
    ReduceScatter(&'a [usize]),
    /// Every rank's block `r` from rank `r`.
    AllGather(&'a [usize]),
}

impl Collective<'_> {
    /// Which operation this is, for errors.
    pub(crate) fn op(&self) -> CollectiveOp {
        match self {
            Self::AllReduce => CollectiveOp::AllReduce,
            Self::ReduceScatter(_) => CollectiveOp::ReduceScatter,
            Self::AllGather(_) => CollectiveOp::AllGather,
        }
    }
}

/// The step of a gradient exchange that failed ([`DataParallelError::Collective`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectiveOp {
    /// The all-reduce of the gradients.
    AllReduce,
    /// The reduce-scatter of the gradients (sharded optimizer state).
    ReduceScatter,
    /// The all-gather of the parameters (sharded optimizer state).
    AllGather,
    /// The copy of the buffer to the host, for MPI.
    HostCopy,
    /// The ranks' agreement on the next call.
    Agreement,
}

impl Engine {
    /// The collective's result, and the time spent copying to and from the host.
    fn run<B: Backend>(
        &self,
        group: &dyn Communicator,
        flat: Tensor<B, 1>,
        collective: Collective<'_>,
        precision: GradientPrecision,
    ) -> Result<(Tensor<B, 1>, std::time::Duration)> {
        match self {
            Self::Host => {
                let device = flat.device();
                let copy = std::time::Instant::now();
                let values = flat.into_data().convert::<f32>().into_vec::<f32>();
                let mut host_time = copy.elapsed();
                // A rank that cannot read its buffer says so before anyone waits in MPI.
                let ready = group.all_gather_u64(&[u64::from(values.is_ok())]);
                let mut values = values.map_err(|err| DataParallelError::Collective {
                    operation: CollectiveOp::HostCopy,
                    reason: format!("{err:?}"),
                })?;
                if let Some(rank) = ready.iter().position(|&r| r == 0) {
                    return Err(DataParallelError::Collective {
                        operation: CollectiveOp::HostCopy,
                        reason: format!("rank {rank} could not read its buffer"),
                    });
                }
                if precision == GradientPrecision::F32 {
                    match collective {
                        // Into a new buffer: the values are not copied once more to be sent.
                        Collective::AllReduce => values = group.all_reduce_sum_f32(&values),
                        Collective::ReduceScatter(counts) => {
                            group.reduce_scatter_sum_f32(&mut values, counts)
                        }
                        Collective::AllGather(counts) => group.all_gather_f32(&mut values, counts),
                    }
                } else {
                    let rounding = std::time::Instant::now();
                    let mut bits = precision.encode(&values);
                    host_time += rounding.elapsed();
                    match collective {
                        Collective::AllReduce => bits = group.all_reduce_sum_u16(&bits, precision),
                        Collective::ReduceScatter(counts) => {
                            group.reduce_scatter_sum_u16(&mut bits, counts, precision)
                        }
                        Collective::AllGather(_) => unreachable!("parameters are gathered in f32"),
                    }
                    let widening = std::time::Instant::now();
                    // Only this rank's block of a reduce-scatter is read (and summed).
                    let (at, end) = match collective {
                        Collective::ReduceScatter(counts) => {
                            let at: usize = counts[..group.rank()].iter().sum();
                            (at, at + counts[group.rank()])
                        }
                        _ => (0, bits.len()),
                    };
                    let block = precision.decode(&bits[at..end]);
                    host_time += widening.elapsed();
                    // Each rank checks the sum it holds (its own block of a reduce-scatter),
                    // and the ranks tell each other, so that all of them refuse the step or
                    // none. MPI does not promise every rank the same bits of an all-reduce
                    // with a user operation (Open MPI's algorithms give them): the ranks
                    // compare a fingerprint of theirs, rather than step apart unawares.
                    let fingerprint = match collective {
                        Collective::AllReduce => super::compress::fingerprint(&bits),
                        _ => 0,
                    };
                    let told = group.all_gather_u64(&[u64::from(block.is_some()), fingerprint]);
                    let fits = told.chunks_exact(2).all(|rank| rank[0] == 1);
                    let (Some(block), true) = (block, fits) else {
                        return Err(DataParallelError::Collective {
                            operation: collective.op(),
                            reason: format!(
                                "a gradient sum is out of {precision:?}'s range: sum in bf16 or f32"
                            ),
                        });
                    };
                    if let Some(rank) = told.chunks_exact(2).position(|r| r[1] != fingerprint) {
                        return Err(DataParallelError::Collective {
                            operation: collective.op(),
                            reason: format!(
                                "rank {rank} received other bits of the 16-bit sum than rank {}",
                                group.rank()
                            ),
                        });
                    }
                    values[at..end].copy_from_slice(&block);
                }
                let count = values.len();
                let back = std::time::Instant::now();
                let tensor = Tensor::from_data(TensorData::new(values, [count]), &device);
                Ok((tensor, host_time + back.elapsed()))
            }
            #[cfg(feature = "cuda")]
            Self::Nccl(comm) => Ok((
                comm.run(group, flat, collective)?,
                std::time::Duration::ZERO,
            )),
        }
    }
}
