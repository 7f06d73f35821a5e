//! The CUDA backend.
//!
//! Built with the `cuda` feature, tensors on [`Device::Cuda`](crate::Device::Cuda) live in device memory and ops run
//! as runtime-compiled (NVRTC) kernels and cuBLAS calls on one stream per device. cudarc loads the CUDA libraries
//! dynamically, so the feature builds on machines without a CUDA toolkit or driver; [`cuda_available`] probes for a
//! usable driver and GPU once (it never panics, even though cudarc panics when `libcuda` is missing).
//!
//! Without the feature this module keeps the same names: the storage type is uninhabited and every attempt to use a
//! CUDA device returns [`Error::NotCompiledWithCuda`](crate::Error::NotCompiledWithCuda).
//!
//! Numerics follow the CPU backend: f16/bf16 are computed in f32 and rounded once; reductions accumulate in f64
//! where the CPU does. Ops without a CUDA kernel yet run as an explicit host round trip (download, CPU op,
//! upload); [`HOST_ROUND_TRIP_OPS`] lists them.

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub(crate) mod kernels;
#[cfg(feature = "cuda")]
pub(crate) mod ops;
#[cfg(feature = "cuda")]
pub use backend::*;

#[cfg(not(feature = "cuda"))]
mod dummy;
#[cfg(not(feature = "cuda"))]
pub use dummy::*;

/// Ops that run on CUDA tensors as a host round trip (download, CPU kernel, upload) until they get a kernel.
pub const HOST_ROUND_TRIP_OPS: &[&str] =
    &["top_k", "thin_svd", "singular_values", "qr", "gather", "scatter", "scatter_add", "where_cond"];
