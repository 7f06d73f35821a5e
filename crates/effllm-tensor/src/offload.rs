//! Offloading: tensors in page-locked (pinned) host memory and a copy stream that uploads them asynchronously, so
//! that weights can stream to the GPU layer by layer while the previous layer computes (SpecExec's and TriForce's
//! offloaded targets).
//!
//! ```text
//!   copy stream     |== upload L0 ==|== upload L1 ==|== upload L2 ==| ...
//!   compute stream                  |-- layer 0 --|  |-- layer 1 --|  |-- layer 2 --| ...
//! ```
//!
//! [`PinnedTensor`] holds a tensor's bytes in pinned host memory (the only kind of host memory a DMA engine copies
//! from without a staging copy, and the only kind `cuMemcpyHtoDAsync` copies asynchronously). [`CopyStream`] is a
//! second CUDA stream on the device; [`CopyStream::upload`] queues the copy and returns at once with a device
//! tensor. Ordering is automatic: the first kernel that reads the tensor on the compute stream waits for the copy
//! (an event recorded on the copy stream), and the buffer is freed only after the kernels queued on it have run.
//! The host never blocks, so a loop that uploads layer `ℓ + 1` before queuing layer `ℓ` overlaps the two.
//!
//! Without the `cuda` feature every constructor returns [`Error::NotCompiledWithCuda`].

use crate::{DType, Device, Error, Result, Tensor};

#[cfg(feature = "cuda")]
use std::sync::Arc;

#[cfg(feature = "cuda")]
use cudarc::driver::{CudaStream, PinnedHostSlice};

#[cfg(feature = "cuda")]
use crate::cuda::{CudaDevice, CudaStorage};

/// A tensor's elements in page-locked host memory, bound to one CUDA device for asynchronous uploads.
pub struct PinnedTensor {
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    #[cfg(feature = "cuda")]
    host: PinnedHostSlice<u8>,
}

impl std::fmt::Debug for PinnedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedTensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish()
    }
}

impl PinnedTensor {
    /// Copies `t` (on any device, any layout) into pinned host memory for later uploads to `device`.
    ///
    /// # Errors
    /// [`Error::NotCompiledWithCuda`] / [`Error::CudaUnavailable`] when `device` cannot be used,
    /// [`Error::InvalidArgument`] when `device` is not a CUDA device, [`Error::CudaOutOfMemory`] when the pinned
    /// allocation fails (page-locked memory is limited by the OS).
    pub fn new(t: &Tensor, device: Device) -> Result<PinnedTensor> {
        if !matches!(device, Device::Cuda(_)) {
            return Err(Error::InvalidArgument {
                op: "PinnedTensor::new",
                msg: format!("pinned memory is staged for a CUDA device, not {device}"),
            });
        }
        #[cfg(feature = "cuda")]
        {
            let dev = crate::cuda::get(device)?;
            // Straight from the host storage into pinned memory: one copy (a gather first only for strided views).
            let host = t.to_device(&Device::Cpu)?;
            let contiguous = host.cpu_storage().gather(host.layout());
            let bytes = contiguous.as_bytes();
            let oom = |msg: String| Error::CudaOutOfMemory { device, bytes: bytes.len(), msg };
            // SAFETY: the whole buffer is overwritten below before any read.
            let mut host = unsafe { dev.ctx.alloc_pinned::<u8>(bytes.len().max(1)) }.map_err(|e| oom(e.to_string()))?;
            let dst = host.as_mut_slice().map_err(|e| oom(e.to_string()))?;
            dst[..bytes.len()].copy_from_slice(bytes);
            return Ok(PinnedTensor { shape: t.shape().to_vec(), dtype: t.dtype(), device, host });
        }
        #[allow(unreachable_code)]
        {
            let _ = t;
            Err(Error::NotCompiledWithCuda { device })
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the uploads go to.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of host memory the elements occupy.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }

    /// A host tensor with the same elements (a synchronous copy out of pinned memory).
    ///
    /// # Errors
    /// [`Error::Cuda`] if the pinned buffer cannot be read.
    pub fn to_host(&self) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            let bytes =
                self.host.as_slice().map_err(|e| Error::Cuda { op: "PinnedTensor::to_host", msg: e.to_string() })?;
            let storage = crate::cpu::CpuStorage::from_bytes(self.dtype, &bytes[..self.nbytes()]);
            return Ok(Tensor::from_storage(storage, &self.shape));
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }
}

/// A second stream on one CUDA device for host→device copies that overlap kernels of the compute stream.
///
/// Creating the first `CopyStream` of a device switches its context to multi-stream mode: from then on every new
/// device buffer carries read/write events, which is what orders a kernel after the copy that fills its input
/// (about a microsecond per kernel argument; a process that never offloads pays nothing).
pub struct CopyStream {
    device: Device,
    #[cfg(feature = "cuda")]
    dev: Arc<CudaDevice>,
    #[cfg(feature = "cuda")]
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for CopyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyStream").field("device", &self.device).finish()
    }
}

impl CopyStream {
    /// A copy stream on `device`.
    ///
    /// # Errors
    /// [`Error::NotCompiledWithCuda`] / [`Error::CudaUnavailable`] when `device` cannot be used,
    /// [`Error::InvalidArgument`] for a non-CUDA device, [`Error::Cuda`] if the stream cannot be created.
    pub fn new(device: Device) -> Result<CopyStream> {
        if !matches!(device, Device::Cuda(_)) {
            return Err(Error::InvalidArgument {
                op: "CopyStream::new",
                msg: format!("copy streams belong to a CUDA device, not {device}"),
            });
        }
        #[cfg(feature = "cuda")]
        {
            let dev = crate::cuda::get(device)?;
            let stream = dev.ctx.new_stream().map_err(|e| Error::Cuda { op: "CopyStream::new", msg: e.to_string() })?;
            return Ok(CopyStream { device, dev, stream });
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device })
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Queues the upload of `src` and returns its device tensor without waiting: kernels that read it wait for the
    /// copy on the device, not on the host.
    ///
    /// # Errors
    /// [`Error::DeviceMismatch`] if `src` was staged for another device, [`Error::CudaOutOfMemory`] if the device
    /// buffer cannot be allocated.
    pub fn upload(&self, src: &PinnedTensor) -> Result<Tensor> {
        if src.device != self.device {
            return Err(Error::DeviceMismatch { op: "CopyStream::upload", lhs: self.device, rhs: src.device });
        }
        #[cfg(feature = "cuda")]
        {
            let n = src.nbytes();
            let oom = |msg: String| Error::CudaOutOfMemory { device: self.device, bytes: n, msg };
            // SAFETY: the first `n` bytes are written by the copy queued right after, before any kernel can read
            // them (cudarc orders readers after the buffer's write event).
            let mut buf =
                crate::cuda::with_event_tracking(&self.dev.ctx, || unsafe { self.stream.alloc::<u8>(n.max(1)) })
                    .map_err(|e| oom(e.to_string()))?;
            // The pinned buffer and `buf` both hold max(n, 1) bytes.
            self.stream
                .memcpy_htod(&src.host, &mut buf)
                .map_err(|e| Error::Cuda { op: "CopyStream::upload", msg: e.to_string() })?;
            let len = src.shape.iter().product();
            let storage = CudaStorage { buf, dtype: src.dtype, len, dev: Arc::clone(&self.dev) };
            return Ok(Tensor::from_cuda(storage, &src.shape));
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }

    /// Blocks the host until every queued copy has finished.
    ///
    /// # Errors
    /// [`Error::Cuda`] if the driver reports an error.
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            return self
                .stream
                .synchronize()
                .map_err(|e| Error::Cuda { op: "CopyStream::synchronize", msg: e.to_string() });
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }
}
