//! Matrix–vector products for decode: `y = W x` with `W` row-major `[n_out, k]`.
//!
//! GEMM libraries run `m = 1` on one thread; decode is memory-bound, and one core cannot saturate DRAM. This kernel
//! splits the output rows into chunks processed in parallel. Each output is one dot product reduced by one thread
//! in a fixed order, so the result is bitwise independent of the thread count and the chunking.

use rayon::prelude::*;

/// Below this many weights the GEMV runs on the calling thread.
pub(crate) const GEMV_SEQ_THRESHOLD: usize = 1 << 16;

/// Rows per parallel task (a multiple of 8; large enough to amortise scheduling, small enough to balance).
fn rows_per_task(n_out: usize, k: usize) -> usize {
    let threads = crate::threads::num_threads().max(1);
    let by_balance = n_out.div_ceil(threads * 4);
    let by_cost = (16_384 / k.max(1)).max(1); // at least ~64 KiB of f32 weights per task
    by_balance.max(by_cost).next_multiple_of(8)
}

/// Dot product with a fixed reduction order: 32 lanes (4 × 8) of independent partial sums, combined in a fixed
/// tree, then the tail. The AVX2+FMA path and the scalar path use the same order but the FMA rounds once per
/// multiply-add, so they agree to rounding, not bitwise.
#[inline]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at runtime just above).
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_scalar(a, b)
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("EFFLLM_FORCE_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

/// Portable dot product; the oracle of the SIMD path.
pub(crate) fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let chunks = n / 32;
    let mut acc = [0f32; 32];
    for c in 0..chunks {
        let (x, y) = (&a[c * 32..c * 32 + 32], &b[c * 32..c * 32 + 32]);
        for l in 0..32 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut lanes = [0f32; 8];
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane = (acc[l] + acc[8 + l]) + (acc[16 + l] + acc[24 + l]);
    }
    let mut s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for i in chunks * 32..n {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 32;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    for c in 0..chunks {
        let o = c * 32;
        // SAFETY: o + 32 <= n <= len of both slices.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o + 8)), _mm256_loadu_ps(pb.add(o + 8)), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o + 16)), _mm256_loadu_ps(pb.add(o + 16)), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o + 24)), _mm256_loadu_ps(pb.add(o + 24)), acc3);
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    // Horizontal sum in the same tree as the scalar path: (l0+l4)+(l2+l6) + (l1+l5)+(l3+l7).
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s4 = _mm_add_ps(lo, hi); // [l0+l4, l1+l5, l2+l6, l3+l7]
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); // [ (l0+l4)+(l2+l6), (l1+l5)+(l3+l7), .. ]
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    let mut s = _mm_cvtss_f32(s1);
    for i in chunks * 32..n {
        s += a[i] * b[i];
    }
    s
}

/// `y[r] = dot(W[r, :], x)` for a row-major `W` of `y.len()` rows and `x.len()` columns. `w` may have a row stride
/// `ldw ≥ x.len()`.
pub(crate) fn gemv_f32(w: &[f32], ldw: usize, x: &[f32], y: &mut [f32]) {
    let (n_out, k) = (y.len(), x.len());
    let row = |r: usize| &w[r * ldw..r * ldw + k];
    if n_out * k < GEMV_SEQ_THRESHOLD || crate::threads::num_threads() == 1 {
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = dot_f32(row(r), x);
        }
        return;
    }
    let chunk = rows_per_task(n_out, k);
    crate::threads::install(|| {
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
            for (i, yr) in ys.iter_mut().enumerate() {
                *yr = dot_f32(row(c * chunk + i), x);
            }
        })
    });
}

/// f64 version (reference precision; scalar, parallel over rows).
pub(crate) fn gemv_f64(w: &[f64], ldw: usize, x: &[f64], y: &mut [f64]) {
    let k = x.len();
    let dot = |r: usize| w[r * ldw..r * ldw + k].iter().zip(x).fold(0.0, |a, (&p, &q)| a + p * q);
    if y.len() * k < GEMV_SEQ_THRESHOLD {
        y.iter_mut().enumerate().for_each(|(r, yr)| *yr = dot(r));
        return;
    }
    crate::threads::install(|| y.par_iter_mut().enumerate().with_min_len(8).for_each(|(r, yr)| *yr = dot(r)));
}

/// Skinny GEMM for `m ≤ 8` rows of activations: `Y[i, r] = dot(W[r, :], X[i, :])`. Each weight row is loaded once
/// (it stays in L1 across the `m` dot products), and every output equals the GEMV's bitwise.
pub(crate) fn skinny_f32(w: &[f32], ldw: usize, x: &[f32], m: usize, k: usize, y: &mut [f32], n_out: usize) {
    // Outputs are written transposed into a [n_out, m] scratch so that parallel row chunks own disjoint memory.
    let mut yt = vec![0f32; n_out * m];
    let body = |r: usize, out: &mut [f32]| {
        let wr = &w[r * ldw..r * ldw + k];
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_f32(wr, &x[i * k..(i + 1) * k]);
        }
    };
    if n_out * k < GEMV_SEQ_THRESHOLD || crate::threads::num_threads() == 1 {
        yt.chunks_mut(m).enumerate().for_each(|(r, o)| body(r, o));
    } else {
        let chunk = rows_per_task(n_out, k);
        crate::threads::install(|| {
            yt.par_chunks_mut(chunk * m).enumerate().for_each(|(c, block)| {
                for (i, o) in block.chunks_mut(m).enumerate() {
                    body(c * chunk + i, o);
                }
            })
        });
    }
    for r in 0..n_out {
        for i in 0..m {
            y[i * n_out + r] = yt[r * m + i];
        }
    }
}
