//! Fused row-dot kernels: scalar (the oracle) and AVX2 + FMA + F16C (selected at run time).
//!
//! Every kernel computes `M` dot products of one quantized weight row with `M` activation vectors, reading each
//! weight block once. For every output the sequence of floating-point operations does not depend on `M`, so the
//! skinny GEMM (M > 1) is bitwise equal to M GEMVs (M = 1).

use half::f16;

use super::QuantType;
use super::blocks::{BlockQ8_1, f16_le};

pub(crate) use crate::cpu::avx2_available;

/// Which SIMD kernels the fused GEMV runs: decided once per machine ([`Isa::detect`]), never per call, so every
/// call on a machine takes the same path and the bitwise invariants (one-row = four-row kernel, GEMM = GEMVs,
/// any thread count) hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The portable kernels.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 + FMA + F16C, and AVX-512F for the Q4_1 kernels with f32 activations (the other formats and Q8
    /// activations stay on the AVX2 kernels).
    Avx512,
}

impl Isa {
    /// The best kernels of this CPU (cached). `EFFLLM_QGEMV_AVX512=0` keeps a machine with AVX-512 on the AVX2
    /// kernels (read once).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if !avx2_available() {
                Isa::Scalar
            } else if avx512_available() && std::env::var("EFFLLM_QGEMV_AVX512").map_or(true, |v| v != "0") {
                Isa::Avx512
            } else {
                Isa::Avx2
            }
        })
    }

    /// Whether the AVX2 kernels may run (true for [`Isa::Avx512`] too).
    pub fn avx2(self) -> bool {
        self != Isa::Scalar
    }
}

/// Whether the AVX-512 kernels can run on this CPU (std caches the answer). They also use AVX2, FMA and F16C.
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_available() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One activation vector prepared for the f32-activation kernels.
pub(crate) struct F32Act<'a> {
    /// The activations, in blocks of 32.
    pub x: &'a [[f32; 32]],
    /// `S_b = Σ_j x_b[j]` per block (used by Q4_1).
    pub sums: Vec<f32>,
}

/// One activation vector quantised per 32-block to Q8_0 / Q8_1.
pub(crate) struct Q8Act {
    /// Quants per block.
    pub qs: Vec<[i8; 32]>,
    /// `d_y` (the stored f16 value, widened) per block.
    pub d: Vec<f32>,
    /// `s_y = d_y·Σ q_y` (the stored f16 value, widened) per block.
    pub s: Vec<f32>,
}

impl<'a> F32Act<'a> {
    /// `x.len()` must be a multiple of 32 (checked by the callers).
    pub fn new(ty: QuantType, x: &'a [f32]) -> Self {
        let (x, _) = x.as_chunks::<32>();
        let sums = if ty == QuantType::Q4_1 { x.iter().map(|b| b.iter().sum::<f32>()).collect() } else { Vec::new() };
        F32Act { x, sums }
    }
}

impl Q8Act {
    /// `x.len()` must be a multiple of 32 (checked by the callers).
    pub fn new(x: &[f32]) -> Self {
        let (xb, _) = x.as_chunks::<32>();
        let mut qs = Vec::with_capacity(xb.len());
        let mut d = Vec::with_capacity(xb.len());
        let mut s = Vec::with_capacity(xb.len());
        for b in xb {
            // Q8_0 and Q8_1 share d and qs; s is used only with Q4_1 weights.
            let q = BlockQ8_1::quantize(b);
            qs.push(q.qs);
            d.push(q.d.to_f32());
            s.push(q.s.to_f32());
        }
        Q8Act { qs, d, s }
    }
}

/// The activations of one call, prepared once.
pub(crate) enum Acts<'a> {
    F32(Vec<F32Act<'a>>),
    Q8(Vec<Q8Act>),
}

impl Acts<'_> {
    /// Number of activation vectors.
    pub fn len(&self) -> usize {
        match self {
            Acts::F32(v) => v.len(),
            Acts::Q8(v) => v.len(),
        }
    }

    /// Dot products of four rows with the single activation vector, through a 4-row kernel (AVX2 only; `None`
    /// otherwise). Bitwise equal to four `dot::<1>` calls. `ahead` is the prefetch distance in bytes (the next
    /// group of rows when rows are contiguous; only a hint).
    #[inline]
    pub fn dot4_single(&self, ty: QuantType, isa: Isa, rows: [&[u8]; 4], ahead: usize) -> Option<[f32; 4]> {
        // Q8_0 rows (the 612-byte rows of SmolLM2's LM head) measured 15–25% slower through the 4-row kernels than
        // through the one-row kernel, which reads them as one sequential stream.
        #[cfg(target_arch = "x86_64")]
        if isa.avx2() && self.len() == 1 && ty != QuantType::Q8_0 {
            let nb = rows[0].len() / ty.block_bytes();
            // SAFETY (all calls): `isa` is `Avx2` or `Avx512` only when `avx2_available()` returned true, and
            // `Avx512` only when `avx512_available()` did too.
            return Some(match self {
                Acts::F32(v) if isa == Isa::Avx512 && ty == QuantType::Q4_1 => unsafe {
                    avx512::dot4_q4_1_f32(rows, ahead, &v[0].x[..nb], &v[0].sums[..nb])
                },
                Acts::F32(v) => {
                    let sums = if ty == QuantType::Q4_1 { &v[0].sums[..nb] } else { &v[0].sums[..0] };
                    unsafe { avx2::dot4_f32(ty, rows, ahead, &v[0].x[..nb], sums) }
                }
                Acts::Q8(v) => {
                    let a = &v[0];
                    unsafe { avx2::dot4_q8(ty, rows, ahead, &a.qs[..nb], &a.d[..nb], &a.s[..nb]) }
                }
            });
        }
        let _ = (ty, isa, rows, ahead);
        None
    }

    /// Dot products of `row` (whole blocks of `ty`) with activation vectors `first..first + M`.
    ///
    /// Panics (an internal invariant, never user-reachable) if an activation vector is shorter than the row.
    #[inline]
    pub fn dot<const M: usize>(&self, ty: QuantType, isa: Isa, row: &[u8], first: usize) -> [f32; M] {
        let nb = row.len() / ty.block_bytes();
        let avx2 = isa.avx2();
        match self {
            Acts::F32(v) => {
                let a: [&F32Act<'_>; M] = std::array::from_fn(|i| &v[first + i]);
                let xs = a.map(|a| &a.x[..nb]);
                let sums = a.map(|a| if ty == QuantType::Q4_1 { &a.sums[..nb] } else { &a.sums[..0] });
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 && ty == QuantType::Q4_1 {
                    // SAFETY: `Avx512` only when `avx512_available()` returned true.
                    return unsafe { avx512::dot_q4_1_f32::<M>(row, xs, sums) };
                }
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 && ty == QuantType::Q8_0 {
                    // SAFETY: as above.
                    return unsafe { avx512::dot_q8_0_f32::<M>(row, xs) };
                }
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: `avx2` is true only when `avx2_available()` returned true.
                    return unsafe { avx2::dot_f32::<M>(ty, row, xs, sums) };
                }
                scalar::dot_f32::<M>(ty, row, xs, sums)
            }
            Acts::Q8(v) => {
                let a: [&Q8Act; M] = std::array::from_fn(|i| &v[first + i]);
                let qs = a.map(|a| &a.qs[..nb]);
                let d = a.map(|a| &a.d[..nb]);
                let s = a.map(|a| &a.s[..nb]);
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: as above.
                    return unsafe { avx2::dot_q8::<M>(ty, row, qs, d, s) };
                }
                scalar::dot_q8::<M>(ty, row, qs, d, s)
            }
        }
    }
}

#[inline(always)]
fn f16f(b: &[u8], at: usize) -> f32 {
    f16::to_f32(f16_le(b, at))
}

/// Portable kernels: the test oracle. Plain f32 multiplies and adds, no FMA.
pub(crate) mod scalar {
    use super::*;

    /// `Σ_j q_j x_j` over one block with 8 interleaved partial sums and a fixed final tree.
    #[inline(always)]
    fn dot32(q: &[f32; 32], x: &[f32; 32]) -> f32 {
        let mut p = [0f32; 8];
        for j in 0..32 {
            p[j % 8] += q[j] * x[j];
        }
        ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]))
    }

    #[inline(always)]
    fn nibbles(qs: &[u8], offset: f32) -> [f32; 32] {
        let mut q = [0f32; 32];
        for j in 0..16 {
            q[j] = (qs[j] & 0xF) as f32 - offset;
            q[j + 16] = (qs[j] >> 4) as f32 - offset;
        }
        q
    }

    pub(crate) fn dot_f32<const M: usize>(
        ty: QuantType,
        row: &[u8],
        xs: [&[[f32; 32]]; M],
        sums: [&[f32]; M],
    ) -> [f32; M] {
        let mut acc = [0f32; M];
        match ty {
            QuantType::Q4_0 => {
                for (b, blk) in row.as_chunks::<18>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    // q - 8 is exact in f32: the same products as the dequantised weights, no cancellation.
                    let q = nibbles(&blk[2..], 8.0);
                    for i in 0..M {
                        acc[i] += d * dot32(&q, &xs[i][b]);
                    }
                }
            }
            QuantType::Q4_1 => {
                for (b, blk) in row.as_chunks::<20>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    let m = f16f(blk, 2);
                    let q = nibbles(&blk[4..], 0.0);
                    for i in 0..M {
                        acc[i] += d * dot32(&q, &xs[i][b]) + m * sums[i][b];
                    }
                }
            }
            QuantType::Q8_0 => {
                for (b, blk) in row.as_chunks::<34>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    let mut q = [0f32; 32];
                    for (q, &v) in q.iter_mut().zip(&blk[2..]) {
                        *q = (v as i8) as f32;
                    }
                    for i in 0..M {
                        acc[i] += d * dot32(&q, &xs[i][b]);
                    }
                }
            }
        }
        acc
    }

    pub(crate) fn dot_q8<const M: usize>(
        ty: QuantType,
        row: &[u8],
        qy: [&[[i8; 32]]; M],
        dy: [&[f32]; M],
        sy: [&[f32]; M],
    ) -> [f32; M] {
        let mut acc = [0f32; M];
        match ty {
            QuantType::Q4_0 => {
                for (b, blk) in row.as_chunks::<18>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    for i in 0..M {
                        let y = &qy[i][b];
                        let mut sumi = 0i32;
                        for j in 0..16 {
                            sumi += ((blk[2 + j] & 0xF) as i32 - 8) * y[j] as i32;
                            sumi += ((blk[2 + j] >> 4) as i32 - 8) * y[j + 16] as i32;
                        }
                        acc[i] += sumi as f32 * d * dy[i][b];
                    }
                }
            }
            QuantType::Q4_1 => {
                for (b, blk) in row.as_chunks::<20>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    let m = f16f(blk, 2);
                    for i in 0..M {
                        let y = &qy[i][b];
                        let mut sumi = 0i32;
                        for j in 0..16 {
                            sumi += (blk[4 + j] & 0xF) as i32 * y[j] as i32;
                            sumi += (blk[4 + j] >> 4) as i32 * y[j + 16] as i32;
                        }
                        acc[i] += (d * dy[i][b]) * sumi as f32 + m * sy[i][b];
                    }
                }
            }
            QuantType::Q8_0 => {
                for (b, blk) in row.as_chunks::<34>().0.iter().enumerate() {
                    let d = f16f(blk, 0);
                    for i in 0..M {
                        let y = &qy[i][b];
                        let mut sumi = 0i32;
                        for j in 0..32 {
                            sumi += (blk[2 + j] as i8) as i32 * y[j] as i32;
                        }
                        acc[i] += sumi as f32 * (d * dy[i][b]);
                    }
                }
            }
        }
        acc
    }
}

/// `$v[$b]` without a bounds check, for the SIMD kernels (`avx2`, `avx512`). Used only where the kernel has asserted
/// up front that `$v` holds at least as many blocks as the row, with `$b` running over the row's blocks.
#[cfg(target_arch = "x86_64")]
macro_rules! at {
    ($v:expr, $b:expr) => {{
        let (v, b) = ($v, $b);
        debug_assert!(b < v.len());
        // SAFETY: `b < nb <= v.len()`, asserted at the top of the kernel.
        unsafe { v.get_unchecked(b) }
    }};
}

/// AVX2 + FMA + F16C kernels. Callers must have checked [`avx2_available`].
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::QuantType;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f32x8(x: &[f32; 32], at: usize) -> __m256 {
        let s = &x[at..at + 8];
        // SAFETY: `s` holds 8 f32; unaligned load.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    /// Zero-extends 8 bytes of `b` starting at `at` to 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn u8x8_to_i32(b: &[u8], at: usize) -> __m256i {
        let s = &b[at..at + 8];
        // SAFETY: `s` holds 8 bytes; `_mm_loadl_epi64` reads exactly 8 bytes, unaligned.
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().cast())) }
    }

    /// Sign-extends 8 bytes of `b` starting at `at` to 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn i8x8_to_i32(b: &[u8], at: usize) -> __m256i {
        let s = &b[at..at + 8];
        // SAFETY: as above.
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(s.as_ptr().cast())) }
    }

    /// The f16 at `b[at..at + 2]` widened to f32, in lane 0 (lane 1 holds the f16 at `at + 2`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f16x2(b: &[u8], at: usize) -> __m128 {
        let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        _mm_cvtph_ps(_mm_cvtsi32_si128(v as i32))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f16x1(b: &[u8], at: usize) -> __m128 {
        let v = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtph_ps(_mm_cvtsi32_si128(v as i32))
    }

    /// Prefetches the cache line `ahead` bytes past `row[at]`. Never faults, whatever the address.
    ///
    /// The 4-row kernels read four short row streams side by side, which the hardware prefetcher does not follow
    /// across rows (measured: 1.6× slower than the one-row kernel on 960-byte rows streamed from memory); the
    /// callers pass the distance to the same position in the next group of four rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn prefetch_ahead(row: &[u8], at: usize, ahead: usize) {
        let p = row.as_ptr().wrapping_add(at.wrapping_add(ahead));
        // A prefetch is only a hint: it never faults, so any address (here possibly past the slice) is allowed.
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }

    /// Fixed-order horizontal sum of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `Σ_j q_j x_j` as 8 lane partial sums, q given as four 8-lane f32 vectors (elements 0..8, 8..16, ...).
    /// Two independent product chains joined at the end: 12 cycles of latency instead of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block_dot(q: &[__m256; 4], x: &[f32; 32]) -> __m256 {
        let t0 = _mm256_fmadd_ps(q[2], load_f32x8(x, 16), _mm256_mul_ps(q[0], load_f32x8(x, 0)));
        let t1 = _mm256_fmadd_ps(q[3], load_f32x8(x, 24), _mm256_mul_ps(q[1], load_f32x8(x, 8)));
        _mm256_add_ps(t0, t1)
    }

    /// One Q4_1 block: `d` broadcast to 8 lanes, `m`, and the 32 nibbles as four 8-lane f32 vectors (elements
    /// 0..8, 8..16, 16..24, 24..32). Shared by the one-row and four-row kernels, which keeps them bitwise equal.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_block(blk: &[u8; 20]) -> (__m256, f32, [__m256; 4]) {
        let low = _mm256_set1_epi32(0xF);
        let dm = f16x2(blk, 0);
        let v0 = u8x8_to_i32(blk, 4);
        let v1 = u8x8_to_i32(blk, 12);
        let q = [
            _mm256_cvtepi32_ps(_mm256_and_si256(v0, low)),
            _mm256_cvtepi32_ps(_mm256_and_si256(v1, low)),
            _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v0)),
            _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v1)),
        ];
        (_mm256_broadcastss_ps(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)), q)
    }

    /// One Q4_0 block: `d` broadcast to 8 lanes and the 32 values `q − 8` as four 8-lane f32 vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0_block(blk: &[u8; 18]) -> (__m256, [__m256; 4]) {
        let low = _mm256_set1_epi32(0xF);
        let eight = _mm256_set1_epi32(8);
        let d = _mm256_broadcastss_ps(f16x1(blk, 0));
        let v0 = u8x8_to_i32(blk, 2);
        let v1 = u8x8_to_i32(blk, 10);
        let q = [
            _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v0, low), eight)),
            _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v1, low), eight)),
            _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32::<4>(v0), eight)),
            _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32::<4>(v1), eight)),
        ];
        (d, q)
    }

    /// One Q8_0 block: `d` broadcast to 8 lanes and the 32 quants as four 8-lane f32 vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_block(blk: &[u8; 34]) -> (__m256, [__m256; 4]) {
        let d = _mm256_broadcastss_ps(f16x1(blk, 0));
        let q = [
            _mm256_cvtepi32_ps(i8x8_to_i32(blk, 2)),
            _mm256_cvtepi32_ps(i8x8_to_i32(blk, 10)),
            _mm256_cvtepi32_ps(i8x8_to_i32(blk, 18)),
            _mm256_cvtepi32_ps(i8x8_to_i32(blk, 26)),
        ];
        (d, q)
    }

    /// Four rows of `ty` (Q4_0 or Q4_1) against one f32 activation vector, interleaved block by block so that the activation
    /// loads and the loop overhead are shared and four accumulator chains run side by side. Each row's arithmetic
    /// is exactly that of `dot_f32::<1>` (the same block decoders, the same operations in the same order), so the
    /// results are bitwise equal to it.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot4_f32(
        ty: QuantType,
        rows: [&[u8]; 4],
        ahead: usize,
        x: &[[f32; 32]],
        sums: &[f32],
    ) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut corr = [0f32; 4];
        match ty {
            QuantType::Q4_0 => {
                let blocks = rows.map(|r| r.as_chunks::<18>().0);
                let nb = blocks[0].len();
                assert!(blocks.iter().all(|b| b.len() == nb), "rows of different lengths");
                assert!(x.len() >= nb, "activations shorter than the row");
                for b in 0..nb {
                    let xb = at!(x, b);
                    for r in 0..4 {
                        prefetch_ahead(rows[r], b * 18, ahead);
                        let (d, q) = q4_0_block(at!(blocks[r], b));
                        acc[r] = _mm256_fmadd_ps(d, block_dot(&q, xb), acc[r]);
                    }
                }
            }
            QuantType::Q4_1 => {
                let blocks = rows.map(|r| r.as_chunks::<20>().0);
                let nb = blocks[0].len();
                assert!(blocks.iter().all(|b| b.len() == nb), "rows of different lengths");
                assert!(x.len() >= nb && sums.len() >= nb, "activations shorter than the row");
                for b in 0..nb {
                    let xb = at!(x, b);
                    let sb = *at!(sums, b);
                    for r in 0..4 {
                        prefetch_ahead(rows[r], b * 20, ahead);
                        let (d, m, q) = q4_1_block(at!(blocks[r], b));
                        acc[r] = _mm256_fmadd_ps(d, block_dot(&q, xb), acc[r]);
                        corr[r] += m * sb;
                    }
                }
            }
            QuantType::Q8_0 => unreachable!("no 4-row Q8_0 kernel (see Acts::dot4_single)"),
        }
        std::array::from_fn(|r| hsum(acc[r]) + corr[r])
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_f32<const M: usize>(
        ty: QuantType,
        row: &[u8],
        xs: [&[[f32; 32]]; M],
        sums: [&[f32]; M],
    ) -> [f32; M] {
        let nb = row.len() / ty.block_bytes();
        assert!(xs.iter().all(|x| x.len() >= nb), "activations shorter than the row");
        assert!(ty != QuantType::Q4_1 || sums.iter().all(|s| s.len() >= nb), "block sums shorter than the row");
        let mut acc = [_mm256_setzero_ps(); M];
        let mut corr = [0f32; M];
        match ty {
            QuantType::Q4_0 => {
                for (b, blk) in row.as_chunks::<18>().0.iter().enumerate() {
                    let (d, q) = q4_0_block(blk);
                    for i in 0..M {
                        acc[i] = _mm256_fmadd_ps(d, block_dot(&q, at!(xs[i], b)), acc[i]);
                    }
                }
            }
            QuantType::Q4_1 => {
                for (b, blk) in row.as_chunks::<20>().0.iter().enumerate() {
                    let (d, m, q) = q4_1_block(blk);
                    for i in 0..M {
                        acc[i] = _mm256_fmadd_ps(d, block_dot(&q, at!(xs[i], b)), acc[i]);
                        corr[i] += m * *at!(sums[i], b);
                    }
                }
            }
            QuantType::Q8_0 => {
                for (b, blk) in row.as_chunks::<34>().0.iter().enumerate() {
                    let (d, q) = q8_0_block(blk);
                    for i in 0..M {
                        acc[i] = _mm256_fmadd_ps(d, block_dot(&q, at!(xs[i], b)), acc[i]);
                    }
                }
            }
        }
        let mut out = [0f32; M];
        for i in 0..M {
            out[i] = hsum(acc[i]) + corr[i];
        }
        out
    }

    /// 32 nibbles of `qs` (16 bytes at `at`) as 32 u8 lanes in element order (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles32(b: &[u8], at: usize) -> __m256i {
        let s = &b[at..at + 16];
        // SAFETY: `s` holds 16 bytes; unaligned load.
        let t = unsafe { _mm_loadu_si128(s.as_ptr().cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
        _mm256_and_si256(both, _mm256_set1_epi8(0xF))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_i8x32(y: &[i8; 32]) -> __m256i {
        // SAFETY: 32 bytes; unaligned load.
        unsafe { _mm256_loadu_si256(y.as_ptr().cast()) }
    }

    /// Σ of u8 × i8 products in 8 i32 lanes, as f32 (exact: |sum| < 2^24).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_u8_i8(ux: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ux, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    /// Σ of i8 × i8 products (`x` ≥ −128, `y` in −127..=127) in 8 i32 lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_i8_i8(x: __m256i, y: __m256i) -> __m256 {
        sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }

    /// One Q4_0 block against one Q8_0 activation block: `acc += (d·d_y) · Σ (q − 8) q_y`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0_q8_step(blk: &[u8; 18], qy: &[i8; 32], dy: f32, acc: &mut __m256) {
        let d = _mm_cvtss_f32(f16x1(blk, 0));
        let qx = _mm256_sub_epi8(nibbles32(blk, 2), _mm256_set1_epi8(8));
        let p = sum_i8_i8(qx, load_i8x32(qy));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), p, *acc);
    }

    /// One Q4_1 block against one Q8_1 activation block: `acc += (d·d_y) · Σ q q_y`, `summs += m·s_y`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1_q8_step(blk: &[u8; 20], qy: &[i8; 32], dy: f32, sy: f32, acc: &mut __m256, summs: &mut f32) {
        let dm = f16x2(blk, 0);
        let d = _mm_cvtss_f32(dm);
        let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
        let p = sum_u8_i8(nibbles32(blk, 4), load_i8x32(qy));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), p, *acc);
        *summs += m * sy;
    }

    /// One Q8_0 block against one Q8_0 activation block: `acc += (d·d_y) · Σ q q_y`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_q8_step(blk: &[u8; 34], qy: &[i8; 32], dy: f32, acc: &mut __m256) {
        let d = _mm_cvtss_f32(f16x1(blk, 0));
        let s = &blk[2..34];
        // SAFETY: `s` holds 32 bytes; unaligned load.
        let qx = unsafe { _mm256_loadu_si256(s.as_ptr().cast()) };
        let p = sum_i8_i8(qx, load_i8x32(qy));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), p, *acc);
    }

    /// Four rows of `ty` (Q4_0 or Q4_1) against one Q8 activation vector, interleaved block by block (shared activation loads,
    /// four independent accumulator chains). Each row runs the same step function as `dot_q8::<1>`, so the results
    /// are bitwise equal to it.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot4_q8(
        ty: QuantType,
        rows: [&[u8]; 4],
        ahead: usize,
        qy: &[[i8; 32]],
        dy: &[f32],
        sy: &[f32],
    ) -> [f32; 4] {
        let nb = rows[0].len() / ty.block_bytes();
        assert!(ty != QuantType::Q4_1 || sy.len() >= nb, "activation sums shorter than the row");
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        macro_rules! four_rows {
            ($bytes:literal, |$blk:ident, $b:ident, $r:ident| $step:expr) => {{
                let blocks = rows.map(|r| r.as_chunks::<$bytes>().0);
                let nb = blocks[0].len();
                assert!(blocks.iter().all(|b| b.len() == nb), "rows of different lengths");
                assert!(qy.len() >= nb && dy.len() >= nb, "activations shorter than the row");
                for $b in 0..nb {
                    for $r in 0..4 {
                        prefetch_ahead(rows[$r], $b * $bytes, ahead);
                        let $blk = at!(blocks[$r], $b);
                        $step;
                    }
                }
            }};
        }
        match ty {
            QuantType::Q4_0 => four_rows!(18, |blk, b, r| q4_0_q8_step(blk, at!(qy, b), *at!(dy, b), &mut acc[r])),
            QuantType::Q4_1 => four_rows!(20, |blk, b, r| {
                q4_1_q8_step(blk, at!(qy, b), *at!(dy, b), *at!(sy, b), &mut acc[r], &mut summs[r])
            }),
            QuantType::Q8_0 => unreachable!("no 4-row Q8_0 kernel (see Acts::dot4_single)"),
        }
        std::array::from_fn(|r| hsum(acc[r]) + summs[r])
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_q8<const M: usize>(
        ty: QuantType,
        row: &[u8],
        qy: [&[[i8; 32]]; M],
        dy: [&[f32]; M],
        sy: [&[f32]; M],
    ) -> [f32; M] {
        let nb = row.len() / ty.block_bytes();
        assert!(qy.iter().all(|q| q.len() >= nb), "activations shorter than the row");
        assert!(dy.iter().all(|d| d.len() >= nb), "activation scales shorter than the row");
        assert!(ty != QuantType::Q4_1 || sy.iter().all(|s| s.len() >= nb), "activation sums shorter than the row");
        let mut acc = [_mm256_setzero_ps(); M];
        let mut summs = [0f32; M];
        match ty {
            QuantType::Q4_0 => {
                for (b, blk) in row.as_chunks::<18>().0.iter().enumerate() {
                    for i in 0..M {
                        q4_0_q8_step(blk, at!(qy[i], b), *at!(dy[i], b), &mut acc[i]);
                    }
                }
            }
            QuantType::Q4_1 => {
                for (b, blk) in row.as_chunks::<20>().0.iter().enumerate() {
                    for i in 0..M {
                        q4_1_q8_step(blk, at!(qy[i], b), *at!(dy[i], b), *at!(sy[i], b), &mut acc[i], &mut summs[i]);
                    }
                }
            }
            QuantType::Q8_0 => {
                for (b, blk) in row.as_chunks::<34>().0.iter().enumerate() {
                    for i in 0..M {
                        q8_0_q8_step(blk, at!(qy[i], b), *at!(dy[i], b), &mut acc[i]);
                    }
                }
            }
        }
        let mut out = [0f32; M];
        for i in 0..M {
            out[i] = hsum(acc[i]) + summs[i];
        }
        out
    }
}

/// AVX-512F kernels for Q4_1 and Q8_0 weights with f32 activations: a whole block in two 16-lane vectors (Q4_1: one
/// byte load widened once, instead of two 8-byte loads, four widenings and twice the arithmetic of the AVX2 kernel;
/// Q8_0: two 16-byte loads widened, instead of four 8-byte ones). Callers must have checked [`avx512_available`].
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{f16x1, f16x2, hsum, prefetch_ahead};

    /// Fixed-order horizontal sum of 16 lanes: the two 8-lane halves added, then the AVX2 tree.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn hsum16(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum(_mm256_add_ps(lo, hi))
    }

    /// One Q4_1 block against 32 activations: `acc += d · (Σ_{j<16} q_j x_j + Σ_{j≥16} q_j x_j)` lane-wise,
    /// `corr += m · S_b`. The one-row and four-row kernels run exactly this, so they agree bit for bit.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn q4_1_step(blk: &[u8; 20], x: &[f32; 32], sb: f32, acc: &mut __m512, corr: &mut f32) {
        let dm = f16x2(blk, 0);
        let qs = &blk[4..20];
        // SAFETY: `qs` holds 16 bytes and `x` 32 f32; unaligned loads.
        let (v, x0, x1) = unsafe {
            (
                _mm512_cvtepu8_epi32(_mm_loadu_si128(qs.as_ptr().cast())),
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        // The nibbles become floats by a 16-entry table lookup (`vpermps` reads only the low 4 bits of each index, so
        // the low nibble needs no mask): one port-5 uop each instead of a mask and two port-0 conversions.
        let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
        let lo = _mm512_permutexvar_ps(v, iota);
        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), iota);
        let t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
        *acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dm), t, *acc);
        *corr += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * sb;
    }

    /// One Q8_0 block against 32 activations: `acc += d · (Σ_{j<16} q_j x_j + Σ_{j≥16} q_j x_j)` lane-wise.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn q8_0_step(blk: &[u8; 34], x: &[f32; 32], acc: &mut __m512) {
        let d = f16x1(blk, 0);
        // SAFETY: `blk` holds 32 quant bytes from offset 2 and `x` 32 f32; unaligned loads.
        let (v0, v1, x0, x1) = unsafe {
            (
                _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.as_ptr().add(2).cast())),
                _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.as_ptr().add(18).cast())),
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), x1, _mm512_mul_ps(_mm512_cvtepi32_ps(v0), x0));
        *acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(d), t, *acc);
    }

    /// One Q8_0 row against `M` f32 activation vectors.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(crate) unsafe fn dot_q8_0_f32<const M: usize>(row: &[u8], xs: [&[[f32; 32]]; M]) -> [f32; M] {
        let blocks = row.as_chunks::<34>().0;
        let nb = blocks.len();
        assert!(xs.iter().all(|x| x.len() >= nb), "activations shorter than the row");
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, blk) in blocks.iter().enumerate() {
            for i in 0..M {
                q8_0_step(blk, at!(xs[i], b), &mut acc[i]);
            }
        }
        std::array::from_fn(|i| hsum16(acc[i]))
    }

    /// Four Q4_1 rows against one f32 activation vector, interleaved block by block (shared activation loads,
    /// four accumulator chains), prefetching each row `ahead` bytes ahead. Bitwise equal to four
    /// `dot_q4_1_f32::<1>` calls.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(crate) unsafe fn dot4_q4_1_f32(rows: [&[u8]; 4], ahead: usize, x: &[[f32; 32]], sums: &[f32]) -> [f32; 4] {
        let blocks = rows.map(|r| r.as_chunks::<20>().0);
        let nb = blocks[0].len();
        assert!(blocks.iter().all(|b| b.len() == nb), "rows of different lengths");
        assert!(x.len() >= nb && sums.len() >= nb, "activations shorter than the row");
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut corr = [0f32; 4];
        for b in 0..nb {
            let xb = at!(x, b);
            let sb = *at!(sums, b);
            for r in 0..4 {
                prefetch_ahead(rows[r], b * 20, ahead);
                q4_1_step(at!(blocks[r], b), xb, sb, &mut acc[r], &mut corr[r]);
            }
        }
        std::array::from_fn(|r| hsum16(acc[r]) + corr[r])
    }

    /// One Q4_1 row against `M` f32 activation vectors.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(crate) unsafe fn dot_q4_1_f32<const M: usize>(
        row: &[u8],
        xs: [&[[f32; 32]]; M],
        sums: [&[f32]; M],
    ) -> [f32; M] {
        let blocks = row.as_chunks::<20>().0;
        let nb = blocks.len();
        assert!(xs.iter().all(|x| x.len() >= nb), "activations shorter than the row");
        assert!(sums.iter().all(|s| s.len() >= nb), "block sums shorter than the row");
        let mut acc = [_mm512_setzero_ps(); M];
        let mut corr = [0f32; M];
        for (b, blk) in blocks.iter().enumerate() {
            for i in 0..M {
                q4_1_step(blk, at!(xs[i], b), *at!(sums[i], b), &mut acc[i], &mut corr[i]);
            }
        }
        std::array::from_fn(|i| hsum16(acc[i]) + corr[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 8_388_608.0 - 1.0)
            .collect()
    }

    /// `rows` rows of k pseudo-random weights quantized to `ty`, row after row.
    fn quantized_rows(ty: QuantType, rows: usize, k: usize, seed: u32) -> Vec<u8> {
        let rb = k / 32 * ty.block_bytes();
        let mut bytes = vec![0u8; rows * rb];
        for (x, o) in vals(rows * k, seed).chunks_exact(k).zip(bytes.chunks_exact_mut(rb)) {
            quantize_row(ty, x, o).unwrap();
        }
        bytes
    }

    /// The AVX-512 Q4_1 kernels (one row with 1..=4 activation vectors, four rows) against the AVX2 and scalar
    /// kernels: equal within f32 summation-order error; the AVX-512 one-row and four-row kernels bitwise equal.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_q4_1_matches_avx2_and_scalar() {
        if !avx512_available() {
            eprintln!("no AVX-512F on this CPU: skipped");
            return;
        }
        let (rows, k) = (4, 576);
        let nb = k / 32;
        let bytes = quantized_rows(QuantType::Q4_1, rows, k, 7);
        let xv: Vec<Vec<f32>> = (0..4).map(|i| vals(k, 100 + i).iter().map(|v| v * 3.0).collect()).collect();
        let acts: Vec<F32Act<'_>> = xv.iter().map(|x| F32Act::new(QuantType::Q4_1, x)).collect();
        let xs: [&[[f32; 32]]; 4] = std::array::from_fn(|i| acts[i].x);
        let sums: [&[f32]; 4] = std::array::from_fn(|i| &acts[i].sums[..]);
        let row = |r: usize| &bytes[r * nb * 20..(r + 1) * nb * 20];
        for r in 0..rows {
            // SAFETY: AVX-512F (and so, here, AVX2, FMA, F16C) checked above.
            let (v512, v2) = unsafe {
                (avx512::dot_q4_1_f32::<4>(row(r), xs, sums), avx2::dot_f32::<4>(QuantType::Q4_1, row(r), xs, sums))
            };
            let vs = scalar::dot_f32::<4>(QuantType::Q4_1, row(r), xs, sums);
            for i in 0..4 {
                // A bound of a few ulps of Σ (|d q| + |m|)·|x| (see the module docs).
                let mut wq = vec![0f32; k];
                crate::quant::dequantize_row(QuantType::Q4_1, row(r), &mut wq).unwrap();
                let mag: f32 = wq.iter().zip(&xv[i]).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1.0;
                assert!((v512[i] - v2[i]).abs() <= 1e-5 * mag, "row {r} act {i}: {} vs avx2 {}", v512[i], v2[i]);
                assert!((v512[i] - vs[i]).abs() <= 1e-5 * mag, "row {r} act {i}: {} vs scalar {}", v512[i], vs[i]);
                // SAFETY: as above.
                let one = unsafe { avx512::dot_q4_1_f32::<1>(row(r), [xs[i]], [sums[i]]) };
                assert_eq!(one[0].to_bits(), v512[i].to_bits(), "M = 1 vs M = 4");
            }
        }
        // SAFETY: as above.
        let four = unsafe { avx512::dot4_q4_1_f32([row(0), row(1), row(2), row(3)], 4096, xs[0], sums[0]) };
        for (r, v) in four.iter().enumerate() {
            // SAFETY: as above.
            let one = unsafe { avx512::dot_q4_1_f32::<1>(row(r), [xs[0]], [sums[0]]) };
            assert_eq!(v.to_bits(), one[0].to_bits(), "four-row vs one-row kernel, row {r}");
        }
    }

    /// The AVX-512 Q8_0 one-row kernel (1..=4 activation vectors) against the AVX2 and scalar kernels, within f32
    /// summation-order error, and the M = 1 and M = 4 forms bitwise equal.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_q8_0_matches_avx2_and_scalar() {
        if !avx512_available() {
            eprintln!("no AVX-512F on this CPU: skipped");
            return;
        }
        let (rows, k) = (3, 1536);
        let nb = k / 32;
        let bytes = quantized_rows(QuantType::Q8_0, rows, k, 11);
        let xv: Vec<Vec<f32>> = (0..4).map(|i| vals(k, 200 + i).iter().map(|v| v * 5.0).collect()).collect();
        let acts: Vec<F32Act<'_>> = xv.iter().map(|x| F32Act::new(QuantType::Q8_0, x)).collect();
        let xs: [&[[f32; 32]]; 4] = std::array::from_fn(|i| acts[i].x);
        let none: [&[f32]; 4] = [&[]; 4];
        for r in 0..rows {
            let row = &bytes[r * nb * 34..(r + 1) * nb * 34];
            // SAFETY: AVX-512F (and so, here, AVX2, FMA, F16C) checked above.
            let (v512, v2) =
                unsafe { (avx512::dot_q8_0_f32::<4>(row, xs), avx2::dot_f32::<4>(QuantType::Q8_0, row, xs, none)) };
            let vs = scalar::dot_f32::<4>(QuantType::Q8_0, row, xs, none);
            let mut wq = vec![0f32; k];
            crate::quant::dequantize_row(QuantType::Q8_0, row, &mut wq).unwrap();
            for i in 0..4 {
                let mag: f32 = wq.iter().zip(&xv[i]).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1.0;
                assert!((v512[i] - v2[i]).abs() <= 1e-5 * mag, "row {r} act {i}: {} vs avx2 {}", v512[i], v2[i]);
                assert!((v512[i] - vs[i]).abs() <= 1e-5 * mag, "row {r} act {i}: {} vs scalar {}", v512[i], vs[i]);
                // SAFETY: as above.
                let one = unsafe { avx512::dot_q8_0_f32::<1>(row, [xs[i]]) };
                assert_eq!(one[0].to_bits(), v512[i].to_bits(), "M = 1 vs M = 4");
            }
        }
    }
}
