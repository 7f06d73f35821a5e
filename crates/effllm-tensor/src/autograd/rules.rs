//! Backward rules, one constructor per op. Each takes what the rule needs (detached) and returns the rule; the rule
//! maps the output gradient to one optional gradient per recorded input, written with `Tensor` ops so that it runs
//! on the device of the forward.

use super::BackwardFn;
use super::kernels;
use crate::ops::nn::{AttentionMask, RopeConfig, RopeStyle};
use crate::{BinaryOp, DType, Device, Error, ReduceOp, Result, Tensor, UnaryOp};

type Grads = Result<Vec<Option<Tensor>>>;

/// [`rule`] for op modules outside `rules` that build their backward next to a fused forward.
pub(crate) fn rule_pub(f: impl FnOnce(&Tensor, &[bool]) -> Grads + Send + Sync + 'static) -> Result<BackwardFn> {
    rule(f)
}

fn rule(f: impl FnOnce(&Tensor, &[bool]) -> Grads + Send + Sync + 'static) -> Result<BackwardFn> {
    Ok(Box::new(f))
}

/// Sums `g` down to `shape` (the inverse of broadcasting `shape` up to `g`'s shape).
pub(crate) fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let extra = g.rank().checked_sub(shape.len()).ok_or_else(|| Error::Autograd {
        op: "broadcast",
        msg: format!("cannot reduce {:?} to {:?}", g.shape(), shape),
    })?;
    let mut t = g.clone();
    if extra > 0 {
        let lead: usize = g.shape()[..extra].iter().product();
        t = t.reshape(&[&[lead][..], &g.shape()[extra..]].concat())?.sum(0, false)?;
    }
    for (d, &s) in shape.iter().enumerate() {
        if s == 1 && t.shape()[d] != 1 {
            t = t.sum(d, true)?;
        }
    }
    if t.shape() != shape {
        return Err(Error::Autograd { op: "broadcast", msg: format!("cannot reduce {:?} to {:?}", g.shape(), shape) });
    }
    Ok(t)
}

/// `t` padded with zeros at the end of every dimension up to `shape`.
fn pad_to(t: Tensor, shape: &[usize]) -> Result<Tensor> {
    let mut t = t;
    for (d, &s) in shape.iter().enumerate() {
        let have = t.shape()[d];
        if have < s {
            let mut zs = t.shape().to_vec();
            zs[d] = s - have;
            let z = Tensor::zeros(&zs, t.dtype(), &t.device())?;
            t = Tensor::concat(&[&t, &z], d)?;
        }
    }
    Ok(t)
}

/// `g` placed at `start..start + g.shape()[dim]` of a zero tensor of `shape`.
fn pad_dim(g: &Tensor, shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let len = g.shape()[dim];
    let after = shape[dim] - start - len;
    let mut parts = Vec::with_capacity(3);
    for n in [start, after] {
        let mut zs = shape.to_vec();
        zs[dim] = n;
        parts.push(if n > 0 { Some(Tensor::zeros(&zs, g.dtype(), &g.device())?) } else { None });
    }
    let mut refs: Vec<&Tensor> = Vec::with_capacity(3);
    if let Some(z) = &parts[0] {
        refs.push(z);
    }
    refs.push(g);
    if let Some(z) = &parts[1] {
        refs.push(z);
    }
    if refs.len() == 1 { Ok(g.clone()) } else { Tensor::concat(&refs, dim) }
}

/// A u32 index of `shape` whose entries along `dim` are `ids` (broadcast over the other dimensions).
fn expand_ids(ids: &[u32], shape: &[usize], dim: usize, device: &Device) -> Result<Tensor> {
    let mut view = vec![1usize; shape.len()];
    view[dim] = ids.len();
    Tensor::from_slice(ids, &view, &Device::Cpu)?.broadcast_as(shape)?.contiguous()?.to_device(device)
}

fn zeros_like(t: &Tensor) -> Result<Tensor> {
    Tensor::zeros(t.shape(), t.dtype(), &t.device())
}

// ---------------------------------------------------------------------------------------------- views and copies

pub(crate) fn identity() -> Result<BackwardFn> {
    rule(|g, _| Ok(vec![Some(g.clone())]))
}

pub(crate) fn reshape(src_shape: &[usize]) -> Result<BackwardFn> {
    let s = src_shape.to_vec();
    rule(move |g, _| Ok(vec![Some(g.reshape(&s)?)]))
}

pub(crate) fn transpose(d0: usize, d1: usize) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.transpose(d0, d1)?)]))
}

pub(crate) fn permute(perm: &[usize]) -> Result<BackwardFn> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    rule(move |g, _| Ok(vec![Some(g.permute(&inv)?)]))
}

pub(crate) fn narrow(src_shape: &[usize], dim: usize, start: usize) -> Result<BackwardFn> {
    let s = src_shape.to_vec();
    rule(move |g, _| Ok(vec![Some(pad_dim(g, &s, dim, start)?)]))
}

pub(crate) fn slice(src_shape: &[usize], dim: usize, start: usize, step: usize) -> Result<BackwardFn> {
    if step == 1 {
        return narrow(src_shape, dim, start);
    }
    let s = src_shape.to_vec();
    rule(move |g, _| {
        let n = g.shape()[dim];
        let ids: Vec<u32> = (0..n).map(|i| (start + i * step) as u32).collect();
        let idx = expand_ids(&ids, g.shape(), dim, &g.device())?;
        let z = Tensor::zeros(&s, g.dtype(), &g.device())?;
        Ok(vec![Some(z.scatter_add(dim, &idx, g)?)])
    })
}

pub(crate) fn broadcast(src_shape: &[usize]) -> Result<BackwardFn> {
    let s = src_shape.to_vec();
    rule(move |g, _| Ok(vec![Some(sum_to(g, &s)?)]))
}

pub(crate) fn unsqueeze(dim: usize) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.squeeze(dim)?)]))
}

pub(crate) fn squeeze(dim: usize) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.unsqueeze(dim)?)]))
}

pub(crate) fn to_dtype(src: DType) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.to_dtype(src)?)]))
}

pub(crate) fn to_device(src: Device) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.to_device(&src)?)]))
}

pub(crate) fn concat(parts: &[&Tensor], dim: usize) -> Result<BackwardFn> {
    let lens: Vec<usize> = parts.iter().map(|t| t.shape()[dim]).collect();
    rule(move |g, needs| {
        let mut off = 0;
        let mut out = Vec::with_capacity(lens.len());
        for (i, &n) in lens.iter().enumerate() {
            out.push(if needs[i] { Some(g.narrow(dim, off, n)?) } else { None });
            off += n;
        }
        Ok(out)
    })
}

// ---------------------------------------------------------------------------------------------- elementwise

pub(crate) fn unary(op: UnaryOp, x: &Tensor, y: &Tensor) -> Result<BackwardFn> {
    let (x, y) = (x.detach(), y.detach());
    rule(move |g, _| {
        let d = match op {
            UnaryOp::Neg => g.neg()?,
            UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Gelu | UnaryOp::GeluErf => kernels::unary_grad(op, &x, g)?,
            UnaryOp::Exp => g.mul(&y)?,
            UnaryOp::Ln => g.div(&x)?,
            UnaryOp::Sqrt => g.div(&y)?.affine(0.5, 0.0)?,
            UnaryOp::Sqr => g.mul(&x)?.affine(2.0, 0.0)?,
            UnaryOp::Recip => g.mul(&y.sqr()?)?.neg()?,
            UnaryOp::Tanh => g.mul(&y.sqr()?.affine(-1.0, 1.0)?)?,
            UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?,
            UnaryOp::Sin => g.mul(&x.cos()?)?,
            UnaryOp::Cos => g.mul(&x.sin()?)?.neg()?,
            UnaryOp::Silu => g.mul(&silu_grad(&x)?)?,
        };
        Ok(vec![Some(d)])
    })
}

/// `d silu(x) / dx = σ(x)(1 + x(1 − σ(x)))`.
fn silu_grad(x: &Tensor) -> Result<Tensor> {
    let s = x.sigmoid()?;
    s.mul(&x.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)
}

pub(crate) fn affine(mul: f64) -> Result<BackwardFn> {
    rule(move |g, _| Ok(vec![Some(g.affine(mul, 0.0)?)]))
}

pub(crate) fn powf(x: &Tensor, p: f64) -> Result<BackwardFn> {
    let x = x.detach();
    rule(move |g, _| Ok(vec![Some(g.mul(&x.powf(p - 1.0)?.affine(p, 0.0)?)?)]))
}

pub(crate) fn clamp(x: &Tensor, lo: f64, hi: f64) -> Result<BackwardFn> {
    let x = x.detach();
    rule(move |g, _| Ok(vec![Some(kernels::clamp_grad(&x, g, lo, hi)?)]))
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<BackwardFn> {
    let (a, b, out) = (a.detach(), b.detach(), out.detach());
    rule(move |g, needs| {
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        let (ga, gb) = match op {
            BinaryOp::Add => (needs[0].then(|| g.clone()), needs[1].then(|| g.clone())),
            BinaryOp::Sub => (needs[0].then(|| g.clone()), if needs[1] { Some(g.neg()?) } else { None }),
            BinaryOp::Mul => {
                (if needs[0] { Some(g.mul(&b)?) } else { None }, if needs[1] { Some(g.mul(&a)?) } else { None })
            }
            BinaryOp::Div => (
                if needs[0] { Some(g.div(&b)?) } else { None },
                if needs[1] { Some(g.mul(&out)?.div(&b)?.neg()?) } else { None },
            ),
            BinaryOp::Maximum | BinaryOp::Minimum => {
                let wa = kernels::extremum_weight(&a, &b, out.shape(), op == BinaryOp::Maximum)?;
                (
                    if needs[0] { Some(g.mul(&wa)?) } else { None },
                    if needs[1] { Some(g.mul(&wa.affine(-1.0, 1.0)?)?) } else { None },
                )
            }
        };
        Ok(vec![ga.map(|t| sum_to(&t, &sa)).transpose()?, gb.map(|t| sum_to(&t, &sb)).transpose()?])
    })
}

pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<BackwardFn> {
    let (gate, up) = (gate.detach(), up.detach());
    #[cfg(feature = "cuda")]
    if gate.cuda_storage().is_some() && gate.shape() == up.shape() {
        return rule(move |g, _| {
            let (dg, du) = crate::cuda::ops::swiglu_backward(&gate, &up, g)?;
            Ok(vec![Some(dg), Some(du)])
        });
    }
    rule(move |g, needs| {
        let dg = if needs[0] { Some(g.mul(&up)?.mul(&silu_grad(&gate)?)?) } else { None };
        let du = if needs[1] { Some(g.mul(&gate.silu()?)?) } else { None };
        Ok(vec![dg, du])
    })
}

pub(crate) fn where_cond(mask: &Tensor, t_shape: &[usize], f_shape: &[usize]) -> Result<BackwardFn> {
    let (mask, ts, fs) = (mask.detach(), t_shape.to_vec(), f_shape.to_vec());
    rule(move |g, needs| {
        let z = Tensor::zeros(&[], g.dtype(), &g.device())?;
        let gt = if needs[0] { Some(sum_to(&mask.where_cond(g, &z)?, &ts)?) } else { None };
        let gf = if needs[1] { Some(sum_to(&mask.where_cond(&z, g)?, &fs)?) } else { None };
        Ok(vec![gt, gf])
    })
}

// ---------------------------------------------------------------------------------------------- reductions

pub(crate) fn reduce(op: ReduceOp, x: &Tensor, out: &Tensor, dim: usize, keepdim: bool) -> Result<BackwardFn> {
    let (x, out) = (x.detach(), out.detach());
    rule(move |g, _| {
        let gk = if keepdim { g.clone() } else { g.unsqueeze(dim)? };
        let n = x.shape()[dim];
        let d = match op {
            ReduceOp::Sum => gk.broadcast_as(x.shape())?,
            ReduceOp::Mean => gk.affine(1.0 / n as f64, 0.0)?.broadcast_as(x.shape())?,
            ReduceOp::Max | ReduceOp::Min => {
                // The whole gradient goes to the first extremal element (as PyTorch's `max(dim)`).
                let idx = if op == ReduceOp::Max { x.argmax(dim, true)? } else { x.argmin(dim, true)? };
                zeros_like(&x)?.scatter_add(dim, &idx, &gk.contiguous()?)?
            }
            ReduceOp::LogSumExp => {
                let yk = if keepdim { out.clone() } else { out.unsqueeze(dim)? };
                gk.mul(&x.sub(&yk)?.exp()?)?
            }
        };
        Ok(vec![Some(d)])
    })
}

pub(crate) fn softmax(y: &Tensor, dim: usize, log: bool) -> Result<BackwardFn> {
    let y = y.detach();
    rule(move |g, _| {
        let d =
            if log { g.sub(&y.exp()?.mul(&g.sum(dim, true)?)?)? } else { y.mul(&g.sub(&g.mul(&y)?.sum(dim, true)?)?)? };
        Ok(vec![Some(d)])
    })
}

pub(crate) fn top_k(x: &Tensor, idx: &Tensor) -> Result<BackwardFn> {
    let (shape, dtype, device, idx) = (x.shape().to_vec(), x.dtype(), x.device(), idx.detach());
    rule(move |g, _| {
        let last = shape.len() - 1;
        Ok(vec![Some(Tensor::zeros(&shape, dtype, &device)?.scatter_add(last, &idx, &g.contiguous()?)?)])
    })
}

// ---------------------------------------------------------------------------------------------- matmul

pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<BackwardFn> {
    let (a, b) = (a.detach(), b.detach());
    rule(move |g, needs| {
        let ga = if needs[0] { Some(sum_to(&g.matmul(&b.t()?)?, a.shape())?) } else { None };
        let gb = if needs[1] { Some(sum_to(&a.t()?.matmul(g)?, b.shape())?) } else { None };
        Ok(vec![ga, gb])
    })
}

/// [`Tensor::linear`] `y = x wᵀ`: `∂x = g · w`, `∂w = gᵀ · x` (over the rows of `x` flattened to `[rows, k]`).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<BackwardFn> {
    let (x, w) = (x.detach(), w.detach());
    rule(move |g, needs| {
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let rows = x.elem_count() / k.max(1);
        let g2 = g.reshape(&[rows, n])?;
        let gx = if needs[0] { Some(g2.matmul(&w)?.reshape(x.shape())?) } else { None };
        let gw = if needs[1] { Some(g2.t()?.matmul(&x.reshape(&[rows, k])?)?) } else { None };
        Ok(vec![gx, gw])
    })
}

/// [`Tensor::linear_mixed`]: `∂x = round₁₆(g) · w` in f32, `∂w = round₁₆(g)ᵀ · x16` in `w`'s dtype (`x16` = the
/// rounded input, `[rows, k]`).
pub(crate) fn linear_mixed(x_shape: &[usize], x16: &Tensor, w: &Tensor) -> Result<BackwardFn> {
    let (x_shape, x16, w) = (x_shape.to_vec(), x16.detach(), w.detach());
    rule(move |g, needs| {
        let n = w.shape()[0];
        let g16 = g.reshape(&[g.elem_count() / n.max(1), n])?.to_dtype(w.dtype())?;
        let gx = if needs[0] { Some(g16.matmul_wide(&w)?.reshape(&x_shape)?) } else { None };
        let gw = if needs[1] { Some(g16.t()?.matmul(&x16)?) } else { None };
        Ok(vec![gx, gw])
    })
}

// ---------------------------------------------------------------------------------------------- nn

/// `1/√(mean(x²) + ε)` over the last dimension, kept.
fn inv_rms(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.sqr()?.mean(x.rank() - 1, true)?.affine(1.0, eps)?.sqrt()?.recip()
}

/// `t` summed over every dimension but the last.
fn sum_rows(t: &Tensor) -> Result<Tensor> {
    let d = *t.shape().last().unwrap_or(&1);
    t.reshape(&[t.elem_count() / d.max(1), d])?.sum(0, false)
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<BackwardFn> {
    let (x, w) = (x.detach(), w.detach());
    #[cfg(feature = "cuda")]
    if x.cuda_storage().is_some() && w.rank() == 1 {
        return rule(move |g, _| {
            let (dx, dw) = crate::cuda::ops::rms_norm_backward(&x, &w, g, eps)?;
            Ok(vec![Some(dx), Some(dw)])
        });
    }
    rule(move |g, needs| {
        let last = x.rank() - 1;
        let r = inv_rms(&x, eps)?;
        let dx = if needs[0] {
            let gw = g.mul(&w)?;
            let m = gw.mul(&x)?.mean(last, true)?;
            Some(gw.mul(&r)?.sub(&x.mul(&r.powf(3.0)?.mul(&m)?)?)?)
        } else {
            None
        };
        let dw = if needs[1] { Some(sum_rows(&g.mul(&x)?.mul(&r)?)?) } else { None };
        Ok(vec![dx, dw])
    })
}

pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<BackwardFn> {
    let (x, w) = (x.detach(), w.detach());
    rule(move |g, needs| {
        let last = x.rank() - 1;
        let xc = x.sub(&x.mean(last, true)?)?;
        let r = inv_rms(&xc, eps)?;
        let xhat = xc.mul(&r)?;
        let dx = if needs[0] {
            let gh = g.mul(&w)?;
            let a = gh.mean(last, true)?;
            let b = gh.mul(&xhat)?.mean(last, true)?;
            Some(r.mul(&gh.sub(&a)?.sub(&xhat.mul(&b)?)?)?)
        } else {
            None
        };
        let dw = if needs[1] { Some(sum_rows(&g.mul(&xhat)?)?) } else { None };
        let db = if needs.len() > 2 && needs[2] { Some(sum_rows(g)?) } else { None };
        let mut out = vec![dx, dw];
        if needs.len() > 2 {
            out.push(db);
        }
        Ok(out)
    })
}

pub(crate) fn rope(x: &Tensor, positions: &Tensor, cfg: &RopeConfig) -> Result<BackwardFn> {
    // The transpose of a rotation by θ is the rotation by −θ = F R(θ) F, F negating the second element of each
    // pair: so the backward is the same op between two sign flips.
    let d = x.shape()[3];
    let half = cfg.rotary_dims / 2;
    let mut signs = vec![1f64; d];
    for i in 0..half {
        let b = match cfg.style {
            RopeStyle::Interleaved => 2 * i + 1,
            RopeStyle::NeoX => i + half,
        };
        signs[b] = -1.0;
    }
    #[cfg(feature = "cuda")]
    if x.cuda_storage().is_some() {
        // One kernel rotating by −θ (the forward's checks hold for the gradient: same shape, device, positions).
        let (positions, cfg) = (positions.detach(), *cfg);
        let per_batch = positions.rank() == 2;
        return rule(move |g, _| Ok(vec![Some(crate::cuda::ops::rope(g, &positions, &cfg, per_batch, true)?)]));
    }
    let f = Tensor::from_vec(signs, &[d], &Device::Cpu)?.to_dtype(x.dtype())?.to_device(&x.device())?;
    let (positions, cfg) = (positions.detach(), *cfg);
    rule(move |g, _| Ok(vec![Some(g.mul(&f)?.rope(&positions, &cfg)?.mul(&f)?)]))
}

pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    mask: &AttentionMask,
    scale: f64,
) -> Result<BackwardFn> {
    let (q, k, v) = (q.detach(), k.detach(), v.detach());
    let [b, hq, sq, d] = *q.shape() else { return Err(Error::Autograd { op: "attention", msg: "q rank".into() }) };
    let [_, hkv, skv, dv] = *v.shape() else { return Err(Error::Autograd { op: "attention", msg: "v rank".into() }) };
    let group = hq / hkv;
    // Only the fused CUDA rule reads the forward output (for rowsum(dO ⊙ O)); the composed rule below recomputes.
    #[cfg(not(feature = "cuda"))]
    let _ = out;
    #[cfg(feature = "cuda")]
    if q.cuda_storage().is_some() && sq >= crate::ops::nn::ATTENTION_GEMM_MIN_QUERIES {
        // Fused on the device: scores recomputed by cuBLAS, one kernel for P and dS (no host-built mask).
        let causal = matches!(mask, AttentionMask::Causal);
        let m = match mask {
            AttentionMask::Mask(m) => Some(m.broadcast_as(&[b, hq, sq, skv])?),
            _ => None,
        };
        let out = out.detach();
        return rule(move |g, _| {
            let (dq, dk, dv_) =
                crate::cuda::ops::attention_gemm_backward(&q, &k, &v, &out, g, m.as_ref(), causal, scale)?;
            Ok(vec![Some(dq), Some(dk), Some(dv_)])
        });
    }
    // The additive mask: 0 where allowed, −∞ elsewhere, shaped to broadcast over [b, hkv, group, sq, skv].
    let bias = match mask {
        AttentionMask::None => None,
        AttentionMask::Causal => {
            let v: Vec<f64> =
                (0..sq * skv).map(|i| if i % skv <= skv - sq + i / skv { 0.0 } else { f64::NEG_INFINITY }).collect();
            Some(Tensor::from_vec(v, &[sq, skv], &Device::Cpu)?)
        }
        AttentionMask::Mask(m) => {
            let allowed = m.broadcast_as(&[b, hq, sq, skv])?.to_vec::<u8>()?;
            let v: Vec<f64> = allowed.iter().map(|&a| if a != 0 { 0.0 } else { f64::NEG_INFINITY }).collect();
            Some(Tensor::from_vec(v, &[b, hkv, group, sq, skv], &Device::Cpu)?)
        }
    };
    let bias = bias.map(|t| t.to_dtype(q.dtype())?.to_device(&q.device())).transpose()?;
    rule(move |g, needs| {
        // Recompute the probabilities (nothing of the forward is saved but q, k, v).
        let qg = q.reshape(&[b, hkv, group * sq, d])?;
        let s = qg.matmul(&k.t()?)?.affine(scale, 0.0)?.reshape(&[b, hkv, group, sq, skv])?;
        let s = match &bias {
            Some(bias) => s.add(bias)?,
            None => s,
        };
        let p = s.softmax(4)?.reshape(&[b, hkv, group * sq, skv])?;
        let go = g.reshape(&[b, hkv, group * sq, dv])?;
        let dv_ = if needs[2] { Some(p.t()?.matmul(&go)?) } else { None };
        let (dq, dk) = if needs[0] || needs[1] {
            let dp = go.matmul(&v.t()?)?;
            let ds = p.mul(&dp.sub(&dp.mul(&p)?.sum(3, true)?)?)?.affine(scale, 0.0)?;
            (
                if needs[0] { Some(ds.matmul(&k)?.reshape(&[b, hq, sq, d])?) } else { None },
                if needs[1] { Some(ds.t()?.matmul(&qg)?) } else { None },
            )
        } else {
            (None, None)
        };
        Ok(vec![dq, dk, dv_])
    })
}

// ---------------------------------------------------------------------------------------------- indexing

pub(crate) fn index_select(x: &Tensor, dim: usize, ids: &Tensor) -> Result<BackwardFn> {
    let (shape, dtype, device) = (x.shape().to_vec(), x.dtype(), x.device());
    // Embedding lookups on CUDA: rows added into the gradient by a kernel (no host round trip of the table).
    #[cfg(feature = "cuda")]
    if x.cuda_storage().is_some() && dim == 0 && matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        let ids = ids.contiguous()?;
        return rule(move |g, _| {
            let d = crate::cuda::ops::index_add_rows(&g.contiguous()?, &ids, shape[0])?;
            Ok(vec![Some(d.reshape(&shape)?.to_dtype(dtype)?)])
        });
    }
    let ids = ids.to_vec::<u32>()?;
    rule(move |g, _| {
        let idx = expand_ids(&ids, g.shape(), dim, &device)?;
        Ok(vec![Some(Tensor::zeros(&shape, dtype, &device)?.scatter_add(dim, &idx, &g.contiguous()?)?)])
    })
}

pub(crate) fn gather(x: &Tensor, dim: usize, index: &Tensor) -> Result<BackwardFn> {
    let (shape, dtype, device, index) = (x.shape().to_vec(), x.dtype(), x.device(), index.detach());
    rule(move |g, _| {
        Ok(vec![Some(Tensor::zeros(&shape, dtype, &device)?.scatter_add(dim, &index, &g.contiguous()?)?)])
    })
}

pub(crate) fn scatter_add(src: &Tensor, dim: usize, index: &Tensor) -> Result<BackwardFn> {
    let (src_shape, index) = (src.shape().to_vec(), index.detach());
    rule(move |g, needs| {
        let gs = if needs[1] { Some(pad_to(g.gather(dim, &index)?, &src_shape)?) } else { None };
        Ok(vec![needs[0].then(|| g.clone()), gs])
    })
}

pub(crate) fn scatter(self_shape: &[usize], src: &Tensor, dim: usize, index: &Tensor) -> Result<BackwardFn> {
    // With repeated destinations the last write (row-major order of `index`) wins; only it gets a gradient.
    let ishape = index.shape().to_vec();
    let idx = index.to_vec::<u32>()?;
    let out_strides = crate::layout::contiguous_strides(self_shape);
    let mut last = std::collections::HashMap::new();
    for (flat, &i) in idx.iter().enumerate() {
        let coord = crate::reference::unravel(flat, &ishape);
        let dst: usize =
            coord.iter().enumerate().map(|(d, &c)| out_strides[d] * if d == dim { i as usize } else { c }).sum();
        last.insert(dst, flat);
    }
    let mut win = vec![0u8; idx.len()];
    for &flat in last.values() {
        win[flat] = 1;
    }
    let win = Tensor::from_vec(win, &ishape, &Device::Cpu)?.to_device(&index.device())?;
    let (src_shape, index) = (src.shape().to_vec(), index.detach());
    rule(move |g, needs| {
        let gself = if needs[0] {
            Some(g.scatter(dim, &index, &Tensor::zeros(index.shape(), g.dtype(), &g.device())?)?)
        } else {
            None
        };
        let gsrc = if needs[1] {
            let z = Tensor::zeros(&[], g.dtype(), &g.device())?;
            Some(pad_to(win.where_cond(&g.gather(dim, &index)?, &z)?, &src_shape)?)
        } else {
            None
        };
        Ok(vec![gself, gsrc])
    })
}

// ---------------------------------------------------------------------------------------------- losses

pub(crate) fn cross_entropy(logits: &Tensor, flat_ids: &Tensor, rows: usize) -> Result<BackwardFn> {
    let (x, ids) = (logits.detach(), flat_ids.detach());
    rule(move |g, _| {
        let shape = x.shape().to_vec();
        let v = *shape.last().unwrap_or(&1);
        let p = x.reshape(&[rows, v])?.softmax(1)?.reshape(&[rows * v])?;
        let minus_one = Tensor::full(-1.0, &[rows], p.dtype(), &p.device())?;
        let d = p.scatter_add(0, &ids, &minus_one)?.mul(g)?.affine(1.0 / rows as f64, 0.0)?;
        Ok(vec![Some(d.reshape(&shape)?)])
    })
}
