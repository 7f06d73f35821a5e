//! The CUDA slot of a build without the `cuda` feature: the storage type is uninhabited, so no value of it can exist
//! and every CUDA branch of the dispatch code is statically dead; asking for a CUDA device returns
//! [`Error::NotCompiledWithCuda`].

use std::sync::Arc;

use crate::{Device, Error, Result};

/// Device memory of one tensor. Uninhabited in a build without CUDA.
#[derive(Debug)]
pub enum CudaStorage {}

/// Whether a CUDA device can be used. Always false in this build; never panics.
pub fn cuda_available() -> bool {
    false
}

/// Number of CUDA devices. Always 0 in this build.
pub fn device_count() -> usize {
    0
}

pub(crate) fn check_device(device: Device) -> Result<()> {
    Err(Error::NotCompiledWithCuda { device })
}

/// A CUDA device handle. Uninhabited in a build without CUDA.
#[derive(Debug)]
pub enum CudaDevice {}

impl CudaDevice {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        match *self {}
    }
    /// The GPU's name.
    pub fn name(&self) -> &str {
        match *self {}
    }
    /// The NVRTC target.
    pub fn arch(&self) -> &'static str {
        match *self {}
    }
    /// Modules compiled so far.
    pub fn compile_count(&self) -> usize {
        match *self {}
    }
    /// Streaming multiprocessors.
    pub fn multiprocessor_count(&self) -> usize {
        match *self {}
    }
    /// Waits for queued work.
    pub fn synchronize(&self) -> Result<()> {
        match *self {}
    }
}

/// The device address of a tensor's first element: always an error in this build (no tensor lives on a CUDA
/// device).
pub fn device_address(t: &crate::Tensor) -> Result<u64> {
    Err(Error::NotCompiledWithCuda { device: t.device() })
}

/// The handle of CUDA device `ordinal`: always [`Error::NotCompiledWithCuda`] in this build.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    Err(Error::NotCompiledWithCuda { device: Device::Cuda(ordinal) })
}

pub(crate) fn launch_custom(
    _kernel: &super::CustomKernel,
    device: Device,
    _dims: super::LaunchDims,
    _args: &mut [super::Arg<'_>],
    _mode: super::LaunchMode,
) -> Result<()> {
    Err(Error::NotCompiledWithCuda { device })
}

/// Lets f32 matmuls use TF32 on CUDA. No effect in this build.
pub fn set_allow_tf32(_allow: bool) {}

/// A recorded CUDA graph. Uninhabited in a build without CUDA.
#[derive(Debug)]
pub enum CudaGraph {}

impl CudaGraph {
    /// Queues one replay.
    pub fn launch(&self) -> Result<()> {
        match *self {}
    }
    /// The device the graph runs on.
    pub fn device(&self) -> Device {
        match *self {}
    }
}

/// Records `f`'s device work into a graph: always [`Error::NotCompiledWithCuda`] in this build.
pub fn capture_graph<T>(device: Device, _f: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
    Err(Error::NotCompiledWithCuda { device })
}
