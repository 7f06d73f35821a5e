//! The inner loops of CPU attention: scores of a group of query rows against key rows, and the probability-weighted
//! sum of value rows.
//!
//! Keys and values are read in the query's precision or, for f32 queries, as f16 (an f16 KV cache, widened in
//! registers, so the cache is read at half the bytes and never converted as a whole). Each score and each output
//! element is computed the same way whatever the group size is, so the grouped decode path (the query heads that
//! share a KV head, each key row read once for all of them) agrees bit for bit with the per-row path.

use half::f16;

use super::Real;
#[cfg(target_arch = "x86_64")]
use super::avx2_available;

/// Element types of key and value rows that queries of precision `R` read directly.
pub(crate) trait KvElem<R: Real>: Copy + Send + Sync + 'static {
    /// `out[g·s + j] = dot(q_g, k_j) · scale` for `q` = `[group, d]`, `k` = `[s, d]`, `s = out.len() / group`.
    /// Keys are taken eight at a time where SIMD applies (AVX2 + FMA + F16C, `d` a multiple of 8).
    ///
    /// `values` (`[s, dv]`, the value rows of the same keys, or empty) is prefetched into L2 as the keys are read,
    /// so that [`KvElem::attention_values`] finds it there: while the keys stream from memory the values stream
    /// beside them, two streams in flight instead of one (SIMD path only; a hint, no effect on results).
    ///
    /// # Panics
    /// If `group` is zero, `out.len()` is not a multiple of `group`, or `q` or `k` is too short.
    #[allow(clippy::too_many_arguments)]
    fn attention_scores(
        q: &[R],
        group: usize,
        k: &[Self],
        d: usize,
        scale: R,
        out: &mut [R],
        values: &[Self],
        dv: usize,
    );

    /// `out[g] += Σ_j probs[g·s + j] · v_j` in key order, for `probs` = `[group, s]`, `v` = `[s, dv]`, `out` =
    /// `[group, dv]`. A key whose probability is zero in all the rows handled together is not read at all (a
    /// masked key of a single row never reaches it, even with non-finite values); a zero probability otherwise adds
    /// an exact zero for finite values. With SIMD (AVX2 + FMA + F16C, `dv` a multiple of 8) the output is held in
    /// registers, up to three rows by 32 columns, across the keys.
    ///
    /// # Panics
    /// If `group` is zero, `probs.len()` is not a multiple of `group`, `v` is too short or `out` is not `group·dv`.
    fn attention_values(probs: &[R], group: usize, v: &[Self], dv: usize, out: &mut [R]);
}

/// Checks the slices of [`KvElem::attention_scores`] and returns the number of keys.
fn scores_keys(q: usize, group: usize, k: usize, d: usize, out: usize) -> usize {
    assert!(group > 0 && out.is_multiple_of(group), "attention_scores: {out} scores do not split into {group} rows");
    let s = out / group;
    assert!(
        q >= group * d && k >= s * d,
        "attention_scores: q ({q}) or k ({k}) too short for {group}×{s} scores, d {d}"
    );
    s
}

/// Checks the slices of [`KvElem::attention_values`] and returns the number of keys.
fn values_keys(probs: usize, group: usize, v: usize, dv: usize, out: usize) -> usize {
    assert!(
        group > 0 && probs.is_multiple_of(group),
        "attention_values: {probs} probabilities do not split into {group} rows"
    );
    let s = probs / group;
    assert!(
        v >= s * dv && out == group * dv,
        "attention_values: v ({v}) or out ({out}) wrong for {group}×{s} keys, dv {dv}"
    );
    s
}

/// The portable scores: [`Real::dot`] of each query row with each key row (widened to `R` first).
fn scores_portable<R: Real, E: Copy>(
    q: &[R],
    group: usize,
    k: &[E],
    d: usize,
    scale: R,
    out: &mut [R],
    widen: impl Fn(E) -> R,
) {
    let s = scores_keys(q.len(), group, k.len(), d, out.len());
    if s == 0 {
        return;
    }
    let mut row = Vec::new();
    for j in 0..s {
        row.clear();
        row.extend(k[j * d..(j + 1) * d].iter().map(|&x| widen(x)));
        for g in 0..group {
            out[g * s + j] = R::dot(&q[g * d..(g + 1) * d], &row) * scale;
        }
    }
}

/// The portable weighted sum: [`Real::axpy`] of each value row (widened to `R` first) into each output row.
fn values_portable<R: Real, E: Copy>(
    probs: &[R],
    group: usize,
    v: &[E],
    dv: usize,
    out: &mut [R],
    widen: impl Fn(E) -> R,
) {
    let s = values_keys(probs.len(), group, v.len(), dv, out.len());
    let mut row = Vec::new();
    for j in 0..s {
        if (0..group).all(|g| probs[g * s + j] == R::zero()) {
            continue;
        }
        row.clear();
        row.extend(v[j * dv..(j + 1) * dv].iter().map(|&x| widen(x)));
        for g in 0..group {
            R::axpy(&mut out[g * dv..(g + 1) * dv], probs[g * s + j], &row);
        }
    }
}

impl KvElem<f64> for f64 {
    fn attention_scores(
        q: &[f64],
        group: usize,
        k: &[f64],
        d: usize,
        scale: f64,
        out: &mut [f64],
        _: &[f64],
        _: usize,
    ) {
        scores_portable(q, group, k, d, scale, out, |x| x)
    }

    fn attention_values(probs: &[f64], group: usize, v: &[f64], dv: usize, out: &mut [f64]) {
        values_portable(probs, group, v, dv, out, |x| x)
    }
}

/// Implements [`KvElem`]`<f32>` for an element type: the SIMD kernels when they apply, else the portable ones.
macro_rules! kv_elem_f32 {
    ($t:ty, $widen:expr) => {
        impl KvElem<f32> for $t {
            fn attention_scores(
                q: &[f32],
                group: usize,
                k: &[$t],
                d: usize,
                scale: f32,
                out: &mut [f32],
                values: &[$t],
                dv: usize,
            ) {
                #[cfg(target_arch = "x86_64")]
                if avx2_available() && d > 0 && d.is_multiple_of(8) {
                    if scores_keys(q.len(), group, k.len(), d, out.len()) > 0 {
                        // SAFETY: AVX2, FMA and F16C were detected; d % 8 == 0; the lengths were checked.
                        unsafe { simd::attention_scores(q, group, k, d, scale, out, values, dv) };
                    }
                    return;
                }
                let _ = (values, dv);
                scores_portable(q, group, k, d, scale, out, $widen)
            }

            fn attention_values(probs: &[f32], group: usize, v: &[$t], dv: usize, out: &mut [f32]) {
                #[cfg(target_arch = "x86_64")]
                if avx2_available() && dv > 0 && dv.is_multiple_of(8) {
                    values_keys(probs.len(), group, v.len(), dv, out.len());
                    // SAFETY: AVX2, FMA and F16C were detected; dv % 8 == 0; the lengths were checked.
                    unsafe { simd::attention_values(probs, group, v, dv, out) };
                    return;
                }
                values_portable(probs, group, v, dv, out, $widen)
            }
        }
    };
}

kv_elem_f32!(f32, |x: f32| x);
kv_elem_f32!(f16, f16::to_f32);

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::cpu::{prefetch_span, prefetch_span_l2};

    /// Element types loaded eight at a time into f32 lanes.
    pub(super) trait Load8: Copy {
        /// Eight elements from `p`, as f32.
        ///
        /// # Safety
        /// Eight elements are readable at `p`; the CPU supports AVX2, FMA and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract; unaligned load.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (16 bytes readable, F16C present); unaligned load.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    /// How far ahead of the kernels' reads key and value rows are prefetched, in bytes (`EFFLLM_ATTN_PREFETCH`
    /// overrides). Eight key rows read at the stride of a row are followed poorly by the hardware prefetcher: on
    /// the Xeon slice of the ninth session a decode head streamed from DRAM at 5.3 GB/s without this and at 6.6–6.9
    /// GB/s with 2–8 KiB, where a plain vectorised sum of the same buffers reaches 8.8 GB/s.
    fn prefetch_distance() -> usize {
        static D: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *D.get_or_init(|| std::env::var("EFFLLM_ATTN_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(4096))
    }

    /// Sums each of eight vectors across its lanes: lane `i` of the result is `Σ a[i]`, added as
    /// `((a₀ + a₁) + (a₂ + a₃)) + ((a₄ + a₅) + (a₆ + a₇))`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn transpose_sum8(a: [__m256; 8]) -> __m256 {
        let u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }

    /// [`super::KvElem::attention_scores`]: eight keys at a time, one accumulator per key (chunks of eight
    /// dimensions in order), reduced together by [`transpose_sum8`]. A short last block repeats its last key in the
    /// missing lanes and stores only the real ones, so every score takes the same path.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `d % 8 == 0`; the slices passed [`super::scores_keys`] with `s > 0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attention_scores<E: Load8>(
        q: &[f32],
        group: usize,
        k: &[E],
        d: usize,
        scale: f32,
        out: &mut [f32],
        values: &[E],
        dv: usize,
    ) {
        let s = out.len() / group;
        let sc = _mm256_set1_ps(scale);
        let ahead = prefetch_distance();
        let elem = size_of::<E>();
        let mut lanes = [0f32; 8];
        for j0 in (0..s).step_by(8) {
            let n = (s - j0).min(8);
            let rows: [&[E]; 8] = std::array::from_fn(|jj| &k[(j0 + jj.min(n - 1)) * d..][..d]);
            prefetch_span(k, (j0 * d * elem).saturating_add(ahead), 8 * d * elem);
            if !values.is_empty() {
                prefetch_span_l2(values, j0 * dv * elem, 8 * dv * elem);
            }
            for g in 0..group {
                let qr = &q[g * d..][..d];
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    // SAFETY: c + 8 <= d, the length of every row.
                    let qv = unsafe { _mm256_loadu_ps(qr.as_ptr().add(c)) };
                    for (a, r) in acc.iter_mut().zip(&rows) {
                        // SAFETY: as above; the CPU features are this function's.
                        *a = _mm256_fmadd_ps(qv, unsafe { E::load8(r.as_ptr().add(c)) }, *a);
                    }
                }
                let sums = _mm256_mul_ps(transpose_sum8(acc), sc);
                let dst = &mut out[g * s + j0..][..n];
                if n == 8 {
                    // SAFETY: dst has 8 floats; unaligned store.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), sums) };
                } else {
                    // SAFETY: 8 floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
                    dst.copy_from_slice(&lanes[..n]);
                }
            }
        }
    }

    /// One register tile of [`attention_values`]: rows `g0 .. g0 + G` of the output, columns `c0 .. c0 + 8·C`,
    /// accumulated over every key with the tile held in registers.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; the tile lies inside `out` (`[group, dv]`) and `v` (`[s, dv]`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // key j indexes G rows; c and g index a 2-D tile
    unsafe fn values_tile<E: Load8, const G: usize, const C: usize>(
        probs: &[f32],
        s: usize,
        g0: usize,
        v: &[E],
        dv: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; G];
        for (g, row) in acc.iter_mut().enumerate() {
            for (c, a) in row.iter_mut().enumerate() {
                // SAFETY: inside the output tile; unaligned load.
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add((g0 + g) * dv + c0 + 8 * c)) };
            }
        }
        let prow: [&[f32]; G] = std::array::from_fn(|g| &probs[(g0 + g) * s..][..s]);
        let (ahead, elem) = (prefetch_distance(), size_of::<E>());
        for j in 0..s {
            prefetch_span(v, ((j * dv + c0) * elem).saturating_add(ahead), 8 * C * elem);
            let p: [f32; G] = std::array::from_fn(|g| prow[g][j]);
            if p.iter().all(|&x| x == 0.0) {
                continue;
            }
            let pv: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(p[g]));
            for c in 0..C {
                // SAFETY: key j < s, columns inside the tile.
                let vv = unsafe { E::load8(v.as_ptr().add(j * dv + c0 + 8 * c)) };
                for g in 0..G {
                    acc[g][c] = _mm256_fmadd_ps(pv[g], vv, acc[g][c]);
                }
            }
        }
        for (g, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                // SAFETY: inside the output tile; unaligned store.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((g0 + g) * dv + c0 + 8 * c), *a) };
            }
        }
    }

    /// The column tiles (four vectors, then what is left) of one band of `G` output rows.
    ///
    /// # Safety
    /// As [`values_tile`], for rows `g0 .. g0 + G`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values_band<E: Load8, const G: usize>(
        probs: &[f32],
        s: usize,
        g0: usize,
        v: &[E],
        dv: usize,
        out: &mut [f32],
    ) {
        let mut c0 = 0;
        while c0 < dv {
            let vectors = ((dv - c0) / 8).min(4);
            // SAFETY: the caller's bounds, with c0 + 8·vectors <= dv.
            unsafe {
                match vectors {
                    1 => values_tile::<E, G, 1>(probs, s, g0, v, dv, c0, out),
                    2 => values_tile::<E, G, 2>(probs, s, g0, v, dv, c0, out),
                    3 => values_tile::<E, G, 3>(probs, s, g0, v, dv, c0, out),
                    _ => values_tile::<E, G, 4>(probs, s, g0, v, dv, c0, out),
                }
            }
            c0 += 8 * vectors;
        }
    }

    /// [`super::KvElem::attention_values`]: bands of up to three output rows by four vectors of columns (twelve
    /// accumulators), each band reading the value rows once.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `dv % 8 == 0`; the slices passed [`super::values_keys`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attention_values<E: Load8>(probs: &[f32], group: usize, v: &[E], dv: usize, out: &mut [f32]) {
        let s = probs.len() / group;
        let mut g0 = 0;
        while g0 < group {
            let band = (group - g0).min(3);
            // SAFETY: rows g0 .. g0 + band <= group; the caller's bounds.
            unsafe {
                match band {
                    1 => values_band::<E, 1>(probs, s, g0, v, dv, out),
                    2 => values_band::<E, 2>(probs, s, g0, v, dv, out),
                    _ => values_band::<E, 3>(probs, s, g0, v, dv, out),
                }
            }
            g0 += band;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> f32 {
        crate::cpu::test_uniform(seed) - 0.5
    }

    /// Both kernels for keys and values of type `E` against f64 sums of the same (widened) numbers, on shapes that
    /// hit every register tile, the short key block and the portable path (sizes not a multiple of 8); each row of
    /// a group bit for bit equal to that row alone; a key with zero probability in every row never read (its NaN
    /// values do not reach the output).
    fn check_kernels<E: KvElem<f32>>(narrow: impl Fn(f32) -> E, widen: impl Fn(E) -> f32) {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let shapes = [(3, 77, 64, 64), (5, 9, 16, 40), (1, 8, 8, 8), (4, 13, 24, 96), (2, 1, 12, 20), (7, 30, 64, 56)];
        for (group, s, d, dv) in shapes {
            let q: Vec<f32> = (0..group * d).map(|_| xorshift(&mut seed)).collect();
            let k: Vec<E> = (0..s * d).map(|_| narrow(xorshift(&mut seed))).collect();
            let mut v: Vec<E> = (0..s * dv).map(|_| narrow(xorshift(&mut seed))).collect();
            let mut scores = vec![0f32; group * s];
            E::attention_scores(&q, group, &k, d, 0.125, &mut scores, &v, dv);
            for g in 0..group {
                let mut alone = vec![0f32; s];
                E::attention_scores(&q[g * d..(g + 1) * d], 1, &k, d, 0.125, &mut alone, &[], dv);
                assert!(alone.iter().zip(&scores[g * s..]).all(|(a, b)| a.to_bits() == b.to_bits()), "scores row {g}");
                for j in 0..s {
                    let qd: Vec<f64> = q[g * d..(g + 1) * d].iter().map(|&x| f64::from(x)).collect();
                    let kd: Vec<f64> = k[j * d..(j + 1) * d].iter().map(|&x| f64::from(widen(x))).collect();
                    let want = qd.iter().zip(&kd).map(|(a, b)| a * b).sum::<f64>() * 0.125;
                    let norm: f64 = qd.iter().zip(&kd).map(|(a, b)| (a * b).abs()).sum();
                    assert!((f64::from(scores[g * s + j]) - want).abs() <= 1e-6 * norm + 1e-12, "score {g},{j}");
                }
            }
            // Probabilities with zeros: key 0 is zero in every row (its values are NaN), key 1 in row 0 only.
            let mut probs: Vec<f32> = (0..group * s).map(|_| xorshift(&mut seed) + 0.5).collect();
            for g in 0..group {
                probs[g * s] = 0.0;
            }
            if s > 1 {
                probs[1] = 0.0;
            }
            v[..dv].fill(narrow(f32::NAN));
            let start: Vec<f32> = (0..group * dv).map(|_| xorshift(&mut seed)).collect();
            let mut out = start.clone();
            E::attention_values(&probs, group, &v, dv, &mut out);
            for g in 0..group {
                let mut alone = start[g * dv..(g + 1) * dv].to_vec();
                E::attention_values(&probs[g * s..(g + 1) * s], 1, &v, dv, &mut alone);
                assert!(alone.iter().zip(&out[g * dv..]).all(|(a, b)| a.to_bits() == b.to_bits()), "values row {g}");
                for c in 0..dv {
                    let terms = (1..s).map(|j| f64::from(probs[g * s + j]) * f64::from(widen(v[j * dv + c])));
                    let want = f64::from(start[g * dv + c]) + terms.clone().sum::<f64>();
                    let norm = f64::from(start[g * dv + c]).abs() + terms.map(f64::abs).sum::<f64>();
                    let got = f64::from(out[g * dv + c]);
                    assert!(got.is_finite() && (got - want).abs() <= 1e-6 * norm, "value {g},{c}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn f32_kernels_match_f64_and_rows_alone() {
        check_kernels::<f32>(|x| x, |x| x);
    }

    #[test]
    fn f16_kernels_match_f64_and_rows_alone() {
        check_kernels::<f16>(f16::from_f32, f16::to_f32);
    }
}
