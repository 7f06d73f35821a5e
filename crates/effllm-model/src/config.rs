//! [`LlamaConfig`]: the hyperparameters of a Llama-family decoder, read from GGUF metadata or a Hugging Face
//! `config.json`.

use effllm_gguf::GgufFile;
use effllm_tensor::{RopeConfig, RopeStyle};

use crate::error::{ModelError, Result};

/// Hyperparameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream `d`.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention: query head `h` reads KV head `h / (n_head / n_head_kv)`).
    pub n_head_kv: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// FFN intermediate width.
    pub d_ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for (the longest sequence a cache accepts).
    pub context: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Rotary embedding: interleaved pairs for GGUF weights, NeoX for Hugging Face weights.
    pub rope: RopeConfig,
    /// Whether the LM head is the token embedding (no separate `output.weight` / `lm_head.weight`).
    pub tied_embeddings: bool,
}

fn need(f: &GgufFile, key: &str) -> Result<u64> {
    f.get_u64(key).ok_or_else(|| ModelError::BadConfig { key: key.into(), msg: "missing or not an integer".into() })
}

fn positive(key: &str, v: u64) -> Result<usize> {
    // 1 << 24 bounds every dimension of any released Llama by far and keeps products far from overflow.
    if v == 0 || v > 1 << 24 {
        return Err(ModelError::BadConfig { key: key.into(), msg: format!("{v} is not in 1..=2^24") });
    }
    Ok(v as usize)
}

impl LlamaConfig {
    /// Reads `llama.*` metadata (the `general.architecture` must be `llama`). Missing `output.weight` means tied
    /// embeddings. RoPE is interleaved: the GGUF converter permutes W_q/W_k rows into that layout.
    pub fn from_gguf(f: &GgufFile) -> Result<LlamaConfig> {
        let arch = f.architecture().unwrap_or("");
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture { found: arch.to_string(), expected: "`llama`" });
        }
        let key = |k: &str| format!("llama.{k}");
        let n_layer = positive(&key("block_count"), need(f, &key("block_count"))?)?;
        let d_model = positive(&key("embedding_length"), need(f, &key("embedding_length"))?)?;
        let n_head = positive(&key("attention.head_count"), need(f, &key("attention.head_count"))?)?;
        let n_head_kv = match f.get_u64(&key("attention.head_count_kv")) {
            Some(v) => positive(&key("attention.head_count_kv"), v)?,
            None => n_head,
        };
        let d_ff = positive(&key("feed_forward_length"), need(f, &key("feed_forward_length"))?)?;
        let context = positive(&key("context_length"), need(f, &key("context_length"))?)?;
        let head_dim = d_model / n_head;
        let rotary_dims = match f.get_u64(&key("rope.dimension_count")) {
            Some(v) => positive(&key("rope.dimension_count"), v)?,
            None => head_dim,
        };
        let base = f.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = f.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
        let vocab = match f.get_u64(&key("vocab_size")) {
            Some(v) => positive(&key("vocab_size"), v)?,
            None => f.get_array("tokenizer.ggml.tokens").map(|a| a.len()).ok_or_else(|| ModelError::BadConfig {
                key: key("vocab_size"),
                msg: "missing, and no tokenizer.ggml.tokens to count".into(),
            })?,
        };
        let cfg = LlamaConfig {
            n_layer,
            d_model,
            n_head,
            n_head_kv,
            head_dim,
            d_ff,
            vocab,
            context,
            rms_eps,
            rope: RopeConfig { style: RopeStyle::Interleaved, base, rotary_dims },
            tied_embeddings: f.tensor_info("output.weight").is_none(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (`LlamaForCausalLM`-style keys). RoPE is NeoX (rotate-half), the layout
    /// of Hugging Face checkpoints.
    pub fn from_hf_json(json: &str) -> Result<LlamaConfig> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ModelError::Safetensors(format!("config.json: {e}")))?;
        if let Some(mt) = v.get("model_type").and_then(|m| m.as_str())
            && !matches!(mt, "llama" | "mistral")
        {
            return Err(ModelError::UnsupportedArchitecture { found: mt.into(), expected: "`llama` or `mistral`" });
        }
        let int = |k: &str| -> Result<usize> {
            let n = v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| ModelError::BadConfig {
                key: k.into(),
                msg: "missing or not a non-negative integer".into(),
            })?;
            positive(k, n)
        };
        let n_head = int("num_attention_heads")?;
        let d_model = int("hidden_size")?;
        let head_dim =
            if v.get("head_dim").is_some_and(|x| !x.is_null()) { int("head_dim")? } else { d_model / n_head };
        let n_head_kv = if v.get("num_key_value_heads").is_some_and(|x| !x.is_null()) {
            int("num_key_value_heads")?
        } else {
            n_head
        };
        let float = |k: &str, default: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(default);
        let cfg = LlamaConfig {
            n_layer: int("num_hidden_layers")?,
            d_model,
            n_head,
            n_head_kv,
            head_dim,
            d_ff: int("intermediate_size")?,
            vocab: int("vocab_size")?,
            context: if v.get("max_position_embeddings").is_some() { int("max_position_embeddings")? } else { 2048 },
            rms_eps: float("rms_norm_eps", 1e-6),
            rope: RopeConfig { style: RopeStyle::NeoX, base: float("rope_theta", 10_000.0), rotary_dims: head_dim },
            tied_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The Hugging Face `config.json` for this configuration (the inverse of [`LlamaConfig::from_hf_json`]).
    pub fn to_hf_json(&self) -> String {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "head_dim": self.head_dim,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.context,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope.base,
            "tie_word_embeddings": self.tied_embeddings,
        })
        .to_string()
    }

    /// Checks the relations between the fields (heads divide evenly, RoPE dims fit, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(ModelError::BadConfig { key: key.into(), msg });
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(
                "head_count_kv",
                format!("{} query heads are not a multiple of {}", self.n_head, self.n_head_kv),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("head size {} must be even and positive", self.head_dim));
        }
        let r = self.rope.rotary_dims;
        if r == 0 || !r.is_multiple_of(2) || r > self.head_dim {
            return bad(
                "rope.dimension_count",
                format!("{r} must be even and at most the head size {}", self.head_dim),
            );
        }
        if !(self.rope.base.is_finite() && self.rope.base > 0.0) {
            return bad("rope.freq_base", format!("{} must be finite and positive", self.rope.base));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad("rms_norm_eps", format!("{} must be finite and non-negative", self.rms_eps));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.n_head / self.n_head_kv
    }

    /// Parameter count (embedding counted once when tied).
    pub fn n_params(&self) -> usize {
        let attn = self.d_model * self.head_dim * (2 * self.n_head + 2 * self.n_head_kv);
        let ffn = 3 * self.d_model * self.d_ff;
        let per_layer = attn + ffn + 2 * self.d_model;
        let head = if self.tied_embeddings { 0 } else { self.vocab * self.d_model };
        self.n_layer * per_layer + self.vocab * self.d_model + head + self.d_model
    }
}
