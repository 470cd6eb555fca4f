//! Sharing a machine's cores between CPU replicas, and between the processes of an MPI job.

/// Shares this machine's cores between `replicas` CPU replicas of this process and the other
/// processes of the same MPI job on this machine, through the thread pools the CPU backends
/// size from the environment, each unless already set:
///
/// - `MATMUL_NUM_THREADS` (burn-ndarray's matrix products, one process-wide pool where several
///   replicas would all queue) and `OPENBLAS_NUM_THREADS` (builds on OpenBLAS): `cores /
///   (replicas * local processes)`;
/// - `RAYON_NUM_THREADS` (rayon's global pool, where a lone replica runs and where the caller's
///   work between the replicas' parts goes), with several processes on this machine: `cores /
///   local processes`.
///
/// Each replica's own rayon pool is set by
/// [`DataParallel::with_threads_per_replica`](crate::DataParallel::with_threads_per_replica)
/// instead. Returns the value `MATMUL_NUM_THREADS` holds afterwards, `None` where it is left
/// unset (one replica in one process: the backend's default). On a GPU the variables are
/// harmless. The local processes are counted from the variables Open MPI
/// (`OMPI_COMM_WORLD_LOCAL_SIZE`) and MPICH (`MPI_LOCALNRANKS`) set before a process starts, so
/// this can run before MPI does.
///
/// # Safety
///
/// It sets environment variables: call it while the program runs a single thread (first thing
/// in `main`, before `Mpi::init`, before any tensor operation), as `std::env::set_var` requires.
///
/// ```no_run
/// // First thing in `main`:
/// // SAFETY: no other thread yet.
/// let threads = unsafe { burn_data_parallel::share_cpu_cores(2) };
/// println!("matrix product threads per replica: {threads:?}");
/// // ... then the devices, the model, `DataParallel::new(model, vec![device; 2])`.
/// ```
pub unsafe fn share_cpu_cores(replicas: usize) -> Option<usize> {
    let processes = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let replicas = replicas.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let set = |variable: &str, value: usize| {
        if std::env::var_os(variable).is_none() {
            // SAFETY: the caller runs a single thread (this function's contract).
            unsafe { std::env::set_var(variable, value.max(1).to_string()) };
        }
    };
    if replicas * processes > 1 {
        let share = cores / (replicas * processes);
        set("MATMUL_NUM_THREADS", share);
        set("OPENBLAS_NUM_THREADS", share);
    }
    if processes > 1 {
        set("RAYON_NUM_THREADS", cores / processes);
    }
    std::env::var("MATMUL_NUM_THREADS").ok()?.parse().ok()
}
