//! The moving-average gated attention layer and the normalized FFN with the two-hop residual.

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};

use crate::attention::{ChunkedAttention, KvCache};
use crate::cema::{CEMA_PARAM_NAMES, Cema, CemaState};
use crate::config::MegalodonConfig;
use crate::error::{MegalodonError, Result};
use crate::tsn::{TimestepNorm, TsnState};

/// The streaming state of one layer: its timestep norm's statistics, its CEMA state and its attention cache.
#[derive(Clone, Debug)]
pub struct LayerState {
    /// Timestep-norm statistics.
    pub tsn: TsnState,
    /// CEMA hidden state.
    pub cema: CemaState,
    /// Keys and values of the current chunk.
    pub kv: KvCache,
}

impl LayerState {
    /// The same state without graph nodes (truncated backpropagation, decoding).
    pub fn detach(&self) -> Result<LayerState> {
        Ok(LayerState {
            tsn: TsnState::new(self.tsn.count().to_vec(), self.tsn.mean().detach(), self.tsn.var().detach())?,
            cema: self.cema.detach(),
            kv: self.kv.detach(),
        })
    }
}

/// Which CEMA form a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CemaPath {
    /// The FFT convolution (training, prefill; differentiable).
    Fft,
    /// The recurrence (decoding; no backward rule).
    Scan,
}

/// Seeded `N(0, std²)` values.
pub(crate) fn normal(rng: &CounterRng, len: usize, std: f64) -> Vec<f64> {
    (0..len as u64).map(|i| std * rng.normal_at(i)).collect()
}

pub(crate) fn tensor(v: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// A `[out, in]` weight with the reference's "he" init (Kaiming normal with a = √5: std = 1/√(3·in)).
fn he(seed: u64, stream: u64, out: usize, inp: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let std = 1.0 / (3.0 * inp as f64).sqrt();
    tensor(normal(&CounterRng::new(seed, stream), out * inp, std), &[out, inp], dtype, device)
}

/// `x Wᵀ + b`.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.linear(w)?;
    Ok(match b {
        Some(b) => y.add(b)?,
        None => y,
    })
}

/// Moving-average gated attention (the reference's `MovingAverageGatedAttention`):
///
/// ```text
/// x̂ = TSN(x);  c = CEMA(x̂);  mx = RMSNorm(c)·(1 + w)
/// z = W_z mx + b_z;  ẑ = per-head RMSNorm(z);  q = ẑ(1 + γ₀)/√dz + β₀;  k = ẑ(1 + γ₁)/√dz + β₁
/// v = silu(W_v x̂ + b_v);  r = silu(W_r mx + b_r);  o = ChunkedAttn(q, k, v)
/// out = x + W_h1 mx + b_h1 + W_h2 (o ⊙ r)
/// ```
#[derive(Clone, Debug)]
pub struct MegalodonLayer {
    tsn: TimestepNorm,
    cema: Cema,
    /// `[D]`, RMSNorm weight applied as `1 + w`.
    rms_weight: Tensor,
    /// `[Z, D]`, `[Z]`.
    wz: Tensor,
    bz: Tensor,
    /// `[E, D]`, `[E]`.
    wv: Tensor,
    bv: Tensor,
    /// `[E, D]`, `[E]`.
    wr: Tensor,
    br: Tensor,
    /// `[D, D]`, `[D]`.
    wh1: Tensor,
    bh1: Tensor,
    /// `[D, E]` (no bias).
    wh2: Tensor,
    /// `[2, Z]`: row 0 scales queries, row 1 keys (applied as `1 + γ`).
    qk_gamma: Tensor,
    /// `[2, Z]`: row 0 shifts queries, row 1 keys.
    qk_beta: Tensor,
    heads: usize,
    eps: f64,
    attn: ChunkedAttention,
}

impl MegalodonLayer {
    /// A layer initialised as the reference does (seeded): "he" linears, zero biases, zero norm weights and q/k
    /// affine, the CEMA init of [`Cema::new`].
    pub fn new(cfg: &MegalodonConfig, dtype: DType, device: &Device, seed: u64) -> Result<MegalodonLayer> {
        cfg.validate()?;
        let (d, z, e) = (cfg.model_dim, cfg.z_dim, cfg.value_dim);
        let zeros = |n: usize| Tensor::zeros(&[n], dtype, device);
        Ok(MegalodonLayer {
            tsn: TimestepNorm::new(d, cfg.norm_num_groups, cfg.norm_eps, dtype, device)?,
            cema: Cema::new(d, cfg.cema_ndim, dtype, device, seed)?,
            rms_weight: zeros(d)?,
            wz: he(seed, 1, z, d, dtype, device)?,
            bz: zeros(z)?,
            wv: he(seed, 2, e, d, dtype, device)?,
            bv: zeros(e)?,
            wr: he(seed, 3, e, d, dtype, device)?,
            br: zeros(e)?,
            wh1: he(seed, 4, d, d, dtype, device)?,
            bh1: zeros(d)?,
            wh2: he(seed, 5, d, e, dtype, device)?,
            qk_gamma: Tensor::zeros(&[2, z], dtype, device)?,
            qk_beta: Tensor::zeros(&[2, z], dtype, device)?,
            heads: cfg.num_heads,
            eps: cfg.norm_eps,
            attn: ChunkedAttention { chunk: cfg.chunk_size, rope_base: cfg.rope_base, scale: 1.0 },
        })
    }

    /// The timestep norm.
    pub fn tsn(&self) -> &TimestepNorm {
        &self.tsn
    }

    /// The CEMA.
    pub fn cema(&self) -> &Cema {
        &self.cema
    }

    /// The chunked attention settings.
    pub fn attention(&self) -> &ChunkedAttention {
        &self.attn
    }

    /// Sets the attention score scale (1.0 in Megalodon; for experiments only).
    pub fn set_attention_scale(&mut self, scale: f64) {
        self.attn.scale = scale;
    }

    /// `(name, tensor)` for every parameter, names relative to the layer (`tsn.weight`, `cema.alpha`, `wz.weight`...).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("tsn.weight".to_string(), self.tsn.parameters()[0].clone()),
            ("tsn.bias".to_string(), self.tsn.parameters()[1].clone()),
        ];
        for (n, t) in CEMA_PARAM_NAMES.iter().zip(self.cema.parameters()) {
            out.push((format!("cema.{n}"), t.clone()));
        }
        for (n, t) in [
            ("rmsnorm.weight", &self.rms_weight),
            ("wz.weight", &self.wz),
            ("wz.bias", &self.bz),
            ("wv.weight", &self.wv),
            ("wv.bias", &self.bv),
            ("wr.weight", &self.wr),
            ("wr.bias", &self.br),
            ("wh1.weight", &self.wh1),
            ("wh1.bias", &self.bh1),
            ("wh2.weight", &self.wh2),
            ("qk_gamma", &self.qk_gamma),
            ("qk_beta", &self.qk_beta),
        ] {
            out.push((n.to_string(), t.clone()));
        }
        out
    }

    /// The same layer with every parameter passed through `f` (in [`MegalodonLayer::named_parameters`] order).
    pub fn map_parameters(&self, f: &mut impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<MegalodonLayer> {
        let mut names = ["tsn.weight", "tsn.bias"].into_iter();
        let tsn = self.tsn.map_parameters(|t| f(names.next().unwrap_or("tsn"), t))?;
        let mut names = CEMA_PARAM_NAMES.into_iter();
        let cema = self.cema.map_parameters(|t| f(&format!("cema.{}", names.next().unwrap_or("?")), t))?;
        Ok(MegalodonLayer {
            tsn,
            cema,
            rms_weight: f("rmsnorm.weight", &self.rms_weight)?,
            wz: f("wz.weight", &self.wz)?,
            bz: f("wz.bias", &self.bz)?,
            wv: f("wv.weight", &self.wv)?,
            bv: f("wv.bias", &self.bv)?,
            wr: f("wr.weight", &self.wr)?,
            br: f("wr.bias", &self.br)?,
            wh1: f("wh1.weight", &self.wh1)?,
            bh1: f("wh1.bias", &self.bh1)?,
            wh2: f("wh2.weight", &self.wh2)?,
            qk_gamma: f("qk_gamma", &self.qk_gamma)?,
            qk_beta: f("qk_beta", &self.qk_beta)?,
            heads: self.heads,
            eps: self.eps,
            attn: self.attn,
        })
    }

    /// A fresh state for `batch` rows.
    pub fn init_state(&self, batch: usize) -> Result<LayerState> {
        Ok(LayerState { tsn: self.tsn.init_state(batch)?, cema: self.cema.init_state(batch)?, kv: KvCache::new() })
    }

    /// The layer over `x` = `[B, L, D]`, continuing from `state` and advancing it (`path` picks the CEMA form).
    pub fn forward(&self, x: &Tensor, state: &mut LayerState, path: CemaPath) -> Result<Tensor> {
        let [b, l, d] = *x.shape() else {
            return Err(MegalodonError::Shape {
                op: "MegalodonLayer::forward",
                expected: "x = [B, L, D]".into(),
                found: x.shape().to_vec(),
            });
        };
        let (z, e) = (self.wz.shape()[0], self.wv.shape()[0]);
        let (h, dz, dv) = (self.heads, z / self.heads, e / self.heads);
        let xn = self.tsn.forward(x, &mut state.tsn)?;
        let c = match path {
            CemaPath::Fft => self.cema.forward(&xn, &mut state.cema)?,
            CemaPath::Scan => self.cema.forward_scan(&xn, &mut state.cema)?,
        };
        let mx = c.rms_norm(&self.rms_weight.affine(1.0, 1.0)?, self.eps)?;
        let zz = linear(&mx, &self.wz, Some(&self.bz))?.reshape(&[b, l, h, dz])?;
        let ones = Tensor::ones(&[dz], zz.dtype(), &zz.device())?;
        let zn = zz.rms_norm(&ones, self.eps)?;
        let scale = |row: usize| -> Result<(Tensor, Tensor)> {
            let g = self
                .qk_gamma
                .narrow(0, row, 1)?
                .reshape(&[h, dz])?
                .affine(1.0 / (dz as f64).sqrt(), 1.0 / (dz as f64).sqrt())?;
            Ok((g, self.qk_beta.narrow(0, row, 1)?.reshape(&[h, dz])?))
        };
        let ((gq, bq), (gk, bk)) = (scale(0)?, scale(1)?);
        let q = zn.mul(&gq)?.add(&bq)?;
        let k = zn.mul(&gk)?.add(&bk)?;
        let v = linear(&xn, &self.wv, Some(&self.bv))?.silu()?.reshape(&[b, l, h, dv])?;
        let r = linear(&mx, &self.wr, Some(&self.br))?.silu()?;
        let o = self.attn.forward(&q, &k, &v, &mut state.kv)?;
        let hh = linear(&mx, &self.wh1, Some(&self.bh1))?.add(&o.mul(&r)?.linear(&self.wh2)?)?;
        debug_assert_eq!(hh.shape(), [b, l, d]);
        Ok(hh.add(x)?)
    }
}

/// The normalized FFN with the two-hop residual: `out = α ⊙ fc2(silu(fc1 u) [⊙ fc3 u]) + x` with
/// `u = LayerNorm(y)·(1 + w) + b`, where `y` is the attention layer's output and `x` the block's input.
#[derive(Clone, Debug)]
pub struct NormalizedFfn {
    norm_weight: Tensor,
    norm_bias: Tensor,
    fc1: Tensor,
    fc2: Tensor,
    fc3: Option<Tensor>,
    alpha: Option<Tensor>,
    eps: f64,
}

impl NormalizedFfn {
    /// An FFN initialised as the reference does for layer `layer_id` (seeded; α = 0.1·0.5^layer_id when
    /// `rescale_nffn`).
    pub fn new(
        cfg: &MegalodonConfig,
        layer_id: usize,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<NormalizedFfn> {
        let (d, f) = (cfg.model_dim, cfg.ffn_hidden_dim);
        Ok(NormalizedFfn {
            norm_weight: Tensor::zeros(&[d], dtype, device)?,
            norm_bias: Tensor::zeros(&[d], dtype, device)?,
            fc1: he(seed, 11, f, d, dtype, device)?,
            fc2: he(seed, 12, d, f, dtype, device)?,
            fc3: if cfg.swiglu { Some(he(seed, 13, f, d, dtype, device)?) } else { None },
            alpha: if cfg.rescale_nffn {
                Some(Tensor::full(0.1 * 0.5f64.powi(layer_id as i32), &[d], dtype, device)?)
            } else {
                None
            },
            eps: cfg.norm_eps,
        })
    }

    /// `(name, tensor)` for every parameter (`norm.weight`, `norm.bias`, `fc1`, `fc2`, `fc3`, `alpha`).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("norm.weight".to_string(), self.norm_weight.clone()),
            ("norm.bias".to_string(), self.norm_bias.clone()),
            ("fc1".to_string(), self.fc1.clone()),
            ("fc2".to_string(), self.fc2.clone()),
        ];
        if let Some(t) = &self.fc3 {
            out.push(("fc3".into(), t.clone()));
        }
        if let Some(t) = &self.alpha {
            out.push(("alpha".into(), t.clone()));
        }
        out
    }

    /// The same FFN with every parameter passed through `f`.
    pub fn map_parameters(&self, f: &mut impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<NormalizedFfn> {
        Ok(NormalizedFfn {
            norm_weight: f("norm.weight", &self.norm_weight)?,
            norm_bias: f("norm.bias", &self.norm_bias)?,
            fc1: f("fc1", &self.fc1)?,
            fc2: f("fc2", &self.fc2)?,
            fc3: self.fc3.as_ref().map(|t| f("fc3", t)).transpose()?,
            alpha: self.alpha.as_ref().map(|t| f("alpha", t)).transpose()?,
            eps: self.eps,
        })
    }

    /// `α ⊙ FFN(LayerNorm(y)) + residual`.
    pub fn forward(&self, y: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let u = y.layer_norm(&self.norm_weight.affine(1.0, 1.0)?, Some(&self.norm_bias), self.eps)?;
        let mut hid = u.linear(&self.fc1)?.silu()?;
        if let Some(fc3) = &self.fc3 {
            hid = hid.mul(&u.linear(fc3)?)?;
        }
        let mut out = hid.linear(&self.fc2)?;
        if let Some(a) = &self.alpha {
            out = out.mul(a)?;
        }
        Ok(out.add(residual)?)
    }
}
