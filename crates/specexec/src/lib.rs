//! # specexec
//!
//! SpecExec (Svirschevski et al., *SpecExec: Massively Parallel Speculative Decoding for Interactive LLM
//! Inference on Consumer Devices*, NeurIPS 2024, arXiv 2406.02532) for effllm models, with the two baselines it is
//! compared against: classic chain speculative decoding and SpecInfer-style sampled trees.
//!
//! When a target model's weights stream from host memory for every forward, one target pass over a thousand
//! tokens costs about as much as over one. SpecExec spends that: a small draft model grows a large tree of its
//! most probable continuations, and one target forward validates the whole tree.
//!
//! ## The algorithm
//!
//! **Tree growth** ([`grow_tree`]): with `q` the draft's next-token distribution (`softmax(logits / T_draft)`,
//! T_draft = 1 by default) and decay `γ ∈ (0, 1]`,
//!
//! ```text
//! score(root) = 0,     score(c) = score(parent(c)) + ln γ + ln q(token(c) | prefix, path(parent(c)))
//! ```
//!
//! Scores never increase along a path, so the K best nodes form a tree. A batched best-first search finds them:
//! every draft forward expands the best B unexpanded nodes whose children could still enter the top K
//! (`score(u) + ln γ > s_K`, the K-th best score so far), each with its top-k draft tokens, never beyond depth D;
//! the final tree keeps the K best nodes. The draft runs a batch of frontier nodes with explicit attention rows
//! (committed prefix + the node's ancestors' cache slots + itself) and depth-based positions
//! `position(v) = prefix_len − 1 + depth(v)`.
//!
//! **Validation**: one target forward over root + K nodes with the tree mask (`BatchMask::Tree`), giving the
//! target distribution `p(· | path(v))` at every node. Then the lazy walk (`specexec.md` §2.5):
//!
//! ```text
//! u := root
//! loop:  t ~ p(· | path(u))   (one uniform, inverse CDF)      emit t
//!        if a child c of u carries t: u := c  else stop
//! ```
//!
//! Every emitted token is a fresh sample of the target's conditional, so the output is distributed exactly as
//! autoregressive sampling **for every tree and every temperature/filter**; with one uniform per emitted token it
//! even equals autoregressive sampling under the same random stream token for token. At T = 0 the walk follows the
//! argmax: greedy decoding. The expected number of accepted tokens is
//!
//! ```text
//! E[accepted] = Σ_{draft nodes v} P_target(path(v))
//! ```
//!
//! which is why the best tree is the top-K set by (target) path probability, approximated with the draft's.
//!
//! **Commit**: both KV caches are compacted to the committed prefix plus the accepted path (`KvCache::compact`;
//! the tree's depth-based positions are exactly the path's sequential positions), so they equal a fresh prefill.
//! The emitted extra token is the next root.
//!
//! **Baselines** through the shared rules of `effllm-sampling`: [`Method::Chain`] drafts γ tokens from q and
//! verifies with rejection sampling (`verify_chain`: accept with `min(1, p/q)`, resample `norm(max(0, p − q))`);
//! [`Method::SpecInfer`] samples a tree level by level from q and verifies with multi-round rejection over
//! siblings (`verify_tree_rejection`). Both are exact; neither is exact on a deterministic top-k tree, which is
//! why SpecExec uses the sample-and-descend rule instead.
//!
//! ## Paper, reference code, and this crate
//!
//! | topic | reference (`yandex-research/specexec`) | this crate (default) | switch |
//! |---|---|---|---|
//! | top-p | inverted (keeps the tail; `specexec.md` §4 D1) | standard nucleus (`effllm-sampling`) | `NucleusMode::ReferenceInverted` |
//! | validation samples | one per tree node after a warm-up draw (D2) | lazy walk, one uniform per emitted token | [`SpecExecConfig::tree_sampling`] = `EagerPerNode` |
//! | draft temperature | T = 1 whatever the sampling T (D3) | 1.0 | [`SpecExecConfig::draft_temperature`] |
//! | `min_log_prob` | accepted and ignored (D4) | honoured when set | [`SpecExecConfig::min_log_prob`] |
//! | frontier | top-B for llama, first-B otherwise (D5) | top-B | [`FrontierPick::FirstBySlot`] |
//! | ties | `topk(sorted=False)` (D6) | score, then creation order | — |
//! | capacity check | counts nodes twice (D7) | exact context check, typed error | — |
//! | growth loop | `max_beam_len` iterations | until the tree is the exact top-K set | [`SpecExecConfig::max_draft_forwards`] |
//! | tokenizer check | present but off (D10) | vocabulary size always; [`check_same_tokens`] | — |
//!
//! **Stop tokens**: [`Engine::generate_until`] / [`autoregressive_until`] stop right after the first emitted stop
//! token (e.g. the tokenizer's end-of-sequence id). A verified tree or chain may hold the stop token in the middle
//! of its accepted path: the step keeps the tokens up to and including it, discards the rest, compacts both KV
//! caches to the kept tokens and counts only emitted tokens, so the output is the unstopped output cut after the
//! first stop token (and SpecExec still equals autoregressive sampling token for token). A stop token outside the
//! vocabulary is [`SpecError::StopTokenOutOfRange`].
//!
//! **Offloading** (the paper's setting: target weights in pinned host memory, streamed layer by layer) is
//! `effllm_model::OffloadedLlama`, one more [`CausalLm`](effllm_model::CausalLm): the engine is generic over both
//! models and times draft and target separately. [`compare::compare_with_autoregressive`] measures wall-clock
//! tokens/s of SpecExec against autoregressive decoding of the same target in one run (`examples/offloaded.rs`
//! and `bench-all`'s `specexec` scenario on a GPU).
//!
//! ## Example
//!
//! ```
//! use effllm_sampling::SamplingParams;
//! use specexec::{Engine, SpecExecConfig, autoregressive};
//! use specexec::models::{LookupLm, TinyShape, tiny_llama};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Greedy: a random tiny Llama in f32 as the target, its Q4_1 quantization as the draft.
//! let target = tiny_llama(TinyShape::default(), 7, 8.0, false)?;
//! let draft = tiny_llama(TinyShape::default(), 7, 8.0, true)?;
//! let cfg = SpecExecConfig { budget: 32, max_depth: 8, expand_batch: 8, max_branch: 4, ..Default::default() };
//! let engine = Engine::specexec(&draft, &target, cfg)?;
//! let prompt = [1, 5, 9, 2];
//! let greedy = SamplingParams::greedy();
//! let spec = engine.generate(&prompt, 24, &greedy)?;
//! assert_eq!(spec.tokens, autoregressive(&target, &prompt, 24, &greedy)?.tokens);
//! assert!(spec.stats.tokens_per_step() >= 1.0);
//!
//! // Sampling: with the same seed SpecExec returns exactly the tokens of autoregressive sampling (a lookup LM
//! // gives bit-identical logits in a tree batch and token by token).
//! let target = LookupLm::new(16, 2, 1, 2.0);
//! let draft = target.perturbed(2, 0.5);
//! let engine = Engine::specexec(&draft, &target, SpecExecConfig::with_budget(16))?;
//! let params = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 3, ..Default::default() };
//! let spec = engine.generate(&prompt, 40, &params)?;
//! assert_eq!(spec.tokens, autoregressive(&target, &prompt, 40, &params)?.tokens);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod compare;
mod config;
mod engine;
mod error;
pub mod models;
pub mod reference;
mod stats;
mod tree;

pub use config::{ChainConfig, FrontierPick, SpecExecConfig, SpecInferConfig};
pub use engine::{
    Engine, Generation, Method, Session, autoregressive, autoregressive_until, check_same_tokens, compact_cache,
};
pub use error::{Result, SpecError};
pub use stats::{GenerationStats, StepStats};
pub use tree::{DraftNode, DraftTree, GrownTree, grow_tree, top_children};
