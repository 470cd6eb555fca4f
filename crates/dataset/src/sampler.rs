//! `ShardedSampler`: which rows of a dataset each rank reads, by `DistributedSampler`'s rules.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Why a sampler cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    /// No replica at all.
    #[error("a sampler needs at least one replica")]
    NoReplicas,
    /// The rank is not one of the replicas.
    #[error(
        "rank {rank} is out of range for {num_replicas} replicas (ranks are 0..{num_replicas})"
    )]
    RankOutOfRange {
        /// The rank asked for.
        rank: usize,
        /// The number of replicas.
        num_replicas: usize,
    },
}

/// The indices one rank reads in one epoch, PyTorch's `DistributedSampler` rules:
///
/// - with `shuffle`, the whole index list is permuted by `seed + epoch` (the same on every rank,
///   so ranks never overlap); call [`set_epoch`](ShardedSampler::set_epoch) each epoch for a new
///   order;
/// - without `drop_last`, the list is padded by repeating its start until it divides evenly, so
///   every rank gets `ceil(len / replicas)` indices; with `drop_last`, the tail is dropped and
///   every rank gets `floor(len / replicas)`;
/// - rank `r` takes every `replicas`-th index starting at `r`.
///
/// Every rank gets the same count, so that ranks take the same number of steps and never wait
/// for one another.
///
/// ```
/// use dp_dataset::ShardedSampler;
///
/// let rank0 = ShardedSampler::new(10, 4, 0).unwrap().with_shuffle(false);
/// assert_eq!(rank0.indices(), [0, 4, 8]);
/// let rank3 = ShardedSampler::new(10, 4, 3).unwrap().with_shuffle(false);
/// assert_eq!(rank3.indices(), [3, 7, 1]); // padded with index 1
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedSampler {
    len: usize,
    num_replicas: usize,
    rank: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    epoch: u64,
}

impl ShardedSampler {
    /// A sampler over `len` rows for `rank` of `num_replicas`, shuffled with seed 0, padded.
    pub fn new(len: usize, num_replicas: usize, rank: usize) -> Result<Self, SamplerError> {
        if num_replicas == 0 {
            return Err(SamplerError::NoReplicas);
        }
        if rank >= num_replicas {
            return Err(SamplerError::RankOutOfRange { rank, num_replicas });
        }
        Ok(Self {
            len,
            num_replicas,
            rank,
            shuffle: true,
            seed: 0,
            drop_last: false,
            epoch: 0,
        })
    }

    /// Shuffles (the default) or keeps the dataset order.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The seed of the shuffle; must be the same on every rank.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Drops the tail instead of padding.
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Whether the order is shuffled.
    pub fn shuffle(&self) -> bool {
        self.shuffle
    }

    /// The seed of the shuffle.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sets the epoch, which changes the shuffled order.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Indices every rank reads in one epoch.
    pub fn num_samples(&self) -> usize {
        if self.drop_last {
            self.len / self.num_replicas
        } else {
            self.len.div_ceil(self.num_replicas)
        }
    }

    /// Every index once, in the current epoch's order (shuffled by `seed + epoch`), the same on
    /// every rank.
    fn order(&self) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            all.shuffle(&mut StdRng::seed_from_u64(
                self.seed.wrapping_add(self.epoch),
            ));
        }
        all
    }

    /// The current epoch's global batches of `batch_size` rows (the last one smaller if need
    /// be), every index exactly once, with no padding and nothing dropped; the same on every
    /// rank and **whatever the number of ranks**. Each rank then takes its
    /// [`part`](Self::part) of each batch: with a trainer that weights by rows, training on them
    /// is the same (up to rounding) on any number of ranks, so a run can be resumed at another
    /// world size; except where the model depends on how the batch is split (batch norm
    /// normalizes each part by its own statistics) or draws random numbers (dropout).
    /// (`drop_last` does not apply: uneven parts are taken exactly.)
    ///
    /// ```
    /// use dp_dataset::ShardedSampler;
    ///
    /// let sampler = ShardedSampler::new(10, 3, 1).unwrap().with_shuffle(false);
    /// let batches = sampler.global_batches(4);
    /// assert_eq!(batches, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    /// // Rank 1 of 3 takes row 1 of the first batch's 4, and row 0 of the last one's 2 (of
    /// // which rank 0 takes none).
    /// assert_eq!(sampler.part(&batches[0]), [1]);
    /// assert_eq!(sampler.part(&batches[2]), [8]);
    /// let rank0 = ShardedSampler::new(10, 3, 0).unwrap().with_shuffle(false);
    /// assert!(rank0.part(&batches[2]).is_empty());
    /// ```
    pub fn global_batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        self.order()
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// This rank's contiguous part of `rows` (a global batch), by
    /// [`burn_data_parallel::rank_rows`]: the ranks' parts cover every row once and differ in
    /// size by at most one.
    pub fn part<'a, T>(&self, rows: &'a [T]) -> &'a [T] {
        &rows[burn_data_parallel::rank_rows(rows.len(), self.rank, self.num_replicas)]
    }

    /// This rank's indices for the current epoch.
    pub fn indices(&self) -> Vec<usize> {
        let mut all = self.order();
        let total = self.num_samples() * self.num_replicas;
        if total > all.len() && !all.is_empty() {
            let padding: Vec<usize> = all
                .iter()
                .copied()
                .cycle()
                .take(total - all.len())
                .collect();
            all.extend(padding);
        }
        all.truncate(total);
        all.into_iter()
            .skip(self.rank)
            .step_by(self.num_replicas)
            .collect()
    }
}
