//! The [`Tensor`] type: construction, data access, dtype/device conversion and zero-copy views.

use std::borrow::Cow;

use ndarray::ShapeBuilder;
use std::sync::Arc;

use crate::cpu::{CpuStorage, map_storage, map_storage_same};
use crate::cuda::CudaStorage;
use crate::layout::{Layout, checked_elem_count, contiguous_strides};
use crate::{DType, Device, Error, Result, WithDType};

/// Where a tensor's elements are stored.
#[derive(Debug)]
pub(crate) enum Storage {
    Cpu(CpuStorage),
    // Uninhabited in builds without the `cuda` feature.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda(CudaStorage),
}

impl Storage {
    /// Whether the bytes live on a CUDA device, and how many (for [`crate::memory`]).
    fn footprint(&self) -> (bool, usize) {
        match self {
            Storage::Cpu(s) => (false, s.len() * s.dtype().size_in_bytes()),
            #[allow(unreachable_patterns)]
            Storage::Cuda(s) => (true, cuda_storage_bytes(s)),
        }
    }

    /// Wraps a storage for a tensor, counting its bytes as live until the last view drops it.
    pub(crate) fn counted(self) -> Arc<Storage> {
        let (cuda, bytes) = self.footprint();
        crate::memory::on_alloc(cuda, bytes);
        Arc::new(self)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let (cuda, bytes) = self.footprint();
        crate::memory::on_free(cuda, bytes);
    }
}

#[cfg(feature = "cuda")]
fn cuda_storage_bytes(s: &CudaStorage) -> usize {
    s.len * s.dtype.size_in_bytes()
}

#[cfg(not(feature = "cuda"))]
fn cuda_storage_bytes(s: &CudaStorage) -> usize {
    match *s {}
}

/// Returns `$cuda` from the enclosing function when `$t` lives on a CUDA device. Expands to nothing without the
/// `cuda` feature, so CPU-only builds carry no CUDA branches.
macro_rules! on_cuda {
    ($t:expr, $cuda:expr) => {
        #[cfg(feature = "cuda")]
        if $t.cuda_storage().is_some() {
            return $cuda;
        }
    };
}
pub(crate) use on_cuda;

/// Returns from the enclosing function by running the CPU version of the op on host copies of the CUDA operands
/// and uploading the result (ops listed in `cuda::HOST_ROUND_TRIP_OPS`).
macro_rules! host_round_trip {
    ($first:ident = $src:expr $(, $name:ident = $arg:expr)* => $call:expr) => {
        #[cfg(feature = "cuda")]
        if $src.cuda_storage().is_some() {
            let __dev = $src.device();
            let $first = &$src.to_device(&$crate::Device::Cpu)?;
            $( let $name = &$arg.to_device(&$crate::Device::Cpu)?; )*
            return ($call)?.to_device(&__dev);
        }
    };
}
pub(crate) use host_round_trip;

/// An n-dimensional array on a [`Device`], with a [`DType`].
///
/// A tensor is a shared, immutable storage plus a [`Layout`]; cloning is cheap and views (`transpose`, `narrow`,
/// `permute`, `broadcast_as`, ...) never copy. Ops return new tensors. Every op checks shapes, dtypes and devices
/// and returns a typed [`Error`] naming the op and the operands instead of panicking.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
    /// The autograd node of a tracked tensor (see [`crate::autograd`]); `None` for every inference tensor.
    pub(crate) node: Option<Arc<crate::autograd::Node>>,
}

/// Float data of a tensor in the precision the CPU kernels compute in: f32 for f16/bf16/f32, f64 for f64.
pub(crate) enum Work<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

/// Runs `$body` on the float working buffer with `$d` bound to a `&[f32]` or `&[f64]`; `$body` returns a `Vec` of
/// the same element type.
macro_rules! with_work {
    ($work:expr, $d:ident => $body:expr) => {
        match $work {
            $crate::tensor::Work::F32($d) => $crate::tensor::WorkOut::F32($body),
            $crate::tensor::Work::F64($d) => $crate::tensor::WorkOut::F64($body),
        }
    };
}
pub(crate) use with_work;

/// Output of a kernel run on a [`Work`] buffer.
pub(crate) enum WorkOut {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl WorkOut {
    /// Wraps the output as a tensor of `shape` in `dtype` (rounding once from f32 for f16/bf16).
    pub(crate) fn into_tensor(self, shape: &[usize], dtype: DType) -> Tensor {
        let storage = match (self, dtype) {
            (WorkOut::F64(v), _) => CpuStorage::F64(v),
            (WorkOut::F32(v), DType::F32) => CpuStorage::F32(v),
            (WorkOut::F32(v), DType::F16) => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
            (WorkOut::F32(v), DType::BF16) => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
            (WorkOut::F32(v), _) => CpuStorage::F32(v),
        };
        Tensor::from_storage(storage, shape)
    }
}

impl Tensor {
    pub(crate) fn from_storage(storage: CpuStorage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Tensor { storage: Storage::Cpu(storage).counted(), layout: Layout::contiguous(shape), node: None }
    }

    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: Arc::clone(&self.storage), layout, node: None }
    }

    pub(crate) fn cpu_storage(&self) -> &CpuStorage {
        match &*self.storage {
            Storage::Cpu(s) => s,
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(c) => match *c {},
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => unreachable!("CUDA tensors are dispatched before any CPU kernel runs"),
        }
    }

    /// A tensor holding `data` with `shape`, on `device`.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize], device: &Device) -> Result<Tensor> {
        device.check_available()?;
        let n = checked_elem_count("from_vec", shape)?;
        if n != data.len() {
            return Err(Error::ElementCount { op: "from_vec", shape: shape.to_vec(), expected: n, got: data.len() });
        }
        Tensor::from_storage(T::into_storage(data), shape).to_device(device)
    }

    /// A tensor holding a copy of `data` with `shape`, on `device`.
    pub fn from_slice<T: WithDType>(data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A tensor of `shape` filled with `value` (converted to `dtype`).
    pub fn full(value: f64, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        device.check_available()?;
        let n = checked_elem_count("full", shape)?;
        let one = Tensor::from_storage(
            match dtype {
                DType::F16 => CpuStorage::F16(vec![crate::dtype::f16_from_f64(value)]),
                DType::BF16 => CpuStorage::BF16(vec![crate::dtype::bf16_from_f64(value)]),
                DType::F32 => CpuStorage::F32(vec![value as f32]),
                DType::F64 => CpuStorage::F64(vec![value]),
                DType::U8 => CpuStorage::U8(vec![u8::from_f64(value)]),
                DType::U32 => CpuStorage::U32(vec![u32::from_f64(value)]),
            },
            &[1],
        );
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = device {
            // Filled on the device: no host buffer of the full size.
            let bits = map_storage!(one.cpu_storage(), v => {
                let mut b = [0u8; 8];
                // SAFETY: one plain-old-data element of at most 8 bytes.
                let src = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[0])) };
                b[..src.len()].copy_from_slice(src);
                u64::from_le_bytes(b)
            });
            return crate::cuda::ops::fill(*device, shape, dtype, bits);
        }
        let storage = map_storage_same!(one.cpu_storage(), v => try_filled(v[0], n, shape)?);
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// The 1-D tensor `[0, 1, ..., n - 1]` in `dtype`.
    pub fn arange(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        device.check_available()?;
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Tensor::from_vec(v, &[n], &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }

    /// A scalar (rank-0) tensor.
    pub fn scalar<T: WithDType>(value: T, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], &[], device)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    /// Size of dimension `dim`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.layout.check_dim("dim", dim)?;
        Ok(self.shape()[dim])
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }

    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(c) => match *c {},
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype,
        }
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(c) => match *c {},
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.device(),
        }
    }

    /// Whether the elements are dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether `self` and `other` share storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// A contiguous tensor with the same elements (`self` itself, cheaply, when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        crate::autograd::op("contiguous", &[self], || self.contiguous_fwd(), |_| crate::autograd::rules::identity())
    }

    fn contiguous_fwd(&self) -> Result<Tensor> {
        on_cuda!(self, crate::cuda::ops::cast(self, self.dtype()));
        Ok(Tensor::from_storage(self.cpu_storage().gather(&self.layout), self.shape()))
    }

    /// The elements in row-major order as a `Vec<T>`; `T` must match the dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        Ok(self.data::<T>("to_vec")?.into_owned())
    }

    /// The elements converted to f64, in row-major order (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        if self.dtype() == DType::F64 {
            return self.to_vec::<f64>();
        }
        self.to_dtype(DType::F64)?.to_vec::<f64>()
    }

    /// The value of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "to_scalar",
                shape: self.shape().to_vec(),
                msg: "expected exactly one element".into(),
            });
        }
        Ok(self.data::<T>("to_scalar")?[0])
    }

    /// Row-major elements, borrowed when the tensor is contiguous.
    pub(crate) fn data<T: WithDType>(&self, op: &'static str) -> Result<Cow<'_, [T]>> {
        on_cuda!(self, {
            let host = self.to_device(&Device::Cpu)?;
            host.data::<T>(op).map(|c| Cow::Owned(c.into_owned()))
        });
        let s = self.cpu_storage();
        let v = T::storage_slice(s).ok_or(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: T::DTYPE })?;
        Ok(if self.is_contiguous() {
            let off = self.layout.offset();
            Cow::Borrowed(&v[off..off + self.elem_count()])
        } else {
            Cow::Owned(crate::cpu::gather_strided(v, &self.layout))
        })
    }

    /// Float data in the kernel precision (see [`Work`]); integer dtypes are an error naming `op`.
    pub(crate) fn work(&self, op: &'static str) -> Result<Work<'_>> {
        match self.dtype() {
            DType::F32 => Ok(Work::F32(self.data::<f32>(op)?)),
            DType::F64 => Ok(Work::F64(self.data::<f64>(op)?)),
            DType::F16 | DType::BF16 => {
                let CpuStorage::F32(v) = self.cpu_storage().convert(&self.layout, DType::F32) else {
                    unreachable!("convert to F32 yields F32 storage")
                };
                Ok(Work::F32(Cow::Owned(v)))
            }
            dtype => Err(Error::UnsupportedDType { op, dtype, expected: "a float dtype (f16, bf16, f32, f64)" }),
        }
    }

    /// Converts to `dtype` (a cheap clone when it already is).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        let src = self.dtype();
        crate::autograd::op("to_dtype", &[self], || self.to_dtype_fwd(dtype), |_| crate::autograd::rules::to_dtype(src))
    }

    fn to_dtype_fwd(&self, dtype: DType) -> Result<Tensor> {
        on_cuda!(self, crate::cuda::ops::cast(self, dtype));
        Ok(Tensor::from_storage(self.cpu_storage().convert(&self.layout, dtype), self.shape()))
    }

    /// Copies the tensor to `device` (a cheap clone when it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        let src = self.device();
        crate::autograd::op(
            "to_device",
            &[self],
            || self.to_device_fwd(device),
            |_| crate::autograd::rules::to_device(src),
        )
    }

    fn to_device_fwd(&self, device: &Device) -> Result<Tensor> {
        device.check_available()?;
        #[cfg(feature = "cuda")]
        {
            let t = self.contiguous()?;
            return match (&*t.storage, device) {
                (Storage::Cuda(s), Device::Cpu) => {
                    // Only the view's elements travel (a contiguous view may start or end inside the buffer).
                    Ok(Tensor::from_storage(s.download_range(t.layout.offset(), t.elem_count())?, t.shape()))
                }
                (Storage::Cpu(c), Device::Cuda(_)) => {
                    let dev = crate::cuda::get(*device)?;
                    let c = if t.layout.offset() == 0 && c.len() == t.elem_count() {
                        c.clone()
                    } else {
                        c.gather(&t.layout)
                    };
                    Ok(Tensor::from_cuda(crate::cuda::CudaStorage::upload(&c, &dev)?, t.shape()))
                }
                // Between two GPUs: through the host.
                _ => t.to_device(&Device::Cpu)?.to_device(device),
            };
        }
        #[allow(unreachable_code)]
        Err(Error::NotCompiledWithCuda { device: *device })
    }

    pub(crate) fn check_same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() });
        }
        Ok(())
    }

    pub(crate) fn check_same_dtype(&self, op: &'static str, other: &Tensor) -> Result<()> {
        self.check_same_device(op, other)?;
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: other.dtype() });
        }
        Ok(())
    }

    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
                expected: "a float dtype (f16, bf16, f32, f64)",
            });
        }
        Ok(())
    }

    pub(crate) fn check_index_dtype(&self, op: &'static str) -> Result<()> {
        if self.dtype() != DType::U32 {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype(), expected: "u32 indices" });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- ndarray interop

    /// A zero-copy ndarray view of a CPU tensor (any strides). `T` must match the dtype.
    pub fn as_ndarray<T: WithDType>(&self) -> Result<ndarray::ArrayViewD<'_, T>> {
        self.require_cpu("as_ndarray")?;
        let s = self.cpu_storage();
        let v =
            T::storage_slice(s).ok_or(Error::DTypeMismatch { op: "as_ndarray", lhs: self.dtype(), rhs: T::DTYPE })?;
        let shape = ndarray::IxDyn(self.shape());
        let strides = ndarray::IxDyn(self.layout.strides());
        let base = match self.layout.storage_span() {
            Some((start, _)) => &v[start..],
            None => &v[..0],
        };
        ndarray::ArrayView::from_shape(shape.strides(strides), base)
            .map_err(|e| Error::Layout { op: "as_ndarray", msg: e.to_string() })
    }

    /// Makes this tensor the only owner of its storage (copying a shared buffer first, copy on write), so that a
    /// custom CUDA kernel may update it in place through [`crate::cuda::Arg::Out`], which refuses shared storage.
    /// Values, shape, dtype, device and graph identity stay; an exclusively owned tensor is left as it is.
    pub fn make_exclusive(&mut self) -> Result<()> {
        if Arc::get_mut(&mut self.storage).is_some() {
            return Ok(());
        }
        let copy = match &*self.storage {
            Storage::Cpu(s) => Tensor::from_storage(s.gather(&self.layout), self.shape()),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(c) => match *c {},
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => crate::cuda::ops::cast(self, self.dtype())?,
        };
        let node = self.node.take();
        *self = Tensor { node, ..copy };
        Ok(())
    }

    /// A zero-copy mutable ndarray view. The storage is copied first if another tensor shares it (copy on write),
    /// so writes never leak into other tensors.
    pub fn as_ndarray_mut<T: WithDType>(&mut self) -> Result<ndarray::ArrayViewMutD<'_, T>> {
        self.require_cpu("as_ndarray_mut")?;
        let dtype = self.dtype();
        if T::DTYPE != dtype {
            return Err(Error::DTypeMismatch { op: "as_ndarray_mut", lhs: dtype, rhs: T::DTYPE });
        }
        if Arc::get_mut(&mut self.storage).is_none() {
            // Shared: take a private contiguous copy of just this view (keeping the graph identity).
            let node = self.node.take();
            *self = Tensor { node, ..Tensor::from_storage(self.cpu_storage().gather(&self.layout), self.shape()) };
        }
        let layout = self.layout.clone();
        let Some(Storage::Cpu(s)) = Arc::get_mut(&mut self.storage) else {
            return Err(Error::Layout { op: "as_ndarray_mut", msg: "storage is not on the CPU".into() });
        };
        let v =
            T::storage_slice_mut(s).ok_or(Error::DTypeMismatch { op: "as_ndarray_mut", lhs: dtype, rhs: T::DTYPE })?;
        let base = match layout.storage_span() {
            Some((start, _)) => &mut v[start..],
            None => &mut v[..0],
        };
        ndarray::ArrayViewMut::from_shape(
            ndarray::IxDyn(layout.shape()).strides(ndarray::IxDyn(layout.strides())),
            base,
        )
        .map_err(|e| Error::Layout { op: "as_ndarray_mut", msg: e.to_string() })
    }

    /// A CPU tensor from an ndarray view (copies; any strides, negative ones included).
    pub fn from_ndarray<T: WithDType, D: ndarray::Dimension>(view: ndarray::ArrayView<'_, T, D>) -> Result<Tensor> {
        let shape = view.shape().to_vec();
        let data: Vec<T> = view.iter().copied().collect();
        Tensor::from_vec(data, &shape, &Device::Cpu)
    }

    /// A CPU tensor that takes over an owned ndarray array: zero-copy when it is in standard (row-major) layout
    /// with no leading offset, one copy otherwise.
    pub fn from_array<T: WithDType, D: ndarray::Dimension>(array: ndarray::Array<T, D>) -> Result<Tensor> {
        let shape = array.shape().to_vec();
        if array.is_standard_layout() {
            let (v, off) = array.into_raw_vec_and_offset();
            if off.unwrap_or(0) == 0 && v.len() == shape.iter().product::<usize>() {
                return Tensor::from_vec(v, &shape, &Device::Cpu);
            }
            // Standard layout but not owning the whole buffer: fall through via a fresh array.
            let a = ndarray::ArrayView::from_shape(ndarray::IxDyn(&shape), &v[off.unwrap_or(0)..])
                .map_err(|e| Error::Layout { op: "from_array", msg: e.to_string() })?;
            return Tensor::from_ndarray(a);
        }
        Tensor::from_ndarray(array.view())
    }

    // ---------------------------------------------------------------- views

    /// Same elements with a new shape. A view when the tensor is contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_elem_count("reshape", shape)?;
        if n != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().to_vec(), rhs: shape.to_vec() });
        }
        crate::autograd::op(
            "reshape",
            &[self],
            || {
                let t = self.contiguous()?;
                Ok(t.with_layout(Layout::new(shape.to_vec(), contiguous_strides(shape), t.layout.offset())))
            },
            |_| crate::autograd::rules::reshape(self.shape()),
        )
    }

    /// Swaps two dimensions (a view).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        let layout = self.layout.transpose(d0, d1)?;
        crate::autograd::op(
            "transpose",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::transpose(d0, d1),
        )
    }

    /// Swaps the last two dimensions (a view).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::BadShape { op: "t", shape: self.shape().to_vec(), msg: "need rank >= 2".into() });
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Reorders dimensions (a view): dimension `i` of the result is dimension `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let layout = self.layout.permute(perm)?;
        crate::autograd::op(
            "permute",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::permute(perm),
        )
    }

    /// `len` elements of dimension `dim` starting at `start` (a view).
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let end = start.checked_add(len).ok_or_else(|| Error::InvalidArgument {
            op: "narrow",
            msg: format!("start {start} + len {len} overflows"),
        })?;
        let layout = self.layout.slice(dim, start, end, 1)?;
        crate::autograd::op(
            "narrow",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::narrow(self.shape(), dim, start),
        )
    }

    /// Elements `start, start + step, ...` below `end` of dimension `dim` (a view).
    pub fn slice(&self, dim: usize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        let layout = self.layout.slice(dim, start, end, step)?;
        crate::autograd::op(
            "slice",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::slice(self.shape(), dim, start, step),
        )
    }

    /// A view with `shape`, repeating size-1 and missing leading dimensions (stride 0).
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        let layout = self.layout.broadcast_as(shape)?;
        crate::autograd::op(
            "broadcast_as",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::broadcast(self.shape()),
        )
    }

    /// Inserts a dimension of size 1 at `dim` (a view).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        let stride = if dim < self.rank() { strides[dim] * shape[dim] } else { 1 };
        shape.insert(dim, 1);
        strides.insert(dim, stride);
        let layout = Layout::new(shape, strides, self.layout.offset());
        crate::autograd::op(
            "unsqueeze",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::unsqueeze(dim),
        )
    }

    /// Removes dimension `dim`, which must have size 1 (a view).
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        self.layout.check_dim("squeeze", dim)?;
        if self.shape()[dim] != 1 {
            return Err(Error::BadShape {
                op: "squeeze",
                shape: self.shape().to_vec(),
                msg: format!("dimension {dim} has size {}, not 1", self.shape()[dim]),
            });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        shape.remove(dim);
        strides.remove(dim);
        let layout = Layout::new(shape, strides, self.layout.offset());
        crate::autograd::op(
            "squeeze",
            &[self],
            || Ok(self.with_layout(layout)),
            |_| crate::autograd::rules::squeeze(dim),
        )
    }

    /// Number of elements held by the storage (≥ `elem_count` for views).
    pub fn storage_len(&self) -> usize {
        match &*self.storage {
            Storage::Cpu(c) => map_storage!(c, v => v.len()),
            #[cfg(not(feature = "cuda"))]
            Storage::Cuda(c) => match *c {},
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len,
        }
    }

    fn require_cpu(&self, op: &'static str) -> Result<()> {
        if !self.device().is_cpu() {
            return Err(Error::Layout {
                op,
                msg: format!("the tensor is on {}; copy it to the CPU first", self.device()),
            });
        }
        Ok(())
    }
}

/// `vec![value; n]`, but an allocation failure is a typed error rather than an abort.
fn try_filled<T: Clone>(value: T, n: usize, shape: &[usize]) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| Error::InvalidArgument {
        op: "full",
        msg: format!("cannot allocate {n} elements for shape {shape:?}: {e}"),
    })?;
    v.resize(n, value);
    Ok(v)
}
