//! # megalodon
//!
//! Megalodon (Ma et al., "Megalodon: Efficient LLM Pretraining and Inference with Unlimited Context Length",
//! arXiv 2404.08801) on `effllm-tensor`: a decoder whose attention only runs inside fixed-size chunks, while a
//! complex exponential moving average (CEMA) and a timestep normalisation carry state across chunks, so the cost per
//! decoded token stays flat in the context length. Everything trainable is differentiable through effllm-tensor's
//! autograd; the primitives that are not cheap compositions of existing ops (the FFT convolution, the CEMA power
//! sums of [`cema_ops`] and the timestep norm) are custom ops with hand-written backward rules
//! ([`effllm_tensor::autograd::custom_op`]), each checked against central finite differences.
//!
//! ## The pieces
//!
//! **CEMA** ([`Cema`]). Channel `d` of `D` keeps a complex state `h ∈ ℂ^N`, with coefficients in the reference
//! code's parameterisation (`n = 1..N`):
//!
//! ```text
//! p = σ(alpha)            q = (1 − σ(alpha)σ(delta)) · e^{iφ},  φ[d, n] = σ(theta_d) · 2πn/N
//! γ = (gamma_re + i·gamma_im)/√N
//! h_t = p ⊙ x_t + q ⊙ h_{t−1}          y_t = Re(Σ_n γ_n h_{t,n}) + ω_d x_t
//! ```
//!
//! Unrolled, `y = causal_conv(x, k) + b(h₀) + ω ⊙ x` with the kernel `k[d, j] = Re Σ_n γ_n p_n q_n^j`, the state
//! bias `b[t] = Re Σ_n γ_n q_n^{t+1} h₀` and the final state `h_L = p Σ_j q^{L−1−j} x_j + q^L h₀`; powers are
//! `exp(j·ln q)`, never repeated products. [`Cema::forward`] is this parallel form with the convolution by FFT
//! ([`causal_conv`], zero-padded to a power of two `≥ 2L − 1`, so linear, not circular); [`Cema::forward_scan`] and
//! [`Cema::step`] are the recurrence for decoding. Both carry the state in and out and agree to rounding.
//!
//! **Timestep norm** ([`TimestepNorm`]). Group-wise mean and variance accumulated over all steps so far, the
//! within-group variance of each step included (Chan's merge; see the [`tsn`] module):
//! `y_t = (x_t − m_t)/√(v_t + ε) · (1 + w) + b`, with `m_t`, `v_t` the mean and population variance of every feature
//! of the group at steps `≤ t` (and a prior `(count, mean, var)` from the state).
//!
//! **Layer** ([`MegalodonLayer`], the reference's moving-average gated attention):
//!
//! ```text
//! x̂ = TSN(x);  mx = RMSNorm(CEMA(x̂))·(1 + w)
//! ẑ = per-head RMSNorm(W_z mx + b_z);  q = ẑ(1 + γ_q)/√dz + β_q;  k = ẑ(1 + γ_k)/√dz + β_k
//! v = silu(W_v x̂ + b_v);  r = silu(W_r mx + b_r)
//! o = softmax(q kᵀ + causal-in-chunk mask) v      (scale 1, RoPE at the position inside the chunk)
//! out = x + W_h1 mx + b_h1 + W_h2 (o ⊙ r)
//! ```
//!
//! **Block and model** ([`NormalizedFfn`], [`Megalodon`]). `out = α ⊙ fc2(silu(fc1 LN(y))) + x`: the FFN's residual
//! is the block input `x`, not the layer output `y` (the two-hop residual); the final norm is another timestep norm.
//! [`Megalodon::forward`] continues from a [`MegalodonState`] and advances it, over any length (split at chunk
//! boundaries internally); [`Megalodon::step`] decodes one token with the CEMA recurrence.
//!
//! ## Paper vs reference code
//!
//! - The paper puts the phase `e^{iφ}` on both terms of the recurrence; the code only in `q`. They are one model
//!   under `η = γ e^{−iφ}`; this crate follows the code and converts with [`Cema::to_paper_eta`] /
//!   [`Cema::with_paper_eta`].
//! - Attention scale 1 (no `1/√d`), as in the code; [`MegalodonLayer::set_attention_scale`] for experiments.
//! - The code asserts `L < C` or `L mod C = 0`, and that a cached call does not cross a chunk end; here
//!   `forward` accepts any length unless [`MegalodonConfig::strict_reference_shapes`] is set.
//! - The timestep norm includes the within-group variance (as the reference's CUDA and C++ code do; one public port
//!   drops it).
//! - Not implemented: dropout (all dropouts are 0 in the reference defaults), the per-feature TSN variant with a
//!   trainable prior, and the reference generation's TSN-statistics truncation hack.
//!
//! ## Example
//!
//! ```
//! use effllm_tensor::{DType, Device, Tensor};
//! use megalodon::{Megalodon, MegalodonConfig};
//!
//! # fn main() -> megalodon::Result<()> {
//! let mut cfg = MegalodonConfig::tiny(64);
//! (cfg.num_layers, cfg.model_dim, cfg.z_dim, cfg.value_dim, cfg.ffn_hidden_dim) = (1, 16, 8, 16, 32);
//! (cfg.cema_ndim, cfg.norm_num_groups, cfg.chunk_size) = (4, 4, 4);
//! let model = Megalodon::new(cfg, DType::F64, &Device::Cpu, 7)?;
//!
//! // Prefill 6 tokens (one chunk and a half), then decode 2 one at a time.
//! let tokens: Vec<u32> = vec![3, 14, 15, 9, 2, 6, 5, 35];
//! let mut state = model.init_state(1)?;
//! let prefill = Tensor::from_vec(tokens[..6].to_vec(), &[1, 6], &Device::Cpu)?;
//! model.forward(&prefill, &mut state)?;
//! let mut last = Vec::new();
//! for &t in &tokens[6..] {
//!     last = model.step(&Tensor::from_vec(vec![t], &[1], &Device::Cpu)?, &mut state)?.to_vec::<f64>()?;
//! }
//!
//! // The same as one forward over all 8 tokens.
//! let mut fresh = model.init_state(1)?;
//! let all = model.forward(&Tensor::from_vec(tokens, &[1, 8], &Device::Cpu)?, &mut fresh)?;
//! let want = all.narrow(1, 7, 1)?.to_vec::<f64>()?;
//! assert!(last.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-9));
//!
//! // Bad input is an error, not a panic.
//! let other = model.init_state(2)?;
//! assert!(model.step(&Tensor::from_vec(vec![1u32], &[1], &Device::Cpu)?, &mut other.clone()).is_err());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod attention;
pub mod cema;
pub mod cema_ops;
pub mod config;
pub mod conv;
mod cuda;
pub mod error;
pub mod layer;
pub mod model;
pub mod reference;
pub mod tsn;

pub use attention::{ChunkedAttention, KvCache};
pub use cema::{Cema, CemaCoeffs, CemaState};
pub use config::MegalodonConfig;
pub use conv::causal_conv;
pub use error::{MegalodonError, Result};
pub use layer::{CemaPath, LayerState, MegalodonLayer, NormalizedFfn};
pub use model::{Megalodon, MegalodonState};
pub use tsn::{TimestepNorm, TsnState};
