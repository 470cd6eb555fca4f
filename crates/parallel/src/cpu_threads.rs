//! Sharing a machine's cores between CPU replicas, and between the processes of an MPI job.

/// Gives each of `replicas` CPU replicas of this process, and of every other process of the
/// same MPI job on this machine, its share of the cores in burn-ndarray's matrix products:
/// sets `MATMUL_NUM_THREADS` (and `OPENBLAS_NUM_THREADS`, for builds on OpenBLAS) to
/// `cores / (replicas * local processes)`, at least 1, unless the variable is already set.
/// Returns the threads each replica gets.
///
/// burn-ndarray multiplies matrices on one process-wide pool sized by `MATMUL_NUM_THREADS`
/// (default: the physical cores, at most 4), where several replicas would all queue. Burn's
/// Flex backend multiplies on each replica's own rayon pool and needs nothing; on a GPU the
/// variables are harmless. The processes of this machine are counted from the variables Open
/// MPI (`OMPI_COMM_WORLD_LOCAL_SIZE`) and MPICH (`MPI_LOCALNRANKS`) set before a process
/// starts, so this can run before MPI does.
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
/// println!("{threads} thread(s) per replica");
/// // ... then the devices, the model, `DataParallel::new(model, vec![device; 2])`.
/// ```
pub unsafe fn share_cpu_cores(replicas: usize) -> usize {
    let processes = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
        .unwrap_or(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (cores / (replicas.max(1) * processes.max(1))).max(1);
    if replicas * processes <= 1 {
        return share;
    }
    for variable in ["MATMUL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: the caller runs a single thread (this function's contract).
            unsafe { std::env::set_var(variable, share.to_string()) };
        }
    }
    share
}
