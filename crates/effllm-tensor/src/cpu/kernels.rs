//! Generic element kernels shared by the ops.

use rayon::prelude::*;

use super::Real;

/// Below this many elements a map runs on the calling thread (rayon's fork/join costs more than it saves).
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// `out[i] = f(x[i])`, parallel over large inputs.
pub(crate) fn map<R: Real>(x: &[R], f: impl Fn(R) -> R + Sync) -> Vec<R> {
    if x.len() < PAR_MIN_ELEMS {
        return x.iter().map(|&v| f(v)).collect();
    }
    crate::threads::install(|| x.par_iter().with_min_len(4096).map(|&v| f(v)).collect())
}

/// Applies `f` to each row of a row-major `rows × cols` buffer, writing the matching output row. Parallel over rows
/// when the buffer is large; each row is handled by one thread, so results do not depend on the thread count.
pub(crate) fn rows_map<T: Send + Sync + Copy, U: Send + Default + Clone>(
    x: &[T],
    cols: usize,
    out_cols: usize,
    f: impl Fn(&[T], &mut [U]) + Sync,
) -> Vec<U> {
    if cols == 0 {
        return Vec::new();
    }
    let rows = x.len() / cols;
    let mut out = vec![U::default(); rows * out_cols];
    if out_cols == 0 {
        return out;
    }
    if x.len() < PAR_MIN_ELEMS || rows < 2 {
        for (xr, or) in x.chunks(cols).zip(out.chunks_mut(out_cols)) {
            f(xr, or);
        }
    } else {
        let rows_per_task = (PAR_MIN_ELEMS / cols).max(1);
        crate::threads::install(|| {
            out.par_chunks_mut(out_cols * rows_per_task).zip(x.par_chunks(cols * rows_per_task)).for_each(|(oc, xc)| {
                for (xr, or) in xc.chunks(cols).zip(oc.chunks_mut(out_cols)) {
                    f(xr, or);
                }
            })
        });
    }
    out
}

/// Numerically stable softmax of one row: `exp(x - max) / Σ exp(x - max)`.
pub(crate) fn softmax_row<R: Real>(x: &[R], out: &mut [R]) {
    R::softmax_row(x, out)
}

/// `log Σ exp(x)` of one row, stable.
pub(crate) fn logsumexp_row<R: Real>(x: &[R]) -> R {
    let max = x.iter().copied().fold(R::neg_infinity(), R::max);
    if max == R::neg_infinity() || max == R::infinity() {
        return max;
    }
    let sum: R = x.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

/// Moves dimension `dim` of a contiguous `[outer, n, inner]` buffer to the end: returns `[outer·inner, n]`.
pub(crate) fn dim_to_last<T: Copy + Default>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    if inner == 1 {
        return x.to_vec();
    }
    let mut out = vec![T::default(); x.len()];
    for o in 0..outer {
        for i in 0..n {
            for j in 0..inner {
                out[(o * inner + j) * n + i] = x[(o * n + i) * inner + j];
            }
        }
    }
    out
}

/// Inverse of [`dim_to_last`]: `[outer·inner, n]` back to `[outer, n, inner]`.
pub(crate) fn last_to_dim<T: Copy + Default>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    if inner == 1 {
        return x.to_vec();
    }
    let mut out = vec![T::default(); x.len()];
    for o in 0..outer {
        for i in 0..n {
            for j in 0..inner {
                out[(o * n + i) * inner + j] = x[(o * inner + j) * n + i];
            }
        }
    }
    out
}
