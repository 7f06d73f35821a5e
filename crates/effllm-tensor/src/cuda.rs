//! The CUDA backend slot.
//!
//! This build has no CUDA backend: the `cuda` feature arrives with the CUDA backend itself. The storage type is
//! uninhabited, so no value of it can exist and every CUDA branch of the dispatch code is statically dead; asking
//! for a CUDA device returns [`Error::NotCompiledWithCuda`]. The real backend replaces this module without changing
//! any public signature.

use crate::{Device, Error, Result};

/// Device memory of one tensor. Uninhabited in a build without CUDA.
#[derive(Debug)]
pub enum CudaStorage {}

/// Whether a CUDA device can be used. Always false in this build; never panics.
pub fn cuda_available() -> bool {
    false
}

pub(crate) fn check_device(device: Device) -> Result<()> {
    Err(Error::NotCompiledWithCuda { device })
}
