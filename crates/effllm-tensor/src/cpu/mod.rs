//! The CPU backend: storage and the kernels behind [`Tensor`](crate::Tensor)'s ops.
//!
//! Kernels work on contiguous row-major slices; views are gathered into contiguous buffers first (one copy), so
//! every kernel sees the simple case. f16/bf16 tensors are computed in f32 and rounded once on output.

use std::iter::Sum;

use half::{bf16, f16};

use crate::layout::Layout;
use crate::{DType, WithDType};

pub(crate) mod gemv;
pub(crate) mod kernels;

/// Host memory of one tensor, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum CpuStorage {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    U32(Vec<u32>),
}

/// Runs `$body` with `$v` bound to the storage's vector, whatever the dtype.
macro_rules! map_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::U8($v) => $body,
            CpuStorage::U32($v) => $body,
        }
    };
}
pub(crate) use map_storage;

/// Like [`map_storage`], but the body produces a new `Vec` of the same element type, wrapped back into storage.
macro_rules! map_storage_same {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F16($v) => CpuStorage::F16($body),
            CpuStorage::BF16($v) => CpuStorage::BF16($body),
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            CpuStorage::U8($v) => CpuStorage::U8($body),
            CpuStorage::U32($v) => CpuStorage::U32($body),
        }
    };
}
pub(crate) use map_storage_same;

impl CpuStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    /// Number of elements held.
    pub fn len(&self) -> usize {
        map_storage!(self, v => v.len())
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements selected by `layout`, in row-major order, as a new contiguous storage.
    pub(crate) fn gather(&self, layout: &Layout) -> CpuStorage {
        map_storage_same!(self, v => gather_strided(v, layout))
    }

    /// Converts every element (selected by `layout`) to `dtype`.
    pub(crate) fn convert(&self, layout: &Layout, dtype: DType) -> CpuStorage {
        fn conv<S: WithDType, D: WithDType>(src: &[S], layout: &Layout, f: impl Fn(S) -> D) -> Vec<D> {
            let mut out = Vec::with_capacity(layout.elem_count());
            layout.for_each_run(|start, len, stride| {
                out.extend((0..len).map(|i| f(src[start + i * stride])));
            });
            out
        }
        // Half conversions go through f32 (exact for widening; one rounding for narrowing).
        macro_rules! to {
            ($v:expr) => {
                match dtype {
                    DType::F16 => CpuStorage::F16(conv($v, layout, |x| f16::from_f64(x.to_f64()))),
                    DType::BF16 => CpuStorage::BF16(conv($v, layout, |x| bf16::from_f64(x.to_f64()))),
                    DType::F32 => CpuStorage::F32(conv($v, layout, |x| x.to_f64() as f32)),
                    DType::F64 => CpuStorage::F64(conv($v, layout, |x| x.to_f64())),
                    DType::U8 => CpuStorage::U8(conv($v, layout, |x| u8::from_f64(x.to_f64()))),
                    DType::U32 => CpuStorage::U32(conv($v, layout, |x| u32::from_f64(x.to_f64()))),
                }
            };
        }
        match (self, dtype) {
            // Fast, exact paths that avoid the f64 detour.
            (CpuStorage::F16(v), DType::F32) => CpuStorage::F32(conv(v, layout, f16::to_f32)),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(conv(v, layout, bf16::to_f32)),
            (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(conv(v, layout, f16::from_f32)),
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(conv(v, layout, bf16::from_f32)),
            _ => map_storage!(self, v => to!(v)),
        }
    }
}

/// Copies the elements selected by `layout` into a new row-major vector.
pub(crate) fn gather_strided<T: Copy>(src: &[T], layout: &Layout) -> Vec<T> {
    let mut out = Vec::with_capacity(layout.elem_count());
    layout.for_each_run(|start, len, stride| {
        if stride == 1 {
            out.extend_from_slice(&src[start..start + len]);
        } else {
            out.extend((0..len).map(|i| src[start + i * stride]));
        }
    });
    out
}

/// Floating-point element types the CPU kernels compute in (f16/bf16 are widened to f32 first).
pub trait Real:
    num_traits::Float + num_traits::FloatConst + WithDType + Sum + Default + std::fmt::Display + Send + Sync
{
    /// The complementary error function `1 − erf(x)`.
    fn erfc(self) -> Self;
}

impl Real for f32 {
    fn erfc(self) -> Self {
        libm::erfcf(self)
    }
}

impl Real for f64 {
    fn erfc(self) -> Self {
        libm::erfc(self)
    }
}
