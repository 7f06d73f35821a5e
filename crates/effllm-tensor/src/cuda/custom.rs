//! The public kernel API: technique crates bring their own CUDA C kernels (CEMA scans, convolution mixers, tree
//! attention...) and launch them on tensors through checked arguments.
//!
//! A [`CustomKernel`] is CUDA C source plus the name of an `extern "C" __global__` function and a declared
//! signature. The source is compiled once per process and device (NVRTC, no headers needed: see
//! [`KERNEL_PRELUDE`](crate::cuda::KERNEL_PRELUDE) for the f16/bf16 helpers) and cached. [`CustomKernel::launch`]
//! checks every argument against the signature — kind, dtype, device, contiguity, minimum element count, unique
//! ownership of outputs — before anything reaches the driver.

use crate::{DType, Device, Error, Result, Tensor};

/// One declared parameter of a custom kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A read-only tensor of this dtype (passed as `const T*`).
    In(DType),
    /// A tensor the kernel writes (passed as `T*`); it must not share storage with any other tensor.
    Out(DType),
    /// `int`
    I32,
    /// `unsigned int`
    U32,
    /// `long long`
    I64,
    /// `unsigned long long`
    U64,
    /// `float`
    F32,
    /// `double`
    F64,
}

/// One argument of a launch.
#[derive(Debug)]
pub enum Arg<'a> {
    /// A read-only tensor.
    In(&'a Tensor),
    /// A tensor the kernel writes.
    Out(&'a mut Tensor),
    /// `int`
    I32(i32),
    /// `unsigned int`
    U32(u32),
    /// `long long`
    I64(i64),
    /// `unsigned long long`
    U64(u64),
    /// `float`
    F32(f32),
    /// `double`
    F64(f64),
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes.
    pub shared_mem_bytes: u32,
}

impl LaunchDims {
    /// A 1-D launch of `threads` threads in blocks of 256.
    pub fn linear(threads: usize) -> LaunchDims {
        LaunchDims { grid: (threads.div_ceil(256).max(1) as u32, 1, 1), block: (256, 1, 1), shared_mem_bytes: 0 }
    }
}

/// How a kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaunchMode {
    Plain,
    Overlapping,
    Cooperative,
}

/// A user kernel: source, entry point and signature.
#[derive(Clone, Debug)]
pub struct CustomKernel {
    key: String,
    source: String,
    function: String,
    params: Vec<Param>,
}

impl CustomKernel {
    /// A kernel named `function` in `source`, with the declared parameters. `key` names the module in the cache
    /// (use a crate-qualified name, e.g. `"megalodon::cema_scan_v1"`); the same key must always carry the same
    /// source.
    pub fn new(key: &str, source: &str, function: &str, params: &[Param]) -> CustomKernel {
        CustomKernel {
            key: key.to_string(),
            source: source.to_string(),
            function: function.to_string(),
            params: params.to_vec(),
        }
    }

    /// The declared parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Checks `args` against the signature: kinds and dtypes match, every tensor is on `device`, contiguous and
    /// holds at least `min_elems` elements, and outputs are uniquely owned. Returns the first problem as an error.
    pub fn check(&self, device: Device, args: &[Arg<'_>], min_elems: usize) -> Result<()> {
        let op = "CustomKernel::launch";
        if args.len() != self.params.len() {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("{}: {} arguments for {} parameters", self.function, args.len(), self.params.len()),
            });
        }
        for (i, (p, a)) in self.params.iter().zip(args).enumerate() {
            let bad =
                |msg: String| Error::InvalidArgument { op, msg: format!("{} argument {i}: {msg}", self.function) };
            let tensor = match (p, a) {
                (Param::In(d), Arg::In(t)) => Some((*d, &**t)),
                (Param::Out(d), Arg::Out(t)) => Some((*d, &**t)),
                (Param::I32, Arg::I32(_))
                | (Param::U32, Arg::U32(_))
                | (Param::I64, Arg::I64(_))
                | (Param::U64, Arg::U64(_))
                | (Param::F32, Arg::F32(_))
                | (Param::F64, Arg::F64(_)) => None,
                _ => return Err(bad(format!("expected {p:?}, got {}", arg_kind(a)))),
            };
            if let Some((dtype, t)) = tensor {
                if t.dtype() != dtype {
                    return Err(Error::DTypeMismatch { op, lhs: dtype, rhs: t.dtype() });
                }
                if t.device() != device {
                    return Err(Error::DeviceMismatch { op, lhs: device, rhs: t.device() });
                }
                if !t.is_contiguous() {
                    return Err(bad("tensor is not contiguous".into()));
                }
                if t.elem_count() < min_elems {
                    return Err(bad(format!("{} elements, the launch covers {min_elems}", t.elem_count())));
                }
            }
        }
        Ok(())
    }

    /// Compiles (once) and launches the kernel on `device` after [`CustomKernel::check`]. Asynchronous: read the
    /// outputs (e.g. `to_vec`) or call `cuda::device(n)?.synchronize()` to wait.
    pub fn launch(&self, device: Device, dims: LaunchDims, args: &mut [Arg<'_>], min_elems: usize) -> Result<()> {
        self.check(device, args, min_elems)?;
        super::launch_custom(self, device, dims, args, LaunchMode::Plain)
    }

    /// [`CustomKernel::launch`] as a *programmatic dependent launch* on GPUs of compute capability 9.0 or later
    /// (Hopper): the kernel's blocks may start while the kernel queued before it is still running, and must execute
    /// `effllm_wait_for_previous_kernel()` (from [`KERNEL_PRELUDE`](super::KERNEL_PRELUDE)) before they read
    /// anything an earlier kernel writes or write anything an earlier kernel reads. "Earlier" means any kernel
    /// queued before, not only the one just before: a kernel that lets its dependents start before its own wait
    /// (the built-in tile-layout GEMV does) lets them overlap its predecessor too. Work before that call — loading
    /// or prefetching weights that no kernel writes — overlaps the previous kernel's tail and the launch latency.
    /// The previous kernel lets it start early by executing `effllm_allow_next_kernel()`. On older GPUs this is
    /// [`CustomKernel::launch`] (the prelude's functions then compile to nothing).
    ///
    /// Recorded into a [`CudaGraph`](super::CudaGraph), the dependency becomes a programmatic edge of the graph.
    pub fn launch_overlapping(
        &self,
        device: Device,
        dims: LaunchDims,
        args: &mut [Arg<'_>],
        min_elems: usize,
    ) -> Result<()> {
        self.check(device, args, min_elems)?;
        super::launch_custom(self, device, dims, args, LaunchMode::Overlapping)
    }

    /// [`CustomKernel::launch`] as a *cooperative* launch: every block of the grid is resident at once (or the
    /// launch fails with an error, e.g. a grid larger than the GPU holds), so the blocks may wait for each other —
    /// a persistent kernel with grid-wide barriers. Size the grid from
    /// [`CudaDevice::multiprocessor_count`](super::CudaDevice::multiprocessor_count).
    pub fn launch_cooperative(
        &self,
        device: Device,
        dims: LaunchDims,
        args: &mut [Arg<'_>],
        min_elems: usize,
    ) -> Result<()> {
        self.check(device, args, min_elems)?;
        super::launch_custom(self, device, dims, args, LaunchMode::Cooperative)
    }

    /// The module key in the cache.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The CUDA C source.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The entry point.
    pub fn function(&self) -> &str {
        &self.function
    }
}

fn arg_kind(a: &Arg<'_>) -> &'static str {
    match a {
        Arg::In(_) => "an input tensor",
        Arg::Out(_) => "an output tensor",
        Arg::I32(_) => "i32",
        Arg::U32(_) => "u32",
        Arg::I64(_) => "i64",
        Arg::U64(_) => "u64",
        Arg::F32(_) => "f32",
        Arg::F64(_) => "f64",
    }
}
