//! The linear (not circular) causal convolution along time, by FFT on the CPU, as a differentiable op.
//!
//! `y[b, d, t] = Σ_{j ≤ t} k[d, j] · x[b, d, t − j]`. Both operands are zero-padded to a power of two
//! `n ≥ 2L − 1`, so the circular product of the transforms is the linear convolution; the inverse transform is
//! scaled by `1/n` once. The backward rule needs two correlations, which are convolutions of time-reversed rows:
//! `∂x[b, d, s] = Σ_{t ≥ s} g[b, d, t] k[d, t − s]` and `∂k[d, j] = Σ_b Σ_{t ≥ j} g[b, d, t] x[b, d, t − j]`.

use std::sync::Arc;

use effllm_tensor::autograd::{CustomBackward, custom_op};
use effllm_tensor::{DType, Device, Tensor};
use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::error::{MegalodonError, Result};

/// The FFT length for a linear convolution of length `len`: the smallest power of two `≥ 2·len − 1`.
pub fn fft_len(len: usize) -> usize {
    (2 * len).saturating_sub(1).max(1).next_power_of_two()
}

struct Plan {
    n: usize,
    fwd: Arc<dyn RealToComplex<f64>>,
    inv: Arc<dyn ComplexToReal<f64>>,
}

impl Plan {
    fn new(len: usize) -> Plan {
        let n = fft_len(len);
        let mut planner = RealFftPlanner::<f64>::new();
        Plan { n, fwd: planner.plan_fft_forward(n), inv: planner.plan_fft_inverse(n) }
    }

    /// The spectrum of `row` zero-padded to `n`.
    fn spectrum(&self, row: &[f64], reverse: bool) -> Vec<Complex64> {
        let mut buf = vec![0.0; self.n];
        if reverse {
            buf.iter_mut().zip(row.iter().rev()).for_each(|(b, &v)| *b = v);
        } else {
            buf[..row.len()].copy_from_slice(row);
        }
        let mut out = self.fwd.make_output_vec();
        // Lengths come from the plan itself, so the transform cannot fail.
        self.fwd.process(&mut buf, &mut out).expect("realfft forward: buffer lengths from the plan");
        out
    }
}

/// Convolution of rows on the CPU: `out[r, t] = Σ_{j ≤ t} k[r mod krows, j] · x[r, t − j]`, or with
/// `anticausal` the correlation `out[r, t] = Σ_{j < len − t} k[r mod krows, j] · x[r, t + j]` (the same convolution
/// of the time-reversed row, reversed back). `x` = `[rows, len]`, `k` = `[krows, len]`.
pub fn conv_rows(x: &[f64], k: &[f64], rows: usize, krows: usize, len: usize, anticausal: bool) -> Vec<f64> {
    let mut out = vec![0.0; rows * len];
    if len == 0 || rows == 0 {
        return out;
    }
    let plan = Plan::new(len);
    let kspec: Vec<Vec<Complex64>> = effllm_tensor::threads::install(|| {
        (0..krows).into_par_iter().map(|r| plan.spectrum(&k[r * len..(r + 1) * len], false)).collect()
    });
    let scale = 1.0 / plan.n as f64;
    effllm_tensor::threads::install(|| {
        out.par_chunks_mut(len).enumerate().for_each(|(r, o)| {
            let mut spec = plan.spectrum(&x[r * len..(r + 1) * len], anticausal);
            spec.iter_mut().zip(&kspec[r % krows]).for_each(|(a, b)| *a *= b);
            // The imaginary parts of the DC and Nyquist bins are round-off; realfft wants them exactly zero.
            spec[0].im = 0.0;
            if let Some(last) = spec.last_mut() {
                last.im = 0.0;
            }
            let mut time = plan.inv.make_output_vec();
            plan.inv.process(&mut spec, &mut time).expect("realfft inverse: buffer lengths from the plan");
            if anticausal {
                o.iter_mut().zip(time[..len].iter().rev()).for_each(|(o, &v)| *o = v * scale);
            } else {
                o.iter_mut().zip(&time[..len]).for_each(|(o, &v)| *o = v * scale);
            }
        })
    });
    out
}

/// [`conv_rows`] on tensors of any device: `x` = `[.., len]` (rows flattened), `k` = `[krows, len]`; the result
/// has `x`'s shape and dtype. CUDA f32 runs the crate's kernel; other CUDA dtypes go through the host.
pub(crate) fn conv_tensor(x: &Tensor, k: &Tensor, anticausal: bool) -> Result<Tensor> {
    let len = *x.shape().last().unwrap_or(&0);
    let krows = k.shape()[0];
    let rows = x.elem_count() / len.max(1);
    if let Device::Cuda(_) = x.device()
        && x.dtype() == DType::F32
    {
        return crate::cuda::conv_rows(x, k, rows, krows, len, anticausal);
    }
    let xv = x.contiguous()?.to_vec_f64()?;
    let kv = k.contiguous()?.to_vec_f64()?;
    let out = conv_rows(&xv, &kv, rows, krows, len, anticausal);
    Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())?.to_device(&x.device())?)
}

/// The causal convolution `y[b, d, t] = Σ_{j ≤ t} k[d, j] · x[b, d, t − j]` of `x` = `[B, D, L]` with one kernel row
/// per channel, `k` = `[D, L]`; differentiable in both operands (the rule is in the module docs).
pub fn causal_conv(x: &Tensor, k: &Tensor) -> Result<Tensor> {
    const OP: &str = "causal_conv";
    let [b, d, l] = *x.shape() else {
        return Err(MegalodonError::Shape { op: OP, expected: "x = [B, D, L]".into(), found: x.shape().to_vec() });
    };
    if k.shape() != [d, l] {
        return Err(MegalodonError::Shape { op: OP, expected: format!("k = [{d}, {l}]"), found: k.shape().to_vec() });
    }
    if x.dtype() != k.dtype() || !x.dtype().is_float() {
        return Err(MegalodonError::InvalidArgument {
            op: OP,
            msg: format!("x ({:?}) and k ({:?}) must share one float dtype", x.dtype(), k.dtype()),
        });
    }
    if x.device() != k.device() {
        return Err(effllm_tensor::Error::DeviceMismatch { op: OP, lhs: x.device(), rhs: k.device() }.into());
    }
    let out = custom_op(
        OP,
        &[x, k],
        || conv_tensor(x, k, false).map_err(to_tensor_error),
        |_| {
            let (x, k) = (x.detach(), k.detach());
            Ok(Box::new(move |g: &Tensor, needs: &[bool]| {
                let dx = if needs[0] { Some(conv_tensor(g, &k, true).map_err(to_tensor_error)?) } else { None };
                let dk = if needs[1] {
                    let per_row = x.reshape(&[b * d, l])?;
                    Some(conv_tensor(g, &per_row, true).map_err(to_tensor_error)?.sum(0, false)?)
                } else {
                    None
                };
                Ok(vec![dx, dk])
            }) as CustomBackward)
        },
    )?;
    Ok(out)
}

/// Errors inside a custom op's closures must be `effllm_tensor::Error`s; ours are wrapped as autograd errors.
pub(crate) fn to_tensor_error(e: MegalodonError) -> effllm_tensor::Error {
    match e {
        MegalodonError::Tensor(t) => t,
        other => effllm_tensor::Error::Autograd { op: "megalodon", msg: other.to_string() },
    }
}
