//! Who this process is in a multi-process run (`--mpi`, feature `mpi`), and what only rank 0
//! does: print, measure accuracy, write checkpoints and the report.

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use burn_data_parallel::{BatchStats, DataParallelError, DataParallelTrainer, Scatter};
use indicatif::{ProgressBar, ProgressStyle};
use std::marker::PhantomData;

pub struct Ranks {
    #[cfg(feature = "mpi")]
    mpi: Option<burn_data_parallel::dist::Mpi>,
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
            let mpi = burn_data_parallel::dist::Mpi::init()?;
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

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_first(&self) -> bool {
        self.rank == 0
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

    /// This rank's share of the machine's GPUs in a multi-process run, all of them otherwise.
    #[cfg(feature = "cuda")]
    pub fn gpus(
        &self,
        all: Vec<burn::backend::cuda::CudaDevice>,
    ) -> Vec<burn::backend::cuda::CudaDevice> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return mpi.share_of(&all);
        }
        all
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

    /// The local trainer, joined to the other ranks in a multi-process run (which checks that
    /// they hold the same model and gives them rank 0's weights).
    pub fn join<B, M, O>(
        &self,
        local: DataParallelTrainer<B, M, O>,
    ) -> anyhow::Result<Trainer<'_, B, M, O>>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + burn_data_parallel::Replicate<B> + Sync,
        O: Optimizer<M, B>,
    {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            use burn_data_parallel::LossReduction;
            let joined =
                burn_data_parallel::dist::DistributedTrainer::new(mpi, local, LossReduction::Mean)?;
            self.say(format_args!(
                "Gradients summed across the ranks through {:?}.",
                joined.transport()
            ));
            return Ok(Trainer::Ranks(joined));
        }
        Ok(Trainer::Local(local, PhantomData))
    }
}

/// This process's trainer, alone or one of several ranks.
pub enum Trainer<'a, B: AutodiffBackend, M, O> {
    Local(DataParallelTrainer<B, M, O>, PhantomData<&'a ()>),
    #[cfg(feature = "mpi")]
    Ranks(burn_data_parallel::dist::DistributedTrainer<'a, B, M, O>),
}

impl<B, M, O> Trainer<'_, B, M, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + burn_data_parallel::Replicate<B> + Sync,
    O: Optimizer<M, B>,
{
    pub fn step<I, F>(
        &mut self,
        lr: f64,
        batch: I,
        loss: F,
    ) -> Result<BatchStats, DataParallelError>
    where
        I: Scatter<B>,
        F: Fn(&M, I) -> Tensor<B, 1> + Sync,
    {
        match self {
            Self::Local(t, _) => t.step(lr, batch, loss),
            #[cfg(feature = "mpi")]
            Self::Ranks(t) => t.step(lr, batch, loss),
        }
    }

    pub fn module(&self) -> &M {
        match self {
            Self::Local(t, _) => t.module(),
            #[cfg(feature = "mpi")]
            Self::Ranks(t) => t.module(),
        }
    }

    pub fn optimizer(&self) -> &O {
        match self {
            Self::Local(t, _) => t.optimizer(),
            #[cfg(feature = "mpi")]
            Self::Ranks(t) => t.optimizer(),
        }
    }

    pub fn steps(&self) -> usize {
        match self {
            Self::Local(t, _) => t.steps(),
            #[cfg(feature = "mpi")]
            Self::Ranks(t) => t.steps(),
        }
    }

    /// Ends training; in a multi-process run, checks that every rank took the same steps.
    pub fn finish(self) -> Result<(), DataParallelError> {
        match self {
            Self::Local(..) => Ok(()),
            #[cfg(feature = "mpi")]
            Self::Ranks(t) => t.finish().map(|_| ()),
        }
    }
}
