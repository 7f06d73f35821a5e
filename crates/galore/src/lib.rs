//! # galore
//!
//! GaLore (Zhao, Zhang, Chen, Wang, Anandkumar and Tian, *GaLore: Memory-Efficient LLM Training by Gradient
//! Low-Rank Projection*, ICML 2024, arXiv 2403.03507): full-parameter training whose optimizer state lives in a
//! rank-`r` subspace of each weight's gradient, refreshed every `T` steps from the gradient's SVD.
//!
//! ## The method
//!
//! For a weight `W ∈ R^{m×n}` with gradient `G_t`, rank `r′ = min(r, m, n)`, gap `T`, scale `α`, and `t` the
//! parameter's step count before the update:
//!
//! ```text
//! if t mod T = 0:  G_t = U diag(s) Vᵀ (thin SVD, f32);  P = V[:, :r′]ᵀ (right, r′×n) or U[:, :r′] (left, m×r′)
//! R_t = G_t Pᵀ (right, m×r′)   or   Pᵀ G_t (left, r′×n)   or   Aᵀ G_t Bᵀ (full, r′×r′)
//! M_t = β₁ M_{t−1} + (1 − β₁) R_t          V_t = β₂ V_{t−1} + (1 − β₂) R_t²
//! N_t = M_t / (√V_t + ε)                     η_t = η √(1 − β₂^{t+1}) / (1 − β₁^{t+1})
//! W_{t+1} = (W_t − η_t α back(N_t)) (1 − ηλ)   with back(N) = N P (right), P N (left), A N B (full)
//! ```
//!
//! `std` projects on the smaller side (right if `m ≥ n`), so the moments hold `2 · max(m, n) · r′` values instead
//! of Adam's `2mn`, plus `min(m, n) · r′` for `P`. The moments are *not* reset or rotated when `P` changes (the
//! reference's behaviour; [`GaLoreOptions::reproject_first_moment`] carries `M` into the new basis instead).
//!
//! ## Pieces
//!
//! - [`GaLoreProjector`]: [`ProjType`] `Std`, `ReverseStd`, `Left`, `Right`, `Full`; the [`Side`] decided once from
//!   the shape and stored; the effective rank; the refresh rule (steps 0, T, 2T, …); `project` / `project_back`
//!   (`α` applied on the way back).
//! - [`BasisSource`]: [`ExactSvd`] (faer thin SVD in f32 through [`Tensor::thin_svd`](effllm_tensor::Tensor::thin_svd)),
//!   [`RandomizedSvd`] (seeded sketch + power iterations, GaLore 2), [`Replay`] (recorded or injected bases).
//! - [`InnerOptimizer`]: [`Adam`] (galore-torch's `GaLoreAdamW` = HF `AdamW` by default, `torch.optim.AdamW` with
//!   [`AdamConfig::torch`]), [`Adam8bit`] (block-wise 8-bit dynamic-map moments, f32 below 4096 elements),
//!   [`Sgd`] (`torch.optim.SGD`), [`Adafactor`] (galore-torch's `GaLoreAdafactor`, fixed learning rate).
//! - [`GaLore`]: the wrapper, an [`effllm_optim::Optimizer`] (per-parameter `step_param`, checkpoints through
//!   `export_state` / `import_state` with the projector, `state_bytes`). Parameters without GaLore settings get the
//!   inner optimizer unchanged. [`backward_layerwise`] updates each parameter inside the backward sweep.
//! - [`reference`](mod@reference): naive f64 projection, GaLore-Adam and GaLore-Adafactor, the oracle of the tests.
//!
//! ## Reference code vs paper, and this crate's switches
//!
//! | topic | galore-torch 1.0 | paper | this crate (default) | switch |
//! |---|---|---|---|---|
//! | ε | `√V + ε`, bias corrections in `η_t` (HF) | `√V̂ + ε` | HF | [`EpsMode::Torch`] |
//! | weight decay | after the update, plain `η` | — | after | [`DecayMode::TorchBeforeUpdate`] |
//! | side of `project_back` | inferred from `R`'s shape: `reverse_std` with `m < n`, `r ≥ m` (square `R`) multiplies on the wrong side | — | stored [`Side`] | — |
//! | rank > `min(m, n)` | silently sliced | — | capped, recorded in [`GaLore::rank_notices`] | [`GaLoreOptions::strict_rank`] |
//! | moments at a refresh | kept as they are | — | kept | [`GaLoreOptions::reproject_first_moment`] |
//! | SVD | `torch.linalg.svd` in f32 | exact | faer in f32 | [`RandomizedSvd`] |
//! | 8-bit moments | bitsandbytes kernels | — | own block-wise dynamic map (block 256) | [`Adam8bit::with_block_size`] |
//! | optimizer resume | none (#35), pickled projector | — | plain tensors + scalars, checked on import | — |
//!
//! ## Measurements
//!
//! - `cargo xtask bench-all --only galore` (scenario `galore` of effllm-benches): pretrains effllm-train's
//!   `cpu-small` Llama on the Rust-docs corpus with AdamW, GaLore-AdamW at rank `d/4` and GaLore with 8-bit moments
//!   (same steps, data order and seed): validation perplexity, optimizer-state bytes (whole model and projected
//!   matrices), step time and the cost of the SVD refresh steps, with a loss plot. It plugs GaLore into the trainer
//!   through `Trainer::with_group_optimizer`, whose factory sees each parameter group by name.
//! - `examples/step_speed.rs`: the optimizer step alone over a preset's parameter shapes (`cpu-small`,
//!   `gpu-medium`), refresh and ordinary steps timed separately between device synchronisations; with
//!   `--features cuda -- --device cuda:0` on a GPU. `scripts/bench/galore_torch_step.py` times galore-torch's
//!   `GaLoreAdamW` on the same shapes.
//! - `examples/tiny_pretrain.rs`: a 2-layer toy on a synthetic Markov source; `benches/svd_refresh.rs`: the SVD and
//!   projection cost per weight shape.
//!
//! ## Example
//!
//! ```
//! use effllm_optim::Optimizer;
//! use effllm_tensor::{rng::CounterRng, DType, Device, Tensor};
//! use galore::{Adam, AdamConfig, GaLore, GaLoreParams, ProjType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rng = CounterRng::new(7, 0);
//! let target = Tensor::randn(&[16, 8], DType::F32, &Device::Cpu, &rng, 0, 0.0, 1.0)?;
//! let mut w = Tensor::zeros(&[16, 8], DType::F32, &Device::Cpu)?.requires_grad();
//! let mut opt = GaLore::new(Adam::new(AdamConfig { lr: 0.05, ..AdamConfig::default() })?);
//! let params = GaLoreParams { rank: 4, update_proj_gap: 10, scale: 1.0, proj_type: ProjType::Std, matrix_shape: None };
//! opt.add_target(&w, params)?;
//! let loss0 = w.sub(&target)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
//! for _ in 0..30 {
//!     let grads = w.sub(&target)?.sqr()?.sum_all()?.backward()?; // minimise ‖W − W*‖²
//!     opt.step(std::slice::from_mut(&mut w), &grads)?;
//! }
//! let loss = w.sub(&target)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
//! assert!(loss < 0.8 * loss0);
//! let id = w.id().unwrap();
//! assert_eq!(opt.projector(id).unwrap().svd_count(), 3); // steps 0, 10, 20
//! assert_eq!(opt.projector(id).unwrap().low_rank_shape(), [16, 4]); // m ≥ n: right projection
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod adafactor;
mod basis;
mod error;
mod galore;
mod inner;
mod layerwise;
mod projector;
mod quant8;
pub mod reference;

pub use adafactor::{Adafactor, AdafactorConfig, AdafactorState, SecondMoment};
pub use basis::{BasisRequest, BasisSource, ExactSvd, ParamKey, RandomizedSvd, Replay};
pub use error::{GaLoreError, Result};
pub use galore::{GaLore, GaLoreOptions, RankNotice, is_llama_projection};
pub use inner::{Adam, AdamConfig, AdamState, DecayMode, EpsMode, InnerOptimizer, Sgd, SgdState, WeightDecay};
pub use layerwise::{LayerwiseOutcome, backward_layerwise};
pub use projector::{Basis, GaLoreParams, GaLoreProjector, ProjType, Side};
pub use quant8::{Adam8bit, Adam8bitState, BlockQuantized, dynamic_map};

/// effllm-optim's SGD hyperparameters, used by [`Sgd`].
pub use effllm_optim::SgdConfig;
