//! `DataParallel`: split the input, run the replicas, gather the outputs.

use crate::buffers::Buffers;
use crate::parallel_apply::{ReplicaTiming, parallel_apply};
use crate::replicas::{Link, Replicas, Replicate, place_on, replica};
use crate::split::{Borrowed, Chunk, SplitPolicy, checked_sizes};
use crate::workers::Order;
use crate::workers::{Threads, Workers};
use crate::{DataParallelError, Gather, Result, Scatter, round_trip};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::convert::Infallible;
use std::sync::Arc;

/// One replica's value for its part of an input ([`DataParallel::forward_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Part<O> {
    /// The replica, and the index of its device.
    pub replica: usize,
    /// Rows of its part.
    pub rows: usize,
    /// What it returned.
    pub value: O,
}

/// The module is only missing after an update that panicked (until `set_module`).
const LOST: &str = "the module was lost in an update that panicked; set a new one";
const PREPARED: &str = "`prepare` finds how the module replicates";

/// Runs a module over several devices: each call splits its input along `dim`, runs one replica
/// per part concurrently, and concatenates the outputs on the output device.
///
/// - **Scatter**: by a [`SplitPolicy`], [`Chunk`] (PyTorch's rule) unless told otherwise. Parts
///   go to the first devices of the list; there can be fewer parts than devices.
/// - **Replicate**: replica 0 is the module itself, on the first device. For inference the
///   others are copies made the first time their device is used and kept until [`module_mut`]
///   or [`set_module`] changes the module. For training (see below) they are made on every
///   call.
/// - **Apply**: with several devices, each replica runs on its device's worker thread, started
///   once and kept; with one, on the caller's thread.
/// - **Gather**: outputs are concatenated along `dim` in replica order, on the output device
///   (the first device unless [`with_output_device`] says otherwise).
///
/// # Training through the wrapper
///
/// On an autodiff backend, with a module that has parameters requiring a gradient, the call is
/// differentiable as PyTorch's is: every replica's parameters are device moves of the module's
/// own, so `loss.backward()` on the gathered output followed by
/// `GradientsParams::from_grads(grads, dp.module())` gives the gradient of the plain forward over
/// the whole batch. The cost, each call: one copy of every parameter per extra device (none on
/// the CPU, whose devices share memory), and the replicas run one after another, since Burn
/// 0.21's autodiff graph loses steps when several threads extend one graph at once; the one
/// backward pass then runs on the caller's thread.
/// [`DataParallelTrainer`](crate::DataParallelTrainer) avoids both: kept replicas, each with a
/// backward pass of its own, all at the same time.
///
/// Buffers that the forward pass updates (BatchNorm's running statistics) are each replica's
/// own; after a call on an autodiff backend the module's become the row-weighted mean of the
/// replicas' (see the crate documentation, "What stays exact").
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::module::Module;
/// use burn::nn::LinearConfig;
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::DataParallel;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(5, 2).init::<B>(&device).fork(&device);
/// let mut dp = DataParallel::new(model, vec![device; 4])?;
/// let x = Tensor::<B, 2>::random([30, 5], Distribution::Default, &device);
///
/// let loss = dp.forward(x.clone(), |m, x| m.forward(x))?.powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), dp.module());
///
/// let plain = dp.module().forward(x).powi_scalar(2).mean();
/// let expected = GradientsParams::from_grads(plain.backward(), dp.module());
/// let id = dp.module().weight.id;
/// grads.get::<NdArray, 2>(id).unwrap().into_data().assert_approx_eq::<f32>(
///     &expected.get::<NdArray, 2>(id).unwrap().into_data(),
///     Default::default(),
/// );
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
///
/// ```
/// use burn::backend::NdArray;
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use burn_data_parallel::DataParallel;
///
/// let device = Default::default();
/// let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
/// // On the CPU, the same device repeated gives one replica per thread.
/// let mut dp = DataParallel::new(model, vec![device; 4])?;
///
/// let input = Tensor::<NdArray, 2>::random([30, 5], Distribution::Normal(0.0, 1.0), &device);
/// let output = dp.forward(input.clone(), |model, x| model.forward(x))?;
///
/// assert_eq!(output.dims(), [30, 2]); // from parts of 8, 8, 8 and 6 rows
/// let plain = dp.module().forward(input);
/// output.into_data().assert_approx_eq::<f32>(&plain.into_data(), Default::default());
/// # Ok::<(), burn_data_parallel::DataParallelError>(())
/// ```
///
/// [`module_mut`]: DataParallel::module_mut
/// [`set_module`]: DataParallel::set_module
/// [`with_output_device`]: DataParallel::with_output_device
#[derive(Debug)]
pub struct DataParallel<B: Backend, M> {
    /// Always there, except while [`update_module`](Self::update_module) runs.
    module: Option<M>,
    devices: Vec<B::Device>,
    output_device: B::Device,
    dim: usize,
    /// Shared with the evaluations a trainer makes, which split as its training does.
    policy: Arc<dyn SplitPolicy>,
    replicas: Replicas<M>,
    workers: Workers,
    /// False after the module was handed out mutably: it must be put back on the first device
    /// (and its parameters materialized) before it is copied again.
    placed: bool,
    /// What the module is made of, found when it is placed; `None` after it was replaced.
    replication: Option<Replication>,
    /// `verified[k]`: tensors are known to make the round trip between the first device and
    /// device `k` (the output device is checked with the last index).
    verified: Vec<bool>,
    /// The seed of a seeded run ([`with_seed`](Self::with_seed)) and the calls made since.
    seed: Option<(u64, u64)>,
}

/// What decides how a module is replicated, found once per module.
#[derive(Debug)]
struct Replication {
    /// On an autodiff backend, and some parameter requires a gradient.
    trains: bool,
    /// The buffers replicas update in a training forward pass (found on autodiff backends only).
    buffers: Buffers,
}

impl Replication {
    fn of<B: Backend, M: Module<B>>(module: &M, device: &B::Device) -> Self {
        if !B::ad_enabled(device) {
            return Self {
                trains: false,
                buffers: Buffers::default(),
            };
        }
        struct AnyTrainable(bool);
        impl<B: Backend> ModuleVisitor<B> for AnyTrainable {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0 |= param.val().is_require_grad();
            }
        }
        let mut trainable = AnyTrainable(false);
        module.visit(&mut trainable);
        Self {
            trains: trainable.0,
            buffers: Buffers::of(module),
        }
    }
}

impl<B: Backend, M: Replicate<B>> DataParallel<B, M> {
    /// Wraps `module` for `devices`, splitting along dimension 0 by the [`Chunk`] rule and
    /// gathering on `devices[0]`.
    ///
    /// The module is moved to `devices[0]` if it is not there. No copy is made yet: each device
    /// receives its replica the first time a call uses it.
    pub fn new(module: M, devices: Vec<B::Device>) -> Result<Self> {
        let first = devices.first().ok_or(DataParallelError::NoDevices)?.clone();
        Ok(Self {
            module: Some(place_on(module, &first)),
            output_device: first,
            devices,
            dim: 0,
            policy: Arc::new(Chunk),
            replicas: Replicas::default(),
            workers: Workers::new(Threads::Each(1)),
            placed: true,
            replication: None,
            verified: Vec::new(),
            seed: None,
        })
    }

    /// Makes every call repeat for a given seed: the replicas run one after another, in
    /// replica order, each after reseeding the backend's random generator with a seed derived
    /// from `seed`, the number of calls made since this one and the replica's index. Random
    /// draws inside the replicas (dropout's masks in a training forward) are then the same
    /// each time a run makes the same calls with the same devices and split; without it, the
    /// replicas draw from the backend's one generator in whatever order their threads reach it.
    ///
    /// The cost is the replicas' concurrency: they run one at a time (measured on the CPU in
    /// `BENCHMARKS.md`, not yet on a GPU). The backend's generator is left
    /// reseeded. A split that learns from timings ([`Adaptive`](crate::Adaptive)) changes the
    /// parts, and so the draws, from run to run.
    ///
    /// ```
    /// use burn::backend::{Autodiff, NdArray};
    /// use burn::module::Module;
    /// use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
    /// use burn::tensor::{Tensor, backend::Backend};
    /// use burn_data_parallel::DataParallel;
    ///
    /// type B = Autodiff<NdArray>;
    /// #[derive(Module, Debug)]
    /// struct Net<B: Backend> {
    ///     linear: Linear<B>,
    ///     dropout: Dropout,
    /// }
    /// let device = Default::default();
    /// // `fork` creates the lazy weights once, so that every clone shares them.
    /// let net = Net {
    ///     linear: LinearConfig::new(4, 4).init::<B>(&device),
    ///     dropout: DropoutConfig::new(0.5).init(),
    /// }
    /// .fork(&device);
    /// let run = || {
    ///     let mut dp = DataParallel::new(net.clone(), vec![device; 3])?.with_seed(7);
    ///     let x = Tensor::<B, 2>::ones([12, 4], &device);
    ///     dp.forward(x, |m, x| m.dropout.forward(m.linear.forward(x)))
    /// };
    /// run()?.into_data().assert_eq(&run()?.into_data(), true);
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some((seed, 0));
        self
    }

    /// Gathers the outputs on `device` instead of the first device. Any device works, including
    /// one that runs no replica (PyTorch refuses the CPU here).
    pub fn with_output_device(mut self, device: B::Device) -> Self {
        self.output_device = device;
        self
    }

    /// Splits inputs and concatenates outputs along `dim` instead of 0.
    pub fn with_dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }

    /// Decides the rows per device by `policy` instead of [`Chunk`]; for unequal devices,
    /// [`Adaptive`](crate::Adaptive) learns their speeds.
    pub fn with_split_policy(mut self, policy: impl SplitPolicy + 'static) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Gives each replica `threads` threads for the compute the backend parallelises with rayon
    /// (default 1, so that N replicas use N cores without competing). A single replica runs on
    /// the caller's thread and uses rayon's global pool, as the plain model would.
    ///
    /// On burn-ndarray, matrix products use their own pool instead, sized once per process:
    /// [`share_cpu_cores`](crate::share_cpu_cores) shares it between the replicas.
    pub fn with_threads_per_replica(mut self, threads: usize) -> Self {
        self.workers = Workers::new(Threads::Each(threads));
        self
    }

    /// Gives replica `i` `threads[i]` threads, as
    /// [`with_threads_per_replica`](Self::with_threads_per_replica) does for all: CPU replicas
    /// of different widths, such as a machine's cores shared unequally between two jobs.
    ///
    /// Returns [`DataParallelError::ThreadCounts`] unless there is one count per device, each at
    /// least 1.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::nn::LinearConfig;
    /// use burn_data_parallel::{Adaptive, DataParallel};
    ///
    /// let device = Default::default();
    /// let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
    /// // Two CPU replicas, one three times as wide: the adaptive split learns what that gives.
    /// let dp = DataParallel::new(model, vec![device; 2])?
    ///     .with_threads_per_device([3, 1])?
    ///     .with_split_policy(Adaptive::new());
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn with_threads_per_device(mut self, threads: impl Into<Vec<usize>>) -> Result<Self> {
        let threads = threads.into();
        if threads.len() != self.devices.len() || threads.contains(&0) {
            return Err(DataParallelError::ThreadCounts {
                devices: self.devices.len(),
                threads,
            });
        }
        self.workers = Workers::new(Threads::PerDevice(threads));
        Ok(self)
    }

    /// A wrapper of `module` on the same devices, split and threads: for a trainer's
    /// evaluations, which then split as its training steps do, without teaching the policy
    /// their forward-only timings.
    pub(crate) fn sibling<C: Backend<Device = B::Device>, N: Replicate<C>>(
        &self,
        module: N,
    ) -> Result<DataParallel<C, N>> {
        let mut sibling = DataParallel::new(module, self.devices.clone())?.with_dim(self.dim);
        sibling.policy = Arc::new(Borrowed(Arc::clone(&self.policy)));
        sibling.workers = Workers::new(self.workers.threads().clone());
        Ok(sibling)
    }

    /// The devices, in replica order.
    pub fn devices(&self) -> &[B::Device] {
        &self.devices
    }

    /// Where outputs are gathered.
    pub fn output_device(&self) -> &B::Device {
        &self.output_device
    }

    /// The dimension inputs are split along and outputs concatenated along.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The wrapped module (also replica 0).
    ///
    /// # Panics
    ///
    /// If an optimizer step panicked inside the trainer holding this wrapper (the module was
    /// moved into it), until [`set_module`](Self::set_module) gives a new one.
    pub fn module(&self) -> &M {
        self.module.as_ref().expect(LOST)
    }

    /// The wrapped module, to change it: the replicas are dropped and made again, from the
    /// changed module, on the next call.
    pub fn module_mut(&mut self) -> &mut M {
        self.module_changes();
        self.replication = None;
        self.module.as_mut().expect(LOST)
    }

    /// Replaces the wrapped module (after an optimizer step, a checkpoint load...); the replicas
    /// are made again on the next call.
    pub fn set_module(&mut self, module: M) {
        self.module_changes();
        self.replication = None;
        self.module = Some(module);
    }

    /// Unwraps the module.
    pub fn into_inner(self) -> M {
        self.module.expect(LOST)
    }

    /// Replaces the module with `update(module)` (an optimizer step). The replicas are dropped
    /// first and `update` receives the module itself, not a copy, so that this wrapper holds no
    /// other handle on its parameters: backends that update a tensor in place when it has a
    /// single owner (burn-ndarray and Flex do) can then do so.
    pub(crate) fn update_module(&mut self, update: impl FnOnce(M) -> M) {
        self.module_changes();
        let module = self.module.take().expect(LOST);
        self.module = Some(update(module));
    }

    /// Replaces the module by the one `step` makes from it and from the replicas kept for
    /// devices `1..` (given the started workers and the devices), and keeps the replicas `step`
    /// returns (for devices `1..`, in order) as this wrapper's own: a sharded optimizer step
    /// steps each replica's own tensors where they are.
    pub(crate) fn update_module_and_replicas(
        &mut self,
        step: impl FnOnce(M, Vec<M>, &Workers, &[B::Device]) -> (M, Vec<M>),
    ) {
        let kept = self.replicas.take();
        self.module_changes();
        let module = self.module.take().expect(LOST);
        let (module, replicas) = step(module, kept, &self.workers, &self.devices);
        self.module = Some(module);
        self.replicas.set(replicas);
    }

    /// The replicas kept, leaving none. For the tests.
    #[cfg(test)]
    pub(crate) fn take_replicas(&mut self) -> Vec<M> {
        self.replicas.take()
    }

    /// Starts the replicas' workers for `count` devices, if not yet started.
    pub(crate) fn ensure_workers(&mut self, count: usize) -> Result<()> {
        self.workers.ensure(count)
    }

    /// The replicas' workers (started by [`ensure_workers`](Self::ensure_workers) or a call).
    pub(crate) fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The module's values are about to change (its parameters and buffers keep their ids and
    /// their kind): its replicas are stale, and it may be on another device.
    fn module_changes(&mut self) {
        self.replicas.invalidate();
        self.placed = false;
    }

    /// How many replicas have been copied and kept since creation: at most one per extra device
    /// until the module changes, however many calls were made. (The replicas of a module
    /// trained through this wrapper are made on every call and not counted.) For the tests.
    #[cfg(test)]
    pub(crate) fn replica_builds(&self) -> usize {
        self.replicas.builds()
    }

    /// Runs `f(replica, part)` on every part of `input` and gathers the outputs.
    ///
    /// A replica that panics is reported as [`DataParallelError::ReplicaPanicked`], after every
    /// other replica has finished.
    pub fn forward<I, O, F>(&mut self, input: I, f: F) -> Result<O>
    where
        M: Sync,
        I: Scatter<B>,
        O: Gather<B>,
        F: Fn(&M, I) -> O + Sync,
    {
        self.try_forward(input, |replica, part| Ok::<_, Infallible>(f(replica, part)))
    }

    /// Like [`forward`](DataParallel::forward), for a function that can fail: the error of the
    /// lowest failing replica is returned as [`DataParallelError::ReplicaFailed`].
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::nn::LinearConfig;
    /// use burn::tensor::Tensor;
    /// use burn_data_parallel::{DataParallel, DataParallelError};
    ///
    /// let device = Default::default();
    /// let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
    /// let mut dp = DataParallel::new(model, vec![device; 2])?;
    /// let x = Tensor::<NdArray, 2>::ones([4, 5], &device);
    /// let failed = dp.try_forward(x, |m, x| {
    ///     let y = m.forward(x);
    ///     if y.clone().is_nan().any().into_scalar() { Err("NaN output") } else { Ok(y) }
    /// });
    /// assert!(failed.is_ok());
    /// # Ok::<(), DataParallelError>(())
    /// ```
    pub fn try_forward<I, O, E, F>(&mut self, input: I, f: F) -> Result<O>
    where
        M: Sync,
        I: Scatter<B>,
        O: Gather<B>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Fn(&M, I) -> Result<O, E> + Sync,
    {
        let dim = self.dim;
        let check = |outputs: &[O], rows: &[usize]| {
            for (replica, (output, &rows_in)) in outputs.iter().zip(rows).enumerate() {
                let rows_out = output.output_rows(dim);
                if let Some(&rows_out) = rows_out.iter().find(|&&rows| rows != rows_in) {
                    return Err(DataParallelError::OutputRows {
                        replica,
                        dim,
                        rows_in,
                        rows_out,
                    });
                }
            }
            Ok(())
        };
        let (outputs, _) = self.run_checked(input, f, None, check)?;
        O::gather(outputs, self.dim, &self.output_device)
    }

    /// Runs `f(replica, part)` on every part of `input` and returns each part's value with the
    /// rows it was computed on, in replica order: for values over a whole part (a loss, a sum,
    /// a mean, a count), which [`forward`](Self::forward) refuses to concatenate
    /// ([`DataParallelError::OutputRows`]). Per-part sums add up to the sum over the batch;
    /// per-part means `m_k` over `rows_k` rows combine into the batch's mean as
    /// `sum(rows_k * m_k) / sum(rows_k)` (not their plain mean, which PyTorch's
    /// `DataParallel` users often take by mistake).
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::nn::LinearConfig;
    /// use burn::tensor::Tensor;
    /// use burn_data_parallel::DataParallel;
    ///
    /// let device = Default::default();
    /// let model = LinearConfig::new(5, 1).init::<NdArray>(&device);
    /// let mut dp = DataParallel::new(model, vec![device; 4])?;
    /// let x = Tensor::<NdArray, 2>::ones([30, 5], &device);
    /// // Each part's mean output, with its rows (8, 8, 8 and 6).
    /// let parts = dp.forward_parts(x.clone(), |m, x| m.forward(x).mean())?;
    /// let rows: usize = parts.iter().map(|p| p.rows).sum();
    /// let mean = parts
    ///     .into_iter()
    ///     .map(|p| p.value.mul_scalar(p.rows as f64 / rows as f64))
    ///     .reduce(|a, b| a + b)
    ///     .unwrap();
    /// let expected = dp.module().forward(x).mean();
    /// mean.into_data().assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn forward_parts<I, O, F>(&mut self, input: I, f: F) -> Result<Vec<Part<O>>>
    where
        M: Sync,
        I: Scatter<B>,
        O: Send,
        F: Fn(&M, I) -> O + Sync,
    {
        let f = |replica: &M, part: I| Ok::<_, Infallible>(f(replica, part));
        let (outputs, timings) = self.run(input, f, None)?;
        Ok(outputs
            .into_iter()
            .zip(timings)
            .map(|(value, timing)| Part {
                replica: timing.replica,
                rows: timing.rows,
                value,
            })
            .collect())
    }

    /// Runs `f(replica, part)` on every part of `input`, and returns the outputs in replica
    /// order without merging them (PyTorch's `parallel_apply` step): for per-replica results
    /// such as losses, metrics or gradients.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::nn::LinearConfig;
    /// use burn::tensor::Tensor;
    /// use burn_data_parallel::DataParallel;
    ///
    /// let device = Default::default();
    /// let model = LinearConfig::new(5, 2).init::<NdArray>(&device);
    /// let mut dp = DataParallel::new(model, vec![device; 4])?;
    /// let rows = dp.parallel_apply(Tensor::<NdArray, 2>::ones([30, 5], &device), |_, x| {
    ///     x.dims()[0]
    /// })?;
    /// assert_eq!(rows, [8, 8, 8, 6]);
    /// # Ok::<(), burn_data_parallel::DataParallelError>(())
    /// ```
    pub fn parallel_apply<I, O, F>(&mut self, input: I, f: F) -> Result<Vec<O>>
    where
        M: Sync,
        I: Scatter<B>,
        O: Send,
        F: Fn(&M, I) -> O + Sync,
    {
        self.try_parallel_apply(input, |replica, part| Ok::<_, Infallible>(f(replica, part)))
    }

    /// [`parallel_apply`](Self::parallel_apply) for a function that can fail: the error of the
    /// lowest failing replica is returned as [`DataParallelError::ReplicaFailed`].
    pub fn try_parallel_apply<I, O, E, F>(&mut self, input: I, f: F) -> Result<Vec<O>>
    where
        M: Sync,
        I: Scatter<B>,
        O: Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Fn(&M, I) -> Result<O, E> + Sync,
    {
        Ok(self.run(input, f, None)?.0)
    }

    /// The split policy, for what it has learnt (see [`Adaptive`](crate::Adaptive)).
    pub fn split_policy(&self) -> &dyn SplitPolicy {
        self.policy.as_ref()
    }

    /// The module's buffers (found on autodiff backends only).
    pub(crate) fn buffers(&mut self) -> &Buffers {
        let first = &self.devices[0];
        let module = self.module.as_ref().expect(LOST);
        &self
            .replication
            .get_or_insert_with(|| Replication::of(module, first))
            .buffers
    }

    /// Runs `f` on every part as [`try_parallel_apply`](Self::try_parallel_apply) does, on
    /// replicas linked as `link` says, or as the module calls for when `None` (connected when
    /// it trains, else kept detached copies). Returns the outputs and each replica's timing,
    /// which the split policy has been shown.
    pub(crate) fn run<I, O, E, F>(
        &mut self,
        input: I,
        f: F,
        link: Option<Link>,
    ) -> Result<(Vec<O>, Vec<ReplicaTiming>)>
    where
        M: Sync,
        I: Scatter<B>,
        O: Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Fn(&M, I) -> Result<O, E> + Sync,
    {
        self.run_checked(input, f, link, |_, _| Ok(()))
    }

    /// [`run`](Self::run), refusing outputs that `check` (given them and each part's rows)
    /// refuses: such a call leaves the module's statistics and the split policy as they were.
    fn run_checked<I, O, E, F, C>(
        &mut self,
        input: I,
        f: F,
        link: Option<Link>,
        check: C,
    ) -> Result<(Vec<O>, Vec<ReplicaTiming>)>
    where
        M: Sync,
        I: Scatter<B>,
        O: Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Fn(&M, I) -> Result<O, E> + Sync,
        C: FnOnce(&[O], &[usize]) -> Result<()>,
    {
        let sizes = self.split_rows(&input)?;
        self.prepare(sizes.len())?;
        let first = &self.devices[0];
        let module = self.module.as_ref().expect(LOST);
        let replication = self.replication.as_ref().expect(PREPARED);
        let link = link.unwrap_or(if replication.trains {
            Link::Connected
        } else {
            Link::Detached
        });

        // Replicate. The module's statistics before the call: what kept copies start from,
        // and what a failed call puts back.
        let buffers = &replication.buffers;
        let mut before = buffers.snapshot(module);
        let connected: Vec<M>;
        let replicas = match link {
            Link::Detached => {
                let kept = self
                    .replicas
                    .ensure::<B>(module, &self.devices, sizes.len());
                buffers.refresh::<B, M>(&mut before, &kept[1..]);
                kept
            }
            Link::Connected => {
                connected = self.devices[1..sizes.len()]
                    .iter()
                    .map(|device| replica(module, device, Link::Connected))
                    .collect();
                std::iter::once(module).chain(&connected).collect()
            }
        };

        // Scatter, apply.
        let parts = scatter(input, self.dim, &sizes, &self.devices)?;
        let call_seed = next_call_seed(&mut self.seed);
        // Connected replicas extend the module's autodiff graph, which Burn 0.21 cannot extend
        // from several threads at once; seeded replicas draw from the backend's one generator.
        let order = if link == Link::Connected || call_seed.is_some() {
            Order::InTurn
        } else {
            Order::Concurrent
        };
        let devices = &self.devices;
        let seeded = |replica: &M, part: I| {
            seed_replica::<B>(devices, call_seed);
            f(replica, part)
        };
        let outputs = parallel_apply(
            &self.workers,
            replicas.clone(),
            parts,
            &self.devices,
            &seeded,
            order,
        );
        let outputs = outputs.and_then(|outputs| {
            let (outputs, busy): (Vec<O>, Vec<_>) = outputs.into_iter().unzip();
            check(&outputs, &sizes).map(|()| (outputs, busy))
        });

        // The buffers: every call ends with each replica's update folded in, so that none is
        // left pending on a worker's thread (where Burn would average it into a later update),
        // then combined into the module's; a failed call puts the module's back.
        buffers.settle(&replicas);
        if outputs.is_ok() {
            buffers.combine(&replicas, &sizes, first);
        } else {
            buffers.restore(module, before);
        }
        let (outputs, busy) = outputs?;
        let timings = timings(&sizes, busy);
        self.policy.observe(&timings);
        Ok((outputs, timings))
    }

    /// The rows of each part of `input`, by the split policy.
    fn split_rows<I: Scatter<B>>(&self, input: &I) -> Result<Vec<usize>> {
        let dim = self.dim;
        let rows = input
            .rows(dim)?
            .ok_or(DataParallelError::NothingToSplit { dim })?;
        if rows == 0 {
            return Err(DataParallelError::EmptyInput { dim });
        }
        checked_sizes(self.policy.as_ref(), rows, self.devices.len())
    }

    /// Makes the first `parts` devices ready for a call: checked, the module placed on the
    /// first, how it replicates found, one worker per part.
    fn prepare(&mut self, parts: usize) -> Result<()> {
        self.verify_devices(parts)?;
        if !self.placed {
            self.module = Some(place_on(self.module().clone(), &self.devices[0]));
            self.placed = true;
        }
        let first = &self.devices[0];
        let module = self.module.as_ref().expect(LOST);
        self.replication
            .get_or_insert_with(|| Replication::of(module, first));
        self.workers.ensure(parts)
    }

    /// Checks, once per device, that tensors make the round trip between the first device and
    /// each of the first `count` devices, and the output device.
    fn verify_devices(&mut self, count: usize) -> Result<()> {
        let slots = self.devices.len() + 1;
        if self.verified.len() != slots {
            self.verified = vec![false; slots];
        }
        let first = &self.devices[0];
        let wanted = (1..count).chain(std::iter::once(self.devices.len()));
        for slot in wanted {
            if self.verified[slot] {
                continue;
            }
            let device = self.devices.get(slot).unwrap_or(&self.output_device);
            round_trip::check::<B>(first, device)?;
            self.verified[slot] = true;
        }
        Ok(())
    }
}

/// `input` split into parts of `sizes` rows along `dim`, part `i` on `devices[i]`.
fn scatter<B: Backend, I: Scatter<B>>(
    input: I,
    dim: usize,
    sizes: &[usize],
    devices: &[B::Device],
) -> Result<Vec<I>> {
    let parts = input.scatter(dim, sizes, devices);
    if parts.len() != sizes.len() {
        return Err(DataParallelError::ScatterCount {
            expected: sizes.len(),
            found: parts.len(),
        });
    }
    Ok(parts)
}

/// This call's seed, derived from the run's seed and the calls before it (counted in `seed`);
/// `None` unseeded.
fn next_call_seed(seed: &mut Option<(u64, u64)>) -> Option<u64> {
    seed.as_mut().map(|(seed, calls)| {
        *calls += 1;
        crate::seed::derive(*seed, &[*calls - 1])
    })
}

/// Reseeds the backend for the calling replica from `call_seed` and its index, where the call
/// is seeded.
fn seed_replica<B: Backend>(devices: &[B::Device], call_seed: Option<u64>) {
    if let Some(call_seed) = call_seed {
        let index = crate::current_replica().map_or(0, |info| info.index);
        B::seed(
            &devices[index],
            crate::seed::derive(call_seed, &[index as u64]),
        );
    }
}

/// Each replica's rows and busy time.
fn timings(sizes: &[usize], busy: Vec<std::time::Duration>) -> Vec<ReplicaTiming> {
    sizes
        .iter()
        .zip(busy)
        .enumerate()
        .map(|(replica, (&rows, compute))| ReplicaTiming {
            replica,
            rows,
            compute,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::DataParallel;
    use burn::backend::NdArray;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Tensor;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn a_new_module_can_be_set_after_an_update_that_panicked() {
        let device = Default::default();
        // `fork` materializes the lazy parameters, so that clones share them.
        let linear = || {
            LinearConfig::new(3, 2)
                .init::<NdArray>(&device)
                .fork(&device)
        };
        let mut dp = DataParallel::new(linear(), vec![device; 2]).unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            dp.update_module(|_: Linear<NdArray>| panic!("optimizer failed"))
        }));
        assert!(panicked.is_err());
        let replacement = linear();
        dp.set_module(replacement.clone());
        let x = Tensor::<NdArray, 2>::ones([4, 3], &device);
        let out = dp.forward(x.clone(), |m, x| m.forward(x)).unwrap();
        let expected = replacement.forward(x);
        out.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    }
}
