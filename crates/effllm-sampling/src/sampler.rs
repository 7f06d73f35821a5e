//! The seeded sampler: processing chain + counter-based uniforms.

use crate::Token;
use crate::error::Result;
use crate::params::SamplingParams;
use crate::process::{LogitsProcessor, inverse_cdf, prob_sum, sample_from_probs};
use crate::uniform::{SeededUniforms, UniformSource};

/// Samples tokens from logits rows with fixed [`SamplingParams`] and a replayable random stream.
///
/// Draw `n` of the sampler is `CounterRng::new(params.seed, stream).uniform_f64_at(n)` (Philox4x32-10 from
/// `effllm-tensor`). [`position`](Self::position) is the draw counter; [`seek`](Self::seek) moves it, so a
/// sequence of calls can be replayed exactly. Every sampled token consumes exactly one draw; greedy decoding
/// (T = 0) consumes none.
///
/// The sampler is itself a [`UniformSource`], so the verification functions can read the same stream:
///
/// ```
/// use effllm_sampling::{Sampler, SamplingParams, verify_chain};
/// let mut s = Sampler::new(SamplingParams { temperature: 0.8, seed: 7, ..Default::default() })?;
/// let draft_logits = [1.0f32, 0.5, -1.0, 0.0];
/// let q = s.distribution(&draft_logits, &[])?;
/// let x = s.sample_probs(&q)?; // draft token, drawn from q
/// let p1 = s.distribution(&[0.2, 1.5, 0.1, 0.0], &[])?;
/// let p2 = s.distribution(&[0.0, 0.0, 3.0, 0.0], &[x])?;
/// let v = verify_chain(&[x], &[q], &[p1, p2], &mut s)?;
/// assert!(v.tokens.len() == v.accepted + 1);
/// # Ok::<(), effllm_sampling::SamplingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    uniforms: SeededUniforms,
    processor: LogitsProcessor,
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler on stream 0 of `params.seed`. Fails if `params` are invalid.
    pub fn new(params: SamplingParams) -> Result<Self> {
        Self::with_stream(params, 0)
    }

    /// A sampler on stream `stream` of `params.seed` (independent streams, e.g. one per sequence of a batch).
    pub fn with_stream(params: SamplingParams, stream: u64) -> Result<Self> {
        params.validate()?;
        let uniforms = SeededUniforms::new(params.seed, stream);
        Ok(Sampler { params, uniforms, processor: LogitsProcessor::new(), scratch: Vec::new() })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The random stream (seed, stream and draw counter).
    pub fn uniforms(&self) -> &SeededUniforms {
        &self.uniforms
    }

    /// Index of the next draw.
    pub fn position(&self) -> u64 {
        self.uniforms.position()
    }

    /// Moves the draw counter (replay: seek back to a saved [`position`](Self::position)).
    pub fn seek(&mut self, position: u64) {
        self.uniforms.seek(position);
    }

    /// The processed distribution of `logits` after `history` (see [`LogitsProcessor`]). Consumes no draw.
    pub fn distribution(&mut self, logits: &[f32], history: &[Token]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(logits.len());
        self.processor.process_into(logits, &self.params, history, &mut out)?;
        Ok(out)
    }

    /// Like [`distribution`](Self::distribution), writing into `out`.
    pub fn distribution_into(&mut self, logits: &[f32], history: &[Token], out: &mut Vec<f32>) -> Result<()> {
        self.processor.process_into(logits, &self.params, history, out)
    }

    /// Samples a token from `logits` after `history`: one draw for T > 0, none for T = 0 (greedy).
    pub fn sample(&mut self, logits: &[f32], history: &[Token]) -> Result<Token> {
        if self.params.is_greedy() {
            return self.processor.greedy(logits, &self.params, history, &mut self.scratch);
        }
        self.processor.process_into(logits, &self.params, history, &mut self.scratch)?;
        let u = self.uniforms.next_uniform()?;
        sample_from_probs(&self.scratch, u)
    }

    /// Samples a token from an already processed distribution (weights, normalised internally): one draw,
    /// consumed only if `probs` is valid.
    pub fn sample_probs(&mut self, probs: &[f32]) -> Result<Token> {
        let total = prob_sum("probs", probs)?;
        let u = self.uniforms.next_uniform()?;
        Ok(inverse_cdf(probs.iter().map(|&p| p as f64), total, u))
    }
}

impl UniformSource for Sampler {
    fn next_uniform(&mut self) -> Result<f64> {
        self.uniforms.next_uniform()
    }
}
