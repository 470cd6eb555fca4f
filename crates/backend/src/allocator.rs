//! The programs' memory allocator (feature `mimalloc`, on by default).
//!
//! burn-ndarray allocates fresh buffers of several megabytes for every training step (the
//! weight-sized gradients, the transposed weights its matrix product needs). glibc's malloc
//! serves blocks that size with `mmap` and gives them back with `munmap`, so every step faults
//! its memory in again, page by page, and replicas running in one process queue on the
//! kernel's lock for the process's memory map. mimalloc keeps freed memory for reuse; on the
//! benchmark's workloads it makes every step faster, with one replica as with two
//! (`BENCHMARKS.md` has the figures with both allocators).
//!
//! A library cannot choose the allocator: this is the program's choice, made here for the
//! examples, and recommended to users of `burn-data-parallel` on the CPU.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
