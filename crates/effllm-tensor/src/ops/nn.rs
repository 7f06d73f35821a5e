//! Normalisation, rotary position embeddings and scaled-dot-product attention.

use rayon::prelude::*;

use crate::cpu::Real;
use crate::cpu::attention::KvElem;
use crate::cpu::kernels::rows_map;
use crate::tensor::{Work, WorkOut, on_cuda};
use crate::{DType, Error, Result, Tensor, WithDType};

/// From this many queries per head on, CUDA attention runs as batched cuBLAS GEMMs around a fused softmax kernel
/// (prefill, training; its backward likewise); shorter query blocks (decode, small trees) use the one-launch row
/// kernel.
#[cfg(feature = "cuda")]
pub(crate) const ATTENTION_GEMM_MIN_QUERIES: usize = 16;

/// Which pairs of a head vector RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pairs `(x₂ᵢ, x₂ᵢ₊₁)`: llama.cpp's "normal" mode, required for GGUF Llama weights (the converter permutes
    /// the Q/K rows into this layout).
    Interleaved,
    /// Pairs `(xᵢ, xᵢ₊D/2)`: the Hugging Face / GPT-NeoX "rotate half" layout, for HF safetensors weights.
    NeoX,
}

/// Rotary position embedding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// Pair layout.
    pub style: RopeStyle,
    /// Frequency base `b` in `θᵢ = b^(−2i/R)` (10 000 for Llama 2, 100 000 for SmolLM2).
    pub base: f64,
    /// `R`, the number of leading dimensions of each head that are rotated (even, at most the head size); the rest
    /// pass through unchanged.
    pub rotary_dims: usize,
}

/// Which keys each query may attend to.
#[derive(Clone, Debug)]
pub enum AttentionMask {
    /// Every query sees every key.
    None,
    /// The `s_q` queries are the last `s_q` positions of the `s_kv` keys (cached keys come first): query `i` sees
    /// keys `j ≤ s_kv − s_q + i`. Masked keys are skipped, not computed.
    Causal,
    /// An explicit u8 mask (non-zero = may attend) broadcastable to `[batch, heads_q, s_q, s_kv]`, e.g. a tree
    /// mask over cached + new keys.
    Mask(Tensor),
}

fn rms_norm_row<R: Real>(x: &[R], w: &[R], eps: R, out: &mut [R]) {
    let ms: f64 = x
        .iter()
        .map(|v| {
            let v = WithDType::to_f64(*v);
            v * v
        })
        .sum::<f64>()
        / x.len() as f64;
    let inv = R::one() / (R::from(ms).unwrap_or_else(R::nan) + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

fn layer_norm_row<R: Real>(x: &[R], w: &[R], b: Option<&[R]>, eps: R, out: &mut [R]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| WithDType::to_f64(*v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| {
            let d = WithDType::to_f64(*v) - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let (mean, inv) =
        (R::from(mean).unwrap_or_else(R::nan), R::one() / (R::from(var).unwrap_or_else(R::nan) + eps).sqrt());
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let y = (v - mean) * inv * w[i];
        *o = match b {
            Some(b) => y + b[i],
            None => y,
        };
    }
}

impl Tensor {
    fn norm_weight_check(&self, op: &'static str, w: &Tensor) -> Result<usize> {
        self.check_same_dtype(op, w)?;
        self.check_float(op)?;
        let d =
            *self.shape().last().ok_or_else(|| Error::BadShape { op, shape: vec![], msg: "need rank >= 1".into() })?;
        if w.shape() != [d] {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().to_vec(), rhs: w.shape().to_vec() });
        }
        Ok(d)
    }

    /// RMSNorm over the last dimension: `x / √(mean(x²) + ε) ⊙ w` (mean of squares accumulated in f64).
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> Result<Tensor> {
        crate::autograd::op(
            "rms_norm",
            &[self, weight],
            || self.rms_norm_fwd(weight, eps),
            |_| crate::autograd::rules::rms_norm(self, weight, eps),
        )
    }

    fn rms_norm_fwd(&self, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let d = self.norm_weight_check("rms_norm", weight)?;
        on_cuda!(self, crate::cuda::ops::norm(self, weight, None, eps, true));
        let out = match (self.work("rms_norm")?, weight.work("rms_norm")?) {
            (Work::F32(x), Work::F32(w)) => WorkOut::F32(rows_map(&x, d, d, |r, o| rms_norm_row(r, &w, eps as f32, o))),
            (Work::F64(x), Work::F64(w)) => WorkOut::F64(rows_map(&x, d, d, |r, o| rms_norm_row(r, &w, eps, o))),
            _ => unreachable!("same dtype gives the same work precision"),
        };
        Ok(out.into_tensor(self.shape(), self.dtype()))
    }

    /// LayerNorm over the last dimension: `(x − mean) / √(var + ε) ⊙ w + b` (biased variance, as PyTorch).
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let fwd = || self.layer_norm_fwd(weight, bias, eps);
        let bwd = |_: &Tensor| crate::autograd::rules::layer_norm(self, weight, eps);
        match bias {
            Some(b) => crate::autograd::op("layer_norm", &[self, weight, b], fwd, bwd),
            None => crate::autograd::op("layer_norm", &[self, weight], fwd, bwd),
        }
    }

    fn layer_norm_fwd(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let d = self.norm_weight_check("layer_norm", weight)?;
        if let Some(b) = bias {
            self.norm_weight_check("layer_norm", b)?;
        }
        on_cuda!(self, crate::cuda::ops::norm(self, weight, bias, eps, false));
        let bw = bias.map(|b| b.work("layer_norm")).transpose()?;
        let out = match (self.work("layer_norm")?, weight.work("layer_norm")?, bw) {
            (Work::F32(x), Work::F32(w), b) => {
                let b = match &b {
                    Some(Work::F32(b)) => Some(&b[..]),
                    _ => None,
                };
                WorkOut::F32(rows_map(&x, d, d, |r, o| layer_norm_row(r, &w, b, eps as f32, o)))
            }
            (Work::F64(x), Work::F64(w), b) => {
                let b = match &b {
                    Some(Work::F64(b)) => Some(&b[..]),
                    _ => None,
                };
                WorkOut::F64(rows_map(&x, d, d, |r, o| layer_norm_row(r, &w, b, eps, o)))
            }
            _ => unreachable!("same dtype gives the same work precision"),
        };
        Ok(out.into_tensor(self.shape(), self.dtype()))
    }

    /// Rotary position embedding of `self` = `[batch, heads, seq, head_dim]` with explicit u32 `positions` of shape
    /// `[seq]` (shared by the batch) or `[batch, seq]` (e.g. tree positions in speculative decoding).
    ///
    /// For pair `(a, b)` of frequency index `i < R/2` at position `p`, with `θᵢ = base^(−2i/R)`:
    /// `a' = a·cos(pθᵢ) − b·sin(pθᵢ)`, `b' = a·sin(pθᵢ) + b·cos(pθᵢ)`. Angles are computed in f64.
    pub fn rope(&self, positions: &Tensor, cfg: &RopeConfig) -> Result<Tensor> {
        crate::autograd::op(
            "rope",
            &[self],
            || self.rope_fwd(positions, cfg),
            |_| crate::autograd::rules::rope(self, positions, cfg),
        )
    }

    fn rope_fwd(&self, positions: &Tensor, cfg: &RopeConfig) -> Result<Tensor> {
        const OP: &str = "rope";
        self.check_float(OP)?;
        positions.check_index_dtype(OP)?;
        self.check_same_device(OP, positions)?;
        let [b, h, s, d] = *self.shape() else {
            return Err(Error::BadShape {
                op: OP,
                shape: self.shape().to_vec(),
                msg: "expected [batch, heads, seq, head_dim]".into(),
            });
        };
        let r = cfg.rotary_dims;
        if !r.is_multiple_of(2) || r > d || r == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("rotary_dims {r} must be even, positive and at most head_dim {d}"),
            });
        }
        if !(cfg.base.is_finite() && cfg.base > 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("base {} must be finite and positive", cfg.base),
            });
        }
        let per_batch = match positions.shape() {
            [n] if *n == s => false,
            [pb, n] if *pb == b && *n == s => true,
            other => {
                return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: other.to_vec() });
            }
        };
        on_cuda!(self, crate::cuda::ops::rope(self, positions, cfg, per_batch, false));
        let pos = positions.to_vec::<u32>()?;
        // cos/sin table per (batch-or-shared, seq, i).
        let half = r / 2;
        let theta: Vec<f64> = (0..half).map(|i| cfg.base.powf(-2.0 * i as f64 / r as f64)).collect();
        let table = |p: u32| -> Vec<(f64, f64)> {
            theta.iter().map(|&t| (p as f64 * t).sin_cos()).map(|(s, c)| (c, s)).collect()
        };
        let tables: Vec<Vec<(f64, f64)>> = pos.iter().map(|&p| table(p)).collect();
        #[allow(clippy::too_many_arguments)]
        fn apply<R: Real>(
            x: &[R],
            b: usize,
            h: usize,
            s: usize,
            d: usize,
            half: usize,
            style: RopeStyle,
            per_batch: bool,
            tables: &[Vec<(f64, f64)>],
        ) -> Vec<R> {
            let mut out = x.to_vec();
            out.par_chunks_mut(d).enumerate().with_min_len(64).for_each(|(row, o)| {
                let (bi, si) = (row / (h * s), row % s);
                let t = &tables[if per_batch { bi * s + si } else { si }];
                for (i, &(c, sn)) in t.iter().enumerate().take(half) {
                    let (ia, ib) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::NeoX => (i, i + half),
                    };
                    let (c, sn) = (R::from(c).unwrap_or_else(R::nan), R::from(sn).unwrap_or_else(R::nan));
                    let (a, bb) = (o[ia], o[ib]);
                    o[ia] = a * c - bb * sn;
                    o[ib] = a * sn + bb * c;
                }
            });
            let _ = b;
            out
        }
        let out = crate::threads::install(|| match self.work(OP)? {
            Work::F32(x) => Ok::<_, Error>(WorkOut::F32(apply(&x, b, h, s, d, half, cfg.style, per_batch, &tables))),
            Work::F64(x) => Ok(WorkOut::F64(apply(&x, b, h, s, d, half, cfg.style, per_batch, &tables))),
        })?;
        Ok(out.into_tensor(self.shape(), self.dtype()))
    }

    /// Scaled-dot-product attention with grouped-query heads.
    ///
    /// `self` = queries `[batch, heads_q, s_q, d]`, `k` = `[batch, heads_kv, s_kv, d]`, `v` =
    /// `[batch, heads_kv, s_kv, d_v]`, `heads_q` a multiple of `heads_kv`; query head `h` reads KV head
    /// `h / (heads_q / heads_kv)`. Returns `[batch, heads_q, s_q, d_v]` =
    /// `softmax(q kᵀ · scale + mask) v`, with `scale` defaulting to `1/√d`. A query that may attend to no key
    /// gets a zero output row. `k` and `v` share a dtype: `q`'s, or f16 for f32/f16/bf16 queries (an f16 KV cache:
    /// read directly on the CPU, converted to `q`'s dtype first on CUDA); the output has `q`'s dtype. On the CPU,
    /// more than 1,024 keys are processed in fixed chunks whose partial softmaxes are merged (in parallel for one
    /// query position), so results do not depend on the thread count.
    pub fn attention(&self, k: &Tensor, v: &Tensor, mask: &AttentionMask, scale: Option<f64>) -> Result<Tensor> {
        crate::autograd::op(
            "attention",
            &[self, k, v],
            || self.attention_fwd(k, v, mask, scale),
            |out| {
                let d = *self.shape().last().unwrap_or(&1);
                crate::autograd::rules::attention(self, k, v, out, mask, scale.unwrap_or(1.0 / (d as f64).sqrt()))
            },
        )
    }

    fn attention_fwd(&self, k: &Tensor, v: &Tensor, mask: &AttentionMask, scale: Option<f64>) -> Result<Tensor> {
        const OP: &str = "attention";
        self.check_float(OP)?;
        k.check_same_dtype(OP, v)?;
        // An f16 KV cache may serve queries of any f32-precision dtype (f32, f16, bf16): the CPU reads it directly.
        let f16_kv = k.dtype() == DType::F16 && self.dtype() != DType::F64;
        if !f16_kv {
            self.check_same_dtype(OP, k)?;
        }
        self.check_same_device(OP, k)?;
        let bad = |t: &Tensor, what: &str| Error::BadShape {
            op: OP,
            shape: t.shape().to_vec(),
            msg: format!("expected {what}"),
        };
        let [b, hq, sq, d] = *self.shape() else { return Err(bad(self, "q = [batch, heads_q, s_q, d]")) };
        let [bk, hkv, skv, dk] = *k.shape() else { return Err(bad(k, "k = [batch, heads_kv, s_kv, d]")) };
        let [bv, hv, sv, dv] = *v.shape() else { return Err(bad(v, "v = [batch, heads_kv, s_kv, d_v]")) };
        if bk != b || dk != d || bv != b || hv != hkv || sv != skv {
            return Err(Error::ShapeMismatch { op: OP, lhs: k.shape().to_vec(), rhs: v.shape().to_vec() });
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("heads_q {hq} is not a multiple of heads_kv {hkv}"),
            });
        }
        let causal = matches!(mask, AttentionMask::Causal);
        if causal && sq > skv {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("causal attention needs s_q {sq} <= s_kv {skv}"),
            });
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            let m = match mask {
                AttentionMask::Mask(m) => {
                    if m.dtype() != DType::U8 {
                        return Err(Error::UnsupportedDType { op: OP, dtype: m.dtype(), expected: "a u8 mask" });
                    }
                    self.check_same_device(OP, m)?;
                    Some(m.broadcast_as(&[b, hq, sq, skv])?)
                }
                _ => None,
            };
            let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
            // The CUDA kernels take keys and values in the query's dtype: an f16 cache is converted first.
            let (k, v) = if k.dtype() == self.dtype() {
                (k.clone(), v.clone())
            } else {
                (crate::cuda::ops::cast(k, self.dtype())?, crate::cuda::ops::cast(v, self.dtype())?)
            };
            if sq >= ATTENTION_GEMM_MIN_QUERIES {
                return crate::cuda::ops::attention_gemm(self, &k, &v, m.as_ref(), causal, scale);
            }
            return crate::cuda::ops::attention(self, &k, &v, m.as_ref(), causal, scale);
        }
        let mask_data = match mask {
            AttentionMask::Mask(m) => {
                if m.dtype() != DType::U8 {
                    return Err(Error::UnsupportedDType { op: OP, dtype: m.dtype(), expected: "a u8 mask" });
                }
                self.check_same_device(OP, m)?;
                Some(m.broadcast_as(&[b, hq, sq, skv])?.to_vec::<u8>()?)
            }
            _ => None,
        };
        let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
        let group = hq / hkv;
        #[allow(clippy::too_many_arguments)]
        fn run<R: Real, E: KvElem<R>>(
            q: &[R],
            k: &[E],
            v: &[E],
            dims: [usize; 7],
            group: usize,
            scale: f64,
            causal: bool,
            mask: Option<&[u8]>,
        ) -> Vec<R> {
            let [_b, hq, sq, d, hkv, skv, dv] = dims;
            let scale = R::from(scale).unwrap_or_else(R::nan);
            let mut out = vec![R::zero(); dims[0] * hq * sq * dv];
            let head =
                |kvh: usize, limit: usize| (&k[kvh * skv * d..][..limit * d], &v[kvh * skv * dv..][..limit * dv]);
            // One query position without a mask (decode): the `group` query heads that share a KV head are
            // consecutive rows, and they go through together, so each key and value row is read from memory once
            // for all of them instead of once per head; long caches split into key chunks that run in parallel.
            // Per row, the same operations in the same order as the per-row path below.
            if sq == 1 && mask.is_none() && group > 1 && skv > 0 && d > 0 && dv > 0 {
                crate::threads::install(|| {
                    out.par_chunks_mut(group * dv).enumerate().for_each(|(kvh, o)| {
                        let (kh, vh) = head(kvh, skv);
                        let rows = KeyRows { q: &q[kvh * group * d..][..group * d], rows: group, d, dv, scale };
                        rows.attend(kh, vh, None, true, o);
                    })
                });
                return out;
            }
            crate::threads::install(|| {
                out.par_chunks_mut(dv.max(1)).enumerate().with_min_len(4).for_each(|(row, o)| {
                    let (bh, i) = (row / sq, row % sq);
                    let (bi, h) = (bh / hq, bh % hq);
                    let limit = if causal { skv - sq + i + 1 } else { skv };
                    let mrow = mask.map(|m| &m[row * skv..][..limit]);
                    let (kh, vh) = head(bi * hkv + h / group, limit);
                    KeyRows { q: &q[row * d..][..d], rows: 1, d, dv, scale }.attend(kh, vh, mrow, false, o);
                })
            });
            out
        }
        let dims = [b, hq, sq, d, hkv, skv, dv];
        let m = mask_data.as_deref();
        let out = match (self.work(OP)?, f16_kv) {
            (Work::F32(q), true) => {
                let (kk, vv) = (k.data::<half::f16>(OP)?, v.data::<half::f16>(OP)?);
                WorkOut::F32(run(&q, &kk, &vv, dims, group, scale, causal, m))
            }
            (q, _) => match (q, k.work(OP)?, v.work(OP)?) {
                (Work::F32(q), Work::F32(kk), Work::F32(vv)) => {
                    WorkOut::F32(run(&q, &kk, &vv, dims, group, scale, causal, m))
                }
                (Work::F64(q), Work::F64(kk), Work::F64(vv)) => {
                    WorkOut::F64(run(&q, &kk, &vv, dims, group, scale, causal, m))
                }
                _ => unreachable!("same dtype gives the same work precision"),
            },
        };
        Ok(out.into_tensor(&[b, hq, sq, dv], self.dtype()))
    }
}

/// Keys per chunk of CPU attention: longer caches are processed chunk by chunk (in parallel in decode), each chunk
/// with its own softmax maximum and sum, merged at the end (flash-decoding). Fixed, so results do not depend on the
/// thread count.
const ATTENTION_KEY_CHUNK: usize = 1024;

/// Query rows that share their keys and values: the `rows` rows of `q` (`[rows, d]`), one KV head.
struct KeyRows<'a, R> {
    q: &'a [R],
    rows: usize,
    d: usize,
    dv: usize,
    scale: R,
}

/// One key chunk's contribution to each row: the scores' maximum `m`, `l = Σ e^(s − m)` and `o = Σ e^(s − m) v`.
struct ChunkPart<R> {
    m: Vec<R>,
    l: Vec<R>,
    o: Vec<R>,
}

impl<R: Real> KeyRows<'_, R> {
    /// Writes `softmax(q kᵀ · scale + mask) v` for the rows into `out` (`[rows, dv]`), over the keys `k`
    /// (`[s, d]`) and values `v` (`[s, dv]`); `mask` (one row only) zeroes keys out. A row that may attend to no
    /// key gets zeros. With `parallel`, the key chunks run on the thread pool.
    fn attend<E: KvElem<R>>(&self, k: &[E], v: &[E], mask: Option<&[u8]>, parallel: bool, out: &mut [R]) {
        let s = k.len() / self.d.max(1);
        let chunks = s.div_ceil(ATTENTION_KEY_CHUNK);
        let part = |c: usize| {
            let (j0, n) = (c * ATTENTION_KEY_CHUNK, (s - c * ATTENTION_KEY_CHUNK).min(ATTENTION_KEY_CHUNK));
            let (kc, vc) = (&k[j0 * self.d..][..n * self.d], &v[j0 * self.dv..][..n * self.dv]);
            self.chunk(kc, vc, mask.map(|m| &m[j0..j0 + n]))
        };
        let parts: Vec<ChunkPart<R>> = if parallel && chunks > 1 {
            (0..chunks).into_par_iter().map(part).collect()
        } else {
            (0..chunks).map(part).collect()
        };
        out.iter_mut().for_each(|o| *o = R::zero());
        for (r, orow) in out.chunks_exact_mut(self.dv.max(1)).take(self.rows).enumerate() {
            let top = parts.iter().map(|p| p.m[r]).fold(R::neg_infinity(), R::max);
            if top == R::neg_infinity() {
                continue; // no key allowed: the row stays zero
            }
            let mut l = R::zero();
            for p in parts.iter().filter(|p| p.m[r] != R::neg_infinity()) {
                // A lone chunk has weight e⁰ = 1 exactly, so its sums pass through unchanged.
                let w = (p.m[r] - top).exp();
                l = l + w * p.l[r];
                R::axpy(orow, w, &p.o[r * self.dv..][..self.dv]);
            }
            let inv = R::one() / l;
            orow.iter_mut().for_each(|o| *o = *o * inv);
        }
    }

    /// One chunk of keys: scores, masked keys set to −∞, unnormalised exponentials, and the weighted value sum.
    fn chunk<E: KvElem<R>>(&self, k: &[E], v: &[E], mask: Option<&[u8]>) -> ChunkPart<R> {
        let n = k.len() / self.d.max(1);
        let mut scores = vec![R::zero(); self.rows * n];
        E::attention_scores(self.q, self.rows, k, self.d, self.scale, &mut scores, v, self.dv);
        if let Some(m) = mask {
            for row in scores.chunks_exact_mut(n.max(1)) {
                row.iter_mut().zip(m).filter(|(_, a)| **a == 0).for_each(|(sc, _)| *sc = R::neg_infinity());
            }
        }
        let mut probs = vec![R::zero(); self.rows * n];
        let (mut m, mut l) = (vec![R::neg_infinity(); self.rows], vec![R::zero(); self.rows]);
        if n > 0 {
            for (r, (sr, pr)) in scores.chunks_exact(n).zip(probs.chunks_exact_mut(n)).enumerate() {
                (m[r], l[r]) = R::exp_row(sr, pr);
            }
        }
        let mut o = vec![R::zero(); self.rows * self.dv];
        E::attention_values(&probs, self.rows, v, self.dv, &mut o);
        ChunkPart { m, l, o }
    }
}
