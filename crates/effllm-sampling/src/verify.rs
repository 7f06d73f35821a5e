//! Chain verification of draft tokens: rejection sampling (Leviathan et al. / Chen et al.), greedy matching,
//! exact sample-and-compare, and mistral.rs's token matching for comparison.

use crate::Token;
use crate::error::{Result, SamplingError};
use crate::process::{argmax, inverse_cdf, prob_sum, sample_row};
use crate::uniform::{UniformSource, draw};

/// What a verification emitted: `tokens = draft[..accepted]` followed by exactly one token from the target (the
/// correction sampled at the first rejection, or the bonus token when every draft token was accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Number of draft tokens accepted (a prefix of the draft).
    pub accepted: usize,
    /// The emitted tokens: the accepted draft tokens plus one target token; `tokens.len() == accepted + 1`.
    pub tokens: Vec<Token>,
}

impl Verification {
    /// The token emitted after the accepted prefix (correction or bonus): the last token.
    pub fn next_token(&self) -> Option<Token> {
        self.tokens.last().copied()
    }

    /// Whether every draft token was accepted (the last token is then the bonus token).
    pub fn all_accepted(&self, draft_len: usize) -> bool {
        self.accepted == draft_len
    }
}

/// Which chain-verification rule [`verify`] applies.
///
/// | rule | emitted distribution | uniforms consumed | use |
/// |---|---|---|---|
/// | [`Rejection`](Self::Rejection) | exactly p, for any T, any q | accepted + 1 (all accepted) or accepted + 2 | the default for T > 0 |
/// | [`SampleMatch`](Self::SampleMatch) | exactly p, for any T, any draft | one per emitted token | deterministic drafts; SpecExec's rule on a one-branch tree |
/// | [`Greedy`](Self::Greedy) | argmax chain; exact iff the target decodes greedily (T = 0) | 0 | T = 0 |
/// | [`TokenMatch`](Self::TokenMatch) | argmax chain at every temperature; **not** p for T > 0 | 0 | reproducing mistral.rs only |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Verifier {
    /// Accept x_i iff x_i = argmax p_i; emit argmax p at the first mismatch (or the bonus argmax). Exact for
    /// greedy decoding, with any draft.
    Greedy,
    /// mistral.rs's legacy speculative decoding (`sample_target_sequence_speculative`): its doc comment describes
    /// rejection sampling, but the target "sample" is `sample_speculative_top_kp_min_p`, a top-k/top-p/min-p
    /// filtered **argmax**, and a draft token is accepted iff it equals that token. The tokens are those of
    /// [`Greedy`](Self::Greedy) whatever the temperature, so for T > 0 the output is the greedy continuation,
    /// not a sample of p (`foundation.md` §4 row 12). Kept as a switch for comparisons; never use it to sample.
    /// (mistral.rs ran the target over γ rows only and emitted no bonus token; here the bonus is the argmax of
    /// p_{n+1}, so all rules share the `accepted + 1` contract.)
    TokenMatch,
    /// Exact token equality against a real target sample: draw t_i ~ p_i (one uniform, inverse CDF), accept x_i
    /// iff t_i = x_i, otherwise emit t_i and stop; bonus t ~ p_{n+1}. Every emitted token is a fresh exact
    /// sample of the target conditional, so the output is distributed exactly as p for any draft. Acceptance
    /// probability per position is p_i(x_i) for a fixed draft token (Σ_x p(x)q(x) for a sampled one, below
    /// rejection sampling's Σ_x min(p, q)). This is what token matching must do to be exact at T > 0.
    SampleMatch,
    /// Speculative (rejection) sampling: accept x_i with probability min(1, p_i(x_i)/q_i(x_i)); at the first
    /// rejection emit a sample of norm(max(0, p_i − q_i)); bonus from p_{n+1}. Exact for any q the draft tokens
    /// were really sampled from.
    #[default]
    Rejection,
}

/// Outcome of verifying one draft token with rejection sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepVerdict {
    /// The draft token is accepted.
    Accept,
    /// The draft token is rejected; the token sampled from the residual distribution replaces it.
    Reject(Token),
}

fn check_token(what: &'static str, token: Token, vocab: usize) -> Result<()> {
    if (token as usize) < vocab { Ok(()) } else { Err(SamplingError::TokenOutOfRange { what, token, vocab }) }
}

fn check_len(what: &'static str, row: &[f32], vocab: usize) -> Result<()> {
    if row.len() == vocab {
        Ok(())
    } else {
        Err(SamplingError::VocabMismatch { what, expected: vocab, got: row.len() })
    }
}

/// Checks row counts and vocabulary sizes of a chain verification; returns the vocabulary size.
fn check_chain<P: AsRef<[f32]>, Q: AsRef<[f32]>>(draft: &[Token], q: Option<&[Q]>, p: &[P]) -> Result<usize> {
    if p.len() != draft.len() + 1 {
        return Err(SamplingError::RowCount {
            what: "target rows p (draft length + 1)",
            expected: draft.len() + 1,
            got: p.len(),
        });
    }
    let vocab = p[0].as_ref().len();
    if vocab == 0 {
        return Err(SamplingError::Empty { what: "target row p" });
    }
    for row in p {
        check_len("target row p", row.as_ref(), vocab)?;
    }
    if let Some(q) = q {
        if q.len() != draft.len() {
            return Err(SamplingError::RowCount {
                what: "draft rows q (draft length)",
                expected: draft.len(),
                got: q.len(),
            });
        }
        for row in q {
            check_len("draft row q", row.as_ref(), vocab)?;
        }
    }
    for &x in draft {
        check_token("draft", x, vocab)?;
    }
    Ok(vocab)
}

/// The rejection-sampling test for one draft token `x` drawn from `q`: accept with probability
/// min(1, p(x)/q(x)), else sample the residual norm(max(0, p − q)).
///
/// `p` and `q` are non-negative weights, each normalised internally by its f64 sum. Consumes one uniform for
/// the test and, on rejection, one more for the residual sample. The test is evaluated without division as
/// `u · q(x) < p(x)`. If the residual is identically zero (only possible when p = q, where rejection has
/// probability 0 and can only be reached through rounding), the replacement is sampled from p.
///
/// Errors: length mismatch, invalid rows, `x` out of range, and q(x) = 0 ([`SamplingError::ZeroDraftProbability`]:
/// x cannot have been sampled from q).
pub fn verify_step<U: UniformSource + ?Sized>(p: &[f32], q: &[f32], x: Token, rng: &mut U) -> Result<StepVerdict> {
    let vocab = p.len();
    check_len("draft row q", q, vocab)?;
    check_token("draft", x, vocab)?;
    step(p, q, x, 0, rng)
}

fn step<U: UniformSource + ?Sized>(
    p: &[f32],
    q: &[f32],
    x: Token,
    position: usize,
    rng: &mut U,
) -> Result<StepVerdict> {
    let sp = prob_sum("target row p", p)?;
    let sq = prob_sum("draft row q", q)?;
    let (px, qx) = (p[x as usize] as f64 / sp, q[x as usize] as f64 / sq);
    if qx == 0.0 {
        return Err(SamplingError::ZeroDraftProbability { position, token: x });
    }
    let u = draw(rng)?;
    if u * qx < px {
        return Ok(StepVerdict::Accept);
    }
    let u = draw(rng)?;
    Ok(StepVerdict::Reject(sample_residual(p, sp, q, sq, u)))
}

/// Samples norm(max(0, p/sp − q/sq)) with one uniform; falls back to p when the residual is identically zero.
pub(crate) fn sample_residual(p: &[f32], sp: f64, q: &[f32], sq: f64, u: f64) -> Token {
    let r = |(&a, &b): (&f32, &f32)| (a as f64 / sp - b as f64 / sq).max(0.0);
    let total: f64 = p.iter().zip(q).map(r).sum();
    if total > 0.0 {
        inverse_cdf(p.iter().zip(q).map(r), total, u)
    } else {
        inverse_cdf(p.iter().map(|&a| a as f64), sp, u)
    }
}

/// Chain verification by rejection sampling ([`Verifier::Rejection`]; `specexec.md` §2.2).
///
/// `draft = x_1..x_n` with `x_i ~ q_i`; `q` has n rows (the distributions the draft tokens were **actually**
/// sampled from, after the draft's own temperature and filters); `p` has n + 1 rows (the target's processed
/// distributions after each prefix, the last one for the bonus token). Rows are weights normalised internally.
///
/// For i = 1..n: draw u_i and accept x_i iff u_i · q_i(x_i) < p_i(x_i); at the first rejection emit
/// y ~ norm(max(0, p_i − q_i)) (one more draw) and stop; if all are accepted emit y ~ p_{n+1} (one draw).
/// Rows past the stopping point are length-checked but not otherwise inspected.
pub fn verify_chain<P, Q, U>(draft: &[Token], q: &[Q], p: &[P], rng: &mut U) -> Result<Verification>
where
    P: AsRef<[f32]>,
    Q: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    check_chain(draft, Some(q), p)?;
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        match step(p[i].as_ref(), q[i].as_ref(), x, i, rng)? {
            StepVerdict::Accept => tokens.push(x),
            StepVerdict::Reject(y) => {
                tokens.push(y);
                return Ok(Verification { accepted: i, tokens });
            }
        }
    }
    tokens.push(sample_row("target row p", p[draft.len()].as_ref(), rng)?);
    Ok(Verification { accepted: draft.len(), tokens })
}

/// Greedy matching ([`Verifier::Greedy`]; `specexec.md` §2.3): accept while x_i = argmax p_i (lowest id on
/// ties), then emit the argmax of the first mismatching row, or of p_{n+1}. `p` rows may be probabilities or raw
/// logits (same argmax). Consumes no uniform.
pub fn verify_greedy<P: AsRef<[f32]>>(draft: &[Token], p: &[P]) -> Result<Verification> {
    check_chain::<P, P>(draft, None, p)?;
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        let t = argmax(p[i].as_ref())?;
        tokens.push(t);
        if t != x {
            return Ok(Verification { accepted: i, tokens });
        }
    }
    tokens.push(argmax(p[draft.len()].as_ref())?);
    Ok(Verification { accepted: draft.len(), tokens })
}

/// Number of leading draft tokens equal to the target's argmax tokens (LayerSkip's `accept_greedy`); the
/// emitted correction or bonus is then `target_argmax[n]` when it exists.
pub fn greedy_accept_len(draft: &[Token], target_argmax: &[Token]) -> usize {
    draft.iter().zip(target_argmax).take_while(|(a, b)| a == b).count()
}

/// Exact token matching ([`Verifier::SampleMatch`]): t_i ~ p_i with one uniform each (inverse CDF), accept
/// while t_i = x_i, emit t_i at the first mismatch, bonus t ~ p_{n+1}. Uniforms consumed = tokens emitted, and
/// the emitted tokens equal those of autoregressive sampling from p with the same uniform stream.
pub fn verify_sample_match<P, U>(draft: &[Token], p: &[P], rng: &mut U) -> Result<Verification>
where
    P: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    check_chain::<P, P>(draft, None, p)?;
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        let t = sample_row("target row p", p[i].as_ref(), rng)?;
        tokens.push(t);
        if t != x {
            return Ok(Verification { accepted: i, tokens });
        }
    }
    tokens.push(sample_row("target row p", p[draft.len()].as_ref(), rng)?);
    Ok(Verification { accepted: draft.len(), tokens })
}

/// mistral.rs's token matching ([`Verifier::TokenMatch`]): the target token is the argmax of the processed
/// distribution at every temperature. Same tokens as [`verify_greedy`]; exact only when the target decodes
/// greedily. Consumes no uniform.
pub fn verify_token_match<P: AsRef<[f32]>>(draft: &[Token], p: &[P]) -> Result<Verification> {
    verify_greedy(draft, p)
}

/// Chain verification with the rule chosen by `verifier`. `q` is read only by [`Verifier::Rejection`] (pass
/// an empty slice otherwise); see [`Verifier`] for exactness and uniform consumption.
pub fn verify<P, Q, U>(verifier: Verifier, draft: &[Token], q: &[Q], p: &[P], rng: &mut U) -> Result<Verification>
where
    P: AsRef<[f32]>,
    Q: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    match verifier {
        Verifier::Greedy => verify_greedy(draft, p),
        Verifier::TokenMatch => verify_token_match(draft, p),
        Verifier::SampleMatch => verify_sample_match(draft, p, rng),
        Verifier::Rejection => verify_chain(draft, q, p, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_residual_samples_p() {
        // p = q: max(0, p − q) is identically 0, so the residual sample falls back to p (no 0/0).
        let p = [0.25f32, 0.0, 0.75];
        for (u, want) in [(0.0, 0), (0.24, 0), (0.26, 2), (0.999, 2)] {
            assert_eq!(sample_residual(&p, 1.0, &p, 1.0, u), want);
        }
        // Proportional rows are equal after normalisation.
        let q = [0.5f32, 0.0, 1.5];
        assert_eq!(sample_residual(&p, 1.0, &q, 2.0, 0.5), 2);
        // A non-zero residual is sampled from its own support only.
        let q = [0.5f32, 0.0, 0.5];
        for u in [0.0, 0.3, 0.9] {
            assert_eq!(sample_residual(&p, 1.0, &q, 1.0, u), 2);
        }
    }
}
