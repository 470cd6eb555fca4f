//! Finding devices: how many CUDA GPUs there are, without the panic Burn gives where there is no
//! CUDA driver.
//!
//! On the CPU, data parallelism runs over the one CPU device repeated N times
//! (`vec![device; n]`): each replica gets its own thread.

/// The number of CUDA GPUs, 0 where there is no CUDA driver or no GPU. Never panics.
///
/// Any Burn call on a CUDA device (even `Backend::device_count`) panics where `libcuda` is
/// missing, so the driver library is looked for first, and only then asked for the count.
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> usize {
    // SAFETY: only tries to open the driver library by its known names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    std::panic::catch_unwind(|| {
        cudarc::driver::CudaContext::device_count()
            .map(|count| usize::try_from(count).unwrap_or(0))
            .unwrap_or(0)
    })
    .unwrap_or(0)
}

/// One device per CUDA GPU, in index order; empty where there is none.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Vec<burn::backend::cuda::CudaDevice> {
    (0..cuda_device_count())
        .map(burn::backend::cuda::CudaDevice::new)
        .collect()
}
