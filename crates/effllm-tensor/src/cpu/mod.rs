//! The CPU backend: storage and the kernels behind [`Tensor`](crate::Tensor)'s ops.
//!
//! Kernels work on contiguous row-major slices; views are gathered into contiguous buffers first (one copy), so
//! every kernel sees the simple case. f16/bf16 tensors are computed in f32 and rounded once on output.

use std::iter::Sum;

use half::{bf16, f16};

use crate::layout::Layout;
use crate::{DType, WithDType};

pub(crate) mod attention;
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
        /// Half ↔ f32 over `layout`: contiguous runs through `half`'s slice conversions (F16C where the CPU has it,
        /// detected once per slice; the per-element calls cost tens of nanoseconds each on the Xeon slice of the
        /// ninth session, a few percent of a prefill with an f16 KV cache), the rest element by element.
        fn conv_runs<S: WithDType, D: WithDType + Default>(
            src: &[S],
            layout: &Layout,
            bulk: impl Fn(&[S], &mut [D]),
            f: impl Fn(S) -> D,
        ) -> Vec<D> {
            let mut out = vec![D::default(); layout.elem_count()];
            let mut at = 0;
            layout.for_each_run(|start, len, stride| {
                let dst = &mut out[at..at + len];
                if stride == 1 {
                    bulk(&src[start..start + len], dst);
                } else {
                    dst.iter_mut().enumerate().for_each(|(i, d)| *d = f(src[start + i * stride]));
                }
                at += len;
            });
            out
        }
        use half::slice::HalfFloatSliceExt;
        match (self, dtype) {
            // Fast, exact paths that avoid the f64 detour.
            (CpuStorage::F16(v), DType::F32) => {
                CpuStorage::F32(conv_runs(v, layout, |s, d| s.convert_to_f32_slice(d), f16::to_f32))
            }
            (CpuStorage::BF16(v), DType::F32) => {
                CpuStorage::F32(conv_runs(v, layout, |s, d| s.convert_to_f32_slice(d), bf16::to_f32))
            }
            (CpuStorage::F32(v), DType::F16) => {
                CpuStorage::F16(conv_runs(v, layout, |s, d: &mut [f16]| d.convert_from_f32_slice(s), f16::from_f32))
            }
            (CpuStorage::F32(v), DType::BF16) => {
                CpuStorage::BF16(conv_runs(v, layout, |s, d: &mut [bf16]| d.convert_from_f32_slice(s), bf16::from_f32))
            }
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

    /// Numerically stable softmax of one row (`out.len() == x.len()`): `e^(x − max) / Σ e^(x − max)`; a row of
    /// −∞ gives zeros; NaN or +∞ anywhere gives NaN. f32 uses AVX2 + FMA with a vectorised `exp` when the CPU has
    /// them (within about an ulp of libm's `expf`; the choice is per machine, so results stay deterministic).
    fn softmax_row(x: &[Self], out: &mut [Self]) {
        softmax_row_portable(x, out)
    }

    /// The unnormalised half of [`Real::softmax_row`]: writes `e^(x − max)` and returns `(max, Σ e^(x − max))`; a
    /// row of −∞ (or an empty row) gives zeros and `(−∞, 0)`. Attention over key chunks combines these partial
    /// results (flash-decoding). Same `exp` as [`Real::softmax_row`].
    fn exp_row(x: &[Self], out: &mut [Self]) -> (Self, Self) {
        exp_row_portable(x, out)
    }

    /// SwiGLU over a slice: `out[i] = silu(g[i]) · u[i]` with `silu(x) = x · σ(x)`, over the common length. f32
    /// uses AVX2 + FMA when the CPU has them: `σ(x) = 1 / (1 + e^(−x))` with the vectorised `exp` of
    /// [`Real::softmax_row`] (libm's scalar `expf` behind a data-dependent branch was a third of a SmolLM2 prefill).
    fn swiglu(g: &[Self], u: &[Self], out: &mut [Self]) {
        swiglu_portable(g, u, out)
    }
}

/// The portable [`Real::swiglu`] (also the SIMD version's tail).
pub(crate) fn swiglu_portable<R: num_traits::Float>(g: &[R], u: &[R], out: &mut [R]) {
    for ((o, &a), &b) in out.iter_mut().zip(g).zip(u) {
        *o = a * sigmoid_portable(a) * b;
    }
}

/// The logistic function `σ(x) = 1 / (1 + e^(−x))`, through `e^x` for negative `x` so that it stays finite for large
/// |x| (the CPU ops and their derivatives use it).
pub(crate) fn sigmoid_portable<R: num_traits::Float>(x: R) -> R {
    if x >= R::zero() {
        R::one() / (R::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (R::one() + e)
    }
}

/// The portable [`Real::softmax_row`] (the oracle of the SIMD version).
pub(crate) fn softmax_row_portable<R: num_traits::Float>(x: &[R], out: &mut [R]) {
    let (max, sum) = exp_row_portable(x, out);
    if max == R::neg_infinity() {
        // Every entry is -inf: no finite mass anywhere; define the result as uniform zeros.
        return;
    }
    let inv = R::one() / sum;
    out.iter_mut().for_each(|o| *o = *o * inv);
}

/// The portable [`Real::exp_row`].
pub(crate) fn exp_row_portable<R: num_traits::Float>(x: &[R], out: &mut [R]) -> (R, R) {
    let max = x.iter().copied().fold(R::neg_infinity(), R::max);
    if max == R::neg_infinity() {
        out.iter_mut().for_each(|o| *o = R::zero());
        return (max, R::zero());
    }
    let mut sum = R::zero();
    for (o, &v) in out.iter_mut().zip(x) {
        let e = (v - max).exp();
        *o = e;
        sum = sum + e;
    }
    (max, sum)
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

    /// `e^x` in 8 lanes: Cephes' `expf` (x = n·ln 2 + r with ln 2 in two parts, a degree-5 polynomial in r, then
    /// 2ⁿ through the exponent bits; within about an ulp of libm). Below −87.34 (where e^x is no longer a normal
    /// f32) the result is exactly 0, so −∞ gives 0; NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.336_55);
        // max(lo, x) and min(hi, ·) return their second operand for NaN, so NaN goes through.
        let xc = _mm256_min_ps(_mm256_set1_ps(88.376_26), _mm256_max_ps(lo, x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            xc,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let e = _mm256_mul_ps(y, pow2);
        _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo))
    }

    /// [`super::Real::softmax_row`] for f32: [`exp_row`], then the scaling, 8 lanes at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_row(x: &[f32], out: &mut [f32]) {
        // SAFETY: the caller's contract.
        let (max, sum) = unsafe { exp_row(x, out) };
        if max == f32::NEG_INFINITY {
            return;
        }
        let n = x.len().min(out.len());
        let iv = _mm256_set1_ps(1.0 / sum);
        let (oc, ot) = out[..n].as_chunks_mut::<8>();
        for o in oc.iter_mut() {
            // SAFETY: 8 floats, unaligned load and store.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(o.as_ptr()), iv)) };
        }
        let inv = 1.0 / sum;
        ot.iter_mut().for_each(|o| *o *= inv);
    }

    /// [`super::Real::swiglu`] for f32, 8 lanes at a time: `g · (1 / (1 + e^(−g))) · u`. Where `e^(−g)` saturates
    /// (g below −88.4) σ is about 4·10⁻³⁹ instead of underflowing further; the product is ~0 either way.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
        let n = g.len().min(u.len()).min(out.len());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n <= every length; unaligned loads and store.
            unsafe {
                let a = _mm256_loadu_ps(g.as_ptr().add(i));
                let b = _mm256_loadu_ps(u.as_ptr().add(i));
                let sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(a, sig), b));
            }
            i += 8;
        }
        super::swiglu_portable(&g[i..n], &u[i..n], &mut out[i..n]);
    }

    /// [`super::Real::exp_row`] for f32: max, then `e^(x − max)` and its sum (two accumulators), 8 lanes at a
    /// time; the tail goes through the same `exp8`, padded with −∞.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_row(x: &[f32], out: &mut [f32]) -> (f32, f32) {
        let n = x.len().min(out.len());
        let (x, out) = (&x[..n], &mut out[..n]);
        let (xc, xt) = x.as_chunks::<8>();
        let load = |c: &[f32; 8]| {
            // SAFETY: 8 floats, unaligned load.
            unsafe { _mm256_loadu_ps(c.as_ptr()) }
        };
        // max(v, m) keeps m where v is NaN, as f32::max ignores NaN.
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in xc {
            m = _mm256_max_ps(load(c), m);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes.iter().chain(xt).copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            out.iter_mut().for_each(|o| *o = 0.0);
            return (max, 0.0);
        }
        let mv = _mm256_set1_ps(max);
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..xt.len()].copy_from_slice(xt);
        let tail_e = exp8(_mm256_sub_ps(load(&tail), mv));
        let mut acc = [_mm256_setzero_ps(), tail_e];
        let (oc, ot) = out.as_chunks_mut::<8>();
        for (i, (c, o)) in xc.iter().zip(oc.iter_mut()).enumerate() {
            let e = exp8(_mm256_sub_ps(load(c), mv));
            // SAFETY: 8 floats, unaligned store.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), e) };
            acc[i & 1] = _mm256_add_ps(acc[i & 1], e);
        }
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
        let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), tail_e) };
        ot.copy_from_slice(&lanes[..ot.len()]);
        (max, sum)
    }
}

/// Whether the AVX2 + FMA + F16C kernels (quantized GEMV, attention) can run on this CPU (checked at run time; std
/// caches the answer).
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks the cache for the 64-byte lines of the `len` bytes at byte offset `from` of `base`, into every level
/// (`prefetcht0`). The range may run past the slice's end: a prefetch is only a hint and never faults, whatever the
/// address. No-op off x86-64.
#[inline]
pub(crate) fn prefetch_span<T>(base: &[T], from: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(base.as_ptr().cast(), from, len);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, from, len);
}

/// [`prefetch_span`] into the L2 only (`prefetcht2`; Intel cores fill L2 for `prefetcht1` and `prefetcht2` alike).
/// A line requested into L1 holds one of the core's few L1 miss buffers until it arrives; requested into L2 it
/// waits in the L2's deeper queue, so more of a sequential stream is in flight. On the Xeon slice the Q8_0 LM-head
/// GEMV streamed from DRAM went from 14.3-15.1 to 17.1-17.9 GB/s (2 threads, `qgemv_stream`). The decode
/// attention uses it for its value rows while it reads the keys (the values are read only after the softmax); its
/// own look-ahead on the rows it is reading stays [`prefetch_span`] (an L2 hint there did not help).
#[inline]
pub(crate) fn prefetch_span_l2<T>(base: &[T], from: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T2 }>(base.as_ptr().cast(), from, len);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, from, len);
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_lines<const HINT: i32>(p: *const u8, from: usize, len: usize) {
    let mut o = from;
    while o < from.saturating_add(len) {
        // SAFETY: SSE is part of the x86-64 baseline; a prefetch never faults, so an address past the slice
        // (wrapping_add, never dereferenced) is allowed.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.wrapping_add(o).cast()) };
        o += 64;
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

    fn softmax_row(x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { simd_f32::softmax_row(x, out) };
        }
        softmax_row_portable(x, out)
    }

    fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { simd_f32::swiglu(g, u, out) };
        }
        swiglu_portable(g, u, out)
    }

    fn exp_row(x: &[f32], out: &mut [f32]) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { simd_f32::exp_row(x, out) };
        }
        exp_row_portable(x, out)
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

/// A uniform f32 in [0, 1) from a xorshift state: the CPU kernels' unit tests' input generator.
#[cfg(test)]
pub(crate) fn test_uniform(seed: &mut u64) -> f32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 SwiGLU (AVX2 + FMA with a vectorised exp where the CPU has them) against f64, for every length up to
    /// 40 (the scalar tail) and inputs from −120 to 120 (both saturations of e^(−g)).
    #[test]
    fn f32_swiglu_matches_f64() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || test_uniform(&mut seed) - 0.5;
        for n in (0..=40).chain([5000]) {
            for scale in [2.0f32, 20.0, 240.0] {
                let g: Vec<f32> = (0..n).map(|_| next() * scale).collect();
                let u: Vec<f32> = (0..n).map(|_| next() * 4.0).collect();
                let mut got = vec![7.0f32; n];
                <f32 as Real>::swiglu(&g, &u, &mut got);
                for i in 0..n {
                    let (a, b) = (f64::from(g[i]), f64::from(u[i]));
                    let want = a / (1.0 + (-a).exp()) * b;
                    let tol = 4e-7 * want.abs() + 1e-30;
                    assert!((f64::from(got[i]) - want).abs() <= tol, "n {n}, g {a}, u {b}: {} vs {want}", got[i]);
                }
            }
        }
    }

    /// The f32 softmax (AVX2 + FMA with a vectorised exp where the CPU has them) against an f64 softmax of the same
    /// rows: every length from 0 to 40 and a long row, masked (−∞) entries exactly zero, and the special rows.
    #[test]
    fn f32_softmax_rows_match_f64() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || test_uniform(&mut seed);
        for n in (0..=40).chain([49_152]) {
            for scale in [1.0f32, 30.0, 200.0] {
                let x: Vec<f32> =
                    (0..n).map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { (next() - 0.5) * scale }).collect();
                let mut got = vec![7.0f32; n];
                <f32 as Real>::softmax_row(&x, &mut got);
                let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                let mut want = vec![0f64; n];
                softmax_row_portable(&xd, &mut want);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    if x[i] == f32::NEG_INFINITY {
                        assert_eq!(g, 0.0, "n {n}, scale {scale}: masked entry {i}");
                    }
                    // An ulp or two of exp and of the scaling, plus the f32 sum's rounding, which grows with n.
                    let tol = (2e-6 + 2e-10 * n as f64) * w + 1e-30;
                    assert!((f64::from(g) - w).abs() <= tol, "n {n}, scale {scale}, entry {i}: {g} vs {w}");
                }
            }
        }
        let special = |x: &[f32]| {
            let mut out = vec![7.0f32; x.len()];
            <f32 as Real>::softmax_row(x, &mut out);
            out
        };
        assert!(special(&[f32::NEG_INFINITY; 11]).iter().all(|&v| v == 0.0), "all −∞: zeros");
        let mut with_nan = vec![0.5f32; 13];
        with_nan[9] = f32::NAN;
        assert!(special(&with_nan).iter().all(|v| v.is_nan()), "NaN anywhere: NaN");
        let mut with_inf = vec![0.5f32; 10];
        with_inf[2] = f32::INFINITY;
        assert!(special(&with_inf).iter().all(|v| v.is_nan()), "+∞ anywhere: NaN");
        // Rows that differ only below exp's underflow: exactly zero there, one at the maximum.
        let far = special(&[0.0, -100.0, -87.5, -1e30, 0.0]);
        assert_eq!(&far[1..4], &[0.0, 0.0, 0.0]);
        assert!((far[0] - 0.5).abs() < 1e-7 && (far[4] - 0.5).abs() < 1e-7);
    }
}
