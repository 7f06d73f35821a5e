//! Naive, obviously correct f64 reference of the Llama forward pass: the oracle the optimised decoder is tested
//! against. No cache, no views, no parallelism: every position is recomputed from the token ids.

use effllm_tensor::{RopeConfig, RopeStyle, Tensor};

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::llama::LlamaModel;
use crate::weights::Linear;

/// A dense row-major f64 matrix `[rows, cols]`.
#[derive(Clone, Debug)]
pub struct Mat {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values, row-major.
    pub data: Vec<f64>,
}

impl Mat {
    fn from_linear(l: &Linear) -> Result<Mat> {
        let t = l.to_dense_f32()?;
        Mat::from_tensor(&t)
    }

    fn from_tensor(t: &Tensor) -> Result<Mat> {
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        Ok(Mat { rows, cols, data: t.to_vec_f64()? })
    }

    /// `W x` for `x` of length `cols`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows)
            .map(|r| self.data[r * self.cols..(r + 1) * self.cols].iter().zip(x).map(|(w, v)| w * v).sum())
            .collect()
    }
}

/// One block's weights in f64.
#[derive(Clone, Debug)]
pub struct RefLayer {
    /// Attention norm gain.
    pub attn_norm: Vec<f64>,
    /// Query projection.
    pub wq: Mat,
    /// Key projection.
    pub wk: Mat,
    /// Value projection.
    pub wv: Mat,
    /// Output projection.
    pub wo: Mat,
    /// FFN norm gain.
    pub ffn_norm: Vec<f64>,
    /// Gate projection.
    pub gate: Mat,
    /// Up projection.
    pub up: Mat,
    /// Down projection.
    pub down: Mat,
}

/// A whole model in f64.
#[derive(Clone, Debug)]
pub struct ReferenceLlama {
    /// Hyperparameters.
    pub config: LlamaConfig,
    /// Embedding `[vocab, d]`.
    pub embedding: Mat,
    /// Blocks.
    pub layers: Vec<RefLayer>,
    /// Final norm gain.
    pub norm: Vec<f64>,
    /// LM head `[vocab, d]`.
    pub lm_head: Mat,
}

/// RMSNorm in f64.
pub fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * inv * g).collect()
}

/// RoPE of one head vector at position `pos`.
pub fn rope(x: &mut [f64], pos: u32, cfg: &RopeConfig) {
    let r = cfg.rotary_dims;
    for i in 0..r / 2 {
        let theta = cfg.base.powf(-2.0 * i as f64 / r as f64);
        let (s, c) = (pos as f64 * theta).sin_cos();
        let (a, b) = match cfg.style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::NeoX => (i, i + r / 2),
        };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * c - xb * s;
        x[b] = xa * s + xb * c;
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

impl ReferenceLlama {
    /// Dequantizes every weight of `model` to f64.
    pub fn from_model(model: &LlamaModel) -> Result<ReferenceLlama> {
        let vec = |t: &Tensor| t.to_vec_f64();
        let layers = model
            .layers()
            .iter()
            .map(|l| {
                Ok(RefLayer {
                    attn_norm: vec(&l.attn_norm)?,
                    wq: Mat::from_linear(&l.wq)?,
                    wk: Mat::from_linear(&l.wk)?,
                    wv: Mat::from_linear(&l.wv)?,
                    wo: Mat::from_linear(&l.wo)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                    gate: Mat::from_linear(&l.ffn.gate)?,
                    up: Mat::from_linear(&l.ffn.up)?,
                    down: Mat::from_linear(&l.ffn.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_t = model.final_norm_weight();
        Ok(ReferenceLlama {
            config: model.config().clone(),
            embedding: Mat::from_linear(&model.embedding().as_linear())?,
            layers,
            norm: vec(norm_t)?,
            lm_head: Mat::from_linear(model.lm_head_weight())?,
        })
    }

    /// Logits `[T][vocab]` of every position for tokens at `positions`, where token `i` attends to token `j`
    /// iff `visible(i, j)`.
    pub fn forward(&self, tokens: &[u32], positions: &[u32], visible: &dyn Fn(usize, usize) -> bool) -> Vec<Vec<f64>> {
        let cfg = &self.config;
        let (d, hd, hq, hkv) = (cfg.d_model, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let t = tokens.len();
        let mut h: Vec<Vec<f64>> =
            tokens.iter().map(|&id| self.embedding.data[id as usize * d..(id as usize + 1) * d].to_vec()).collect();
        for l in &self.layers {
            let x: Vec<Vec<f64>> = h.iter().map(|r| rms_norm(r, &l.attn_norm, cfg.rms_eps)).collect();
            let split = |m: &Mat, n: usize, pos: Option<&[u32]>| -> Vec<Vec<Vec<f64>>> {
                x.iter()
                    .enumerate()
                    .map(|(i, xi)| {
                        let y = m.apply(xi);
                        (0..n)
                            .map(|hh| {
                                let mut v = y[hh * hd..(hh + 1) * hd].to_vec();
                                if let Some(p) = pos {
                                    rope(&mut v, p[i], &cfg.rope);
                                }
                                v
                            })
                            .collect()
                    })
                    .collect()
            };
            let q = split(&l.wq, hq, Some(positions));
            let k = split(&l.wk, hkv, Some(positions));
            let v = split(&l.wv, hkv, None);
            let scale = 1.0 / (hd as f64).sqrt();
            for i in 0..t {
                let mut attn = vec![0.0; hq * hd];
                for head in 0..hq {
                    let g = head / (hq / hkv);
                    let scores: Vec<Option<f64>> = (0..t)
                        .map(|j| {
                            visible(i, j)
                                .then(|| q[i][head].iter().zip(&k[j][g]).map(|(a, b)| a * b).sum::<f64>() * scale)
                        })
                        .collect();
                    let m = scores.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let z: f64 = scores.iter().flatten().map(|s| (s - m).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        if let Some(s) = s {
                            let p = (s - m).exp() / z;
                            for (o, vv) in attn[head * hd..(head + 1) * hd].iter_mut().zip(&v[j][g]) {
                                *o += p * vv;
                            }
                        }
                    }
                }
                let o = l.wo.apply(&attn);
                for (a, b) in h[i].iter_mut().zip(o) {
                    *a += b;
                }
            }
            for hi in h.iter_mut() {
                let x = rms_norm(hi, &l.ffn_norm, cfg.rms_eps);
                let (g, u) = (l.gate.apply(&x), l.up.apply(&x));
                let z: Vec<f64> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
                for (a, b) in hi.iter_mut().zip(l.down.apply(&z)) {
                    *a += b;
                }
            }
        }
        h.iter().map(|r| self.lm_head.apply(&rms_norm(r, &self.norm, cfg.rms_eps))).collect()
    }

    /// Causal logits for `tokens` at positions `0..T`.
    pub fn forward_causal(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let pos: Vec<u32> = (0..tokens.len() as u32).collect();
        self.forward(tokens, &pos, &|i, j| j <= i)
    }
}
