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
//! tensor. The two streams are ordered by two explicit calls, both queued on the device (the host never blocks):
//!
//! - [`CopyStream::fence`] marks the copies queued so far; [`CopyFence::wait`] makes the compute stream wait for
//!   them. Take it after the uploads of a layer and wait on it just before queuing that layer's kernels: uploads
//!   queued later (the next layers) keep overlapping the computation.
//! - [`CopyStream::wait_for_compute`] makes the copy stream wait for every kernel queued so far. An uploaded
//!   buffer is freed on the copy stream when its tensor drops, and a later upload may reuse the memory at once:
//!   call it before dropping uploaded tensors whose kernels may not have run yet.
//!
//! (The backend turns cudarc's per-buffer event tracking off on its compute stream, so the buffers themselves
//! order nothing.) A loop that uploads layer `ℓ + 1` before queuing layer `ℓ` overlaps the two; `effllm-model`'s
//! `OffloadedLlama` is one.
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

/// A second stream on one CUDA device for host→device copies that overlap kernels of the compute stream. Its
/// copies are ordered against the compute stream only through [`CopyStream::fence`] / [`CopyFence::wait`] and
/// [`CopyStream::wait_for_compute`] (see the module documentation).
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

    /// A fence after every copy queued so far on this stream: [`CopyFence::wait`] orders the compute stream's
    /// later kernels after those copies.
    ///
    /// # Errors
    /// [`Error::Cuda`] if the driver cannot record the event.
    pub fn fence(&self) -> Result<CopyFence> {
        #[cfg(feature = "cuda")]
        {
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
            let event = self
                .stream
                .record_event(flags)
                .map_err(|e| Error::Cuda { op: "CopyStream::fence", msg: e.to_string() })?;
            return Ok(CopyFence { device: self.device, dev: Arc::clone(&self.dev), event });
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }

    /// Orders this stream's later work — copies, and the frees of uploaded buffers when their tensors drop — after
    /// every kernel queued so far on the compute stream. Call it before dropping uploaded tensors that queued
    /// kernels may still read.
    ///
    /// # Errors
    /// [`Error::Cuda`] if the driver cannot record or wait for the event.
    pub fn wait_for_compute(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            let err =
                |e: cudarc::driver::DriverError| Error::Cuda { op: "CopyStream::wait_for_compute", msg: e.to_string() };
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
            let event = self.dev.stream.record_event(flags).map_err(err)?;
            return self.stream.wait(&event).map_err(err);
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }

    /// Queues the upload of `src` and returns its device tensor without waiting. Kernels that read it must be
    /// queued after [`CopyFence::wait`] on a fence taken after this call, and the tensor must not drop while queued
    /// kernels may still read it unless [`CopyStream::wait_for_compute`] was called after them.
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
            // SAFETY: the first `n` bytes are written by the copy queued right after on this stream, before any
            // kernel can read them (readers wait on a fence taken after this call, see `CopyFence::wait`).
            let mut buf = unsafe { self.stream.alloc::<u8>(n.max(1)) }.map_err(|e| oom(e.to_string()))?;
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

/// The copies a [`CopyStream`] had queued when [`CopyStream::fence`] was called.
pub struct CopyFence {
    device: Device,
    #[cfg(feature = "cuda")]
    dev: Arc<CudaDevice>,
    #[cfg(feature = "cuda")]
    event: cudarc::driver::CudaEvent,
}

impl std::fmt::Debug for CopyFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyFence").field("device", &self.device).finish()
    }
}

impl CopyFence {
    /// Makes the compute stream wait (on the device; the host does not block) until the fenced copies are done:
    /// kernels queued after this call see the uploaded bytes.
    ///
    /// # Errors
    /// [`Error::Cuda`] if the driver cannot queue the wait.
    pub fn wait(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            return self
                .dev
                .stream
                .wait(&self.event)
                .map_err(|e| Error::Cuda { op: "CopyFence::wait", msg: e.to_string() });
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: self.device })
    }
}
