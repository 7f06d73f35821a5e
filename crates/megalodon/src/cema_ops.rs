//! The two fused CEMA primitives behind [`Cema::forward`](crate::Cema::forward), as differentiable custom ops with
//! hand-written backward rules. Composing them from elementwise tensor ops would materialise `[L, D, N]` tables of
//! `q^j` and cost an order of magnitude more; here every `(row, channel, n)` walks its powers in one loop.
//!
//! Notation: `q = e^{m + iφ}` with `m = ln|q|` (`log_mag`) and `φ = arg q` (`phase`), both `[D, N]`.
//!
//! **Power sums.** `power_sum(c, m, φ, L, s)[r, d, j] = Σ_n Re(c[r, d, n] · q[d, n]^{j+s})` for a complex
//! `c` = `[R, D, N]`: the convolution kernel (`c = γp`, `s = 0`, `R = 1`) and the state bias (`c = γh₀`, `s = 1`,
//! `R = B`). With `k = j + s` and the output gradient `g`: `∂c_re = Σ_j g Re q^k`, `∂c_im = −Σ_j g Im q^k`,
//! `∂m = Σ_{r,j} g k Re(c q^k)`, `∂φ = −Σ_{r,j} g k Im(c q^k)`.
//!
//! **Decayed sums.** `decayed_sum(x, m, φ)[b, d, n] = S = Σ_j q^{L−1−j} x[b, j, d]` (complex, returned as
//! `[2, B, D, N]`: real then imaginary part), the input part of the last CEMA state. With `T = Σ_j (L−1−j) q^{L−1−j}
//! x_j` and the output gradient `G = g_re + i g_im`: `∂x_j = Σ_n Re(conj(G) q^{L−1−j})`, `∂m = Σ_b Re(conj(G) T)`,
//! `∂φ = −Σ_b Im(conj(G) T)`. `S` and `T` come from the recurrences `T ← q(T + S)`, `S ← qS + x_j`.
//!
//! Powers are walked by multiplication in f64 and re-anchored to `exp(k·m)·(cos kφ, sin kφ)` every 64 steps, so the
//! drift stays at f64 round-off for any length. f32 tensors on CUDA run the crate's kernels (same walks, f64
//! arithmetic inside the threads); other CUDA dtypes run these loops on the host.

use effllm_tensor::autograd::{CustomBackward, custom_op};
use effllm_tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::conv::to_tensor_error;
use crate::error::Result;

/// How often (in steps) a walked power is recomputed from `exp(k·m)` and `cis(kφ)`.
const ANCHOR: usize = 64;

#[derive(Clone, Copy)]
struct C64 {
    re: f64,
    im: f64,
}

impl C64 {
    fn mul(self, o: C64) -> C64 {
        C64 { re: self.re * o.re - self.im * o.im, im: self.re * o.im + self.im * o.re }
    }
    /// `q^k` from `m = ln|q|`, `φ = arg q`.
    fn pow(m: f64, ph: f64, k: usize) -> C64 {
        let r = (k as f64 * m).exp();
        let (s, c) = (k as f64 * ph).sin_cos();
        C64 { re: r * c, im: r * s }
    }
}

/// f32 tensors on a CUDA device run the crate's kernels; everything else runs the host loops.
fn on_gpu(device: &Device, dtype: DType) -> bool {
    matches!(device, Device::Cuda(_)) && dtype == DType::F32
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.contiguous()?.to_vec_f64()?)
}

fn tensor(v: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// Host forward of [`power_sum`]: `[R, D, len]`.
#[allow(clippy::too_many_arguments)]
fn power_sum_host(
    cre: &[f64],
    cim: &[f64],
    m: &[f64],
    ph: &[f64],
    (r, d, n): (usize, usize, usize),
    len: usize,
    shift: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; r * d * len];
    if len == 0 {
        return out;
    }
    effllm_tensor::threads::install(|| {
        out.par_chunks_mut(len).enumerate().for_each(|(row, o)| {
            let di = row % d;
            for ni in 0..n {
                let (i, ci) = (di * n + ni, row * n + ni);
                let c = C64 { re: cre[ci], im: cim[ci] };
                let q = C64::pow(m[i], ph[i], 1);
                let mut w = C64::pow(m[i], ph[i], shift);
                for (j, oj) in o.iter_mut().enumerate() {
                    if j > 0 && j % ANCHOR == 0 {
                        w = C64::pow(m[i], ph[i], j + shift);
                    }
                    *oj += c.re * w.re - c.im * w.im;
                    w = w.mul(q);
                }
            }
        })
    });
    out
}

/// Host backward of [`power_sum`]: `(∂c_re, ∂c_im, ∂m, ∂φ)`.
#[allow(clippy::too_many_arguments)]
fn power_sum_grad(
    g: &[f64],
    cre: &[f64],
    cim: &[f64],
    m: &[f64],
    ph: &[f64],
    (r, d, n): (usize, usize, usize),
    len: usize,
    shift: usize,
) -> [Vec<f64>; 4] {
    // Per channel d: the c-gradients of every row r, and ∂m, ∂φ summed over r.
    let per_d: Vec<[Vec<f64>; 4]> = effllm_tensor::threads::install(|| {
        (0..d)
            .into_par_iter()
            .map(|di| {
                let (mut dcre, mut dcim) = (vec![0.0; r * n], vec![0.0; r * n]);
                let (mut dm, mut dph) = (vec![0.0; n], vec![0.0; n]);
                for ri in 0..r {
                    let grow = &g[(ri * d + di) * len..(ri * d + di + 1) * len];
                    for ni in 0..n {
                        let (i, ci) = (di * n + ni, (ri * d + di) * n + ni);
                        let c = C64 { re: cre[ci], im: cim[ci] };
                        let q = C64::pow(m[i], ph[i], 1);
                        let mut w = C64::pow(m[i], ph[i], shift);
                        let (mut a_re, mut a_im, mut a_m, mut a_ph) = (0.0, 0.0, 0.0, 0.0);
                        for (j, &gj) in grow.iter().enumerate() {
                            if j > 0 && j % ANCHOR == 0 {
                                w = C64::pow(m[i], ph[i], j + shift);
                            }
                            let k = (j + shift) as f64;
                            let cw = c.mul(w);
                            a_re += gj * w.re;
                            a_im += gj * w.im;
                            a_m += gj * k * cw.re;
                            a_ph += gj * k * cw.im;
                            w = w.mul(q);
                        }
                        dcre[ri * n + ni] = a_re;
                        dcim[ri * n + ni] = -a_im;
                        dm[ni] += a_m;
                        dph[ni] -= a_ph;
                    }
                }
                [dcre, dcim, dm, dph]
            })
            .collect()
    });
    let (mut dcre, mut dcim, mut dm, mut dph) =
        (vec![0.0; r * d * n], vec![0.0; r * d * n], vec![0.0; d * n], vec![0.0; d * n]);
    for (di, [a, b, c, e]) in per_d.into_iter().enumerate() {
        for ri in 0..r {
            let dst = (ri * d + di) * n;
            dcre[dst..dst + n].copy_from_slice(&a[ri * n..(ri + 1) * n]);
            dcim[dst..dst + n].copy_from_slice(&b[ri * n..(ri + 1) * n]);
        }
        dm[di * n..(di + 1) * n].copy_from_slice(&c);
        dph[di * n..(di + 1) * n].copy_from_slice(&e);
    }
    [dcre, dcim, dm, dph]
}

/// `out[r, d, j] = Σ_n Re(c[r, d, n] · q[d, n]^{j + shift})` for `j < len`: `[R, D, len]` (see the module docs).
/// `c_re`, `c_im` = `[R, D, N]`, `log_mag`, `phase` = `[D, N]`; differentiable in all four.
pub fn power_sum(
    c_re: &Tensor,
    c_im: &Tensor,
    log_mag: &Tensor,
    phase: &Tensor,
    len: usize,
    shift: usize,
) -> Result<Tensor> {
    let [r, d, n] = *c_re.shape() else {
        return Err(crate::MegalodonError::Shape {
            op: "power_sum",
            expected: "c = [R, D, N]".into(),
            found: c_re.shape().to_vec(),
        });
    };
    if c_im.shape() != [r, d, n] || log_mag.shape() != [d, n] || phase.shape() != [d, n] {
        return Err(crate::MegalodonError::Shape {
            op: "power_sum",
            expected: format!("c_im = [{r}, {d}, {n}], log_mag and phase = [{d}, {n}]"),
            found: [c_im.shape(), log_mag.shape(), phase.shape()].concat(),
        });
    }
    let dims = (r, d, n);
    let (dt, dev) = (c_re.dtype(), c_re.device());
    Ok(custom_op(
        "power_sum",
        &[c_re, c_im, log_mag, phase],
        || {
            let run = || {
                if on_gpu(&dev, dt) {
                    return crate::cuda::power_sum(c_re, c_im, log_mag, phase, len, shift);
                }
                tensor(
                    power_sum_host(&host(c_re)?, &host(c_im)?, &host(log_mag)?, &host(phase)?, dims, len, shift),
                    &[r, d, len],
                    dt,
                    &dev,
                )
            };
            run().map_err(to_tensor_error)
        },
        |_| {
            let (cre, cim, m, ph) = (c_re.detach(), c_im.detach(), log_mag.detach(), phase.detach());
            Ok(Box::new(move |g: &Tensor, _: &[bool]| {
                let run = || -> Result<Vec<Option<Tensor>>> {
                    if on_gpu(&dev, dt) {
                        let gs = crate::cuda::power_sum_grad(g, &cre, &cim, &m, &ph, shift)?;
                        return Ok(gs.into_iter().map(Some).collect());
                    }
                    let [a, b, c, e] = power_sum_grad(
                        &host(g)?,
                        &host(&cre)?,
                        &host(&cim)?,
                        &host(&m)?,
                        &host(&ph)?,
                        dims,
                        len,
                        shift,
                    );
                    Ok(vec![
                        Some(tensor(a, &[r, d, n], dt, &dev)?),
                        Some(tensor(b, &[r, d, n], dt, &dev)?),
                        Some(tensor(c, &[d, n], dt, &dev)?),
                        Some(tensor(e, &[d, n], dt, &dev)?),
                    ])
                };
                run().map_err(to_tensor_error)
            }) as CustomBackward)
        },
    )?)
}

/// Host forward of [`decayed_sum`]: `[2, B, D, N]`.
fn decayed_sum_host(x: &[f64], m: &[f64], ph: &[f64], (b, l, d, n): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; 2 * b * d * n];
    let (re, im) = out.split_at_mut(b * d * n);
    effllm_tensor::threads::install(|| {
        re.par_chunks_mut(n).zip(im.par_chunks_mut(n)).enumerate().for_each(|(row, (ore, oim))| {
            let (bi, di) = (row / d, row % d);
            for ni in 0..n {
                let i = di * n + ni;
                let q = C64::pow(m[i], ph[i], 1);
                let mut s = C64 { re: 0.0, im: 0.0 };
                for j in 0..l {
                    s = q.mul(s);
                    s.re += x[(bi * l + j) * d + di];
                }
                ore[ni] = s.re;
                oim[ni] = s.im;
            }
        })
    });
    out
}

/// Host backward of [`decayed_sum`]: `(∂x, ∂m, ∂φ)`.
fn decayed_sum_grad(
    g: &[f64],
    x: &[f64],
    m: &[f64],
    ph: &[f64],
    (b, l, d, n): (usize, usize, usize, usize),
) -> [Vec<f64>; 3] {
    let per_d: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = effllm_tensor::threads::install(|| {
        (0..d)
            .into_par_iter()
            .map(|di| {
                let mut dx = vec![0.0; b * l]; // [B, L] column of channel di
                let (mut dm, mut dph) = (vec![0.0; n], vec![0.0; n]);
                for bi in 0..b {
                    for ni in 0..n {
                        let i = di * n + ni;
                        let o = (bi * d + di) * n + ni;
                        let (gre, gim) = (g[o], g[b * d * n + o]);
                        let q = C64::pow(m[i], ph[i], 1);
                        let (mut s, mut t) = (C64 { re: 0.0, im: 0.0 }, C64 { re: 0.0, im: 0.0 });
                        for j in 0..l {
                            t = q.mul(C64 { re: t.re + s.re, im: t.im + s.im });
                            s = q.mul(s);
                            s.re += x[(bi * l + j) * d + di];
                        }
                        dm[ni] += gre * t.re + gim * t.im;
                        dph[ni] += gim * t.re - gre * t.im;
                        // ∂x_j = Re(conj(G) q^{L−1−j}), walking j down from L − 1.
                        let mut w = C64 { re: 1.0, im: 0.0 };
                        for (step, j) in (0..l).rev().enumerate() {
                            if step > 0 && step % ANCHOR == 0 {
                                w = C64::pow(m[i], ph[i], step);
                            }
                            dx[bi * l + j] += gre * w.re + gim * w.im;
                            w = w.mul(q);
                        }
                    }
                }
                (dx, dm, dph)
            })
            .collect()
    });
    let (mut dx, mut dm, mut dph) = (vec![0.0; b * l * d], vec![0.0; d * n], vec![0.0; d * n]);
    for (di, (col, a, c)) in per_d.into_iter().enumerate() {
        for (bj, v) in col.into_iter().enumerate() {
            dx[bj * d + di] = v;
        }
        dm[di * n..(di + 1) * n].copy_from_slice(&a);
        dph[di * n..(di + 1) * n].copy_from_slice(&c);
    }
    [dx, dm, dph]
}

/// `S[b, d, n] = Σ_j q[d, n]^{L−1−j} · x[b, j, d]` for `x` = `[B, L, D]`, returned as `[2, B, D, N]` (real part,
/// imaginary part); differentiable in `x`, `log_mag` and `phase` (see the module docs).
pub fn decayed_sum(x: &Tensor, log_mag: &Tensor, phase: &Tensor) -> Result<Tensor> {
    let [b, l, d] = *x.shape() else {
        return Err(crate::MegalodonError::Shape {
            op: "decayed_sum",
            expected: "x = [B, L, D]".into(),
            found: x.shape().to_vec(),
        });
    };
    let n = *log_mag.shape().last().unwrap_or(&0);
    if log_mag.shape() != [d, n] || phase.shape() != [d, n] {
        return Err(crate::MegalodonError::Shape {
            op: "decayed_sum",
            expected: format!("log_mag and phase = [{d}, N]"),
            found: [log_mag.shape(), phase.shape()].concat(),
        });
    }
    let dims = (b, l, d, n);
    let (dt, dev) = (x.dtype(), x.device());
    Ok(custom_op(
        "decayed_sum",
        &[x, log_mag, phase],
        || {
            let run = || {
                if on_gpu(&dev, dt) {
                    return crate::cuda::decayed_sum(x, log_mag, phase);
                }
                tensor(decayed_sum_host(&host(x)?, &host(log_mag)?, &host(phase)?, dims), &[2, b, d, n], dt, &dev)
            };
            run().map_err(to_tensor_error)
        },
        |_| {
            let (x, m, ph) = (x.detach(), log_mag.detach(), phase.detach());
            Ok(Box::new(move |g: &Tensor, _: &[bool]| {
                let run = || -> Result<Vec<Option<Tensor>>> {
                    if on_gpu(&dev, dt) {
                        let gs = crate::cuda::decayed_sum_grad(g, &x, &m, &ph)?;
                        return Ok(gs.into_iter().map(Some).collect());
                    }
                    let [dx, dm, dph] = decayed_sum_grad(&host(g)?, &host(&x)?, &host(&m)?, &host(&ph)?, dims);
                    Ok(vec![
                        Some(tensor(dx, &[b, l, d], dt, &dev)?),
                        Some(tensor(dm, &[d, n], dt, &dev)?),
                        Some(tensor(dph, &[d, n], dt, &dev)?),
                    ])
                };
                run().map_err(to_tensor_error)
            }) as CustomBackward)
        },
    )?)
}
