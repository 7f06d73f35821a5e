//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as 1, 2,
//! 3").
//!
//! A value is a pure function of `(seed, stream, index)`: nothing is stored, any chunk of any stream can be
//! regenerated in any order, on any thread, and the CUDA backend computes the same words. MeZO-style zeroth-order
//! methods re-create their perturbation `z` from a seed this way instead of keeping it in memory.
//!
//! Mapping (part of the public contract; changing it changes every seeded result):
//! - key = `(seed mod 2³², seed / 2³²)`, counter = `(block mod 2³², block / 2³², stream mod 2³², stream / 2³²)`.
//! - f32 uniform `i`: word `i mod 4` of block `i / 4`, as `(w >> 8) · 2⁻²⁴` in `[0, 1)`.
//! - f64 uniform `i`: words `2(i mod 2)` and `2(i mod 2) + 1` of block `i / 2`, as
//!   `((w₀ << 21) ^ (w₁ >> 11)) · 2⁻⁵³` — 53 random bits in `[0, 1)`.
//! - normal `i` (either precision): block `i / 4`; Box–Muller on the word pairs `(w₀, w₁)` and `(w₂, w₃)` with
//!   `u₁ = ((w >> 8) + 1) · 2⁻²⁴ ∈ (0, 1]`, `u₂ = (w >> 8) · 2⁻²⁴`, `r = √(−2 ln u₁)`, giving `r cos 2πu₂` and
//!   `r sin 2πu₂` for slots `4b + 0/1` and `4b + 2/3`. Computed in f64, rounded once to the output type.
//!
//! ```
//! use effllm_tensor::rng::CounterRng;
//! let rng = CounterRng::new(42, 0);
//! let mut whole = vec![0f32; 10];
//! rng.fill_normal_f32(0, &mut whole);
//! let mut tail = vec![0f32; 4];
//! rng.fill_normal_f32(6, &mut tail); // any chunk regenerates the same values
//! assert_eq!(&whole[6..], &tail[..]);
//! ```

use rayon::prelude::*;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The Philox4x32 bijection with 10 rounds: four 32-bit words of output for a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// A seeded, counter-based generator for one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterRng {
    seed: u64,
    stream: u64,
}

const PAR_MIN: usize = 1 << 14;

impl CounterRng {
    /// Generator of stream `stream` under `seed`. Distinct streams are independent sequences.
    pub fn new(seed: u64, stream: u64) -> Self {
        CounterRng { seed, stream }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The stream.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The four words of block `block`.
    #[inline]
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32_10(
            [block as u32, (block >> 32) as u32, self.stream as u32, (self.stream >> 32) as u32],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// Uniform f32 in `[0, 1)` at absolute index `i`.
    #[inline]
    pub fn uniform_f32_at(&self, i: u64) -> f32 {
        let w = self.block(i / 4)[(i % 4) as usize];
        (w >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform f64 in `[0, 1)` at absolute index `i`.
    #[inline]
    pub fn uniform_f64_at(&self, i: u64) -> f64 {
        let b = self.block(i / 2);
        let s = 2 * (i % 2) as usize;
        let bits = ((b[s] as u64) << 21) ^ ((b[s + 1] as u64) >> 11);
        bits as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Standard normal at absolute index `i`, in f64.
    #[inline]
    pub fn normal_at(&self, i: u64) -> f64 {
        let b = self.block(i / 4);
        let slot = (i % 4) as usize;
        let (wa, wb) = if slot < 2 { (b[0], b[1]) } else { (b[2], b[3]) };
        let u1 = ((wa >> 8) as f64 + 1.0) * (1.0 / 16_777_216.0);
        let u2 = (wb >> 8) as f64 * (1.0 / 16_777_216.0);
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        if slot.is_multiple_of(2) { r * c } else { r * s }
    }

    fn fill<T: Send>(&self, offset: u64, out: &mut [T], f: impl Fn(&Self, u64) -> T + Sync) {
        if out.len() < PAR_MIN {
            out.iter_mut().enumerate().for_each(|(i, o)| *o = f(self, offset + i as u64));
            return;
        }
        crate::threads::install(|| {
            out.par_iter_mut().enumerate().with_min_len(4096).for_each(|(i, o)| *o = f(self, offset + i as u64))
        });
    }

    /// Fills `out` with the uniforms at indices `offset..offset + out.len()`.
    pub fn fill_uniform_f32(&self, offset: u64, out: &mut [f32]) {
        self.fill(offset, out, Self::uniform_f32_at);
    }

    /// Fills `out` with the f64 uniforms at indices `offset..offset + out.len()`.
    pub fn fill_uniform_f64(&self, offset: u64, out: &mut [f64]) {
        self.fill(offset, out, Self::uniform_f64_at);
    }

    /// Fills `out` with the standard normals at indices `offset..`, rounded to f32.
    pub fn fill_normal_f32(&self, offset: u64, out: &mut [f32]) {
        self.fill(offset, out, |r, i| r.normal_at(i) as f32);
    }

    /// Fills `out` with the standard normals at indices `offset..`.
    pub fn fill_normal_f64(&self, offset: u64, out: &mut [f64]) {
        self.fill(offset, out, Self::normal_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of the Random123 distribution (`kat_vectors`, philox4x32 with 10 rounds).
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }
}
