//! # effllm-model
//!
//! The model traits every effllm technique crate programs against, and a Llama-family decoder that implements
//! them, loaded from GGUF (quantized blocks kept as they are, or dequantized to f32/bf16) or from a Hugging Face
//! safetensors checkpoint.
//!
//! ## The decoder
//!
//! For a residual stream `x` (one row per token), each of the `L` blocks computes
//!
//! ```text
//! a  = rms(x) ⊙ g_attn                         rms(v) = v / √(mean(v²) + ε)
//! x += W_o · Attention(RoPE(W_q a), RoPE(W_k a), W_v a)       softmax(q kᵀ/√D + mask) v, per head
//! f  = rms(x) ⊙ g_ffn
//! x += W_down · (silu(W_gate f) ⊙ (W_up f))
//! logits = W_lm · (rms(x) ⊙ g_out)                 (W_lm = the embedding when tied)
//! ```
//!
//! with grouped-query attention (query head `h` reads KV head `⌊h / (H / H_kv)⌋`) and rotary embeddings with
//! `θᵢ = base^(−2i/D)`. **RoPE layout follows the weights**: GGUF's converter permutes the W_q/W_k rows of each
//! head (GGUF row `2i + j` = HF row `j·D/2 + i`), so GGUF weights need interleaved pairs `(x₂ᵢ, x₂ᵢ₊₁)` and
//! Hugging Face weights need NeoX pairs `(xᵢ, xᵢ₊D/2)`. Using NeoX on GGUF weights (a common bug) moves
//! SmolLM2's logits by up to 23.5.
//!
//! ## Traits
//!
//! - [`CausalLm`]: vocabulary, context length, a fresh [`KvCache`], and [`CausalLm::forward`] over a [`Batch`]
//!   of new tokens with explicit positions and a [`BatchMask`] over cached + new tokens (causal, a token tree
//!   for SpecExec-style verification, or an explicit mask), returning the logits of the rows asked for.
//! - [`LayeredLm`]: the same model in pieces — embed, run a range of layers, final norm, LM head — for
//!   LayerSkip's early exit and self-speculation; with [`ForwardHooks`] to capture post-RoPE queries
//!   (TriForce), FFN inputs and hidden states (NEST), FFN intermediate activations and to replace the FFN with a
//!   neuron subset (GRIFFIN; [`LlamaFfn::subset`]).
//! - [`KvCache`]: per layer and KV head, post-RoPE keys and values with append, truncate, compaction to chosen
//!   slots (per head too), read access, and a pluggable [`KvCachePolicy`] (StreamingLLM's
//!   [`SinkWindowPolicy`] ships here; H2O-style policies can ask for attention probabilities).
//!
//! ## Example
//!
//! ```no_run
//! use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows};
//!
//! # fn main() -> Result<(), effllm_model::ModelError> {
//! let path = effllm_gguf::model_cache::smollm2_path().expect("run `cargo xtask fetch-model`");
//! let model = LlamaModel::open_gguf(&path, &LoadOptions::default())?;
//! let mut cache = model.new_cache();
//! // "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
//! let prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
//! let logits = model.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?;
//! let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
//! assert_eq!(next, 504); // "The"
//! # Ok(()) }
//! ```
//!
//! A runnable version without the real model lives in the crate's tests (`tests/tiny.rs` builds a random tiny
//! model as an in-memory GGUF).
#![deny(missing_docs)]

mod batch;
mod cache;
mod config;
mod error;
mod graph;
mod hooks;
mod llama;
mod offload;
pub mod reference;
mod weights;

use std::ops::Range;

pub use batch::{Batch, BatchMask};
pub use cache::{KvCache, KvCachePolicy, LayerKv, SinkWindowPolicy};
pub use config::LlamaConfig;
pub use effllm_tensor::{DType, Device, Tensor};
pub use error::{ModelError, Result};
pub use graph::GraphDecoder;
pub use hooks::{CaptureHidden, ForwardHooks, NoHooks};
pub use llama::{LlamaFfn, LlamaLayer, LlamaModel, LoadOptions};
pub use offload::OffloadedLlama;
pub use weights::{Embedding, Linear, WeightFormat};

/// Which rows of a batch get logits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token.
    All,
    /// Only the last new token (generation).
    Last,
    /// These batch indices, in this order.
    Rows(Vec<usize>),
}

impl LogitRows {
    /// The selected rows of `h` = `[T, d]`.
    pub fn select(&self, h: &Tensor) -> Result<Tensor> {
        let t = h.shape()[0];
        Ok(match self {
            LogitRows::All => h.clone(),
            LogitRows::Last => h.narrow(0, t - 1, 1)?,
            LogitRows::Rows(rows) => {
                if let Some(&r) = rows.iter().find(|&&r| r >= t) {
                    return Err(error::invalid("logit rows", format!("row {r} of a {t}-token batch")));
                }
                let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
                h.index_select(0, &Tensor::from_slice(&ids, &[ids.len()], &h.device())?)?
            }
        })
    }
}

/// A causal language model with a KV cache: what speculative decoders, samplers and evaluators need.
pub trait CausalLm {
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Longest sequence (highest position + 1) the model accepts.
    fn context_length(&self) -> usize;
    /// Where the model computes.
    fn device(&self) -> Device;
    /// An empty cache for this model.
    fn new_cache(&self) -> KvCache;
    /// Runs the batch's tokens, appending their keys and values to `cache` (every layer), and returns f32 logits
    /// `[rows, vocab]` for `rows`. Undo a speculative batch with [`KvCache::truncate`] or keep accepted slots
    /// with [`KvCache::compact`].
    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> Result<Tensor>;
}

/// A [`CausalLm`] that can be run layer by layer.
pub trait LayeredLm: CausalLm {
    /// Number of blocks.
    fn n_layers(&self) -> usize;
    /// Residual width.
    fn d_model(&self) -> usize;
    /// Token embeddings `[T, d]` (f32).
    fn embed(&self, tokens: &[u32]) -> Result<Tensor>;
    /// Runs blocks `layers` on `h` = `[T, d]` for `batch` (its positions and mask), appending to exactly those
    /// layers of `cache`.
    fn run_layers(
        &self,
        h: Tensor,
        layers: Range<usize>,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor>;
    /// The final RMSNorm.
    fn final_norm(&self, h: &Tensor) -> Result<Tensor>;
    /// The LM head on normalised rows: `[T, d] → [T, vocab]`.
    fn lm_head(&self, h: &Tensor) -> Result<Tensor>;
    /// Final norm then LM head (early exit from any layer).
    fn unembed(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head(&self.final_norm(h)?)
    }
}
