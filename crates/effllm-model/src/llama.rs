//! The Llama-family decoder: loading (GGUF, safetensors) and the forward pass.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use effllm_gguf::{GgufFile, ReadOptions};
use effllm_tensor::quant::{ActivationQuant, BlockLayout, QWeight};
use effllm_tensor::{AttentionMask, DType, Device, Tensor};

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result, invalid};
use crate::hooks::{ForwardHooks, NoHooks};
use crate::weights::{Embedding, Linear, WeightFormat, check_shape, gguf_f32, gguf_linear};
use crate::{CausalLm, LayeredLm, LogitRows};

/// A SwiGLU feed-forward block: `down( silu(gate x) ⊙ up x )`.
#[derive(Clone, Debug)]
pub struct LlamaFfn {
    /// `W_gate` `[d_ff, d]`.
    pub gate: Linear,
    /// `W_up` `[d_ff, d]`.
    pub up: Linear,
    /// `W_down` `[d, d_ff]`.
    pub down: Linear,
}

impl LlamaFfn {
    /// Intermediate width.
    pub fn d_ff(&self) -> usize {
        self.gate.out_features()
    }

    /// `Z = silu(x W_gateᵀ) ⊙ (x W_upᵀ)`: `[T, d] → [T, d_ff]`.
    pub fn intermediate(&self, x: &Tensor) -> Result<Tensor> {
        let [g, u] = <[Tensor; 2]>::try_from(Linear::forward_many(&[&self.gate, &self.up], x)?)
            .map_err(|_| invalid("FFN", "expected two outputs"))?;
        Ok(g.swiglu(&u)?)
    }

    /// `Z W_downᵀ`: `[T, d_ff] → [T, d]`.
    pub fn down(&self, z: &Tensor) -> Result<Tensor> {
        self.down.forward(z)
    }

    /// The whole block.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down(&self.intermediate(x)?)
    }

    /// The block restricted to the intermediate neurons `neurons` (GRIFFIN's experts): gate/up rows and down
    /// columns gathered once. Quantized gate/up stay quantized; down becomes dense f32.
    pub fn subset(&self, neurons: &[u32]) -> Result<LlamaFfn> {
        if let Some(&bad) = neurons.iter().find(|&&n| n as usize >= self.d_ff()) {
            return Err(invalid("FFN subset", format!("neuron {bad} of {}", self.d_ff())));
        }
        Ok(LlamaFfn {
            gate: self.gate.select_rows(neurons)?,
            up: self.up.select_rows(neurons)?,
            down: self.down.select_cols(neurons)?,
        })
    }

    fn to_device(&self, device: &Device) -> Result<LlamaFfn> {
        Ok(LlamaFfn {
            gate: self.gate.to_device(device)?,
            up: self.up.to_device(device)?,
            down: self.down.to_device(device)?,
        })
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LlamaLayer {
    /// RMSNorm gain before attention `[d]`.
    pub attn_norm: Tensor,
    /// `W_q` `[n_head·head_dim, d]`.
    pub wq: Linear,
    /// `W_k` `[n_head_kv·head_dim, d]`.
    pub wk: Linear,
    /// `W_v` `[n_head_kv·head_dim, d]`.
    pub wv: Linear,
    /// `W_o` `[d, n_head·head_dim]`.
    pub wo: Linear,
    /// RMSNorm gain before the FFN `[d]`.
    pub ffn_norm: Tensor,
    /// The FFN.
    pub ffn: LlamaFfn,
}

/// Load-time choices (default: quantized weights kept as blocks, on the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// How 2-D weights are kept.
    pub format: WeightFormat,
    /// Where the model runs.
    pub device: Device,
    /// How the CPU's fused quantized kernels treat activations: f32 (exact, default) or Q8 blocks with integer
    /// dot products (llama.cpp's numerics; faster).
    pub activations: ActivationQuant,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { format: WeightFormat::Quantized, device: Device::Cpu, activations: ActivationQuant::F32 }
    }
}

/// A Llama-family decoder (Llama 2/3, SmolLM, Mistral without sliding windows): RMSNorm, grouped-query attention
/// with RoPE, SwiGLU FFN, optional tied LM head.
#[derive(Clone, Debug)]
pub struct LlamaModel {
    config: LlamaConfig,
    embedding: Embedding,
    layers: Vec<LlamaLayer>,
    norm: Tensor,
    lm_head: Linear,
    device: Device,
    /// Storage dtype of the caches [`CausalLm::new_cache`] makes.
    kv_dtype: DType,
}

fn f32_tensor(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// The LM head on `device`, in the layout that device reads fastest: on the CPU a quantized head gets the GEMV
/// layout (`QWeight::with_gemv_layout`: a second host copy of the head with its scales split from the quants, read by
/// every decode step's one-row product; a fifth to a quarter faster on the head, for +0.625 (Q4_1) or 1.0625 (Q8_0)
/// bytes per weight of memory); on CUDA it keeps the ggml rows, which the fused decode step reads (a head in the
/// GEMV layout goes back to the rows on the host before it is uploaded, so it is uploaded once).
fn head_on(head: &Linear, device: &Device) -> Result<Linear> {
    Ok(match head {
        Linear::Quant(q) => {
            let rows = match q.block_layout() {
                BlockLayout::Rows => q.clone(),
                BlockLayout::Gemv => QWeight::new(q.matrix().clone()).with_activation_quant(q.activation_quant()),
            };
            let moved = rows.to_device(device)?;
            Linear::Quant(if device.is_cpu() { moved.with_gemv_layout()? } else { moved })
        }
        dense => dense.to_device(device)?,
    })
}

impl LlamaModel {
    /// Opens a GGUF file (memory-mapped) and loads it.
    pub fn open_gguf(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<LlamaModel> {
        let f = GgufFile::open(path.as_ref(), &ReadOptions::default())?;
        LlamaModel::from_gguf(&f, opts)
    }

    /// Loads from a parsed GGUF. With [`WeightFormat::Quantized`] on the CPU, quantized weights stay in the
    /// memory map (no copy).
    pub fn from_gguf(f: &GgufFile, opts: &LoadOptions) -> Result<LlamaModel> {
        let cfg = LlamaConfig::from_gguf(f)?;
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let fmt = opts.format;
        let dev = &opts.device;
        let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
            match gguf_linear(f, name, rows, cols, fmt)? {
                Linear::Quant(q) => Linear::Quant(q.with_activation_quant(opts.activations)),
                dense => dense,
            }
            .to_device(dev)
        };
        let vec1 = |name: &str| -> Result<Tensor> { f32_tensor(gguf_f32(f, name, &[d])?, &[d], dev) };
        let embedding = match lin("token_embd.weight", cfg.vocab, d)? {
            Linear::Quant(q) => Embedding::Quant(q),
            Linear::Dense(t) => Embedding::Dense(t),
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(LlamaLayer {
                attn_norm: vec1(&n("attn_norm"))?,
                wq: lin(&n("attn_q"), cfg.n_head * hd, d)?,
                wk: lin(&n("attn_k"), cfg.n_head_kv * hd, d)?,
                wv: lin(&n("attn_v"), cfg.n_head_kv * hd, d)?,
                wo: lin(&n("attn_output"), d, cfg.n_head * hd)?,
                ffn_norm: vec1(&n("ffn_norm"))?,
                ffn: LlamaFfn {
                    gate: lin(&n("ffn_gate"), cfg.d_ff, d)?,
                    up: lin(&n("ffn_up"), cfg.d_ff, d)?,
                    down: lin(&n("ffn_down"), d, cfg.d_ff)?,
                },
            });
        }
        let lm_head = if cfg.tied_embeddings { embedding.as_linear() } else { lin("output.weight", cfg.vocab, d)? };
        let lm_head = head_on(&lm_head, dev)?;
        let norm = vec1("output_norm.weight")?;
        Ok(LlamaModel { config: cfg, embedding, layers, norm, lm_head, device: *dev, kv_dtype: DType::F32 })
    }

    /// Loads a Hugging Face checkpoint: `config.json` plus `*.safetensors` files in `dir` (f32, f16 or bf16
    /// tensors named `model.layers.N.self_attn.q_proj.weight` etc.). RoPE is NeoX. `WeightFormat::Quantized`
    /// keeps the stored float dtype.
    pub fn open_safetensors(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<LlamaModel> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let cfg_path = dir.join("config.json");
        let json = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let cfg = LlamaConfig::from_hf_json(&json)?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Safetensors(format!("no .safetensors file in {}", dir.display())));
        }
        let mut buffers = Vec::new();
        for p in &files {
            let file = std::fs::File::open(p).map_err(io(p))?;
            // SAFETY: read-only private mapping; the file is not modified while this loader runs (a concurrent
            // writer could change bytes under us, which the safetensors parser then rejects or reads as data).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(p))?;
            buffers.push(map);
        }
        let mut tensors = std::collections::HashMap::new();
        for buf in &buffers {
            let st = safetensors::SafeTensors::deserialize(buf).map_err(|e| ModelError::Safetensors(e.to_string()))?;
            for (name, view) in st.tensors() {
                tensors.insert(name, (view.dtype(), view.shape().to_vec(), view.data().to_vec()));
            }
        }
        LlamaModel::from_named_tensors(cfg, &mut tensors, opts)
    }

    fn from_named_tensors(
        cfg: LlamaConfig,
        tensors: &mut std::collections::HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        opts: &LoadOptions,
    ) -> Result<LlamaModel> {
        let dev = &opts.device;
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let (dtype, found, bytes) = tensors.remove(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
            check_shape(name, &found, shape)?;
            let t = match dtype {
                safetensors::Dtype::F32 => Tensor::from_vec(
                    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
                    shape,
                    &Device::Cpu,
                )?,
                safetensors::Dtype::BF16 => Tensor::from_vec(
                    bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                    shape,
                    &Device::Cpu,
                )?,
                safetensors::Dtype::F16 => Tensor::from_vec(
                    bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                    shape,
                    &Device::Cpu,
                )?,
                other => {
                    return Err(ModelError::UnsupportedWeightType { name: name.into(), ty: format!("{other:?}") });
                }
            };
            Ok(t)
        };
        let fmt = opts.format;
        let as_linear = |t: Tensor| -> Result<Linear> {
            let t = match fmt {
                WeightFormat::F32 => t.to_dtype(DType::F32)?,
                WeightFormat::BF16 => t.to_dtype(DType::BF16)?,
                WeightFormat::Quantized => t,
            };
            Linear::Dense(t).to_device(dev)
        };
        let vec1 = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.to_device(dev)?) };
        let embed = as_linear(take("model.embed_tokens.weight", &[cfg.vocab, d])?)?;
        let Linear::Dense(embed_t) = embed else { unreachable!("as_linear returns Dense") };
        let embedding = Embedding::Dense(embed_t);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            layers.push(LlamaLayer {
                attn_norm: vec1(take(&p("input_layernorm"), &[d])?)?,
                wq: as_linear(take(&p("self_attn.q_proj"), &[cfg.n_head * hd, d])?)?,
                wk: as_linear(take(&p("self_attn.k_proj"), &[cfg.n_head_kv * hd, d])?)?,
                wv: as_linear(take(&p("self_attn.v_proj"), &[cfg.n_head_kv * hd, d])?)?,
                wo: as_linear(take(&p("self_attn.o_proj"), &[d, cfg.n_head * hd])?)?,
                ffn_norm: vec1(take(&p("post_attention_layernorm"), &[d])?)?,
                ffn: LlamaFfn {
                    gate: as_linear(take(&p("mlp.gate_proj"), &[cfg.d_ff, d])?)?,
                    up: as_linear(take(&p("mlp.up_proj"), &[cfg.d_ff, d])?)?,
                    down: as_linear(take(&p("mlp.down_proj"), &[d, cfg.d_ff])?)?,
                },
            });
        }
        let norm = vec1(take("model.norm.weight", &[d])?)?;
        let lm_head = if cfg.tied_embeddings {
            embedding.as_linear()
        } else {
            as_linear(take("lm_head.weight", &[cfg.vocab, d])?)?
        };
        Ok(LlamaModel { config: cfg, embedding, layers, norm, lm_head, device: *dev, kv_dtype: DType::F32 })
    }

    /// Assembles a model from parts (tests, converters, training).
    pub fn from_parts(
        config: LlamaConfig,
        embedding: Embedding,
        layers: Vec<LlamaLayer>,
        norm: Tensor,
        lm_head: Linear,
    ) -> Result<LlamaModel> {
        config.validate()?;
        if layers.len() != config.n_layer {
            return Err(invalid("model parts", format!("{} layers, config says {}", layers.len(), config.n_layer)));
        }
        let device = norm.device();
        Ok(LlamaModel { config, embedding, layers, norm, lm_head, device, kv_dtype: DType::F32 })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The blocks.
    pub fn layers(&self) -> &[LlamaLayer] {
        &self.layers
    }

    /// The token embedding.
    pub fn embedding(&self) -> &Embedding {
        &self.embedding
    }

    /// The final norm's gain `[d]`.
    pub fn final_norm_weight(&self) -> &Tensor {
        &self.norm
    }

    /// The LM head (the embedding when tied).
    pub fn lm_head_weight(&self) -> &Linear {
        &self.lm_head
    }

    /// The same model with every weight marked as a requires-grad leaf (training; see `effllm_tensor::autograd`).
    /// A tied LM head stays tied (one leaf). Quantized weights are an error: load with `WeightFormat::F32`.
    pub fn requires_grad(&self) -> Result<LlamaModel> {
        let embedding = match &self.embedding {
            Embedding::Dense(t) => Embedding::Dense(t.clone().requires_grad()),
            Embedding::Quant(_) => return Err(crate::weights::quantized_not_trainable()),
        };
        let lm_head = if self.config.tied_embeddings { embedding.as_linear() } else { self.lm_head.requires_grad()? };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LlamaLayer {
                    attn_norm: l.attn_norm.clone().requires_grad(),
                    wq: l.wq.requires_grad()?,
                    wk: l.wk.requires_grad()?,
                    wv: l.wv.requires_grad()?,
                    wo: l.wo.requires_grad()?,
                    ffn_norm: l.ffn_norm.clone().requires_grad(),
                    ffn: LlamaFfn {
                        gate: l.ffn.gate.requires_grad()?,
                        up: l.ffn.up.requires_grad()?,
                        down: l.ffn.down.requires_grad()?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LlamaModel {
            config: self.config.clone(),
            embedding,
            layers,
            norm: self.norm.clone().requires_grad(),
            lm_head,
            device: self.device,
            kv_dtype: self.kv_dtype,
        })
    }

    /// The same model with every dense weight `w` named `name` (the names of [`named_parameters`](Self::named_parameters))
    /// replaced by `f(name, w)`, which must keep its shape: e.g. differentiable bf16 casts of f32 master weights
    /// for mixed-precision training, whose gradients then flow back to the masters. A tied LM head follows the
    /// embedding (one call). Quantized weights are kept as they are.
    pub fn map_weights(&self, f: &mut dyn FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<LlamaModel> {
        let mut map = |name: String, w: &Tensor| -> Result<Tensor> {
            let out = f(&name, w)?;
            if out.shape() != w.shape() {
                return Err(invalid("map_weights", format!("{name}: {:?} became {:?}", w.shape(), out.shape())));
            }
            Ok(out)
        };
        let mut lin = |name: String, l: &Linear| -> Result<Linear> {
            Ok(match l {
                Linear::Dense(w) => Linear::Dense(map(name, w)?),
                Linear::Quant(_) => l.clone(),
            })
        };
        let embedding = match &self.embedding {
            Embedding::Dense(t) => match lin("embedding".into(), &Linear::Dense(t.clone()))? {
                Linear::Dense(t) => Embedding::Dense(t),
                Linear::Quant(_) => return Err(invalid("map_weights", "embedding became quantized")),
            },
            Embedding::Quant(_) => self.embedding.clone(),
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let norm = |lin: &mut dyn FnMut(String, &Linear) -> Result<Linear>, n: &str, t: &Tensor| match lin(
                    format!("layers.{i}.{n}"),
                    &Linear::Dense(t.clone()),
                )? {
                    Linear::Dense(t) => Ok(t),
                    Linear::Quant(_) => Err(invalid("map_weights", "a norm became quantized")),
                };
                Ok(LlamaLayer {
                    attn_norm: norm(&mut lin, "attn_norm", &l.attn_norm)?,
                    wq: lin(format!("layers.{i}.wq"), &l.wq)?,
                    wk: lin(format!("layers.{i}.wk"), &l.wk)?,
                    wv: lin(format!("layers.{i}.wv"), &l.wv)?,
                    wo: lin(format!("layers.{i}.wo"), &l.wo)?,
                    ffn_norm: norm(&mut lin, "ffn_norm", &l.ffn_norm)?,
                    ffn: LlamaFfn {
                        gate: lin(format!("layers.{i}.ffn.gate"), &l.ffn.gate)?,
                        up: lin(format!("layers.{i}.ffn.up"), &l.ffn.up)?,
                        down: lin(format!("layers.{i}.ffn.down"), &l.ffn.down)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = match lin("norm".into(), &Linear::Dense(self.norm.clone()))? {
            Linear::Dense(t) => t,
            Linear::Quant(_) => return Err(invalid("map_weights", "the final norm became quantized")),
        };
        let lm_head =
            if self.config.tied_embeddings { embedding.as_linear() } else { lin("lm_head".into(), &self.lm_head)? };
        Ok(LlamaModel {
            config: self.config.clone(),
            embedding,
            layers,
            norm,
            lm_head,
            device: self.device,
            kv_dtype: self.kv_dtype,
        })
    }

    /// Every dense weight with a stable name (`embedding`, `layers.N.wq`, ..., `norm`, `lm_head` unless tied), in
    /// order; quantized weights are skipped. Gradients are keyed by these tensors' ids.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |name: String, l: &Linear| {
            if let Linear::Dense(t) = l {
                out.push((name, t.clone()));
            }
        };
        push("embedding".into(), &self.embedding.as_linear());
        for (i, l) in self.layers.iter().enumerate() {
            push(format!("layers.{i}.attn_norm"), &Linear::Dense(l.attn_norm.clone()));
            for (n, w) in [("wq", &l.wq), ("wk", &l.wk), ("wv", &l.wv), ("wo", &l.wo)] {
                push(format!("layers.{i}.{n}"), w);
            }
            push(format!("layers.{i}.ffn_norm"), &Linear::Dense(l.ffn_norm.clone()));
            for (n, w) in [("gate", &l.ffn.gate), ("up", &l.ffn.up), ("down", &l.ffn.down)] {
                push(format!("layers.{i}.ffn.{n}"), w);
            }
        }
        push("norm".into(), &Linear::Dense(self.norm.clone()));
        if !self.config.tied_embeddings {
            push("lm_head".into(), &self.lm_head);
        }
        out
    }

    /// The same model on another device (weights uploaded; quantized blocks stay blocks).
    pub fn to_device(&self, device: &Device) -> Result<LlamaModel> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LlamaLayer {
                    attn_norm: l.attn_norm.to_device(device)?,
                    wq: l.wq.to_device(device)?,
                    wk: l.wk.to_device(device)?,
                    wv: l.wv.to_device(device)?,
                    wo: l.wo.to_device(device)?,
                    ffn_norm: l.ffn_norm.to_device(device)?,
                    ffn: l.ffn.to_device(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding = match &self.embedding {
            Embedding::Dense(t) => Embedding::Dense(t.to_device(device)?),
            Embedding::Quant(q) => Embedding::Quant(q.to_device(device)?),
        };
        let lm_head = head_on(&self.lm_head, device)?;
        Ok(LlamaModel {
            config: self.config.clone(),
            embedding,
            layers,
            norm: self.norm.to_device(device)?,
            lm_head,
            device: *device,
            kv_dtype: self.kv_dtype,
        })
    }

    /// Bytes of weights (quantized blocks counted as stored; a tied head counted once; the CPU head's GEMV-layout copy,
    /// which a decode step reads instead of the rows, not counted again).
    pub fn weight_bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wq.nbytes()
                    + l.wk.nbytes()
                    + l.wv.nbytes()
                    + l.wo.nbytes()
                    + l.ffn.gate.nbytes()
                    + l.ffn.up.nbytes()
                    + l.ffn.down.nbytes()
            })
            .sum();
        let head = if self.config.tied_embeddings { 0 } else { self.lm_head.nbytes() };
        per_layer + self.embedding.as_linear().nbytes() + head
    }

    /// Runs `layers` with each layer's weights from `layer_of` (the resident layers, or layers streamed from the
    /// host by [`crate::OffloadedLlama`]).
    pub(crate) fn run_layers_from<'l>(
        &self,
        h: Tensor,
        layers: Range<usize>,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn ForwardHooks,
        layer_of: &mut (dyn FnMut(usize) -> Result<Cow<'l, LlamaLayer>> + Send),
    ) -> Result<Tensor> {
        if layers.start > layers.end || layers.end > self.config.n_layer {
            return Err(invalid("layer range", format!("{layers:?} of {} layers", self.config.n_layer)));
        }
        self.check_batch(batch, cache)?;
        if h.shape() != [batch.len(), self.config.d_model] {
            return Err(invalid(
                "hidden state",
                format!("{:?}, expected [{}, {}]", h.shape(), batch.len(), self.config.d_model),
            ));
        }
        let positions = Tensor::from_slice(&batch.positions, &[batch.len()], &self.device)?;
        effllm_tensor::threads::install(|| {
            let mut h = h;
            let mut state = BatchState { positions, masks: None };
            for li in layers {
                let layer = layer_of(li)?;
                h = self.layer_forward(li, &layer, h, batch, &mut state, cache, hooks)?;
            }
            Ok(h)
        })
    }

    /// The model with caches ([`CausalLm::new_cache`]) that store keys and values in `dtype`: f32 (the default) or
    /// f16, llama.cpp's default, which halves the bytes that long-context decode reads (each key and value rounded
    /// once, when written; queries, scores and sums stay f32). Any other dtype is an error.
    pub fn with_kv_cache_dtype(mut self, dtype: DType) -> Result<LlamaModel> {
        crate::cache::check_cache_dtype(dtype)?;
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// The storage dtype of the caches this model makes.
    pub fn kv_cache_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// The model without its decoder layers (embedding, final norm and LM head only), for
    /// [`crate::OffloadedLlama`], which supplies the layers itself.
    pub(crate) fn without_layers(&self) -> LlamaModel {
        LlamaModel {
            config: self.config.clone(),
            embedding: self.embedding.clone(),
            layers: Vec::new(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            device: self.device,
            kv_dtype: self.kv_dtype,
        }
    }

    fn check_batch(&self, batch: &Batch, cache: &KvCache) -> Result<()> {
        batch.validate()?;
        if cache.n_layers() != self.config.n_layer {
            return Err(invalid(
                "cache",
                format!("{} layers for a {}-layer model", cache.n_layers(), self.config.n_layer),
            ));
        }
        if let Some((index, &id)) = batch.tokens.iter().enumerate().find(|(_, id)| **id as usize >= self.config.vocab) {
            return Err(ModelError::BadToken { id, index, vocab: self.config.vocab });
        }
        let max_pos = batch.positions.iter().copied().max().unwrap_or(0) as usize;
        if max_pos >= self.config.context {
            return Err(ModelError::ContextOverflow {
                cached: max_pos + 1 - batch.len().min(max_pos + 1),
                new: batch.len(),
                context: self.config.context,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        layer: &LlamaLayer,
        h: Tensor,
        batch: &Batch,
        state: &mut BatchState,
        cache: &mut KvCache,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let t = batch.len();
        let (hq, hkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
        let x = h.rms_norm(&layer.attn_norm, cfg.rms_eps)?;
        let heads =
            |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape(&[t, n, hd])?.transpose(0, 1)?.unsqueeze(0)?) };
        let [q, k, v] = <[Tensor; 3]>::try_from(Linear::forward_many(&[&layer.wq, &layer.wk, &layer.wv], &x)?)
            .map_err(|_| invalid("attention", "expected three projections"))?;
        let attn = if let Some((n_seq, len)) = batch.sequences_shape() {
            let (kv, _) = cache.parts_mut(li)?;
            if !kv.is_empty() {
                return Err(invalid(
                    "cache",
                    format!("a batch of sequences needs an empty cache, not {} slots", kv.len()),
                ));
            }
            // [n_seq·len, n·hd] → [n_seq, n, len, hd]: all sequences in one batched RoPE and attention.
            let seq_heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape(&[n_seq, len, n, hd])?.transpose(1, 2)?.contiguous()?)
            };
            let positions = state.positions.reshape(&[n_seq, len])?;
            let q = seq_heads(q, hq)?.rope(&positions, &cfg.rope)?;
            let k = seq_heads(k, hkv)?.rope(&positions, &cfg.rope)?;
            let v = seq_heads(v, hkv)?;
            hooks.query(li, &q)?;
            let out = q.attention(&k, &v, &AttentionMask::Causal, None)?;
            out.transpose(1, 2)?.contiguous()?.reshape(&[t, hq * hd])?
        } else {
            let q = heads(q, hq)?.rope(&state.positions, &cfg.rope)?;
            let k = heads(k, hkv)?.rope(&state.positions, &cfg.rope)?;
            let v = heads(v, hkv)?.contiguous()?;
            hooks.query(li, &q)?;
            let (kv, mut policy) = cache.parts_mut(li)?;
            if let Some(p) = policy.as_mut() {
                p.before_append(li, kv, t)?;
            }
            let cached = kv.len();
            kv.append(&k, &v, &batch.positions)?;
            let group = cfg.group_size();
            let want_probs = policy.as_ref().is_some_and(|p| p.wants_attention_probs(li));
            // Long batches (prefill, big trees): attention as two GEMMs per KV head, in row chunks, instead of the
            // per-query loop of `Tensor::attention`, which is O(T·S) scalar dot products.
            let use_gemm =
                t >= GEMM_ATTENTION_MIN_ROWS && !matches!(batch.mask, crate::batch::BatchMask::Explicit { .. });
            // Layers holding the same number of slots share one mask (and bias): built once per forward, not per layer.
            let masks = &mut state.masks;
            if masks.as_ref().is_none_or(|m| m.cached != cached) {
                let mask = match batch.dense_mask(cached)? {
                    None => AttentionMask::Causal,
                    Some(m) => AttentionMask::Mask(Tensor::from_vec(m, &[1, 1, t, cached + t], &self.device)?),
                };
                *masks = Some(LayerMasks { cached, mask, bias: None });
            }
            let Some(m) = masks.as_mut() else { return Err(invalid("mask", "not built")) };
            if (use_gemm || want_probs) && m.bias.is_none() {
                m.bias = Some(mask_bias(&m.mask, t, cached + t, &self.device)?);
            }
            let (mask, bias) = (&m.mask, m.bias.as_ref());
            let kv_ref: &crate::cache::LayerKv = kv;
            // Training: keys and values that carry gradients are read from this forward's tensors (after the cached
            // slots, which are constants), not from the cache buffers they were copied into.
            let tracked_kv = k.is_tracked() || v.is_tracked();
            let per_group = |g: usize| -> Result<(Tensor, Option<Tensor>)> {
                let (kk, vv) = kv_ref.attention_views(g)?;
                // An f16 cache is read directly by `Tensor::attention`; the GEMM paths, the probabilities and the
                // training concat work in f32.
                let (kk, vv) = if (use_gemm || want_probs || tracked_kv) && kk.dtype() != DType::F32 {
                    (kk.to_dtype(DType::F32)?, vv.to_dtype(DType::F32)?)
                } else {
                    (kk, vv)
                };
                let (kk, vv) = if tracked_kv {
                    let (nk, nv) = (k.narrow(1, g, 1)?, v.narrow(1, g, 1)?);
                    if cached == 0 {
                        (nk, nv)
                    } else {
                        (
                            Tensor::concat(&[&kk.narrow(2, 0, cached)?, &nk], 2)?,
                            Tensor::concat(&[&vv.narrow(2, 0, cached)?, &nv], 2)?,
                        )
                    }
                } else {
                    (kk, vv)
                };
                let qg = q.narrow(1, g * group, group)?;
                let out = match bias {
                    Some(bias) if use_gemm => gemm_attention(&qg, &kk, &vv, bias, hd)?,
                    _ => qg.attention(&kk, &vv, mask, None)?,
                };
                let probs = match bias {
                    Some(bias) if want_probs => Some(attention_probs(&qg, &kk, bias, hd)?),
                    _ => None,
                };
                Ok((out, probs))
            };
            // KV heads are independent: in decode each is only `group` query rows, too little to split inside the op,
            // so the heads run side by side on the pool (CPU only; device work is queued in order anyway).
            let results: Vec<(Tensor, Option<Tensor>)> = if self.device.is_cpu() {
                use rayon::prelude::*;
                // Pool threads do not share the caller's grad mode (a thread-local): carry it.
                let grad = effllm_tensor::autograd::is_grad_enabled();
                (0..hkv)
                    .into_par_iter()
                    .map(|g| effllm_tensor::autograd::with_grad_enabled(grad, || per_group(g)))
                    .collect::<Result<_>>()?
            } else {
                (0..hkv).map(per_group).collect::<Result<_>>()?
            };
            let (outs, probs): (Vec<Tensor>, Vec<Option<Tensor>>) = results.into_iter().unzip();
            let probs: Vec<Tensor> = probs.into_iter().flatten().collect();
            if let Some(p) = policy
                && want_probs
            {
                let refs: Vec<&Tensor> = probs.iter().collect();
                let all = Tensor::concat(&refs, 1)?.squeeze(0)?;
                p.record_attention(li, kv, &all)?;
            }
            let refs: Vec<&Tensor> = outs.iter().collect();
            Tensor::concat(&refs, 1)?.squeeze(0)?.transpose(0, 1)?.contiguous()?.reshape(&[t, hq * hd])?
        };
        let h = h.add(&layer.wo.forward(&attn)?)?;
        let x = h.rms_norm(&layer.ffn_norm, cfg.rms_eps)?;
        hooks.ffn_input(li, &x)?;
        let f = match hooks.ffn_override(li, &layer.ffn, &x)? {
            Some(f) => f,
            None => {
                let z = layer.ffn.intermediate(&x)?;
                hooks.ffn_intermediate(li, &z)?;
                layer.ffn.down(&z)?
            }
        };
        let h = h.add(&f)?;
        hooks.layer_output(li, &h)?;
        Ok(h)
    }
}

/// What the layers of one forward share: the positions tensor and the last mask built.
struct BatchState {
    positions: Tensor,
    masks: Option<LayerMasks>,
}

/// The attention mask of one forward for layers holding `cached` slots before the batch, and its additive form
/// (built on first use).
struct LayerMasks {
    cached: usize,
    mask: AttentionMask,
    bias: Option<Tensor>,
}

/// Batches of at least this many new tokens use [`gemm_attention`].
const GEMM_ATTENTION_MIN_ROWS: usize = 32;
/// Query rows per chunk of [`gemm_attention`] (bounds the `[group·rows, S]` score matrix).
const GEMM_ATTENTION_CHUNK: usize = 256;

/// The additive mask `[T, S]`: 0 where a query may attend, −∞ elsewhere (every row keeps at least its own slot;
/// no row sees a slot after its own, which `gemm_attention` relies on).
fn mask_bias(mask: &AttentionMask, t: usize, s: usize, device: &Device) -> Result<Tensor> {
    let allowed: Vec<u8> = match mask {
        AttentionMask::Mask(m) => m.reshape(&[t, s])?.to_vec::<u8>()?,
        _ => (0..t * s).map(|i| u8::from(i % s <= s - t + i / s)).collect(),
    };
    let bias: Vec<f32> = allowed.iter().map(|&a| if a != 0 { 0.0 } else { f32::NEG_INFINITY }).collect();
    Ok(Tensor::from_vec(bias, &[t, s], device)?)
}

/// `softmax(q kᵀ/√d + bias) v` for one KV head: q = `[1, g, T, d]`, k, v = `[1, 1, S, d]`, bias `[T, S]`, as
/// GEMMs over chunks of query rows. Equal to `Tensor::attention` up to f32 summation order (tested).
fn gemm_attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, hd: usize) -> Result<Tensor> {
    let [_, g, t, _] = *q.shape() else { return Err(invalid("attention", "query rank")) };
    let s = k.shape()[2];
    let kf = k.reshape(&[s, hd])?;
    let vf = v.reshape(&[s, hd])?;
    let kt = kf.t()?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut chunks = Vec::new();
    let mut t0 = 0;
    while t0 < t {
        let tc = GEMM_ATTENTION_CHUNK.min(t - t0);
        // No row of this chunk sees a key past its last row (causal and tree masks), so the chunk only needs the
        // first `s_eff` keys: about half the work of a long prefill.
        let s_eff = s - t + t0 + tc;
        let qc = q.narrow(2, t0, tc)?.contiguous()?.reshape(&[g * tc, hd])?;
        let scores = qc.matmul(&kt.narrow(1, 0, s_eff)?)?.affine(scale, 0.0)?.reshape(&[g, tc, s_eff])?;
        let bias_c = bias.narrow(0, t0, tc)?.narrow(1, 0, s_eff)?;
        let probs = scores.add(&bias_c)?.softmax(2)?.reshape(&[g * tc, s_eff])?;
        chunks.push(probs.matmul(&vf.narrow(0, 0, s_eff)?)?.reshape(&[1, g, tc, hd])?);
        t0 += tc;
    }
    let refs: Vec<&Tensor> = chunks.iter().collect();
    Ok(Tensor::concat(&refs, 2)?)
}

/// `softmax(q kᵀ/√d + mask)` = `[1, group, T, S]`, for cache policies that score slots.
fn attention_probs(q: &Tensor, k: &Tensor, bias: &Tensor, hd: usize) -> Result<Tensor> {
    let scores = q.matmul(&k.transpose(2, 3)?)?.affine(1.0 / (hd as f64).sqrt(), 0.0)?;
    Ok(scores.add(bias)?.softmax(3)?)
}

impl CausalLm for LlamaModel {
    fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    fn context_length(&self) -> usize {
        self.config.context
    }

    fn device(&self) -> Device {
        self.device
    }

    fn new_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache::build(c.n_layer, c.n_head_kv, c.head_dim, &self.device, self.kv_dtype)
    }

    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> Result<Tensor> {
        self.forward_with_hooks(batch, cache, rows, &mut NoHooks)
    }
}

impl LlamaModel {
    /// [`CausalLm::forward`] with hooks.
    pub fn forward_with_hooks(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor> {
        // One hand-off to the worker pool for the whole pass: every op inside then runs inline on a worker instead
        // of waking the pool ~600 times per decoded token.
        effllm_tensor::threads::install(|| {
            let h = self.embed(&batch.tokens)?;
            let h = self.run_layers(h, 0..self.config.n_layer, batch, cache, hooks)?;
            let h = rows.select(&h)?;
            self.unembed(&h)
        })
    }
}

impl LayeredLm for LlamaModel {
    fn n_layers(&self) -> usize {
        self.config.n_layer
    }

    fn d_model(&self) -> usize {
        self.config.d_model
    }

    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some((index, &id)) = tokens.iter().enumerate().find(|(_, id)| **id as usize >= self.config.vocab) {
            return Err(ModelError::BadToken { id, index, vocab: self.config.vocab });
        }
        self.embedding.lookup(tokens, &self.device)
    }

    fn run_layers(
        &self,
        h: Tensor,
        layers: Range<usize>,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor> {
        self.run_layers_from(h, layers, batch, cache, hooks, &mut |li| Ok(Cow::Borrowed(&self.layers[li])))
    }

    fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        Ok(h.rms_norm(&self.norm, self.config.rms_eps)?)
    }

    fn lm_head(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(h)
    }
}
