//! Devices.

use crate::{Error, Result};

/// Where a tensor's data lives.
///
/// `Cuda(ordinal)` names a GPU. In a build without the `cuda` feature every attempt to place data there returns
/// [`Error::NotCompiledWithCuda`]; user code never needs a `cfg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory, computed by the CPU backend (faer + in-house SIMD kernels, on effllm's rayon pool).
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// Checks that the device can hold tensors in this build and on this machine.
    pub fn check_available(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(_) => crate::cuda::check_device(*self),
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Parses `"cpu"`, `"cuda"` (ordinal 0) or `"cuda:N"`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        if s.eq_ignore_ascii_case("cuda") {
            return Ok(Device::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:")
            && let Ok(n) = n.parse::<usize>()
        {
            return Ok(Device::Cuda(n));
        }
        Err(Error::InvalidArgument {
            op: "Device::parse",
            msg: format!("unknown device {s:?}; expected \"cpu\", \"cuda\" or \"cuda:N\""),
        })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
