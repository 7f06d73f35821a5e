//! Model adapters and small deterministic models.
//!
//! - [`EarlyExit`]: the first layers of a [`LayeredLm`] followed by its final norm and LM head, as a
//!   [`CausalLm`] (the "target's first layers + LM head" draft).
//! - [`LookupLm`]: a deterministic n-gram language model whose logits depend only on the visible context, so a
//!   tree-masked batch and token-by-token decoding give bit-identical logits (the exact losslessness tests use it).
//! - [`tiny_llama`]: a random-weight Llama (f32 or Q4_1) for doc examples and tests.

use effllm_model::{
    Batch, CausalLm, Device, Embedding, KvCache, LayeredLm, Linear, LlamaConfig, LlamaFfn, LlamaLayer, LlamaModel,
    LogitRows, ModelError, NoHooks, Tensor,
};
use effllm_tensor::quant::{QMatrix, QWeight, QuantType};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{RopeConfig, RopeStyle};

/// The first `layers` blocks of `model`, then its final norm and LM head: a cheap draft that shares the target's
/// weights. Its cache is the full model's cache with only the first `layers` layers used (the engine compacts the
/// non-empty layers only).
#[derive(Clone, Copy, Debug)]
pub struct EarlyExit<'a, M: LayeredLm> {
    model: &'a M,
    layers: usize,
}

impl<'a, M: LayeredLm> EarlyExit<'a, M> {
    /// Exits after `layers` blocks (1..=n_layers).
    pub fn new(model: &'a M, layers: usize) -> effllm_model::Result<Self> {
        if layers == 0 || layers > model.n_layers() {
            return Err(ModelError::Invalid {
                what: "early exit",
                msg: format!("{layers} layers of a {}-layer model", model.n_layers()),
            });
        }
        Ok(EarlyExit { model, layers })
    }

    /// Number of blocks run.
    pub fn layers(&self) -> usize {
        self.layers
    }
}

impl<M: LayeredLm> CausalLm for EarlyExit<'_, M> {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }

    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> effllm_model::Result<Tensor> {
        let h = self.model.embed(&batch.tokens)?;
        let h = self.model.run_layers(h, 0..self.layers, batch, cache, &mut NoHooks)?;
        self.model.unembed(&rows.select(&h)?)
    }
}

/// A deterministic n-gram language model: the logits after a context are a pseudo-random function (Philox) of
/// the last `order` visible tokens, optionally plus `noise_scale` times a second function (a correlated "draft"
/// of the same model).
///
/// It keeps its context in a real [`KvCache`] (one layer, one head, head size 1; the key of a slot is its token id),
/// honours every [`BatchMask`](effllm_model::BatchMask) and checks that each token's position equals the number of
/// tokens it sees before it, so mask, position and compaction bugs of a decoder surface as wrong logits or errors.
#[derive(Clone, Debug)]
pub struct LookupLm {
    vocab: usize,
    order: usize,
    context: usize,
    seed: u64,
    scale: f32,
    noise: Option<(u64, f32)>,
}

impl LookupLm {
    /// An n-gram model over `vocab` tokens that looks at the last `order` tokens, with logits of standard
    /// deviation `scale`.
    pub fn new(vocab: usize, order: usize, seed: u64, scale: f32) -> Self {
        LookupLm { vocab, order, context: 4096, seed, scale, noise: None }
    }

    /// The same model with `scale · N(0, 1)` noise (seeded by `seed`) added to every logit: a draft correlated
    /// with `self`.
    pub fn perturbed(&self, seed: u64, scale: f32) -> Self {
        LookupLm { noise: Some((seed, scale)), ..self.clone() }
    }

    /// The same model with another context length.
    pub fn with_context(mut self, context: usize) -> Self {
        self.context = context;
        self
    }

    fn hash(seed: u64, ctx: &[u32]) -> u64 {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for &t in ctx {
            h = (h ^ t as u64).wrapping_mul(0x1000_0000_01b3).rotate_left(29) ^ 0xbf58_476d_1ce4_e5b9;
        }
        h
    }

    /// The logits after `context` (only its last `order` tokens matter).
    pub fn logits(&self, context: &[u32]) -> Vec<f32> {
        let ctx = &context[context.len().saturating_sub(self.order)..];
        let rng = CounterRng::new(Self::hash(self.seed, ctx), ctx.len() as u64);
        let mut out: Vec<f32> = (0..self.vocab as u64).map(|i| rng.normal_at(i) as f32 * self.scale).collect();
        if let Some((seed, s)) = self.noise {
            let n = CounterRng::new(Self::hash(seed, ctx), 7);
            out.iter_mut().enumerate().for_each(|(i, x)| *x += n.normal_at(i as u64) as f32 * s);
        }
        out
    }
}

impl CausalLm for LookupLm {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(1, 1, 1, &Device::Cpu)
    }

    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> effllm_model::Result<Tensor> {
        batch.validate()?;
        let t = batch.len();
        if let Some((index, &id)) = batch.tokens.iter().enumerate().find(|(_, id)| **id as usize >= self.vocab) {
            return Err(ModelError::BadToken { id, index, vocab: self.vocab });
        }
        let layer = cache.layer(0)?;
        let cached = layer.len();
        let cached_tokens: Vec<u32> = layer.keys(0)?.to_vec::<f32>()?.iter().map(|&k| k as u32).collect();
        let cached_pos = layer.positions(0).to_vec();
        let mask = batch.dense_mask(cached)?;
        let cols = cached + t;
        let mut all_logits = Vec::with_capacity(t * self.vocab);
        for i in 0..t {
            let visible = |j: usize| match &mask {
                None => j < cached || j - cached <= i,
                Some(m) => m[i * cols + j] != 0,
            };
            let mut ctx: Vec<(u32, u32)> = (0..cols)
                .filter(|&j| visible(j))
                .map(|j| {
                    if j < cached {
                        (cached_pos[j], cached_tokens[j])
                    } else {
                        (batch.positions[j - cached], batch.tokens[j - cached])
                    }
                })
                .collect();
            ctx.sort_by_key(|&(p, _)| p);
            let n = ctx.len();
            for (k, &(p, _)) in ctx.iter().enumerate() {
                if p as usize != k {
                    return Err(ModelError::Invalid {
                        what: "lookup LM",
                        msg: format!(
                            "token {i} sees positions {:?}, expected 0..{n}",
                            ctx.iter().map(|c| c.0).collect::<Vec<_>>()
                        ),
                    });
                }
            }
            if batch.positions[i] as usize >= self.context {
                return Err(ModelError::ContextOverflow { cached, new: t, context: self.context });
            }
            let tokens: Vec<u32> = ctx.iter().map(|c| c.1).collect();
            all_logits.extend(self.logits(&tokens));
        }
        let keys: Vec<f32> = batch.tokens.iter().map(|&x| x as f32).collect();
        let k = Tensor::from_vec(keys, &[1, 1, t, 1], &Device::Cpu)?;
        cache.layer_mut(0)?.append(&k, &k, &batch.positions)?;
        let logits = Tensor::from_vec(all_logits, &[t, self.vocab], &Device::Cpu)?;
        rows.select(&logits)
    }
}

/// Shape of a [`tiny_llama`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TinyShape {
    /// Blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_head_kv: usize,
    /// Head size (even).
    pub head_dim: usize,
    /// FFN width.
    pub d_ff: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Context length.
    pub context: usize,
}

impl Default for TinyShape {
    /// 2 layers, 4 query / 2 KV heads of 8 (d = 32), FFN 64, vocabulary 64, context 512.
    fn default() -> Self {
        TinyShape { n_layer: 2, n_head: 4, n_head_kv: 2, head_dim: 8, d_ff: 64, vocab: 64, context: 512 }
    }
}

/// A Llama with random weights (`N(0, 1/fan_in)` matrices, gains near 1, embedding scaled by `logit_scale` so
/// the next-token distributions are peaked enough for speculation to accept), seeded by `seed`. With `q4_1` every
/// matrix is quantized to Q4_1 (`d_model` and `d_ff` must be multiples of 32), which makes a cheap, close draft
/// of the same seed's f32 model.
pub fn tiny_llama(shape: TinyShape, seed: u64, logit_scale: f32, q4_1: bool) -> effllm_model::Result<LlamaModel> {
    let d = shape.n_head * shape.head_dim;
    let cfg = LlamaConfig {
        n_layer: shape.n_layer,
        d_model: d,
        n_head: shape.n_head,
        n_head_kv: shape.n_head_kv,
        head_dim: shape.head_dim,
        d_ff: shape.d_ff,
        vocab: shape.vocab,
        context: shape.context,
        rms_eps: 1e-5,
        rope: RopeConfig { style: RopeStyle::Interleaved, base: 10_000.0, rotary_dims: shape.head_dim },
        tied_embeddings: true,
    };
    let mut stream = 0u64;
    let mut randn = |n: usize, std: f32| -> Vec<f32> {
        stream += 1;
        let rng = CounterRng::new(seed, stream);
        (0..n as u64).map(|i| rng.normal_at(i) as f32 * std).collect()
    };
    let dense = |data: Vec<f32>, rows: usize, cols: usize| -> effllm_model::Result<Linear> {
        if q4_1 {
            Ok(Linear::Quant(QWeight::new(QMatrix::quantize(QuantType::Q4_1, rows, cols, &data)?)))
        } else {
            Ok(Linear::Dense(Tensor::from_vec(data, &[rows, cols], &Device::Cpu)?))
        }
    };
    let gain = |v: Vec<f32>| -> effllm_model::Result<Tensor> {
        Ok(Tensor::from_vec(v.iter().map(|x| 1.0 + x).collect::<Vec<f32>>(), &[d], &Device::Cpu)?)
    };
    let mut layers = Vec::with_capacity(shape.n_layer);
    let hd = shape.head_dim;
    for _ in 0..shape.n_layer {
        let s = 1.0 / (d as f32).sqrt();
        layers.push(LlamaLayer {
            attn_norm: gain(randn(d, 0.1))?,
            wq: dense(randn(shape.n_head * hd * d, s), shape.n_head * hd, d)?,
            wk: dense(randn(shape.n_head_kv * hd * d, s), shape.n_head_kv * hd, d)?,
            wv: dense(randn(shape.n_head_kv * hd * d, s), shape.n_head_kv * hd, d)?,
            wo: dense(randn(d * shape.n_head * hd, 1.0 / ((shape.n_head * hd) as f32).sqrt()), d, shape.n_head * hd)?,
            ffn_norm: gain(randn(d, 0.1))?,
            ffn: LlamaFfn {
                gate: dense(randn(shape.d_ff * d, s), shape.d_ff, d)?,
                up: dense(randn(shape.d_ff * d, s), shape.d_ff, d)?,
                down: dense(randn(d * shape.d_ff, 1.0 / (shape.d_ff as f32).sqrt()), d, shape.d_ff)?,
            },
        });
    }
    let emb =
        Tensor::from_vec(randn(shape.vocab * d, logit_scale / (d as f32).sqrt()), &[shape.vocab, d], &Device::Cpu)?;
    let embedding = Embedding::Dense(emb.clone());
    let norm = gain(randn(d, 0.1))?;
    LlamaModel::from_parts(cfg, embedding, layers, norm, Linear::Dense(emb))
}
