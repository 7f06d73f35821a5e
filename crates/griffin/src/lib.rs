//! # griffin
//!
//! GRIFFIN ("Gating by Repetition In Feedforward Intermediate Neurons"; Dong, Chen and Chi, *Prompt-prompted
//! Adaptive Structured Pruning for Efficient LLM Generation*, COLM 2024, arXiv 2404.01365): training-free,
//! per-sequence selection of feed-forward neurons ("experts") from the prompt's own activations, then generation
//! with only those neurons.
//!
//! ## The method
//!
//! For one layer, let `Z ∈ R^{S×d_ff}` be the FFN intermediate of the `S` prompt tokens — the tensor fed into the
//! down projection: `Z = act(X W_gateᵀ) ⊙ (X W_upᵀ)` for GLU FFNs (SwiGLU, GEGLU, ReLU-GLU), `Z = act(X W_1ᵀ + b_1)`
//! for plain ones (OPT). Within a sequence the *relative* activation magnitudes are consistent across tokens
//! ("flocking"), so
//!
//! ```text
//! Z̄[s,:] = Z[s,:] / ‖Z[s,:]‖₂                       (each token normalised)
//! s_j    = ‖Z̄[:,j]‖₂ = √( Σ_s Z̄[s,j]² )              (per neuron, over the prompt)
//! k      = ⌊d_ff · density⌋                          (density 0.5 by default)
//! E      = the k largest s_j                          (ties: lower index; sorted ascending)
//! FF_E(x) = W_down[:, E] · ( act(W_gate[E,:] x) ⊙ (W_up[E,:] x) )          (GLU)
//! FF_E(x) = W_2[:, E] · act(W_1[E,:] x + b_1[E]) + b_2                      (plain)
//! ```
//!
//! The prompt runs the dense FFN (so the prompt's logits and KV cache are untouched and the first generated token is
//! the dense model's); every generated token runs `FF_E`. `Σ_j s_j² = S` (each normalised row has unit norm), and
//! `FF_E(x) = W_down (m ⊙ z)` with `m` the 0/1 mask on `E` (the "mask form"). Nothing is trained or calibrated.
//!
//! ## Pieces
//!
//! - [`NeuronStat`]: the streaming statistic `acc_j = s_j²` (f32), fed chunk by chunk; padding rows excluded by a
//!   mask; all-zero rows skipped.
//! - [`select_experts`]: [`Selection::TopK`] (GRIFFIN), the reference's `sample`, `topk_sample` and `random`, and
//!   the static [`Selection::Magnitude`] baseline. Every random choice takes a seed.
//! - [`GatedFfn`], [`Ffn`], [`Act`], [`FfnForm`]: SwiGLU, GEGLU, ReLU-GLU and plain (OPT) FFNs; effllm-model's
//!   [`LlamaFfn`](effllm_model::LlamaFfn) implements [`GatedFfn`].
//! - [`PrunedFfn`]: `FF_E` with gathered weights. Quantized gate/up rows stay blocks; a Q4_0/Q4_1 down keeps its
//!   block scales and only the experts' 4-bit codes ([`PackedDown`], exact, AVX2 + scalar CPU kernels and a CUDA
//!   kernel through effllm-tensor's custom-kernel API), so pruned decode reads fewer bytes than dense.
//! - [`GriffinFfn`]: one layer's phases (prefill, finalize, decode, class mode).
//! - [`GriffinLlama`] and [`SequenceExperts`]: the whole model through effllm-model's `ForwardHooks`, one state
//!   per sequence (packed multi-sequence batches keep per-sequence experts).
//! - [`reference`](mod@reference): naive f64 versions of all of the above, the oracle of the tests.
//!
//! ## Paper, reference code, and this crate
//!
//! | topic | reference code (`hdong920/GRIFFIN`) | this crate (default) | switch for the reference |
//! |---|---|---|---|
//! | chunked prompts | every multi-token forward re-selects from that chunk | statistic accumulated over all chunks, frozen at `finalize` | [`StatScope::LastMultiTokenChunk`] |
//! | all-zero row | `0/0`: every score NaN | row skipped | [`ZeroRowPolicy::Nan`] |
//! | order of `E` | descending score (`torch.topk`) | ascending (density 1 is bitwise dense) | `sort_indices = false` |
//! | `topk_sample` count | `2⌊k/2⌋` (k − 1 for odd k) | exactly k | `TopKSample { exact_k: false }` |
//! | ties | unspecified | lower index first | — |
//! | batches | batch size 1 (asserted) | one expert set per sequence, padding excluded | — |
//! | precision of the statistic | model dtype (fp16 in the scripts) | f32 accumulation | — |
//! | short prompts | — | `min_prompt_tokens` falls back to dense or magnitude | `min_prompt_tokens = 0` |
//! | pruned weights | copies | copies ([`PrunedStorage::Copy`]) or the mask form on shared weights ([`PrunedStorage::Gather`]) | — |
//!
//! ## Example
//!
//! ```
//! use effllm_model::Linear;
//! use effllm_tensor::{rng::CounterRng, DType, Device, Tensor};
//! use griffin::{Act, Ffn, GatedFfn, GriffinConfig, GriffinFfn};
//!
//! # fn main() -> griffin::Result<()> {
//! let (d, d_ff) = (8, 16);
//! let randn = |shape: &[usize], seed: u64| {
//!     Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, 0.5)
//! };
//! let w = |rows: usize, cols: usize, seed: u64| -> griffin::Result<Linear> {
//!     Ok(Linear::Dense(randn(&[rows, cols], seed)?))
//! };
//! let ffn = Ffn::glu(w(d_ff, d, 1)?, w(d_ff, d, 2)?, w(d, d_ff, 3)?, Act::Silu)?;
//! let g = GriffinFfn::new(ffn, GriffinConfig::default(), 0)?; // density 0.5: k = 8
//!
//! // The prompt: dense outputs, statistic accumulated.
//! let prompt = randn(&[5, d], 4)?;
//! let mut stat = g.new_stat();
//! let dense_out = g.prefill(&prompt, &mut stat)?;
//! assert_eq!(dense_out.to_vec::<f32>()?, g.dense().forward(&prompt)?.to_vec::<f32>()?);
//! let total: f32 = stat.sumsq().iter().sum();
//! assert!((total - 5.0).abs() < 1e-4); // Σ s_j² = number of prompt rows
//!
//! // Freeze the experts, then decode with half the neurons.
//! let pruned = g.finalize(&stat)?;
//! assert_eq!(pruned.k(), 8);
//! let token = randn(&[1, d], 5)?;
//! let y = g.decode(&token, &pruned)?;
//! assert_eq!(y.shape(), &[1, d]);
//! # Ok(()) }
//! ```
//!
//! On a real model ([`GriffinLlama`]):
//!
//! ```no_run
//! use effllm_model::{Batch, LlamaModel, LoadOptions, LogitRows};
//! use griffin::{GriffinConfig, GriffinLlama};
//!
//! # fn main() -> griffin::Result<()> {
//! let path = effllm_gguf::model_cache::smollm2_path().expect("run `cargo xtask fetch-model`");
//! let model = LlamaModel::open_gguf(&path, &LoadOptions::default())?;
//! let griffin = GriffinLlama::new(&model, GriffinConfig::default())?;
//! let mut seq = griffin.new_sequence();
//! let mut cache = effllm_model::CausalLm::new_cache(&model);
//! let prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
//! let mut logits = griffin.prefill(&mut seq, &Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?;
//! griffin.finalize(&mut seq)?;
//! for i in 0..8 {
//!     let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
//!     logits = griffin.decode(&mut seq, &Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last)?;
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod config;
mod error;
mod ffn;
mod layer;
mod model;
pub mod packed;
mod pruned;
pub mod reference;
mod select;
mod stat;

pub use config::{
    GriffinConfig, PrunedStorage, Selection, ShortPromptFallback, StatScope, ZeroRowPolicy, k_for_density,
};
pub use error::{GriffinError, Result};
pub use ffn::{Act, Ffn, FfnForm, GatedFfn};
pub use layer::GriffinFfn;
pub use model::{GriffinLlama, SequenceExperts};
pub use packed::{KERNEL_SOURCE, PackedDown};
pub use pruned::{DenseWeights, PrunedFfn};
pub use select::{ExpertSet, select_experts, select_experts_stream};
pub use stat::NeuronStat;
