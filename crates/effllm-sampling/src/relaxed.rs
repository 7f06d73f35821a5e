//! NEST's relaxed speculative acceptance (paper Eq. 7, Algorithm 1; `nest.md` §2.6). **Lossy**: the output is
//! not distributed as the target; it trades fidelity for longer accepted spans.

use crate::Token;
use crate::error::{Result, SamplingError};
use crate::process::prob_sum;
use crate::uniform::{UniformSource, draw};

/// How the relaxed acceptance probability is turned into a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RelaxedRule {
    /// NEST's Algorithm 1 and code: accept iff the acceptance probability exceeds 1/2, i.e.
    /// p(w) > ½ · γ · max p (strict). Deterministic, also in sampling mode; consumes no uniform.
    #[default]
    DeterministicHalf,
    /// Accept with the acceptance probability itself (one uniform per examined token).
    Bernoulli,
}

/// NEST's relaxed acceptance probability min(1, p(x) / (γ · max_w p(w))), for γ > 0.
pub fn relaxed_acceptance_probability(p: &[f32], x: Token, gamma: f32) -> Result<f64> {
    if !gamma.is_finite() || gamma <= 0.0 {
        return Err(SamplingError::InvalidParam {
            name: "gamma",
            value: gamma as f64,
            reason: "must be finite and > 0",
        });
    }
    prob_sum("target row p", p)?;
    let px = *p.get(x as usize).ok_or(SamplingError::TokenOutOfRange { what: "span", token: x, vocab: p.len() })?;
    let max = p.iter().copied().fold(0.0f32, f32::max) as f64;
    Ok((px as f64 / (gamma as f64 * max)).min(1.0))
}

/// Relaxed verification of a retrieved span `w_1..w_n` against the target rows `p_1..p_n` (one per span token,
/// no bonus row): returns the length of the accepted prefix. The caller re-selects the token at the first
/// rejected position from `p` (argmax, or a sample via [`Sampler`](crate::Sampler)).
pub fn verify_relaxed<P, U>(span: &[Token], p: &[P], gamma: f32, rule: RelaxedRule, rng: &mut U) -> Result<usize>
where
    P: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    if p.len() != span.len() {
        return Err(SamplingError::RowCount {
            what: "target rows p (one per span token)",
            expected: span.len(),
            got: p.len(),
        });
    }
    for (i, (&w, row)) in span.iter().zip(p).enumerate() {
        let a = relaxed_acceptance_probability(row.as_ref(), w, gamma)?;
        let accept = match rule {
            RelaxedRule::DeterministicHalf => a > 0.5,
            RelaxedRule::Bernoulli => draw(rng)? < a,
        };
        if !accept {
            return Ok(i);
        }
    }
    Ok(span.len())
}
