//! Who this process is in a multi-process run (`--mpi`, feature `mpi`): which trainer it runs
//! the loop with, and what only rank 0 does (print, write checkpoints and the report).

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use burn_data_parallel::{DataParallelTrainer, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Ranks {
    #[cfg(feature = "mpi")]
    mpi: Option<std::rc::Rc<burn_data_parallel::dist::Mpi>>,
    rank: usize,
    size: usize,
    log_all: bool,
}

impl Ranks {
    /// Joins the MPI job when `mpi` is set; otherwise this process is the only rank.
    pub fn start(mpi: bool, log_all: bool) -> anyhow::Result<Self> {
        if !mpi {
            return Ok(Self {
                #[cfg(feature = "mpi")]
                mpi: None,
                rank: 0,
                size: 1,
                log_all,
            });
        }
        #[cfg(feature = "mpi")]
        {
            let mpi = std::rc::Rc::new(burn_data_parallel::dist::Mpi::init()?);
            Ok(Self {
                rank: mpi.rank(),
                size: mpi.size(),
                mpi: Some(mpi),
                log_all,
            })
        }
        #[cfg(not(feature = "mpi"))]
        anyhow::bail!("--mpi needs a build with `--features mpi`")
    }

    fn speaks(&self) -> bool {
        self.rank == 0 || self.log_all
    }

    /// Prints a line from rank 0 (from every rank with --log-all-ranks), prefixed with the
    /// rank in a multi-process run.
    pub fn say(&self, line: std::fmt::Arguments) {
        if !self.speaks() {
            return;
        }
        println!("{}{line}", self.prefix());
    }

    /// In a multi-process run, checks that every rank was given the same `value`; an error on
    /// every rank, naming the one that differs, otherwise.
    pub fn ensure_same(&self, what: &str, value: &[u8]) -> anyhow::Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return Ok(mpi.ensure_same(what, value)?);
        }
        let _ = (what, value);
        Ok(())
    }

    /// `outcome` on this rank; in a multi-process run, an error on every rank if any rank's
    /// `outcome` (of something it did alone, such as `what`) is one.
    pub fn all_succeed(&self, what: &str, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            let all = mpi.all_gather(&[u64::from(outcome.is_err())]);
            outcome?;
            if let Some(rank) = all.iter().position(|&failed| failed != 0) {
                anyhow::bail!("rank {rank} could not {what}");
            }
            return Ok(());
        }
        let _ = what;
        outcome
    }

    /// This rank's place among the ranks of its machine, which share its GPUs; `(0, 1)` in
    /// one process.
    pub fn machine_share(&self) -> (usize, usize) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return (mpi.local_rank(), mpi.local_size());
        }
        (0, 1)
    }

    /// "[rank R] " in a multi-process run, to start printed lines with.
    fn prefix(&self) -> String {
        if self.size > 1 {
            format!("[rank {}] ", self.rank)
        } else {
            String::new()
        }
    }

    /// "rank R: " in a multi-process run, to start error messages with.
    pub fn tag(&self) -> String {
        if self.size > 1 {
            format!("rank {}: ", self.rank)
        } else {
            String::new()
        }
    }

    /// " per rank, on N ranks" in a multi-process run.
    pub fn describe(&self) -> String {
        if self.size > 1 {
            format!(" per rank, on {} ranks", self.size)
        } else {
            String::new()
        }
    }

    /// A progress bar on the ranks that print, hidden on the others.
    pub fn progress_bar(&self, len: u64) -> ProgressBar {
        if !self.speaks() {
            return ProgressBar::hidden();
        }
        let prefix = self.prefix();
        ProgressBar::new(len).with_style(
            ProgressStyle::with_template(&format!(
                "{prefix}{{prefix}} [{{bar:20}}] {{pos}}/{{len}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    }

    /// Runs `training` with the local trainer, joined to the other ranks in a multi-process
    /// run (which checks that they hold the same model and gives them rank 0's weights), with
    /// each rank keeping its shard of the optimizer state when `shard` is set, and global
    /// batches split between the ranks by their measured speed when `balance` is.
    pub fn train<B, M, O, L>(
        &self,
        local: DataParallelTrainer<B, M, O>,
        shard: bool,
        balance: bool,
        training: L,
    ) -> anyhow::Result<()>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + burn_data_parallel::Replicate<B> + Sync,
        O: Optimizer<M, B> + Clone + Send,
        O::Record: burn_data_parallel::ShardableRecord<B>,
        L: Loop<B, M, O>,
    {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            let mut joined = burn_data_parallel::dist::DistributedTrainer::new(mpi.clone(), local)?;
            if shard {
                joined = joined.with_sharded_optimizer()?;
            }
            if balance {
                joined = joined.with_rank_split(burn_data_parallel::Adaptive::new());
            }
            self.say(format_args!(
                "Gradients summed across the ranks through {:?}{}{}.",
                joined.transport(),
                if shard {
                    ", each rank keeping the optimizer state of its shard"
                } else {
                    ""
                },
                if balance {
                    ", global batches split by the ranks' measured speed"
                } else {
                    ""
                }
            ));
            return training.run(joined);
        }
        let local = match (shard, local.devices().len()) {
            (true, 1) => {
                self.say(format_args!(
                    "--shard-optimizer: one device, so nothing to spread the optimizer step over."
                ));
                local
            }
            (true, _) => {
                self.say(format_args!(
                    "The gradient sum and the optimizer step are spread over the devices, each \
                     stepping its share of the parameters."
                ));
                local.with_sharded_step()
            }
            (false, _) => local,
        };
        anyhow::ensure!(
            !balance,
            "--balance-ranks splits global batches between the ranks of an MPI job: it needs \
             --mpi"
        );
        training.run(local)
    }
}

/// A training loop, written once for any [`Trainer`]: alone or across ranks.
pub trait Loop<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> {
    fn run<T: Trainer<B, M, Optimizer = O>>(self, trainer: T) -> anyhow::Result<()>;
}
