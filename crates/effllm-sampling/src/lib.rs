//! # effllm-sampling
//!
//! Token sampling and the shared speculative-verification rules of effllm, written once for every speculative
//! decoder in the workspace (SpecExec, TriForce, LayerSkip self-speculation, NEST):
//!
//! - [`SamplingParams`] → [`process_logits`] / [`LogitsProcessor`]: a logits row (`&[f32]`, one row of the
//!   model's logits) to the **processed distribution**, the one actually sampled from, with temperature, top-k,
//!   top-p, min-p and repetition / presence / frequency penalties;
//! - [`Sampler`]: sampling with a seeded, replayable counter-based stream ([`SeededUniforms`] over
//!   `effllm_tensor::rng::CounterRng`, Philox4x32-10);
//! - [`verify_chain`] (rejection sampling), [`verify_greedy`], [`verify_sample_match`], [`verify_token_match`]
//!   and the [`Verifier`] switch; [`verify_tree_sample_match`] (SpecExec), [`verify_tree_rejection`] /
//!   [`verify_siblings`] (SpecInfer), [`verify_tree_greedy`]; [`verify_relaxed`] (NEST, lossy);
//! - [`reference`](mod@reference): naive f64 versions of all of it, and [`stats`]: the χ² goodness-of-fit test the statistical
//!   tests use.
//!
//! Every fallible function returns a typed [`SamplingError`]; NaN or +∞ logits, empty rows, invalid
//! parameters, out-of-range tokens, malformed trees never panic. (−∞ logits are accepted: they mask a token.)
//!
//! ## Processing order
//!
//! penalties → temperature → top-k → top-p → min-p → softmax, i.e. **HF `transformers`' order**
//! ([`FilterOrder::TemperatureFirst`], the default): repetition penalty is a logits processor applied before the
//! warpers, and the warpers run Temperature, TopK, TopP, MinP. It is chosen because TriForce, SpecExec and
//! LayerSkip all process p and q with HF's warpers, so golden vectors and reported numbers compare directly.
//! llama.cpp's default chain applies the temperature *after* the filters; [`FilterOrder::TemperatureLast`]
//! reproduces it. Details of each stage are on [`LogitsProcessor`]:
//!
//! - temperature T = 0 → greedy: one-hot at the argmax of the penalised logits, **lowest id on ties**, no draw;
//! - top-k keeps ties with the k-th largest logit (HF, TriForce);
//! - top-p keeps the **smallest** set of most probable tokens whose cumulative mass reaches p (order:
//!   probability descending, ties by ascending id); top-p ≥ 1 is off, top-p ≤ 0 is an error;
//! - min-p keeps tokens with p ≥ min_p · p_max;
//! - CTRL repetition penalty θ: a positive logit is divided by θ, a non-positive one multiplied, once per token
//!   present in the window; then `count · frequency + presence` is subtracted.
//!
//! **The SpecExec reference code has top-p backwards** (`specexec.md` §4 D1): it sorts descending but keeps
//! HF's ascending-sort condition, removing the *most* probable tokens whose cumulative mass is ≤ 1 − p and never
//! the tail; at p = 0.9 it does nothing once the top token has probability > 0.1. This crate implements the
//! standard nucleus; [`NucleusMode::ReferenceInverted`] reproduces the bug for golden vectors only.
//!
//! ## Sampling and determinism
//!
//! [`sample_from_probs`]`(π, u)` returns the smallest id i with Σ_{j≤i} π_j > u·Σπ (inverse CDF). Every
//! sampled token consumes exactly one uniform; greedy decoding consumes none. All randomness enters through
//! [`UniformSource`]; [`Sampler`] and [`SeededUniforms`] read draw n of `CounterRng::new(seed, stream)` at an
//! explicit counter, so the same seed gives the same tokens and [`Sampler::seek`] replays draws exactly.
//!
//! ## Speculative verification
//!
//! Notation: draft tokens x_1..x_n with x_i ~ q_i; target distributions p_1..p_{n+1} from one target forward.
//! Both p and q must be the **processed** distributions actually sampled from (after each model's temperature
//! and filters), e.g. from [`Sampler::distribution`].
//!
//! **Rejection sampling** ([`verify_chain`], Leviathan et al. 2023, Chen et al. 2023). Accept x_i with
//! probability
//!
//! ```text
//! a_i = min(1, p_i(x_i) / q_i(x_i))            (test: u_i · q_i(x_i) < p_i(x_i))
//! ```
//!
//! and at the first rejection emit y ~ r_i with the residual
//!
//! ```text
//! r_i(y) = max(0, p_i(y) − q_i(y)) / Σ_z max(0, p_i(z) − q_i(z));
//! ```
//!
//! if all n are accepted, emit a bonus token from p_{n+1}. *Exactness:* for one position,
//!
//! ```text
//! P(emit y) = q(y)·min(1, p(y)/q(y)) + (1 − β)·r(y) = min(p(y), q(y)) + max(0, p(y) − q(y)) = p(y),
//! β = Σ_z min(p(z), q(z)),  1 − β = Σ_z max(0, p(z) − q(z)),
//! ```
//!
//! so every emitted token is distributed as the target conditional given the tokens before it; by induction
//! over positions the emitted sequence is distributed exactly as autoregressive sampling from p. β = 1 − TV(p, q)
//! is the acceptance probability. The residual is identically zero only when p = q, where rejection has
//! probability 0; if rounding reaches it anyway the replacement is sampled from p (TriForce's `max_fn` divides by
//! zero there). A draft token with q(x) = 0 cannot have been sampled from q and is an error.
//!
//! **Greedy matching** ([`verify_greedy`]): with T = 0 every p_i is one-hot and the rule reduces to "accept while
//! x_i = argmax p_i"; the output equals greedy target decoding for any draft. No uniform is consumed.
//!
//! **Token matching** ([`verify_token_match`], [`Verifier::TokenMatch`]) reproduces mistral.rs's legacy
//! speculative decoding (`foundation.md` §4 row 12): its doc comment describes the rejection rule above, but the
//! code compares the draft token with the target's "speculative sample", a top-k/top-p/min-p filtered argmax.
//! The result is the greedy continuation at every temperature, exact only for greedy decoding; the statistical
//! tests show its deviation at T > 0. Comparing against a *real* target sample ([`verify_sample_match`]) is
//! exact, with the lower acceptance Σ p·q instead of Σ min(p, q).
//!
//! **Trees.** [`verify_tree_sample_match`] is SpecExec's rule (`specexec.md` §2.5): at the current node draw
//! t ~ p(node), emit it, descend if a child carries t. Exact for every tree, deterministic or not, because each
//! emitted token is a fresh target sample; SpecExec's deterministic top-k trees need exactly this.
//! [`verify_tree_rejection`] is SpecInfer's multi-round rejection over siblings ([`verify_siblings`]): exact only
//! when the children of each node were drawn from that node's q (with or without replacement, in order). At
//! T = 0 [`verify_tree_greedy`] follows the argmax.
//!
//! ## Paper versus reference code
//!
//! | reference behaviour | this crate (switch) |
//! |---|---|
//! | SpecExec: inverted top-p (keeps the tail, drops the head) | standard nucleus ([`NucleusMode::ReferenceInverted`]) |
//! | mistral.rs: token equality against a filtered argmax at T > 0 | rejection sampling ([`Verifier::TokenMatch`]) |
//! | TriForce / LayerSkip: residual `relu(x) / (Σ relu(x) + 1e-6)`, NaN on a zero residual | exact normalisation; fall back to p on a zero residual |
//! | SpecExec: one target sample per tree node after a warm-up draw | lazy walk, one uniform per emitted token ([`TreeSampling::EagerPerNode`]) |
//! | llama.cpp: temperature after the filters | HF order ([`FilterOrder::TemperatureLast`]) |
//! | NEST: deterministic "accept iff probability > ½" | kept as NEST's default ([`RelaxedRule::Bernoulli`]) |
//!
//! ## Example
//!
//! ```
//! use effllm_sampling::{Sampler, SamplingParams, Verifier, verify};
//!
//! # fn main() -> Result<(), effllm_sampling::SamplingError> {
//! let params = SamplingParams { temperature: 0.7, top_p: 0.9, min_p: 0.05, seed: 42, ..Default::default() };
//! let mut draft = Sampler::with_stream(params.clone(), 1)?; // draft and verifier read separate streams
//! let mut target = Sampler::new(params)?;
//!
//! // One speculative step over a 5-token vocabulary with hand-written logits.
//! let draft_logits = [[2.0f32, 1.0, 0.5, -1.0, 0.0], [0.0, 3.0, 0.0, 0.0, 1.0]];
//! let target_logits = [[1.5f32, 1.2, 0.4, -1.0, 0.0], [0.0, 2.5, 0.5, 0.0, 1.5], [1.0, 0.0, 0.0, 2.0, 0.0]];
//! let (mut xs, mut qs) = (Vec::new(), Vec::new());
//! for row in &draft_logits {
//!     let q = draft.distribution(row, &xs)?;
//!     xs.push(draft.sample_probs(&q)?);
//!     qs.push(q);
//! }
//! let ps: Vec<Vec<f32>> =
//!     target_logits.iter().enumerate().map(|(i, row)| target.distribution(row, &xs[..i])).collect::<Result<_, _>>()?;
//! let v = verify(Verifier::Rejection, &xs, &qs, &ps, &mut target)?;
//! assert_eq!(v.tokens.len(), v.accepted + 1);
//! assert_eq!(&v.tokens[..v.accepted], &xs[..v.accepted]);
//!
//! // Same seed, same stream position: the same tokens.
//! let mut again = Sampler::new(target.params().clone())?;
//! assert_eq!(verify(Verifier::Rejection, &xs, &qs, &ps, &mut again)?, v);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
mod params;
mod process;
pub mod reference;
mod relaxed;
mod sampler;
pub mod stats;
mod tree;
mod uniform;
mod verify;

/// A token id.
pub type Token = u32;

pub use error::{Result, SamplingError};
pub use params::{FilterOrder, NucleusMode, SamplingParams};
pub use process::{LogitsProcessor, argmax, process_logits, sample_from_probs};
pub use relaxed::{RelaxedRule, relaxed_acceptance_probability, verify_relaxed};
pub use sampler::Sampler;
pub use tree::{
    Replacement, SiblingVerdict, TokenTree, TreeSampling, TreeVerification, verify_siblings, verify_tree_greedy,
    verify_tree_greedy_lazy, verify_tree_rejection, verify_tree_sample_match, verify_tree_sample_match_lazy,
};
pub use uniform::{ExplicitUniforms, SeededUniforms, UniformSource};
pub use verify::{
    StepVerdict, Verification, Verifier, greedy_accept_len, verify, verify_chain, verify_greedy, verify_sample_match,
    verify_step, verify_token_match,
};
