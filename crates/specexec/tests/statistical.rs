//! Distributional losslessness (`specexec.md` §5 invariant 3): the first two generated tokens of chain
//! speculative decoding, SpecInfer trees (with and without replacement) and SpecExec follow the target's exact
//! joint distribution. Pearson χ² goodness of fit over the V² cells against exact enumeration (f64 reference
//! processing), N = 6000 generations with seeds 0..N, significance α = 10⁻³ per test (12 tests: family-wise
//! false-alarm rate ≤ 1.2 %, and the seeds are fixed, so the outcome is deterministic).

use effllm_model::CausalLm;
use effllm_sampling::{Replacement, SamplingParams, reference as sref, stats::chi_square_gof};
use specexec::models::LookupLm;
use specexec::{ChainConfig, Engine, Method, SpecExecConfig, SpecInferConfig};

const N: u64 = 6000;
const ALPHA: f64 = 1e-3;

fn joint(target: &LookupLm, prompt: &[u32], params: &SamplingParams) -> Vec<f64> {
    let v = target.vocab_size();
    let p1 = sref::process(&target.logits(prompt), params, prompt).unwrap();
    let mut out = vec![0.0; v * v];
    for a in 0..v {
        let mut ctx = prompt.to_vec();
        ctx.push(a as u32);
        let p2 = sref::process(&target.logits(&ctx), params, &ctx).unwrap();
        for b in 0..v {
            out[a * v + b] = p1[a] * p2[b];
        }
    }
    out
}

fn counts(method: &Method, temperature: f32, top_p: f32) -> (Vec<u64>, Vec<f64>, usize) {
    let target = LookupLm::new(4, 2, 77, 1.2);
    let draft = target.perturbed(78, 1.0);
    let prompt = [1u32, 3];
    let engine = Engine::new(&draft, &target, method.clone()).unwrap();
    let base = SamplingParams { temperature, top_p, ..Default::default() };
    let want = joint(&target, &prompt, &base);
    let mut counts = vec![0u64; 16];
    let mut accepted = 0usize;
    for seed in 0..N {
        let g = engine.generate(&prompt, 2, &SamplingParams { seed, ..base.clone() }).unwrap();
        counts[(g.tokens[0] * 4 + g.tokens[1]) as usize] += 1;
        accepted += g.stats.steps.iter().map(|s| s.accepted).sum::<usize>();
    }
    (counts, want, accepted)
}

fn check(method: Method, temperature: f32, top_p: f32) {
    let (counts, want, accepted) = counts(&method, temperature, top_p);
    let t = chi_square_gof(&counts, &want, 5.0).unwrap();
    assert!(
        !t.rejects(ALPHA),
        "{method:?} T={temperature} top_p={top_p}: χ² = {} (dof {}), p = {}",
        t.statistic,
        t.dof,
        t.p_value
    );
    // The draft is informative: speculation accepts tokens (otherwise the test would not exercise acceptance).
    assert!(accepted as u64 > N / 4, "{method:?}: only {accepted} accepted draft tokens");
}

fn methods() -> Vec<Method> {
    vec![
        Method::Chain(ChainConfig { draft_len: 3 }),
        Method::SpecInfer(SpecInferConfig { widths: vec![2, 2], replacement: Replacement::Without }),
        Method::SpecInfer(SpecInferConfig { widths: vec![3, 1], replacement: Replacement::With }),
        Method::SpecExec(SpecExecConfig {
            budget: 6,
            max_depth: 3,
            expand_batch: 2,
            max_branch: 2,
            ..Default::default()
        }),
    ]
}

#[test]
fn output_follows_the_target_at_t06() {
    for m in methods() {
        check(m, 0.6, 1.0);
    }
}

#[test]
fn output_follows_the_target_at_t1_top_p_09() {
    for m in methods() {
        check(m, 1.0, 0.9);
    }
}

#[test]
fn output_follows_the_target_at_t1_top_p_05() {
    for m in methods() {
        check(m, 1.0, 0.5);
    }
}

/// Negative control: the same test rejects a wrong hypothesis (SpecExec's T = 0.6 samples against the T = 1
/// distribution), so the tests above have power at this N.
#[test]
fn the_test_rejects_a_wrong_distribution() {
    let m = methods().pop().unwrap();
    let (counts, _, _) = counts(&m, 0.6, 1.0);
    let target = LookupLm::new(4, 2, 77, 1.2);
    let wrong = joint(&target, &[1, 3], &SamplingParams::default());
    assert!(chi_square_gof(&counts, &wrong, 5.0).unwrap().rejects(ALPHA));
}
