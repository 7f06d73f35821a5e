//! The CUDA slot of a build without the `cuda` feature: the storage type is uninhabited, so no value of it can exist
//! and every CUDA branch of the dispatch code is statically dead; asking for a CUDA device returns
//! [`Error::NotCompiledWithCuda`].

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
