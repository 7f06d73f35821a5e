//! # effllm-train
//!
//! Pretraining a Llama-family decoder from scratch with effllm's own autograd, on the Rust documentation corpus
//! and the SmolLM2 tokenizer. The decoder that trains is [`effllm_model::LlamaModel`], the one that serves
//! inference: its weights are requires-grad leaves, and a batch of packed sequences runs through the same layers
//! ([`Batch::sequences`](effllm_model::Batch::sequences)).
//!
//! **Architectures** ([`config::Architecture`], [`TrainableModel`]): the same loop trains
//! [`megalodon::Megalodon`] with `"architecture": "megalodon"` and a [`MegalodonShape`] in the model section
//! (presets `cpu-small-megalodon`, `gpu-medium-megalodon`, of the Llama presets' parameter counts). Every packed row
//! is an independent sequence: Megalodon runs the rows as its batch dimension from a fresh state. Megalodon trains
//! in f32 without per-layer recomputation; asking for bf16 or activation checkpointing is a [`TrainError::Config`].
//!
//! **Token files** ([`TokenFile`]): the tokenized training and validation streams in one versioned, validated file,
//! for machines without the Rust docs or the tokenizer (`effllm train --save-tokens` / `--tokens`).
//!
//! ## One step
//!
//! For `A` micro-batches of `B` rows of `L + 1` tokens (inputs `x`, targets `y` = `x` shifted by one):
//!
//! ```text
//! loss_a = (1 / (B·L)) Σ_{b,t} −log softmax(f_θ(x_b)_t)[y_{b,t}]          (mean cross-entropy, f32)
//! g      = Σ_a ∇θ (loss_a / A)                                             (gradient accumulation)
//! g      ← g · min(1, c / (‖g‖₂ + 1e-6))                                   (global-norm clipping, c = clip_norm)
//! θ      ← AdamW(θ, g, γ_s)                                                (decay λ on matrices only)
//! γ_s    = γ·(s+1)/W for s < W, else γ_min + ½(γ − γ_min)(1 + cos(π (s−W)/(S−W)))
//! ```
//!
//! **Mixed precision** ([`Precision::Bf16`]): every step casts the f32 master matrices to bf16 through the
//! differentiable `to_dtype`, and each linear map runs as [`Tensor::linear_mixed`](effllm_tensor::Tensor::linear_mixed):
//! the f32 activation is rounded to bf16, the GEMM multiplies in bf16 and its f32 accumulator is the result (no
//! bf16 rounding of the output, and `∂x` is written straight into f32). Norms, softmax, attention scores, the loss
//! and the residual stream stay f32 — the split PyTorch's autocast makes, with one rounding fewer per linear — and
//! the gradients arrive in f32 on the masters. Master weights, gradients and AdamW's moments are f32.
//!
//! **Clipping** hands its factor to the optimizer with each gradient
//! ([`Optimizer::step_param_scaled`](effllm_optim::Optimizer::step_param_scaled); AdamW applies it inside its fused
//! CUDA kernel), and the global norm is one multi-tensor reduction
//! ([`Tensor::squared_norms`](effllm_tensor::Tensor::squared_norms)).
//!
//! **Activation checkpointing** ([`RunSettings::activation_checkpointing`](config::RunSettings)) wraps each layer
//! in [`effllm_tensor::checkpoint`]: only layer inputs are kept, and the backward pass recomputes the rest.
//!
//! **Memory accounting** ([`MemoryReport`]): parameter, gradient, optimizer-state and activation bytes, each
//! reported on its own at every evaluation; activations are measured by the tensor crate's live-memory counter
//! ([`effllm_tensor::memory`]), not estimated.
//!
//! **Checkpoints** ([`Trainer::save`], [`Trainer::resume`]): `model.safetensors` + `optimizer.safetensors` +
//! `trainer.json`, written atomically; resuming continues bitwise as if never stopped (same data order, same
//! optimizer state). A non-finite loss or gradient stops the run with [`TrainError::NonFinite`] before the
//! update, so the checkpoint on disk is the last good state.
//!
//! ## Example
//!
//! Train a tiny model on a synthetic "corpus" whose next token is a fixed function of the current one, and watch
//! the validation loss fall below the unigram baseline:
//!
//! ```
//! use effllm_data::TokenizedSplit;
//! use effllm_train::{TrainConfig, TrainData, Trainer};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vocab = 32;
//! let doc = |start: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| (start + 7 * i) % vocab as u32).collect() };
//! let train = TokenizedSplit::from_parts(vec!["a".into(), "b".into()], vec![doc(1, 600), doc(5, 600)]);
//! let val = TokenizedSplit::from_parts(vec!["c".into()], vec![doc(3, 200)]);
//! let mut cfg = TrainConfig::preset("tiny")?;
//! cfg.model.d_model = 32;
//! cfg.model.d_ff = 64;
//! cfg.data.seq_len = 16;
//! cfg.run.steps = 30;
//! cfg.optim.warmup_steps = 3;
//! cfg.optim.lr = 1e-2;
//! cfg.optim.min_lr = 1e-3;
//! let mut data = TrainData::from_documents(&train, &val, vocab, None, cfg.data.seq_len, "modular-walk")?;
//! let mut trainer = Trainer::new(cfg, vocab)?;
//! for _ in 0..30 {
//!     trainer.train_step(&mut data)?;
//! }
//! let eval = trainer.evaluate(&data)?;
//! assert!(eval.loss < 0.5 * data.unigram_nats(), "{} vs {}", eval.loss, data.unigram_nats());
//! # Ok(()) }
//! ```
//!
//! `effllm train --config <file>` (the `effllm` CLI) runs [`Trainer::run`] with a progress bar on the Rust-docs
//! corpus ([`rust_docs`]); [`TrainConfig::preset`] lists the built-in configurations.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod curve;
mod data;
pub mod model;
pub mod reference;
mod sources;
pub mod token_file;
mod trainer;

pub use config::{Architecture, MegalodonShape, ModelShape, PRESETS, Precision, TrainConfig};
pub use curve::{Curve, CurvePoint, train_curve};
pub use data::{DataCursor, TrainData, inputs_and_targets, unigram_cross_entropy};
pub use model::{Features, TrainableModel};
pub use sources::rust_docs;
pub use token_file::{TokenFile, TokenFileError};
pub use trainer::{
    EvalRecord, Event, GroupOptimizerFactory, MemoryReport, OptimizerFactory, StepRecord, StepTiming, Trainer, adamw,
};

use std::path::PathBuf;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A config field out of its domain, or shapes that cannot work together.
    #[error("config: {0}")]
    Config(String),
    /// Training data that cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint that cannot be resumed (truncated, another architecture or tokenizer, missing state).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {msg}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        msg: String,
    },
    /// A pre-tokenized corpus file that cannot be used (truncated, foreign, hostile).
    #[error("token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: TokenFileError,
    },
    /// A NaN or infinite loss or gradient: training stopped before the update.
    #[error("non-finite value at step {step}: {what}; training stopped, the last checkpoint is the last good state")]
    NonFinite {
        /// The step that failed.
        step: usize,
        /// What was non-finite.
        what: String,
    },
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
    /// The model rejected something.
    #[error(transparent)]
    Model(#[from] effllm_model::ModelError),
    /// The Megalodon model rejected something.
    #[error(transparent)]
    Megalodon(#[from] megalodon::MegalodonError),
    /// The optimizer rejected something.
    #[error(transparent)]
    Optim(#[from] effllm_optim::OptimError),
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
