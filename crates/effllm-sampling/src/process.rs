//! From a logits row to the processed distribution, and inverse-CDF sampling from a distribution.

use crate::Token;
use crate::error::{Result, SamplingError};
use crate::params::{FilterOrder, NucleusMode, SamplingParams};

/// Checks a logits row: non-empty, indexable by [`Token`], no NaN and no +∞ (−∞ masks a token).
pub(crate) fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(SamplingError::Empty { what: "logits" });
    }
    check_vocab(logits.len())?;
    for (index, &value) in logits.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(SamplingError::NonFiniteLogit { index, value });
        }
    }
    Ok(())
}

/// Every history token must index the vocabulary (checked even when no penalty reads the history).
pub(crate) fn check_history(history: &[Token], vocab: usize) -> Result<()> {
    match history.iter().find(|&&t| t as usize >= vocab) {
        Some(&token) => Err(SamplingError::TokenOutOfRange { what: "history", token, vocab }),
        None => Ok(()),
    }
}

#[inline]
pub(crate) fn check_vocab(vocab: usize) -> Result<()> {
    if vocab as u64 > u32::MAX as u64 + 1 { Err(SamplingError::VocabTooLarge { vocab }) } else { Ok(()) }
}

/// Index of the largest score, lowest index on ties. NaN and +∞ are errors, −∞ entries are never chosen unless
/// every entry is −∞ ([`SamplingError::AllMasked`]).
///
/// Works on logits and on probabilities alike (greedy verification passes either).
pub fn argmax(scores: &[f32]) -> Result<Token> {
    check_logits(scores)?;
    argmax_unchecked(scores).ok_or(SamplingError::AllMasked)
}

/// Argmax over entries > −∞, lowest index on ties; `None` when every entry is −∞. Input must be NaN-free.
fn argmax_unchecked(scores: &[f32]) -> Option<Token> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in scores.iter().enumerate() {
        if v == f32::NEG_INFINITY {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i as Token)
}

/// Validates a probability (weight) row and returns its sum in f64.
pub(crate) fn prob_sum(what: &'static str, probs: &[f32]) -> Result<f64> {
    if probs.is_empty() {
        return Err(SamplingError::Empty { what });
    }
    check_vocab(probs.len())?;
    let mut sum = 0.0f64;
    for (index, &value) in probs.iter().enumerate() {
        if !value.is_finite() || value < 0.0 {
            return Err(SamplingError::InvalidProbability { what, index, value });
        }
        sum += value as f64;
    }
    if sum > 0.0 { Ok(sum) } else { Err(SamplingError::ZeroMass { what }) }
}

/// Inverse-CDF sampling: the smallest token id `i` with `Σ_{j ≤ i} probs[j] > u · Σ_j probs[j]`.
///
/// `probs` are non-negative weights (they need not sum to 1: the target is scaled by their f64 sum, which also
/// absorbs f32 rounding of a normalised row). One call consumes exactly the one uniform `u ∈ [0, 1)` it is
/// given. If rounding leaves no such `i`, the largest id with positive weight is returned, so a zero-weight token
/// is never emitted.
pub fn sample_from_probs(probs: &[f32], u: f64) -> Result<Token> {
    let total = prob_sum("probs", probs)?;
    if !(0.0..1.0).contains(&u) {
        return Err(SamplingError::InvalidUniform { value: u });
    }
    Ok(inverse_cdf(probs.iter().map(|&p| p as f64), total, u))
}

/// Samples a weight row with one uniform from `rng` (validated first, so an invalid row consumes nothing).
pub(crate) fn sample_row<U: crate::UniformSource + ?Sized>(
    what: &'static str,
    row: &[f32],
    rng: &mut U,
) -> Result<Token> {
    let total = prob_sum(what, row)?;
    let u = crate::uniform::draw(rng)?;
    Ok(inverse_cdf(row.iter().map(|&p| p as f64), total, u))
}

/// Inverse CDF over f64 weights with known positive total.
#[inline]
pub(crate) fn inverse_cdf(weights: impl Iterator<Item = f64>, total: f64, u: f64) -> Token {
    let target = u * total;
    let mut cum = 0.0f64;
    let mut last_positive = 0usize;
    for (i, w) in weights.enumerate() {
        if w > 0.0 {
            cum += w;
            last_positive = i;
            if cum > target {
                return i as Token;
            }
        }
    }
    last_positive as Token
}

/// Turns logits rows into processed distributions, reusing its scratch buffers between calls.
///
/// Processing order ([`FilterOrder::TemperatureFirst`], the default; HF's order):
///
/// 1. **Penalties** on the last `penalty_window` history tokens: CTRL repetition penalty (divide a positive logit
///    by θ, multiply a non-positive one), then `− count · frequency_penalty − [count > 0] · presence_penalty`.
/// 2. **Greedy** if T = 0: one-hot at the argmax of the penalised logits (lowest id on ties).
/// 3. **Temperature**: `s = (z − max z) / T` (differences first, so tiny T cannot overflow).
/// 4. **top-k**: drop tokens whose logit is below the k-th largest (ties kept). Order-based, so it is computed on
///    the logits, exactly.
/// 5. **top-p** on π = softmax(s) over the kept tokens, ordered by logit descending, ties by ascending id: keep
///    the shortest prefix whose cumulative mass reaches `top_p` ([`NucleusMode::Standard`]).
/// 6. **min-p**: drop tokens with π < min_p · π_max, i.e. `s < ln(min_p)` (π_max is always kept, so this ratio
///    does not depend on the normalisation).
/// 7. **softmax** of s over the kept tokens; exact zeros elsewhere.
///
/// With [`FilterOrder::TemperatureLast`] steps 4–6 use T = 1 and the temperature is applied in step 7
/// (llama.cpp's chain). Sums and exponentials are computed in f64; the output is rounded once to f32.
///
/// Cost: O(V) plus O(m log m) for the top-p prefix, where m is found by partial selection
/// (`select_nth_unstable` on 64, 256, 1024, ... candidates) instead of sorting the vocabulary.
#[derive(Clone, Debug, Default)]
pub struct LogitsProcessor {
    idx: Vec<u32>,
    vals: Vec<f32>,
    hist: Vec<u32>,
    weights: Vec<f64>,
}

impl LogitsProcessor {
    /// A processor with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The processed distribution of `logits` under `params` after `history` (the tokens generated so far,
    /// oldest first; only the penalties read it). Writes `logits.len()` probabilities into `out` (resized).
    pub fn process_into(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        history: &[Token],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        params.validate()?;
        check_logits(logits)?;
        out.clear();
        out.extend_from_slice(logits);
        self.apply_penalties(out, params, history)?;
        if params.is_greedy() {
            let k = argmax_unchecked(out).ok_or(SamplingError::AllMasked)? as usize;
            out.iter_mut().for_each(|p| *p = 0.0);
            out[k] = 1.0;
            return Ok(());
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Err(SamplingError::AllMasked);
        }
        let (m, t) = (max as f64, params.temperature as f64);
        let t_filter = match params.order {
            FilterOrder::TemperatureFirst => t,
            FilterOrder::TemperatureLast => 1.0,
        };
        if params.top_k > 0 {
            self.top_k(out, params.top_k);
        }
        let mut m = m;
        if params.top_p < 1.0 {
            self.top_p(out, m, t_filter, params.top_p as f64, params.nucleus);
            if params.nucleus == NucleusMode::ReferenceInverted {
                // The inverted filter may drop the most probable tokens: re-anchor at the largest kept logit (HF's
                // min-p and the final softmax are relative to the kept set).
                m = out.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            }
        }
        if params.min_p > 0.0 {
            let ln_min_p = (params.min_p as f64).ln();
            for z in out.iter_mut() {
                if *z != f32::NEG_INFINITY && (*z as f64 - m) / t_filter < ln_min_p {
                    *z = f32::NEG_INFINITY;
                }
            }
        }
        // Softmax over the kept tokens at the sampling temperature. The token at `m` is always kept (top-k keeps
        // k ≥ 1 largest, top-p keeps the first token of the order — the inverted filter keeps the last one and `m`
        // was re-anchored —, min-p keeps s = 0 ≥ ln(min_p)), so sum ≥ 1.
        self.weights.clear();
        self.weights.extend(out.iter().map(|&z| if z == f32::NEG_INFINITY { 0.0 } else { ((z as f64 - m) / t).exp() }));
        let sum: f64 = self.weights.iter().sum();
        for (z, &w) in out.iter_mut().zip(&self.weights) {
            *z = (w / sum) as f32;
        }
        Ok(())
    }

    /// Greedy fast path: the argmax of the penalised logits (what [`process_into`](Self::process_into) puts the
    /// single 1 at when T = 0). `out` is scratch.
    pub(crate) fn greedy(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        history: &[Token],
        out: &mut Vec<f32>,
    ) -> Result<Token> {
        params.validate()?;
        check_logits(logits)?;
        check_history(history, logits.len())?;
        if !params.has_penalties() {
            return argmax_unchecked(logits).ok_or(SamplingError::AllMasked);
        }
        out.clear();
        out.extend_from_slice(logits);
        self.apply_penalties(out, params, history)?;
        argmax_unchecked(out).ok_or(SamplingError::AllMasked)
    }

    fn apply_penalties(&mut self, z: &mut [f32], params: &SamplingParams, history: &[Token]) -> Result<()> {
        check_history(history, z.len())?;
        if !params.has_penalties() {
            return Ok(());
        }
        let window = match params.penalty_window {
            Some(n) => &history[history.len().saturating_sub(n)..],
            None => history,
        };
        self.hist.clear();
        self.hist.extend_from_slice(window);
        self.hist.sort_unstable();
        let (theta, freq, pres) = (params.repetition_penalty, params.frequency_penalty, params.presence_penalty);
        let mut i = 0;
        while i < self.hist.len() {
            let token = self.hist[i];
            let mut j = i;
            while j < self.hist.len() && self.hist[j] == token {
                j += 1;
            }
            let count = (j - i) as f32;
            let l = &mut z[token as usize];
            if theta != 1.0 {
                *l = if *l > 0.0 { *l / theta } else { *l * theta };
            }
            *l -= count * freq + pres;
            if l.is_nan() || *l == f32::INFINITY {
                return Err(SamplingError::NonFiniteLogit { index: token as usize, value: *l });
            }
            i = j;
        }
        Ok(())
    }

    /// Masks every logit below the k-th largest finite logit (ties with it are kept).
    fn top_k(&mut self, z: &mut [f32], k: usize) {
        self.vals.clear();
        self.vals.extend(z.iter().copied().filter(|&v| v != f32::NEG_INFINITY));
        if k >= self.vals.len() {
            return;
        }
        let (_, &mut kth, _) = self.vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        for v in z.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }

    /// Nucleus filter on π ∝ exp((z − m) / t) over the kept tokens.
    fn top_p(&mut self, z: &mut [f32], m: f64, t: f64, top_p: f64, mode: NucleusMode) {
        let weight = |v: f32| ((v as f64 - m) / t).exp();
        self.idx.clear();
        let mut total = 0.0f64;
        for (i, &v) in z.iter().enumerate() {
            if v != f32::NEG_INFINITY {
                self.idx.push(i as u32);
                total += weight(v);
            }
        }
        let n = self.idx.len();
        match mode {
            NucleusMode::Standard => {
                // Keep the shortest prefix (logit desc, id asc) with cumulative mass >= top_p.
                let target = top_p * total;
                let mut cum = 0.0f64;
                let mut keep = n;
                visit_descending(&mut self.idx, z, |pos, token| {
                    cum += weight(z[token as usize]);
                    if cum >= target {
                        keep = pos + 1;
                        false
                    } else {
                        true
                    }
                });
                // `visit_descending` leaves the visited prefix at the front of `idx`, in order.
                for &token in &self.idx[keep..] {
                    z[token as usize] = f32::NEG_INFINITY;
                }
            }
            NucleusMode::ReferenceInverted => {
                // SpecExec's code: remove the leading (most probable) tokens whose cumulative mass is
                // <= 1 - top_p; the last (least probable) token is always kept.
                let target = (1.0 - top_p) * total;
                let mut cum = 0.0f64;
                let mut removed = 0usize;
                visit_descending(&mut self.idx, z, |pos, token| {
                    cum += weight(z[token as usize]);
                    if cum <= target && pos + 1 < n {
                        removed = pos + 1;
                        true
                    } else {
                        false
                    }
                });
                for &token in &self.idx[..removed] {
                    z[token as usize] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Visits the tokens of `idx` in the total order (logit descending, id ascending), calling `visit(position,
/// token)` until it returns `false`. Afterwards the visited tokens occupy `idx[..visited]` in that order.
///
/// Partial selection: the next 64, 256, 1024, ... tokens are brought to the front with `select_nth_unstable_by`
/// and only they are sorted, so a short nucleus costs O(V) instead of O(V log V).
fn visit_descending(idx: &mut [u32], z: &[f32], mut visit: impl FnMut(usize, u32) -> bool) {
    let cmp = |a: &u32, b: &u32| z[*b as usize].total_cmp(&z[*a as usize]).then(a.cmp(b));
    let n = idx.len();
    let mut done = 0usize;
    let mut end = n.min(64);
    while done < n {
        if end < n {
            idx[done..].select_nth_unstable_by(end - done - 1, cmp);
        }
        idx[done..end].sort_unstable_by(cmp);
        for (pos, &token) in idx.iter().enumerate().take(end).skip(done) {
            if !visit(pos, token) {
                return;
            }
        }
        done = end;
        end = n.min(end.saturating_mul(4));
    }
}

/// The processed distribution of `logits` (see [`LogitsProcessor`] for the order of the stages).
///
/// This is the distribution a [`Sampler`](crate::Sampler) with the same parameters samples from, and the one a
/// speculative verifier must be given as p (target) or q (draft).
///
/// ```
/// use effllm_sampling::{process_logits, SamplingParams};
/// let p = process_logits(&[2.0, 1.0, 0.0, -1.0], &SamplingParams { top_k: 2, ..Default::default() }, &[])?;
/// assert_eq!(p[2], 0.0);
/// assert!((p[0] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
/// # Ok::<(), effllm_sampling::SamplingError>(())
/// ```
pub fn process_logits(logits: &[f32], params: &SamplingParams, history: &[Token]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(logits.len());
    LogitsProcessor::new().process_into(logits, params, history, &mut out)?;
    Ok(out)
}
