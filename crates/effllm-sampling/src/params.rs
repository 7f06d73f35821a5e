//! Sampling parameters and their validation.

use crate::error::{Result, SamplingError};

/// Where temperature sits in the processing chain.
///
/// Penalties always come first. The filters (top-k, top-p, min-p) always run in that order. Only the position of
/// the temperature differs between the two reference stacks:
///
/// | order | chain | used by |
/// |---|---|---|
/// | [`TemperatureFirst`](Self::TemperatureFirst) (default) | penalties → temperature → top-k → top-p → min-p → softmax | HF `transformers` (`_get_logits_processor`: repetition penalty, then the warpers `Temperature`, `TopK`, `TopP`, `MinP`), TriForce, SpecExec, LayerSkip |
/// | [`TemperatureLast`](Self::TemperatureLast) | penalties → top-k → top-p → min-p → temperature → softmax | llama.cpp's default sampler chain (`penalties`, `top_k`, `top_p`, `min_p`, ..., `temp`, `dist`) |
///
/// The default is HF's order because every speculative-decoding reference this crate serves (TriForce,
/// SpecExec, LayerSkip) processes p and q with HF's warpers; matching it makes golden vectors comparable. The
/// orders differ only for top-p and min-p (top-k is invariant under a positive temperature): with
/// `TemperatureFirst` the nucleus is measured on the tempered distribution, with `TemperatureLast` on the T = 1
/// distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FilterOrder {
    /// HF / TriForce / SpecExec / LayerSkip: temperature before the filters.
    #[default]
    TemperatureFirst,
    /// llama.cpp's default chain: temperature after the filters.
    TemperatureLast,
}

/// Which top-p (nucleus) rule to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NucleusMode {
    /// Holtzman et al.'s nucleus, as in HF, TriForce and llama.cpp: keep the smallest set of most probable tokens
    /// whose cumulative probability reaches `top_p` (order: probability descending, ties by ascending token id).
    #[default]
    Standard,
    /// The inverted filter of the SpecExec reference code (`specdec/utils.py::get_sampling_probas`,
    /// `specexec.py::sampler_from_logits`; `specexec.md` §4 D1). It sorts descending but keeps HF's ascending
    /// condition, so it removes the *most* probable tokens whose cumulative mass is ≤ 1 − top_p and always keeps
    /// the least probable one; with `top_p = 0.9` it is a no-op whenever the top token has p > 0.1. Only for
    /// golden vectors and for reproducing the reference's numbers; never a default.
    ReferenceInverted,
}

/// Parameters of the logits-to-distribution chain and of the sampler's random stream.
///
/// Neutral values switch a stage off: `top_k = 0`, `top_p ≥ 1`, `min_p = 0`, `repetition_penalty = 1`,
/// `presence_penalty = frequency_penalty = 0`. `temperature = 0` selects greedy decoding (argmax of the penalised
/// logits, lowest token id on ties; no random draw).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Temperature T ≥ 0; logits are divided by T. 0 = greedy.
    pub temperature: f32,
    /// Keep tokens whose logit is ≥ the k-th largest logit (ties with the k-th value are kept, as in HF and
    /// TriForce). 0 = off.
    pub top_k: usize,
    /// Nucleus mass in (0, 1]; values ≥ 1 switch the filter off. ≤ 0 or NaN is an error (never a silent greedy).
    pub top_p: f32,
    /// Keep tokens with p ≥ min_p · p_max (HF `MinPLogitsWarper`, llama.cpp `min_p`), in [0, 1]. 0 = off.
    pub min_p: f32,
    /// CTRL repetition penalty θ > 0 (Keskar et al. 2019, HF `RepetitionPenaltyLogitsProcessor`): every token
    /// present in the penalty window has its logit divided by θ if positive and multiplied by θ otherwise, once
    /// regardless of how often it occurs. 1 = off.
    pub repetition_penalty: f32,
    /// Additive presence penalty (OpenAI / llama.cpp `penalty_present`): subtracted once from the logit of every
    /// token present in the window. 0 = off.
    pub presence_penalty: f32,
    /// Additive frequency penalty (OpenAI / llama.cpp `penalty_freq`): `count · frequency_penalty` is subtracted
    /// from each token's logit, count = occurrences in the window. 0 = off.
    pub frequency_penalty: f32,
    /// The penalties look at the last `n` tokens of the history (llama.cpp `penalty_last_n`); `None` = the whole
    /// history (HF). `Some(0)` disables the penalties.
    pub penalty_window: Option<usize>,
    /// Where the temperature sits in the chain.
    pub order: FilterOrder,
    /// Which top-p rule to apply.
    pub nucleus: NucleusMode,
    /// Seed of the sampler's Philox stream ([`Sampler`](crate::Sampler)); unused by the pure functions.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Plain sampling from softmax(logits): T = 1, every filter and penalty off, seed 0.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_window: None,
            order: FilterOrder::TemperatureFirst,
            nucleus: NucleusMode::Standard,
            seed: 0,
        }
    }
}

fn invalid(name: &'static str, value: f32, reason: &'static str) -> SamplingError {
    SamplingError::InvalidParam { name, value: value as f64, reason }
}

impl SamplingParams {
    /// Greedy decoding (T = 0), everything else neutral.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Whether these parameters decode greedily (T = 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any penalty is active.
    pub fn has_penalties(&self) -> bool {
        self.penalty_window != Some(0)
            && (self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0)
    }

    /// Checks every field's domain; returns [`SamplingError::InvalidParam`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(invalid("temperature", t, "must be finite and >= 0 (0 = greedy)"));
        }
        let p = self.top_p;
        if !p.is_finite() || p <= 0.0 {
            return Err(invalid("top_p", p, "must be finite and > 0 (>= 1 disables the filter)"));
        }
        let m = self.min_p;
        if !m.is_finite() || !(0.0..=1.0).contains(&m) {
            return Err(invalid("min_p", m, "must lie in [0, 1] (0 disables the filter)"));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(invalid("repetition_penalty", r, "must be finite and > 0 (1 disables it)"));
        }
        if !self.presence_penalty.is_finite() {
            return Err(invalid("presence_penalty", self.presence_penalty, "must be finite"));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(invalid("frequency_penalty", self.frequency_penalty, "must be finite"));
        }
        Ok(())
    }
}
