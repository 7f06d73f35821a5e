//! χ² goodness-of-fit tests: the sampler reproduces the processed distribution, and every exact verification rule
//! (chain rejection sampling, sample matching, SpecExec trees, SpecInfer trees) emits tokens distributed exactly
//! as the target, while mistral.rs's token matching, TriForce's middle-level resampling and rejection sampling on a
//! deterministic tree do not.
//!
//! Method. Every test draws N = 200 000 samples with fixed seeds (so it is deterministic) and runs Pearson's χ²
//! test against the exact law at significance α = 1e-3. Cells with expected count < 5 are pooled; the degrees of
//! freedom are (cells after pooling) − 1; the critical value `chi_square_critical(1e-3, dof)` comes from
//! `effllm_sampling::stats` (regularised incomplete gamma + bisection; checked there against the closed forms
//! for 1, 2 and 4 degrees of freedom and against the NIST table, e.g. 24.322 for 7 dof, 149.449 for 100). An
//! observation on a probability-0 cell fails the test outright. Each test prints its statistic, degrees of
//! freedom, critical value and p-value (`cargo test -- --nocapture`). With a fixed seed a passing test always
//! passes; the chance that an exact rule would have failed with a fresh seed is 1e-3 per test.
//!
//! The speculative tests use the toy LM of `common`: target and draft distributions after any context are
//! random (different seeds) with about a quarter of the tokens masked, so q has zeros where p has mass and
//! vice versa. "First two tokens" runs whole speculative rounds until two tokens are emitted, so a rejection in
//! the first round makes the second token come from the next round; the exact joint law is
//! p(a | ∅) · p(b | a).

mod common;

use common::{ALPHA, ToyLm, assert_deviates, assert_fits, chi2};
use effllm_sampling::{
    FilterOrder, Replacement, Sampler, SamplingParams, SeededUniforms, Token, TokenTree, TreeSampling, UniformSource,
    Verifier, reference, sample_from_probs, verify, verify_tree_rejection, verify_tree_sample_match,
};

const N: usize = 200_000;

// ---------------------------------------------------------------------------------------------------------------
// (a) The sampler samples the processed distribution.

fn sampler_case(name: &str, params: SamplingParams, history: &[Token]) {
    let rng = effllm_tensor::rng::CounterRng::new(2024, 0);
    let mut logits: Vec<f32> = (0..16).map(|i| (2.0 * rng.normal_at(i)) as f32).collect();
    logits[5] = logits[3]; // ties
    logits[9] = logits[3];
    logits[12] = f32::NEG_INFINITY; // masked
    let want = reference::process(&logits, &params, history).unwrap();
    let mut s = Sampler::new(params).unwrap();
    let mut counts = vec![0u64; logits.len()];
    for _ in 0..N {
        counts[s.sample(&logits, history).unwrap() as usize] += 1;
    }
    assert_eq!(s.position(), N as u64, "one draw per sample");
    assert_fits(name, &counts, &want);
}

#[test]
fn sampler_plain_softmax() {
    sampler_case("sampler T=1", SamplingParams { seed: 1, ..Default::default() }, &[]);
}

#[test]
fn sampler_temperature_top_k() {
    sampler_case(
        "sampler T=0.7 top-k 5",
        SamplingParams { temperature: 0.7, top_k: 5, seed: 2, ..Default::default() },
        &[],
    );
}

#[test]
fn sampler_top_p() {
    sampler_case(
        "sampler T=1.3 top-p 0.8",
        SamplingParams { temperature: 1.3, top_p: 0.8, seed: 3, ..Default::default() },
        &[],
    );
}

#[test]
fn sampler_min_p() {
    sampler_case(
        "sampler T=0.9 min-p 0.1",
        SamplingParams { temperature: 0.9, min_p: 0.1, seed: 4, ..Default::default() },
        &[],
    );
}

#[test]
fn sampler_full_chain_with_penalties() {
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 10,
        top_p: 0.9,
        min_p: 0.02,
        repetition_penalty: 1.3,
        presence_penalty: 0.2,
        frequency_penalty: 0.1,
        penalty_window: Some(4),
        seed: 5,
        ..Default::default()
    };
    sampler_case("sampler full chain + penalties", params, &[0, 3, 3, 7, 12, 1, 3]);
}

#[test]
fn sampler_temperature_last_order() {
    let params = SamplingParams {
        temperature: 1.5,
        top_p: 0.7,
        min_p: 0.05,
        order: FilterOrder::TemperatureLast,
        seed: 6,
        ..Default::default()
    };
    sampler_case("sampler llama.cpp order", params, &[]);
}

// ---------------------------------------------------------------------------------------------------------------
// (b), (c) Chain verification.

/// A chain verification rule under test: (draft tokens, q rows, p rows) → emitted tokens.
trait ChainRule: FnMut(&[Token], &[&[f32]], &[&[f32]]) -> Vec<Token> {}
impl<F: FnMut(&[Token], &[&[f32]], &[&[f32]]) -> Vec<Token>> ChainRule for F {}

struct Pair {
    target: ToyLm,
    draft: ToyLm,
}

impl Pair {
    fn new(vocab: usize, target: SamplingParams, draft: SamplingParams) -> Self {
        Pair { target: ToyLm::new(vocab, 101, 0.25, 1.5, target), draft: ToyLm::new(vocab, 202, 0.25, 1.5, draft) }
    }

    /// One speculative round after `out`: γ draft tokens sampled from q (stream `du`), verified with `rule`.
    fn chain_round(
        &mut self,
        out: &[Token],
        gamma: usize,
        rule: &mut dyn ChainRule,
        du: &mut SeededUniforms,
    ) -> Vec<Token> {
        let mut ctx = out.to_vec();
        for _ in 0..gamma {
            self.draft.ensure(&ctx);
            let x = sample_from_probs(self.draft.get(&ctx), du.next_uniform().unwrap()).unwrap();
            ctx.push(x);
        }
        for j in 0..=gamma {
            self.target.ensure(&ctx[..out.len() + j]);
        }
        let q: Vec<&[f32]> = (0..gamma).map(|j| self.draft.get(&ctx[..out.len() + j])).collect();
        let p: Vec<&[f32]> = (0..=gamma).map(|j| self.target.get(&ctx[..out.len() + j])).collect();
        rule(&ctx[out.len()..], &q, &p)
    }

    /// Counts of the first emitted token and of the first two, over `N` independent generations.
    fn first_two(&mut self, gamma: usize, rule: &mut dyn ChainRule) -> (Vec<u64>, Vec<u64>) {
        let v = self.target.vocab;
        let (mut c1, mut c2) = (vec![0u64; v], vec![0u64; v * v]);
        let mut du = SeededUniforms::new(77, 1);
        for _ in 0..N {
            let mut out: Vec<Token> = Vec::new();
            while out.len() < 2 {
                let tokens = self.chain_round(&out, gamma, rule, &mut du);
                out.extend(tokens);
            }
            c1[out[0] as usize] += 1;
            c2[out[0] as usize * v + out[1] as usize] += 1;
        }
        (c1, c2)
    }

    fn first_law(&mut self) -> Vec<f64> {
        self.target.row(&[]).iter().map(|&x| x as f64).collect()
    }
}

fn verifier_rule(verifier: Verifier, seed: u64) -> impl ChainRule {
    let mut u = SeededUniforms::new(seed, 0);
    move |xs, q, p| verify(verifier, xs, q, p, &mut u).unwrap().tokens
}

#[test]
fn chain_rejection_is_exact() {
    let mut pair = Pair::new(10, SamplingParams::default(), SamplingParams::default());
    let (c1, c2) = pair.first_two(3, &mut verifier_rule(Verifier::Rejection, 11));
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    // The test is meaningful: p and q disagree, including on their supports (after ∅ and after each first token).
    let (mut p_only, mut q_only) = (0, 0);
    for ctx in std::iter::once(vec![]).chain((0..10).map(|a| vec![a as Token])) {
        let (p, q) = (pair.target.row(&ctx), pair.draft.row(&ctx));
        p_only += p.iter().zip(&q).filter(|(a, b)| **a > 0.0 && **b == 0.0).count();
        q_only += p.iter().zip(&q).filter(|(a, b)| **a == 0.0 && **b > 0.0).count();
    }
    assert!(p_only > 5 && q_only > 5, "{p_only} {q_only}");
    assert_fits("chain rejection, first token (V=10, gamma=3)", &c1, &p1);
    assert_fits("chain rejection, first two tokens (V=10, gamma=3)", &c2, &joint);
}

#[test]
fn chain_rejection_is_exact_with_filtered_distributions() {
    // Target and draft processed with different temperatures and filters; gamma = 1 (many rounds).
    let target = SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() };
    let draft = SamplingParams { temperature: 1.3, top_k: 6, ..Default::default() };
    let mut pair = Pair::new(16, target, draft);
    let (c1, c2) = pair.first_two(1, &mut verifier_rule(Verifier::Rejection, 12));
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    assert_fits("chain rejection, filtered, first token (V=16, gamma=1)", &c1, &p1);
    assert_fits("chain rejection, filtered, first two tokens (V=16, gamma=1)", &c2, &joint);
}

#[test]
fn chain_rejection_is_exact_with_a_greedy_draft() {
    // Deterministic drafter: q = one-hot(argmax) (specexec.md §2.2 "deterministic drafter").
    let mut pair = Pair::new(8, SamplingParams { temperature: 0.9, ..Default::default() }, SamplingParams::greedy());
    let (c1, c2) = pair.first_two(2, &mut verifier_rule(Verifier::Rejection, 13));
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    assert_fits("chain rejection, one-hot q, first token (V=8, gamma=2)", &c1, &p1);
    assert_fits("chain rejection, one-hot q, first two tokens (V=8, gamma=2)", &c2, &joint);
}

#[test]
fn chain_sample_match_is_exact() {
    let mut pair = Pair::new(10, SamplingParams::default(), SamplingParams::default());
    let (c1, c2) = pair.first_two(3, &mut verifier_rule(Verifier::SampleMatch, 14));
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    assert_fits("chain sample-match, first token", &c1, &p1);
    assert_fits("chain sample-match, first two tokens", &c2, &joint);
}

#[test]
fn token_match_is_not_exact_for_positive_temperature() {
    // mistral.rs's rule at T = 1: the output is the greedy continuation, not a sample of p.
    let mut pair = Pair::new(10, SamplingParams::default(), SamplingParams::default());
    let (c1, c2) = pair.first_two(3, &mut verifier_rule(Verifier::TokenMatch, 15));
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    let t = assert_deviates("token-match (mistral.rs), first token", &c1, &p1);
    assert!(t.statistic > 100.0 * t.critical_value(ALPHA));
    assert_deviates("token-match (mistral.rs), first two tokens", &c2, &joint);
    // All mass on the argmax: it is greedy decoding.
    let top = effllm_sampling::argmax(&pair.target.row(&[])).unwrap() as usize;
    assert_eq!(c1[top], N as u64);
    // At T = 0 the same rule is exact (greedy): p is one-hot and the counts match it.
    let mut greedy = Pair::new(10, SamplingParams::greedy(), SamplingParams::default());
    let (g1, g2) = greedy.first_two(3, &mut verifier_rule(Verifier::TokenMatch, 16));
    let (gp1, gjoint) = (greedy.first_law(), greedy.target.joint2());
    assert_eq!(g1.iter().zip(&gp1).filter(|(c, _)| **c > 0).count(), 1);
    assert!(g1.iter().zip(&gp1).all(|(&c, &p)| (c as f64 - p * (N as f64)).abs() < 0.5));
    assert!(g2.iter().zip(&gjoint).all(|(&c, &p)| (c as f64 - p * (N as f64)).abs() < 0.5));
}

#[test]
fn resampling_from_target_is_detected() {
    // Negative control: TriForce's middle level (triforce.md §4 T1) resamples from p instead of the residual.
    // Closed form for q = (1, 0), p = (0.5, 0.5): (0.75, 0.25). The χ² test must reject p and accept (0.75, 0.25).
    let (p, q) = ([0.5f32, 0.5], [1.0f32, 0.0]);
    let mut u = SeededUniforms::new(99, 0);
    let mut counts = [0u64; 2];
    for _ in 0..N {
        let x = sample_from_probs(&q, u.next_uniform().unwrap()).unwrap() as usize;
        let accept = u.next_uniform().unwrap() * (q[x] as f64) < (p[x] as f64);
        let y = if accept { x } else { sample_from_probs(&p, u.next_uniform().unwrap()).unwrap() as usize };
        counts[y] += 1;
    }
    assert_deviates("TriForce T1 resample-from-p, V=2", &counts, &[0.5, 0.5]);
    assert_fits("TriForce T1 resample-from-p vs its closed form", &counts, &[0.75, 0.25]);
    // The same bug on the random toy pair, first token.
    let mut pair = Pair::new(10, SamplingParams::default(), SamplingParams::default());
    let mut ru = SeededUniforms::new(98, 0);
    let mut rule = |xs: &[Token], q: &[&[f32]], p: &[&[f32]]| -> Vec<Token> {
        let mut out = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            let (pi, qi) = (p[i][x as usize] as f64, q[i][x as usize] as f64);
            if ru.next_uniform().unwrap() * qi < pi {
                out.push(x);
            } else {
                out.push(sample_from_probs(p[i], ru.next_uniform().unwrap()).unwrap());
                return out;
            }
        }
        out.push(sample_from_probs(p[xs.len()], ru.next_uniform().unwrap()).unwrap());
        out
    };
    let (c1, _) = pair.first_two(3, &mut rule);
    let p1 = pair.first_law();
    assert_deviates("TriForce T1 resample-from-p, toy pair, first token", &c1, &p1);
}

// ---------------------------------------------------------------------------------------------------------------
// (d) Tree verification.

fn context(tree: &TokenTree, prefix: &[Token], i: usize) -> Vec<Token> {
    let mut ctx = prefix.to_vec();
    ctx.extend(tree.path_to(i).iter().map(|&n| tree.token(n).unwrap()));
    ctx
}

/// SpecExec-style deterministic tree: the top-`k` draft tokens at every node, depth `depth`.
fn top_k_tree(draft: &mut ToyLm, prefix: &[Token], k: usize, depth: usize) -> TokenTree {
    let (mut tokens, mut parents, mut ctxs) = (vec![0 as Token], vec![None], vec![prefix.to_vec()]);
    let mut frontier = vec![0usize];
    for _ in 0..depth {
        let mut next = Vec::new();
        for &node in &frontier {
            let q = draft.row(&ctxs[node]);
            let mut order: Vec<usize> = (0..q.len()).filter(|&t| q[t] > 0.0).collect();
            order.sort_by(|&a, &b| q[b].partial_cmp(&q[a]).unwrap().then(a.cmp(&b)));
            for &t in order.iter().take(k) {
                tokens.push(t as Token);
                parents.push(Some(node));
                let mut c = ctxs[node].clone();
                c.push(t as Token);
                ctxs.push(c);
                next.push(tokens.len() - 1);
            }
        }
        frontier = next;
    }
    TokenTree::new(tokens, parents).unwrap()
}

/// SpecInfer-style sampled tree: `widths[d]` children per node at depth d, drawn from q (stream `du`).
fn sampled_tree(
    draft: &mut ToyLm,
    prefix: &[Token],
    widths: &[usize],
    rep: Replacement,
    du: &mut SeededUniforms,
) -> TokenTree {
    let (mut tokens, mut parents, mut ctxs) = (vec![0 as Token], vec![None], vec![prefix.to_vec()]);
    let mut frontier = vec![0usize];
    for &w in widths {
        let mut next = Vec::new();
        for &node in &frontier {
            let mut q = draft.row(&ctxs[node]);
            for _ in 0..w {
                if q.iter().all(|&x| x == 0.0) {
                    break; // support exhausted (without replacement)
                }
                let t = sample_from_probs(&q, du.next_uniform().unwrap()).unwrap();
                if rep == Replacement::Without {
                    q[t as usize] = 0.0;
                }
                tokens.push(t);
                parents.push(Some(node));
                let mut c = ctxs[node].clone();
                c.push(t);
                ctxs.push(c);
                next.push(tokens.len() - 1);
            }
        }
        frontier = next;
    }
    TokenTree::new(tokens, parents).unwrap()
}

/// Counts of the first two emitted tokens over `N` generations; `round` verifies one tree after `out`.
fn tree_first_two(pair: &mut Pair, round: &mut dyn FnMut(&mut Pair, &[Token]) -> Vec<Token>) -> (Vec<u64>, Vec<u64>) {
    let v = pair.target.vocab;
    let (mut c1, mut c2) = (vec![0u64; v], vec![0u64; v * v]);
    for _ in 0..N {
        let mut out: Vec<Token> = Vec::new();
        while out.len() < 2 {
            let t = round(pair, &out);
            out.extend(t);
        }
        c1[out[0] as usize] += 1;
        c2[out[0] as usize * v + out[1] as usize] += 1;
    }
    (c1, c2)
}

fn target_rows(pair: &mut Pair, tree: &TokenTree, prefix: &[Token]) -> Vec<Vec<f32>> {
    (0..tree.len()).map(|i| pair.target.row(&context(tree, prefix, i))).collect()
}

fn draft_rows(pair: &mut Pair, tree: &TokenTree, prefix: &[Token]) -> Vec<Vec<f32>> {
    (0..tree.len()).map(|i| pair.draft.row(&context(tree, prefix, i))).collect()
}

fn specexec_case(name: &str, sampling: TreeSampling, seed: u64) {
    let mut pair =
        Pair::new(8, SamplingParams { temperature: 0.8, top_p: 0.95, ..Default::default() }, SamplingParams::default());
    // Trees depend only on the prefix: build each once.
    let mut trees: std::collections::HashMap<Vec<Token>, (TokenTree, Vec<Vec<f32>>)> = Default::default();
    let mut u = SeededUniforms::new(seed, 0);
    let (c1, c2) = tree_first_two(&mut pair, &mut |pair, out| {
        if !trees.contains_key(out) {
            let tree = top_k_tree(&mut pair.draft, out, 3, 2);
            let p = target_rows(pair, &tree, out);
            trees.insert(out.to_vec(), (tree, p));
        }
        let (tree, p) = &trees[out];
        verify_tree_sample_match(tree, p, sampling, &mut u).unwrap().tokens
    });
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    assert_fits(&format!("{name}, first token"), &c1, &p1);
    assert_fits(&format!("{name}, first two tokens"), &c2, &joint);
}

#[test]
fn specexec_tree_lazy_is_exact() {
    specexec_case("SpecExec top-3 depth-2 tree, lazy", TreeSampling::Lazy, 21);
}

#[test]
fn specexec_tree_eager_is_exact() {
    specexec_case("SpecExec top-3 depth-2 tree, eager per node", TreeSampling::EagerPerNode, 22);
}

fn specinfer_case(name: &str, rep: Replacement, seed: u64) {
    let mut pair = Pair::new(8, SamplingParams { temperature: 0.8, ..Default::default() }, SamplingParams::default());
    let mut u = SeededUniforms::new(seed, 0);
    let mut du = SeededUniforms::new(seed, 1);
    let (c1, c2) = tree_first_two(&mut pair, &mut |pair, out| {
        let tree = sampled_tree(&mut pair.draft, out, &[3, 2], rep, &mut du);
        let p = target_rows(pair, &tree, out);
        let q = draft_rows(pair, &tree, out);
        verify_tree_rejection(&tree, &p, &q, rep, &mut u).unwrap().tokens
    });
    let (p1, joint) = (pair.first_law(), pair.target.joint2());
    assert_fits(&format!("{name}, first token"), &c1, &p1);
    assert_fits(&format!("{name}, first two tokens"), &c2, &joint);
}

#[test]
fn specinfer_tree_with_replacement_is_exact() {
    specinfer_case("SpecInfer sampled tree (3, 2), with replacement", Replacement::With, 23);
}

#[test]
fn specinfer_tree_without_replacement_is_exact() {
    specinfer_case("SpecInfer sampled tree (3, 2), without replacement", Replacement::Without, 24);
}

#[test]
fn rejection_on_a_deterministic_tree_is_not_exact() {
    // Why SpecExec needs sample matching: the sibling rule assumes the children were drawn from q; a top-k tree
    // breaks that assumption and biases the output.
    let mut pair = Pair::new(8, SamplingParams { temperature: 0.8, ..Default::default() }, SamplingParams::default());
    let mut u = SeededUniforms::new(25, 0);
    let mut c1 = vec![0u64; 8];
    let tree = top_k_tree(&mut pair.draft, &[], 3, 1);
    let p = target_rows(&mut pair, &tree, &[]);
    let q = draft_rows(&mut pair, &tree, &[]);
    for _ in 0..N {
        let v = verify_tree_rejection(&tree, &p, &q, Replacement::Without, &mut u).unwrap();
        c1[v.tokens[0] as usize] += 1;
    }
    let p1 = pair.first_law();
    let t = chi2("rejection on a deterministic top-3 tree, first token", &c1, &p1);
    assert!(t.rejects(ALPHA));
}
