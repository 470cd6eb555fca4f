//! Finding devices: how many CUDA GPUs there are, without the panic Burn gives where there is no
//! CUDA driver, and why there are none when there are none.
//!
//! On the CPU, data parallelism runs over the one CPU device repeated N times
//! (`vec![device; n]`): each replica gets its own thread.

/// Why no CUDA GPU can be used (see [`cuda_availability`]).
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaUnavailable {
    /// `libcuda`, the driver's library, cannot be loaded: no NVIDIA driver, or not on the
    /// library path.
    #[error("the CUDA driver library (libcuda) cannot be loaded")]
    NoDriver,
    /// `libnvrtc` cannot be loaded: Burn compiles its CUDA kernels with it at run time, so the
    /// first operation would panic.
    #[error(
        "NVRTC (libnvrtc), which Burn needs to compile its CUDA kernels, cannot be loaded: add \
         the folder holding libnvrtc.so to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    /// The driver is there and sees no GPU.
    #[error("the CUDA driver sees no GPU")]
    NoGpu,
    /// The driver failed when asked for the GPUs.
    #[error("the CUDA driver failed: {0}")]
    DriverFailed(String),
}

/// The number of CUDA GPUs that Burn can use here, or why there is none. Never panics.
///
/// Any Burn call on a CUDA device (even `Backend::device_count`) panics where `libcuda` is
/// missing, and the first operation panics where `libnvrtc` is, so both libraries are looked
/// for first, and only then is the driver asked for the count.
///
/// ```
/// match burn_data_parallel::cuda_availability() {
///     Ok(gpus) => println!("{gpus} CUDA GPU(s)"),
///     Err(why) => println!("running on the CPU: {why}"),
/// }
/// ```
#[cfg(feature = "cuda")]
pub fn cuda_availability() -> Result<usize, CudaUnavailable> {
    // SAFETY: both only try to open a library by its known names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoNvrtc);
    }
    match std::panic::catch_unwind(cudarc::driver::CudaContext::device_count) {
        Ok(Ok(count)) => match usize::try_from(count) {
            Ok(0) | Err(_) => Err(CudaUnavailable::NoGpu),
            Ok(count) => Ok(count),
        },
        Ok(Err(err)) => Err(CudaUnavailable::DriverFailed(format!("{err:?}"))),
        // cudarc panics where the library it loaded lacks a function (not the real driver).
        Err(payload) => Err(CudaUnavailable::DriverFailed(format!(
            "it panicked when asked for the GPUs: {}",
            crate::error::panic_message(payload.as_ref())
        ))),
    }
}

/// One device per CUDA GPU, in index order; empty where there is no CUDA driver, no NVRTC or no
/// GPU ([`cuda_availability`] says which). Never panics.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Vec<burn::backend::cuda::CudaDevice> {
    (0..cuda_availability().unwrap_or(0))
        .map(burn::backend::cuda::CudaDevice::new)
        .collect()
}
