//! The CPU GEMV layout of Q4_1 and Q8_0: each row's quant bytes first, then its `d` scales (f16, in block order),
//! then for Q4_1 its `m` offsets; the row's bytes otherwise unchanged and the row stride the same as ggml's. Built
//! by [`QWeight::with_gemv_layout`](super::QWeight::with_gemv_layout) on the CPU when the AVX-512 kernels run.
//!
//! In ggml's layout every block starts with its f16 values, so a kernel converts and broadcasts them block by block
//! (on the AVX-512 path: a conversion and a broadcast per block and row, for Q4_1 also a lane extract and a scalar
//! multiply-add, most of them on the one shuffle port). With the scales split out, 16 blocks' scales convert in one
//! instruction, each `d` reaches its FMA as a broadcast load (a load port, no shuffle), and Q4_1's `m·Σx` term of 16
//! blocks is one vector FMA. On the Xeon slice of `docs/benchmarks.md` the SmolLM2 LM head streams a fifth to a
//! quarter faster in Q4_1.
//!
//! The arithmetic is ggml's: row `r` of the product is `y_r = Σ_b (d_b·Σ_j q_bj·x_bj + m_b·S_b)` with
//! `S_b = Σ_j x_bj` (Q4_1; Q8_0 has no `m` term and signed `q`), in f32: per block the 32 products in two 16-lane
//! vectors, scaled by `d_b` into a running vector sum, and the `m_b·S_b` terms in a second one, both summed in a fixed
//! order at the end.

use rayon::prelude::*;

use super::kernels::F32Act;
use super::matrix::{MIN_CHUNK_ROWS, SEQ_THRESHOLD_BYTES, TASKS_PER_THREAD};
use super::{QMatrix, QuantType};

/// Whether the split-layout kernel can run: AVX-512F with the BW and VL extensions (masked 16-bit loads), AVX2,
/// FMA and F16C.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::kernels::avx512_available()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A Q4_1 or Q8_0 matrix in the split layout.
pub(crate) struct SplitRows {
    ty: QuantType,
    n_rows: usize,
    n_cols: usize,
    bytes: Vec<u8>,
}

/// (offset in the ggml block, offset in the split row, length) of each piece of block `b` of a row of `nb` blocks.
fn pieces(ty: QuantType, nb: usize, b: usize) -> [(usize, usize, usize); 3] {
    match ty {
        QuantType::Q4_1 => [(4, 16 * b, 16), (0, 16 * nb + 2 * b, 2), (2, 18 * nb + 2 * b, 2)],
        _ => [(2, 32 * b, 32), (0, 32 * nb + 2 * b, 2), (0, 0, 0)],
    }
}

impl std::fmt::Debug for SplitRows {
    // Not the bytes: a model's `{:?}` would print its whole LM head.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitRows")
            .field("ty", &self.ty)
            .field("n_rows", &self.n_rows)
            .field("n_cols", &self.n_cols)
            .finish()
    }
}

impl SplitRows {
    /// The split layout of `m`, or `None` where it does not apply: Q4_0, or a CPU without the AVX-512 kernels
    /// (`Isa::detect`; the layout has no AVX2 or scalar kernel, and the ggml rows serve those).
    pub(crate) fn new(m: &QMatrix) -> Option<SplitRows> {
        let isa = super::kernels::Isa::detect() == super::kernels::Isa::Avx512;
        let ty = matches!(m.quant_type(), QuantType::Q4_1 | QuantType::Q8_0);
        (ty && isa && available()).then(|| Self::from_matrix(m))
    }

    /// The layout itself, whatever the CPU (for tests). Q4_1 or Q8_0 only.
    pub(crate) fn from_matrix(m: &QMatrix) -> SplitRows {
        let (ty, n, k) = (m.quant_type(), m.n_rows(), m.n_cols());
        assert!(ty != QuantType::Q4_0, "no split layout for Q4_0");
        let (nb, bsz) = (k / 32, ty.block_bytes());
        let rb = bsz * nb;
        let mut bytes = vec![0u8; n * rb];
        for (s, d) in m.as_bytes().chunks_exact(rb.max(1)).zip(bytes.chunks_exact_mut(rb.max(1))) {
            for (b, blk) in s.chunks_exact(bsz).enumerate() {
                for (from, to, len) in pieces(ty, nb, b) {
                    d[to..to + len].copy_from_slice(&blk[from..from + len]);
                }
            }
        }
        SplitRows { ty, n_rows: n, n_cols: k, bytes }
    }

    /// The ggml bytes back (for tests).
    #[cfg(test)]
    pub(crate) fn to_ggml(&self) -> Vec<u8> {
        let (nb, bsz) = (self.n_cols / 32, self.ty.block_bytes());
        let rb = bsz * nb;
        let mut out = vec![0u8; self.bytes.len()];
        for (s, d) in self.bytes.chunks_exact(rb.max(1)).zip(out.chunks_exact_mut(rb.max(1))) {
            for (b, blk) in d.chunks_exact_mut(bsz).enumerate() {
                for (from, to, len) in pieces(self.ty, nb, b) {
                    blk[from..from + len].copy_from_slice(&s[to..to + len]);
                }
            }
        }
        out
    }

    /// `y = W·x` (`x`: `n_cols` values, `y`: `n_rows`), rows in parallel on effllm's pool; each row's result does
    /// not depend on the thread count.
    ///
    /// Panics (an internal invariant: `linear_q` checks the shapes) if `x` or `y` has the wrong length, or if the
    /// layout was built without the AVX-512 kernels being available.
    pub(crate) fn gemv(&self, x: &[f32], y: &mut [f32]) {
        assert!(x.len() == self.n_cols && y.len() == self.n_rows, "SplitRows::gemv: shapes");
        assert!(available(), "SplitRows without AVX-512");
        let nb = self.n_cols / 32;
        let rb = self.ty.block_bytes() * nb;
        let q8 = self.ty == QuantType::Q8_0;
        if self.n_rows == 0 {
            return;
        }
        if rb == 0 {
            y.fill(0.0);
            return;
        }
        // The activations in blocks, with their block sums for Q4_1 (as the ggml-row kernels take them).
        let act = F32Act::new(self.ty, x);
        let (xb, sums) = (act.x, &act.sums[..]);
        // The same position in the group of four rows about 4 KiB ahead (whole groups): on the Xeon slice 4-5 %
        // faster than 8 KiB or one group ahead; an extra L2 hint further ahead was slower.
        let ahead = 4 * rb * (4096 / (4 * rb)).max(1);
        let run = |rows: &[u8], out: &mut [f32]| {
            let mut groups = rows.chunks_exact(4 * rb);
            let mut outs = out.chunks_exact_mut(4);
            for (g, o) in (&mut groups).zip(&mut outs) {
                let r4 = [&g[..rb], &g[rb..2 * rb], &g[2 * rb..3 * rb], &g[3 * rb..]];
                // SAFETY: `available()` asserted above.
                o.copy_from_slice(&unsafe {
                    if q8 { kernel::dot4_q8_0(r4, nb, ahead, xb) } else { kernel::dot4(r4, nb, ahead, xb, sums) }
                });
            }
            for (r, o) in groups.remainder().chunks_exact(rb).zip(outs.into_remainder()) {
                // SAFETY: as above. The one row four times (its first result kept).
                *o = unsafe {
                    if q8 { kernel::dot4_q8_0([r; 4], nb, 0, xb) } else { kernel::dot4([r; 4], nb, 0, xb, sums) }
                }[0];
            }
        };
        if self.bytes.len() < SEQ_THRESHOLD_BYTES {
            run(&self.bytes, y);
            return;
        }
        crate::threads::install(|| {
            let t = rayon::current_num_threads().max(1);
            // Whole groups of four rows per task (a multiple of 8), as `QMatrix`'s parallel GEMV splits its rows.
            let chunk = self.n_rows.div_ceil(t * TASKS_PER_THREAD).max(MIN_CHUNK_ROWS).next_multiple_of(8);
            self.bytes.par_chunks(chunk * rb).zip(y.par_chunks_mut(chunk)).for_each(|(w, o)| run(w, o));
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    /// The lane mask of the first `cnt` (1..=16) blocks of a chunk.
    fn chunk_mask(cnt: usize) -> u16 {
        if cnt >= 16 { u16::MAX } else { (1u16 << cnt) - 1 }
    }

    /// The f16 scales at `p` of a chunk's blocks as f32, zeros past the mask's lanes.
    ///
    /// # Safety
    /// AVX-512F/BW/VL; `p` holds the unmasked halves.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn scales16(p: *const u8, mask: u16) -> __m512 {
        // SAFETY: the masked load reads only the unmasked halves (the caller's contract).
        _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) })
    }

    /// Four split-layout Q4_1 rows of `nb` blocks against one activation vector (`x`, block sums `sums`): per block
    /// `acc += d · (Σ_{j<16} q_j x_j + Σ_{j≥16} q_j x_j)` lane-wise, and per 16 blocks `corr += m ⊙ S`. Each row's
    /// result is independent of the other three.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C ([`super::available`]). Each row holds `20·nb`
    /// bytes; `x` and `sums` at least `nb` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot4(rows: [&[u8]; 4], nb: usize, ahead: usize, x: &[[f32; 32]], sums: &[f32]) -> [f32; 4] {
        assert!(rows.iter().all(|r| r.len() == 20 * nb) && x.len() >= nb && sums.len() >= nb);
        let p = rows.map(|r| r.as_ptr());
        let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut corr = [_mm512_setzero_ps(); 4];
        let mut d = [[0f32; 16]; 4];
        for c0 in (0..nb).step_by(16) {
            let cnt = (nb - c0).min(16);
            let mask = chunk_mask(cnt);
            // SAFETY (the block): every pointer stays inside its row (asserted lengths: quants at 16·b, d at
            // 16·nb + 2·b, m at 18·nb + 2·b for b < nb) or is a masked load that reads only the first `cnt` values;
            // `x` holds nb blocks.
            unsafe {
                let s = _mm512_maskz_loadu_ps(mask, sums.as_ptr().add(c0));
                for r in 0..4 {
                    // Masked-off halves load as zeros: d = m = 0.
                    _mm512_storeu_ps(d[r].as_mut_ptr(), scales16(p[r].add(16 * nb + 2 * c0), mask));
                    corr[r] = _mm512_fmadd_ps(scales16(p[r].add(18 * nb + 2 * c0), mask), s, corr[r]);
                }
                for b in c0..c0 + cnt {
                    let xb = x.as_ptr().add(b).cast::<f32>();
                    let (x0, x1) = (_mm512_loadu_ps(xb), _mm512_loadu_ps(xb.add(16)));
                    for r in 0..4 {
                        // A hint only: it never faults, so an address past the row is fine.
                        _mm_prefetch::<_MM_HINT_T0>(p[r].wrapping_add(20 * b + ahead).cast());
                        let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p[r].add(16 * b).cast()));
                        // `vpermps` reads the low 4 bits of each index: the low nibble needs no mask.
                        let lo = _mm512_permutexvar_ps(v, iota);
                        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), iota);
                        let t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
                        let db = _mm512_set1_ps(*d.get_unchecked(r).get_unchecked(b - c0));
                        acc[r] = _mm512_fmadd_ps(db, t, acc[r]);
                    }
                }
            }
        }
        std::array::from_fn(|r| _mm512_reduce_add_ps(acc[r]) + _mm512_reduce_add_ps(corr[r]))
    }

    /// Four split-layout Q8_0 rows of `nb` blocks against one activation vector: per block
    /// `acc += d · (Σ_{j<16} q_j x_j + Σ_{j≥16} q_j x_j)` lane-wise. Each row's result is independent of the others.
    ///
    /// # Safety
    /// As [`dot4`]; each row holds `34·nb` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q8_0(rows: [&[u8]; 4], nb: usize, ahead: usize, x: &[[f32; 32]]) -> [f32; 4] {
        assert!(rows.iter().all(|r| r.len() == 34 * nb) && x.len() >= nb);
        let p = rows.map(|r| r.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut d = [[0f32; 16]; 4];
        for c0 in (0..nb).step_by(16) {
            let cnt = (nb - c0).min(16);
            let mask = chunk_mask(cnt);
            // SAFETY (the block): quants at 32·b and d at 32·nb + 2·b lie inside each row for b < nb (asserted
            // lengths), the d loads are masked to the first `cnt`; `x` holds nb blocks.
            unsafe {
                for r in 0..4 {
                    _mm512_storeu_ps(d[r].as_mut_ptr(), scales16(p[r].add(32 * nb + 2 * c0), mask));
                }
                for b in c0..c0 + cnt {
                    let xb = x.as_ptr().add(b).cast::<f32>();
                    let (x0, x1) = (_mm512_loadu_ps(xb), _mm512_loadu_ps(xb.add(16)));
                    for r in 0..4 {
                        // A hint only: it never faults, so an address past the row is fine.
                        _mm_prefetch::<_MM_HINT_T0>(p[r].wrapping_add(34 * b + ahead).cast());
                        let q = p[r].add(32 * b);
                        let v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast())));
                        let v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast())));
                        let t = _mm512_fmadd_ps(v1, x1, _mm512_mul_ps(v0, x0));
                        let db = _mm512_set1_ps(*d.get_unchecked(r).get_unchecked(b - c0));
                        acc[r] = _mm512_fmadd_ps(db, t, acc[r]);
                    }
                }
            }
        }
        std::array::from_fn(|r| _mm512_reduce_add_ps(acc[r]))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: `SplitRows::new` returns `None` off x86-64.
    pub(super) unsafe fn dot4(_: [&[u8]; 4], _: usize, _: usize, _: &[[f32; 32]], _: &[f32]) -> [f32; 4] {
        unreachable!("the split layout exists only with AVX-512")
    }

    /// Never called: as [`dot4`].
    pub(super) unsafe fn dot4_q8_0(_: [&[u8]; 4], _: usize, _: usize, _: &[[f32; 32]]) -> [f32; 4] {
        unreachable!("the split layout exists only with AVX-512")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The layout holds the ggml bytes exactly (Q4_1 and Q8_0), and (where AVX-512 runs) its GEMV matches the
        /// f64 product of the dequantized matrix within f32 summation error, on row counts that leave one to three
        /// rows beside the groups of four and block counts below, at and above 16.
        #[test]
        fn split_gemv_matches_the_reference(
            q8 in any::<bool>(), n in 1usize..70, nb in 1usize..40, seed in 0u64..1000,
        ) {
            let ty = if q8 { QuantType::Q8_0 } else { QuantType::Q4_1 };
            let k = nb * 32;
            let w: Vec<f32> = (0..n * k)
                .map(|i| (((i as u64 * 2654435761 + seed * 97) % 2001) as f32 - 1000.0) / 300.0)
                .collect();
            let m = QMatrix::quantize(ty, n, k, &w).unwrap();
            let split = SplitRows::from_matrix(&m);
            prop_assert_eq!(split.to_ggml(), m.as_bytes().to_vec());
            if available() {
                let x: Vec<f32> = (0..k).map(|i| ((i as u64 * 7919 + seed) % 1999) as f32 / 999.0 - 1.0).collect();
                let wd = m.dequantize();
                let mut y = vec![0f32; n];
                split.gemv(&x, &mut y);
                let want: Vec<f64> =
                    (0..n).map(|r| (0..k).map(|c| wd[r * k + c] as f64 * x[c] as f64).sum()).collect();
                let num: f64 = y.iter().zip(&want).map(|(g, w)| (*g as f64 - w).powi(2)).sum();
                let den: f64 = want.iter().map(|w| w * w).sum::<f64>().max(1e-30);
                prop_assert!((num / den).sqrt() < 1e-5, "rel error {}", (num / den).sqrt());
            }
        }
    }
}
