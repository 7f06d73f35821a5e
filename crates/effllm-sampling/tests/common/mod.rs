//! Shared test support: a lookup-table "language model" whose processed distributions depend only on the
//! context, and χ² helpers.

#![allow(dead_code)]

use std::collections::HashMap;

use effllm_sampling::stats::{ChiSquareTest, chi_square_gof};
use effllm_sampling::{SamplingParams, Token, process_logits};
use effllm_tensor::rng::CounterRng;

/// Significance level of every χ² test of the suite.
pub const ALPHA: f64 = 1e-3;
/// Minimum expected count per χ² cell (smaller cells are pooled).
pub const MIN_EXPECTED: f64 = 5.0;

/// A deterministic toy LM: the logits after context `ctx` are `scale · N(0, 1)` draws of a Philox stream keyed by
/// a hash of `ctx`, each token masked to −∞ with probability `mask_prob` (at least one token survives), then
/// processed with `params`. Rows are cached.
#[derive(Debug)]
pub struct ToyLm {
    pub vocab: usize,
    seed: u64,
    mask_prob: f64,
    scale: f64,
    params: SamplingParams,
    cache: HashMap<Vec<Token>, Vec<f32>>,
}

fn hash_ctx(ctx: &[Token]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in ctx.iter().chain(std::iter::once(&(ctx.len() as u32 | 0x8000_0000))) {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl ToyLm {
    pub fn new(vocab: usize, seed: u64, mask_prob: f64, scale: f64, params: SamplingParams) -> Self {
        ToyLm { vocab, seed, mask_prob, scale, params, cache: HashMap::new() }
    }

    pub fn logits(&self, ctx: &[Token]) -> Vec<f32> {
        let rng = CounterRng::new(self.seed, hash_ctx(ctx));
        let mut logits: Vec<f32> = (0..self.vocab)
            .map(|i| {
                if rng.uniform_f64_at(1000 + i as u64) < self.mask_prob {
                    f32::NEG_INFINITY
                } else {
                    (self.scale * rng.normal_at(i as u64)) as f32
                }
            })
            .collect();
        if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
            let i = (hash_ctx(ctx) % self.vocab as u64) as usize;
            logits[i] = 0.0;
        }
        logits
    }

    pub fn ensure(&mut self, ctx: &[Token]) {
        if !self.cache.contains_key(ctx) {
            let row = process_logits(&self.logits(ctx), &self.params, &[]).expect("valid toy logits");
            self.cache.insert(ctx.to_vec(), row);
        }
    }

    pub fn get(&self, ctx: &[Token]) -> &[f32] {
        &self.cache[ctx]
    }

    pub fn row(&mut self, ctx: &[Token]) -> Vec<f32> {
        self.ensure(ctx);
        self.get(ctx).to_vec()
    }

    /// Exact law of the first two tokens of autoregressive sampling from this LM after the empty context.
    pub fn joint2(&mut self) -> Vec<f64> {
        let v = self.vocab;
        let first = self.row(&[]);
        let mut joint = vec![0.0; v * v];
        for a in 0..v {
            if first[a] == 0.0 {
                continue;
            }
            let second = self.row(&[a as Token]);
            for b in 0..v {
                joint[a * v + b] = first[a] as f64 * second[b] as f64;
            }
        }
        joint
    }
}

/// Runs the χ² test, prints it (visible with `--nocapture`) and returns it.
pub fn chi2(name: &str, counts: &[u64], probs: &[f64]) -> ChiSquareTest {
    let t = chi_square_gof(counts, probs, MIN_EXPECTED).expect("valid chi-square input");
    eprintln!(
        "{name}: chi2 = {:.2}, dof = {}, critical(alpha = {ALPHA}) = {:.2}, p = {:.3e}, n = {}, impossible = {}",
        t.statistic,
        t.dof,
        t.critical_value(ALPHA),
        t.p_value,
        t.samples,
        t.impossible
    );
    t
}

/// Asserts that the empirical distribution is consistent with `probs` at level [`ALPHA`].
pub fn assert_fits(name: &str, counts: &[u64], probs: &[f64]) {
    let t = chi2(name, counts, probs);
    assert!(t.dof >= 1, "{name}: degenerate test");
    assert!(!t.rejects(ALPHA), "{name}: rejected: {t:?}");
}

/// Asserts that the empirical distribution is rejected at level [`ALPHA`].
pub fn assert_deviates(name: &str, counts: &[u64], probs: &[f64]) -> ChiSquareTest {
    let t = chi2(name, counts, probs);
    assert!(t.rejects(ALPHA), "{name}: expected a deviation, got {t:?}");
    t
}
