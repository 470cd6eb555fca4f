//! What one measurement is, and what it gives: passed between the orchestrating process and the
//! child process that runs it (each in its own process, because burn-ndarray's matrix-multiply
//! thread count is read once per process from `MATMUL_NUM_THREADS`).

use dp_tools::split::Split;
use serde::{Deserialize, Serialize};

/// The fixed workloads. Reports and `BENCHMARKS.md` call them W1 to W5 (the command line takes
/// either name: `--workloads w3` or `--workloads training`), and so does their JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    /// W1, the tutorial: `Linear(5, 2)` on a batch of 30, per-call cost.
    #[serde(rename = "W1")]
    Tutorial,
    /// W2, inference: MLP 256 -> 1024 -> 1024 -> 10 on a batch of 1024.
    #[serde(rename = "W2")]
    Inference,
    /// W3, training: the same MLP, global batch 256, cross-entropy, SGD lr 0.05, one full step.
    #[serde(rename = "W3")]
    Training,
    /// W4, the W3 step on 2 replicas of unequal speed: replica 1 runs forward and backward
    /// twice on its rows (the second loss times 0, which leaves the gradient alone), so that
    /// each of its rows costs twice a row of replica 0.
    #[serde(rename = "W4")]
    UnequalReplicas,
    /// W5, the CNN (widths 16, 32, batch norm) trained from 2048 28x28 grayscale PNGs, global
    /// batch 64 on 2 devices, SGD 0.05: read from an image folder (decoded every time) or
    /// preloaded in memory.
    #[serde(rename = "W5")]
    ImageFolder,
}

/// Who runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Runner {
    /// The model called directly, no wrapper.
    Plain,
    /// `DataParallel` (W1, W2) or `DataParallelTrainer` (W3).
    DataParallel,
    /// W3 only: PyTorch's habit, `DataParallel::forward`, the loss on the gathered output,
    /// `backward()`, and the optimizer step on `dp.module()`: replicas linked to the module's
    /// graph every call, and run one after another.
    ForwardBackward,
    /// W3 only: `DataParallelTrainer` with `with_seed`: the replicas' forward passes run one
    /// after another, each reseeded (what a repeatable run costs).
    Seeded,
    /// W3 only: `DataParallelTrainer` with `with_sharded_step`: the gradient sum and the
    /// optimizer step spread over the replicas.
    Sharded,
    /// W3 only: `DataParallelTrainer` with Adam instead of SGD (the optimizer step weighs more).
    Adam,
    /// W3 only: `Adam` with `with_sharded_step`.
    ShardedAdam,
    /// burn-train 0.21's own multi-device training (W3 only, feature `burn-train`).
    BurnTrain,
    /// W3 only: the same burn-train program on this library's `DataParallelStrategy`
    /// (feature `burn-train`): the replicas' fused steps take turns.
    BurnTrainStrategy,
    /// W3 only: `devices` MPI ranks of one CPU device each, under `mpirun` (feature `mpi`).
    MpiRanks,
    /// W3 only: as `MpiRanks`, fine-tuning: every layer but the last frozen, so that only the
    /// last layer's gradients travel.
    MpiRanksFineTune,
    /// W3 only: as `MpiRanks`, with Adam, whose state is twice the model.
    MpiRanksAdam,
    /// W3 only: as `MpiRanksAdam`, each rank keeping the Adam state of its shard only (ZeRO
    /// stage 1: a reduce-scatter and an all-gather instead of the all-reduce).
    MpiRanksSharded,
    /// W3 only: the largest replica's share of the batch (`ceil(256 / N)` rows), forward and
    /// backward alone on one thread, counted as if it had done the whole batch. N replicas
    /// cannot beat this, even with free gradient combination and optimizer step: it is the
    /// ceiling for N-device scaling on this backend.
    Ceiling,
    /// W4 only: the training step of replica `i` alone on one device (replica 1 with its double
    /// cost); the two together give the ideal W4 throughput, the sum of theirs.
    ReplicaAlone(usize),
    /// W4 only: 2 replicas both at replica 0's speed (W3's DataParallel x2): what running two
    /// replicas at once costs on this machine, whatever the split.
    EqualReplicas,
    /// W5 only: the images decoded once, held in memory; `prefetch` batches prepared ahead.
    Preloaded { prefetch: usize },
    /// W5 only: the images read from the folder and decoded for every batch; `prefetch`
    /// batches prepared ahead.
    FromDisk { prefetch: usize },
}

/// One measurement to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub workload: Workload,
    pub runner: Runner,
    pub devices: usize,
    /// Threads of the backend's pools (`MATMUL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` and
    /// `RAYON_NUM_THREADS`); `None` leaves the defaults (every core; at most 4 for
    /// burn-ndarray's matrix products).
    pub threads: Option<usize>,
    /// How long to measure, after warm-up.
    pub seconds: f64,
    /// How batches are split between the replicas.
    #[serde(default)]
    pub split: Split,
}

/// What a measurement gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub spec: Spec,
    pub backend: String,
    /// Iterations timed (calls for W1 and W2, steps for W3).
    pub iterations: usize,
    /// Median seconds per iteration.
    pub median_seconds: f64,
    /// Rows (W1, W2) or samples (W3) per second, from the median.
    pub rows_per_second: f64,
    /// MPI rows: values each rank hands to a step's collectives (the all-reduce, or the
    /// reduce-scatter and the all-gather together).
    #[serde(default)]
    pub exchanged_values: Option<usize>,
    /// MPI rows: this rank's optimizer state, serialized at full precision, in bytes (rank
    /// 0's; with a sharded state, the largest shard's).
    #[serde(default)]
    pub optimizer_bytes: Option<usize>,
    /// MPI rows: rank 0's mean seconds per timed step inside the gradient collectives (host
    /// copies and waiting for the other ranks included).
    #[serde(default)]
    pub exchange_seconds: Option<f64>,
    /// MPI rows: rank 0's mean seconds per step in forward and backward.
    #[serde(default)]
    pub compute_seconds: Option<f64>,
    /// W4 rows: each replica's rows in the last timed step.
    #[serde(default)]
    pub replica_rows: Option<Vec<usize>>,
    /// W5 rows: median seconds to read and batch one step's rows on the caller's thread,
    /// measured apart from training.
    #[serde(default)]
    pub load_seconds: Option<f64>,
    /// W3 trainer rows: where a step's time goes (medians over the timed steps).
    #[serde(default)]
    pub phases: Option<Phases>,
    /// W3 trainer rows: values each replica sends and receives per step.
    #[serde(default)]
    pub traffic: Option<Traffic>,
}

/// Where a training step's time goes, medians in seconds over the timed steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phases {
    /// The whole step (`accumulate` and `apply`).
    pub step: f64,
    /// Per replica: its forward and backward, on its own worker.
    pub replica_compute: Vec<f64>,
    /// Per replica: the rest of the replicas' phase (splitting the batch, copies made, waiting
    /// for the slowest replica, reading the loss): `accumulate` less the gradient sum, less
    /// its compute.
    pub replica_wait: Vec<f64>,
    /// Adding up the replicas' gradients (`BatchStats::reduce`).
    pub combine: f64,
    /// The optimizer step, with the replicas' refresh where the step makes them (`apply`).
    pub optimizer: f64,
}

/// Values each replica sends and receives in a step (`DataParallelTrainer::step_traffic`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Traffic {
    pub sent: Vec<usize>,
    pub received: Vec<usize>,
    /// What a ring all-reduce moves per replica: `2 (n - 1) / n` of the trainable values.
    pub ring_bound: f64,
    /// The most any replica sends or receives, over the ring bound.
    pub over_ring_bound: f64,
}

impl Spec {
    /// Threads of rayon's global pool (`RAYON_NUM_THREADS`): `threads` for one device (or one
    /// MPI rank); for several replicas, `threads` each, which the work the caller does between
    /// the replicas' parts (gradient sum, optimizer step) may use while they wait.
    pub fn rayon_threads(&self) -> Option<usize> {
        self.threads.map(|threads| {
            if self.replicas_in_process() {
                threads * self.devices
            } else {
                threads
            }
        })
    }

    /// Runs `devices` replicas in this process, each on worker threads of its own (not the
    /// plain model, one share alone, or MPI ranks of one device each).
    fn replicas_in_process(&self) -> bool {
        match self.runner {
            Runner::DataParallel
            | Runner::ForwardBackward
            | Runner::Seeded
            | Runner::Sharded
            | Runner::Adam
            | Runner::ShardedAdam
            | Runner::BurnTrain
            | Runner::BurnTrainStrategy
            | Runner::EqualReplicas
            | Runner::Preloaded { .. }
            | Runner::FromDisk { .. } => true,
            Runner::Plain
            | Runner::Ceiling
            | Runner::ReplicaAlone(_)
            | Runner::MpiRanks
            | Runner::MpiRanksFineTune
            | Runner::MpiRanksAdam
            | Runner::MpiRanksSharded => false,
        }
    }

    /// For the one-device baselines with a thread count, the size of the rayon pool they run
    /// in, the best way to run one device on `threads` threads and the way each replica runs:
    /// from a thread outside every pool, each of burn-ndarray's parallel operations (and
    /// Flex's matrix products) would be handed to another thread and waited for.
    pub fn single_device_pool(&self) -> Option<usize> {
        match self.runner {
            Runner::Plain | Runner::Ceiling | Runner::ReplicaAlone(_) => self.threads,
            Runner::DataParallel if self.devices == 1 => self.threads,
            _ => None,
        }
    }

    /// Runs under `mpirun`.
    pub fn over_mpi(&self) -> bool {
        matches!(
            self.runner,
            Runner::MpiRanks
                | Runner::MpiRanksFineTune
                | Runner::MpiRanksAdam
                | Runner::MpiRanksSharded
        )
    }

    pub fn label(&self) -> String {
        let runner = match self.runner {
            Runner::Plain => "plain model".to_owned(),
            Runner::DataParallel if self.workload == Workload::UnequalReplicas => format!(
                "DataParallel x{}, {} split",
                self.devices,
                match self.split {
                    Split::Chunk => "torch.chunk",
                    Split::Balanced => "Balanced",
                    Split::Adaptive => "Adaptive",
                }
            ),
            Runner::DataParallel => format!("DataParallel x{}", self.devices),
            Runner::ForwardBackward => format!(
                "DataParallel x{} forward + backward() (PyTorch's habit)",
                self.devices
            ),
            Runner::Seeded => format!("DataParallel x{}, seeded (`with_seed`)", self.devices),
            Runner::Sharded => format!(
                "DataParallel x{}, optimizer step sharded (`with_sharded_step`)",
                self.devices
            ),
            Runner::Adam => format!("DataParallel x{}, Adam", self.devices),
            Runner::ShardedAdam => format!(
                "DataParallel x{}, Adam, optimizer step sharded (`with_sharded_step`)",
                self.devices
            ),
            Runner::BurnTrain => format!("burn-train multi x{}", self.devices),
            Runner::BurnTrainStrategy => {
                format!("burn-train on DataParallelStrategy x{}", self.devices)
            }
            Runner::MpiRanks => format!("MPI, {} rank(s) of 1 device", self.devices),
            Runner::MpiRanksFineTune => format!(
                "MPI, {} rank(s) of 1 device, all but the last layer frozen",
                self.devices
            ),
            Runner::MpiRanksAdam => format!("MPI, {} rank(s) of 1 device, Adam", self.devices),
            Runner::MpiRanksSharded => format!(
                "MPI, {} rank(s) of 1 device, Adam, state sharded (ZeRO-1)",
                self.devices
            ),
            Runner::ReplicaAlone(0) => "replica 0 alone".to_owned(),
            Runner::EqualReplicas => format!(
                "DataParallel x{}, every replica at replica 0's speed",
                self.devices
            ),
            Runner::ReplicaAlone(i) => format!("replica {i} alone (every row computed twice)"),
            Runner::Preloaded { prefetch } => format!(
                "DataParallel x{}, images preloaded in memory, {}",
                self.devices,
                prefetched(prefetch)
            ),
            Runner::FromDisk { prefetch } => format!(
                "DataParallel x{}, image folder decoded every batch, {}",
                self.devices,
                prefetched(prefetch)
            ),
            Runner::Ceiling => format!(
                "ceiling for x{}: one share of {} rows alone, forward+backward",
                self.devices,
                crate::workloads::W3_BATCH.div_ceil(self.devices)
            ),
        };
        let threads = match self.threads {
            Some(t) => {
                let each = if self.replicas_in_process() && self.devices > 1 {
                    " per replica"
                } else {
                    ""
                };
                format!("{t} thread{}{each}", if t == 1 { "" } else { "s" })
            }
            None => "default threads".to_owned(),
        };
        format!("{runner}, {threads}")
    }
}

/// "prefetch 2 (1 loader thread)", or "read when asked".
fn prefetched(prefetch: usize) -> String {
    match prefetch {
        0 => "read when asked (no prefetch)".to_owned(),
        n => format!(
            "prefetch {n} ({} loader thread)",
            crate::w5::W5_LOADER_THREADS
        ),
    }
}
