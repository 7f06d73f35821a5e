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

/// The two sides of a programmatic dependent launch, in CUDA C: part of [`KERNEL_PRELUDE`] and of the built-in
/// kernels' prelude.
macro_rules! overlapping_launch_functions {
    () => {
        r#"
__device__ __forceinline__ void effllm_wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void effllm_allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
"#
    };
}

#[cfg(feature = "cuda")]
mod backend;
mod custom;
pub(crate) use custom::LaunchMode;
pub use custom::{Arg, CustomKernel, LaunchDims, Param};
#[cfg(feature = "cuda")]
pub(crate) mod kernels;
#[cfg(feature = "cuda")]
pub(crate) mod ops;
#[cfg(feature = "cuda")]
pub use backend::*;
#[cfg(feature = "cuda")]
pub use ops::set_allow_tf32;

#[cfg(not(feature = "cuda"))]
mod dummy;
#[cfg(not(feature = "cuda"))]
pub use dummy::*;

/// Ops that run on CUDA tensors as a host round trip (download, CPU kernel, upload) until they get a kernel.
/// (`top_k` also takes one for rows longer than `u32::MAX` elements, past its kernel's 32-bit ids.)
pub const HOST_ROUND_TRIP_OPS: &[&str] = &["thin_svd", "singular_values", "qr"];

/// Helpers every custom kernel source may start with: `u8/u16/u32/u64/i64` typedefs, header-free f16/bf16
/// conversions (`f16_to_f32`, `f32_to_f16`, `bf16_to_f32`, `f32_to_bf16`) through PTX `cvt` instructions, and the two
/// sides of a programmatic dependent launch ([`CustomKernel::launch_overlapping`]):
/// `effllm_wait_for_previous_kernel()` and `effllm_allow_next_kernel()` (PTX `griddepcontrol`, no-ops before
/// compute capability 9.0).
pub const KERNEL_PRELUDE: &str = concat!(
    r#"
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
__device__ __forceinline__ float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f32_to_f16(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) { u16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
"#,
    overlapping_launch_functions!()
);
