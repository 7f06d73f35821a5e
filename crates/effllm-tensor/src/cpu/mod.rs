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
pub(crate) mod vexp;

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
    /// The elements as bytes in host order (what a host↔device copy moves).
    #[cfg(feature = "cuda")]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        map_storage!(self, v => {
            // SAFETY: every element type is plain old data without padding.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[..])) }
        })
    }

    /// Storage of `dtype` holding the elements whose bytes (host order) are `bytes`; `bytes.len()` must be a
    /// multiple of the element size.
    #[cfg(feature = "cuda")]
    pub(crate) fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuStorage {
        fn typed<T: Copy + Default>(bytes: &[u8]) -> Vec<T> {
            let mut v = vec![T::default(); bytes.len() / std::mem::size_of::<T>()];
            // SAFETY: `v` holds exactly `bytes.len()` bytes of a plain-old-data type.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len()) };
            v
        }
        match dtype {
            DType::F16 => CpuStorage::F16(typed(bytes)),
            DType::BF16 => CpuStorage::BF16(typed(bytes)),
            DType::F32 => CpuStorage::F32(typed(bytes)),
            DType::F64 => CpuStorage::F64(typed(bytes)),
            DType::U8 => CpuStorage::U8(typed(bytes)),
            DType::U32 => CpuStorage::U32(typed(bytes)),
        }
    }

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
                    DType::F16 => CpuStorage::F16(conv($v, layout, |x| crate::dtype::f16_from_f64(x.to_f64()))),
                    DType::BF16 => CpuStorage::BF16(conv($v, layout, |x| crate::dtype::bf16_from_f64(x.to_f64()))),
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

    /// `Σ aᵢbᵢ` over the common length, with 8 independent partial sums combined in a fixed order. f32 uses
    /// AVX2 + FMA when the CPU has them (fused rounding, so the last bits can differ from the portable path; the
    /// choice is per machine, never per call, so results stay deterministic).
    fn dot(a: &[Self], b: &[Self]) -> Self {
        dot_lanes(a, b)
    }

    /// `out += alpha · x` over the common length.
    fn axpy(out: &mut [Self], alpha: Self, x: &[Self]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = *o + alpha * v;
        }
    }
}

/// Portable 8-lane dot product (the oracle of the SIMD version).
#[inline]
pub(crate) fn dot_lanes<R: num_traits::Float>(a: &[R], b: &[R]) -> R {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [R::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut tail = R::zero();
    for (&x, &y) in ra.iter().zip(rb) {
        tail = tail + x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
mod simd_f32 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n <= both lengths; unaligned loads.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
            acc = _mm256_fmadd_ps(x, y, acc);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut tail = 0f32;
        for j in i..n {
            tail = a[j].mul_add(b[j], tail);
        }
        ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + tail
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
        let n = out.len().min(x.len());
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n <= both lengths; unaligned loads and store.
            unsafe {
                let o = _mm256_loadu_ps(out.as_ptr().add(i));
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(va, v, o));
            }
            i += 8;
        }
        for j in i..n {
            out[j] = alpha.mul_add(x[j], out[j]);
        }
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Real for f32 {
    fn erfc(self) -> Self {
        libm::erfcf(self)
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { simd_f32::dot(a, b) };
        }
        dot_lanes(a, b)
    }

    fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { simd_f32::axpy(out, alpha, x) };
        }
        for (o, &v) in out.iter_mut().zip(x) {
            *o += alpha * v;
        }
    }
}

impl Real for f64 {
    fn erfc(self) -> Self {
        libm::erfc(self)
    }
}
