//! Uniform sources: where every random draw of the crate comes from.
//!
//! All randomness is injected through [`UniformSource`]. The production source is [`SeededUniforms`]: the
//! Philox4x32-10 counter-based generator of `effllm-tensor` ([`CounterRng`]) read at an explicit draw counter, so
//! draw `n` of `(seed, stream)` is a pure function of `(seed, stream, n)`. Saving [`SeededUniforms::position`] and
//! restoring it with [`SeededUniforms::seek`] replays every later draw bit for bit. Tests pass
//! [`ExplicitUniforms`] to pin each draw.

use effllm_tensor::rng::CounterRng;

use crate::error::{Result, SamplingError};

/// A source of uniform variates in `[0, 1)`.
///
/// Every sampling or verification step documents how many values it consumes, so callers can line up streams
/// (for example, a speculative decoder and plain autoregressive sampling reading the same stream).
pub trait UniformSource {
    /// The next uniform in `[0, 1)`. Implementations return [`SamplingError::InvalidUniform`] rather than a value
    /// outside that range, and may fail when exhausted.
    fn next_uniform(&mut self) -> Result<f64>;
}

impl<U: UniformSource + ?Sized> UniformSource for &mut U {
    fn next_uniform(&mut self) -> Result<f64> {
        (**self).next_uniform()
    }
}

/// Seeded, replayable uniforms: draw `n` is `CounterRng::new(seed, stream).uniform_f64_at(n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededUniforms {
    rng: CounterRng,
    position: u64,
}

impl SeededUniforms {
    /// Draws of stream `stream` under `seed`, starting at draw 0.
    pub fn new(seed: u64, stream: u64) -> Self {
        SeededUniforms { rng: CounterRng::new(seed, stream), position: 0 }
    }

    /// The underlying counter-based generator.
    pub fn rng(&self) -> CounterRng {
        self.rng
    }

    /// Index of the next draw (= number of draws consumed since position 0).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the draw counter; the next draw is draw `position`. Seeking back replays earlier draws exactly.
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// The uniform at absolute index `i` of this stream, without moving the counter.
    pub fn uniform_at(&self, i: u64) -> f64 {
        self.rng.uniform_f64_at(i)
    }
}

impl UniformSource for SeededUniforms {
    #[inline]
    fn next_uniform(&mut self) -> Result<f64> {
        let u = self.rng.uniform_f64_at(self.position);
        self.position = self.position.wrapping_add(1);
        Ok(u)
    }
}

/// A fixed list of uniforms, consumed in order; for tests and for replaying recorded streams.
#[derive(Clone, Debug)]
pub struct ExplicitUniforms<'a> {
    values: &'a [f64],
    next: usize,
}

impl<'a> ExplicitUniforms<'a> {
    /// Reads `values` in order.
    pub fn new(values: &'a [f64]) -> Self {
        ExplicitUniforms { values, next: 0 }
    }

    /// How many values have been consumed.
    pub fn consumed(&self) -> usize {
        self.next
    }
}

impl UniformSource for ExplicitUniforms<'_> {
    fn next_uniform(&mut self) -> Result<f64> {
        let &u = self.values.get(self.next).ok_or(SamplingError::UniformsExhausted { consumed: self.next })?;
        if !(0.0..1.0).contains(&u) {
            return Err(SamplingError::InvalidUniform { value: u });
        }
        self.next += 1;
        Ok(u)
    }
}

/// Draws one uniform and checks its range (for user-supplied sources).
#[inline]
pub(crate) fn draw<U: UniformSource + ?Sized>(rng: &mut U) -> Result<f64> {
    let u = rng.next_uniform()?;
    if (0.0..1.0).contains(&u) { Ok(u) } else { Err(SamplingError::InvalidUniform { value: u }) }
}
