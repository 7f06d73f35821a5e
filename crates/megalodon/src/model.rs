//! The Megalodon language model: embedding, blocks of (moving-average gated attention, normalized FFN), a final
//! timestep norm and the output projection, with a streaming state.

use std::sync::atomic::{AtomicU64, Ordering};

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor, no_grad};

use crate::config::MegalodonConfig;
use crate::error::{MegalodonError, Result};
use crate::layer::{CemaPath, LayerState, MegalodonLayer, NormalizedFfn, tensor};
use crate::tsn::{TimestepNorm, TsnState};

static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

/// Everything a model carries from one call to the next, per batch row: every layer's norm statistics, CEMA state
/// and chunk cache, and the final norm's statistics. Tied to the model (and its copies with other parameter
/// values) that made it and to its batch size.
#[derive(Clone, Debug)]
pub struct MegalodonState {
    model_id: u64,
    batch: usize,
    pos: u64,
    /// Per layer.
    pub layers: Vec<LayerState>,
    /// The final timestep norm's statistics.
    pub final_norm: TsnState,
}

impl MegalodonState {
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens consumed so far per row.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The same state without graph nodes (truncated backpropagation through time).
    pub fn detach(&self) -> Result<MegalodonState> {
        Ok(MegalodonState {
            model_id: self.model_id,
            batch: self.batch,
            pos: self.pos,
            layers: self.layers.iter().map(LayerState::detach).collect::<Result<_>>()?,
            final_norm: TsnState::new(
                self.final_norm.count().to_vec(),
                self.final_norm.mean().detach(),
                self.final_norm.var().detach(),
            )?,
        })
    }
}

/// The Megalodon decoder-only language model.
#[derive(Clone, Debug)]
pub struct Megalodon {
    cfg: MegalodonConfig,
    id: u64,
    embed: Tensor,
    layers: Vec<MegalodonLayer>,
    ffns: Vec<NormalizedFfn>,
    final_norm: TimestepNorm,
    output: Option<Tensor>,
}

/// Truncated normal `N(0, std²)` cut at ±3σ (redrawn), the reference's embedding and output init.
fn truncated(seed: u64, stream: u64, len: usize, std: f64) -> Vec<f64> {
    let rng = CounterRng::new(seed, stream);
    (0..len as u64)
        .map(|i| (0..64u64).map(|r| rng.normal_at(i * 64 + r)).find(|v| v.abs() <= 3.0).unwrap_or(0.0) * std)
        .collect()
}

impl Megalodon {
    /// A model with the reference initialisation, every random choice derived from `seed`.
    pub fn new(cfg: MegalodonConfig, dtype: DType, device: &Device, seed: u64) -> Result<Megalodon> {
        cfg.validate()?;
        let (d, v) = (cfg.model_dim, cfg.vocab_size);
        let std = 1.0 / (d as f64).sqrt();
        let layer_seed = |i: usize, k: u64| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1000 * i as u64 + k);
        let layers = (0..cfg.num_layers)
            .map(|i| MegalodonLayer::new(&cfg, dtype, device, layer_seed(i, 1)))
            .collect::<Result<Vec<_>>>()?;
        let ffns = (0..cfg.num_layers)
            .map(|i| NormalizedFfn::new(&cfg, i, dtype, device, layer_seed(i, 2)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Megalodon {
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
            embed: tensor(truncated(seed, 0xE3B, v * d, std), &[v, d], dtype, device)?,
            output: if cfg.share_emb {
                None
            } else {
                Some(tensor(truncated(seed, 0x0D7, v * d, std), &[v, d], dtype, device)?)
            },
            final_norm: TimestepNorm::new(d, cfg.norm_num_groups, cfg.norm_eps, dtype, device)?,
            layers,
            ffns,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MegalodonConfig {
        &self.cfg
    }

    /// The attention layers, in order.
    pub fn layers(&self) -> &[MegalodonLayer] {
        &self.layers
    }

    /// `(name, tensor)` for every trainable parameter: `embed`, `layers.{i}.…` (see
    /// [`MegalodonLayer::named_parameters`]), `layers.{i}.ffn.…`, `final_norm.weight`, `final_norm.bias` and
    /// `output` (absent when tied to the embedding). Clones share storage and graph identity with the model's.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("embed".to_string(), self.embed.clone())];
        for (i, (l, f)) in self.layers.iter().zip(&self.ffns).enumerate() {
            out.extend(l.named_parameters().into_iter().map(|(n, t)| (format!("layers.{i}.{n}"), t)));
            out.extend(f.named_parameters().into_iter().map(|(n, t)| (format!("layers.{i}.ffn.{n}"), t)));
        }
        out.push(("final_norm.weight".into(), self.final_norm.parameters()[0].clone()));
        out.push(("final_norm.bias".into(), self.final_norm.parameters()[1].clone()));
        if let Some(o) = &self.output {
            out.push(("output".into(), o.clone()));
        }
        out
    }

    /// The same model with every parameter replaced by `f(name, tensor)` (names as in
    /// [`Megalodon::named_parameters`]); the result accepts this model's states. Shapes must be kept.
    pub fn map_parameters(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<Megalodon> {
        let mut checked = |name: &str, t: &Tensor| -> Result<Tensor> {
            let n = f(name, t)?;
            if n.shape() != t.shape() {
                return Err(MegalodonError::Shape {
                    op: "Megalodon::map_parameters",
                    expected: format!("{name} = {:?}", t.shape()),
                    found: n.shape().to_vec(),
                });
            }
            Ok(n)
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut ffns = Vec::with_capacity(self.ffns.len());
        for (i, (l, ff)) in self.layers.iter().zip(&self.ffns).enumerate() {
            layers.push(l.map_parameters(&mut |n: &str, t: &Tensor| checked(&format!("layers.{i}.{n}"), t))?);
            ffns.push(ff.map_parameters(&mut |n: &str, t: &Tensor| checked(&format!("layers.{i}.ffn.{n}"), t))?);
        }
        let mut names = ["final_norm.weight", "final_norm.bias"].into_iter();
        let final_norm = self.final_norm.map_parameters(|t| checked(names.next().unwrap_or("final_norm"), t))?;
        Ok(Megalodon {
            cfg: self.cfg.clone(),
            id: self.id,
            embed: checked("embed", &self.embed)?,
            output: self.output.as_ref().map(|o| checked("output", o)).transpose()?,
            layers,
            ffns,
            final_norm,
        })
    }

    /// The same model with every parameter a fresh leaf that requires a gradient (what a trainer drives).
    pub fn requires_grad(&self) -> Result<Megalodon> {
        self.map_parameters(|_, t| Ok(t.detach().requires_grad()))
    }

    /// The same model on another device.
    pub fn to_device(&self, device: &Device) -> Result<Megalodon> {
        self.map_parameters(|_, t| Ok(t.to_device(device)?))
    }

    /// A fresh state for `batch` rows.
    pub fn init_state(&self, batch: usize) -> Result<MegalodonState> {
        Ok(MegalodonState {
            model_id: self.id,
            batch,
            pos: 0,
            layers: self.layers.iter().map(|l| l.init_state(batch)).collect::<Result<_>>()?,
            final_norm: self.final_norm.init_state(batch)?,
        })
    }

    fn check_state(&self, op: &'static str, state: &MegalodonState, batch: usize) -> Result<()> {
        if state.model_id != self.id {
            return Err(MegalodonError::State { op, msg: "the state was made by another model".into() });
        }
        if state.batch != batch {
            return Err(MegalodonError::State {
                op,
                msg: format!("the state is for batch {}, the input has batch {batch}", state.batch),
            });
        }
        Ok(())
    }

    /// Logits `[B, L, V]` for `tokens` = `[B, L]` (u32), continuing from `state` and advancing it. Any `L ≥ 1` is
    /// accepted (split internally at chunk boundaries) unless `strict_reference_shapes` is set. CEMA runs by FFT;
    /// the whole call is differentiable in the parameters.
    pub fn forward(&self, tokens: &Tensor, state: &mut MegalodonState) -> Result<Tensor> {
        self.forward_path(tokens, state, CemaPath::Fft)
    }

    /// [`Megalodon::forward`] with the CEMA form chosen (`CemaPath::Scan` is the decoding recurrence, without a
    /// backward rule).
    pub fn forward_path(&self, tokens: &Tensor, state: &mut MegalodonState, path: CemaPath) -> Result<Tensor> {
        const OP: &str = "Megalodon::forward";
        let [b, l] = *tokens.shape() else {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: "tokens = [B, L] (u32)".into(),
                found: tokens.shape().to_vec(),
            });
        };
        if l == 0 {
            return Err(MegalodonError::InvalidArgument { op: OP, msg: "empty sequence (L = 0)".into() });
        }
        self.check_state(OP, state, b)?;
        let c = self.cfg.chunk_size;
        if self.cfg.strict_reference_shapes {
            let count = state.layers.first().map_or(0, |s| s.kv.count());
            if !(l < c || l.is_multiple_of(c)) {
                return Err(MegalodonError::InvalidArgument {
                    op: OP,
                    msg: format!("strict shapes: L = {l} must be < C = {c} or a multiple of it"),
                });
            }
            if count > 0 && count + l > c {
                return Err(MegalodonError::InvalidArgument {
                    op: OP,
                    msg: format!(
                        "strict shapes: a call continuing at {count} of a chunk of {c} must not cross its end (L = {l})"
                    ),
                });
            }
        }
        let ids = tokens.to_vec::<u32>()?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(MegalodonError::InvalidArgument {
                op: OP,
                msg: format!("token {bad} outside the vocabulary of {}", self.cfg.vocab_size),
            });
        }
        let mut x = self.embed.embedding(tokens)?;
        if self.cfg.scale_emb {
            x = x.affine((self.cfg.model_dim as f64).sqrt(), 0.0)?;
        }
        for ((layer, ffn), st) in self.layers.iter().zip(&self.ffns).zip(state.layers.iter_mut()) {
            let y = layer.forward(&x, st, path)?;
            x = ffn.forward(&y, &x)?;
        }
        let xn = self.final_norm.forward(&x, &mut state.final_norm)?;
        let logits = xn.linear(self.output.as_ref().unwrap_or(&self.embed))?;
        state.pos += l as u64;
        Ok(logits)
    }

    /// One decoding step: `tokens` = `[B]` (u32) → logits `[B, V]`, advancing `state` by one position. Uses the
    /// CEMA recurrence and never records a graph.
    pub fn step(&self, tokens: &Tensor, state: &mut MegalodonState) -> Result<Tensor> {
        let [b] = *tokens.shape() else {
            return Err(MegalodonError::Shape {
                op: "Megalodon::step",
                expected: "tokens = [B] (u32)".into(),
                found: tokens.shape().to_vec(),
            });
        };
        no_grad(|| Ok(self.forward_path(&tokens.reshape(&[b, 1])?, state, CemaPath::Scan)?.squeeze(1)?))
    }
}
