//! Verification rules: known cases, errors, equality with the naive reference under the same uniforms, and the
//! "speculation equals autoregressive sampling with a shared stream" property of the exact token-matching rules.

mod common;

use common::ToyLm;
use effllm_sampling::{
    ExplicitUniforms, RelaxedRule, Replacement, SamplingError, SamplingParams, SeededUniforms, SiblingVerdict,
    StepVerdict, Token, TokenTree, TreeSampling, UniformSource, Verification, Verifier, greedy_accept_len, reference,
    relaxed_acceptance_probability, sample_from_probs, verify, verify_chain, verify_greedy, verify_relaxed,
    verify_sample_match, verify_siblings, verify_step, verify_token_match, verify_tree_greedy, verify_tree_rejection,
    verify_tree_sample_match,
};
use proptest::prelude::*;

const NO_Q: &[Vec<f32>] = &[];

#[test]
fn rejection_step_known_cases() {
    // p(x)/q(x) = 0.25: u = 0.2 accepts, u = 0.3 rejects and samples the residual (only token 1 has p > q).
    let (p, q) = ([0.1f32, 0.9], [0.4f32, 0.6]);
    assert_eq!(verify_step(&p, &q, 0, &mut ExplicitUniforms::new(&[0.2])).unwrap(), StepVerdict::Accept);
    let mut u = ExplicitUniforms::new(&[0.3, 0.99]);
    assert_eq!(verify_step(&p, &q, 0, &mut u).unwrap(), StepVerdict::Reject(1));
    assert_eq!(u.consumed(), 2);
    // p(x) >= q(x): always accepted.
    assert_eq!(verify_step(&p, &q, 1, &mut ExplicitUniforms::new(&[0.999_999])).unwrap(), StepVerdict::Accept);
    // Unnormalised rows are normalised: (1, 9) ~ (0.1, 0.9), (4, 6) ~ (0.4, 0.6).
    assert_eq!(
        verify_step(&[1.0, 9.0], &[4.0, 6.0], 0, &mut ExplicitUniforms::new(&[0.2])).unwrap(),
        StepVerdict::Accept
    );
}

#[test]
fn p_equal_q_accepts_everything() {
    let p = vec![0.3f32, 0.2, 0.5];
    let mut u = SeededUniforms::new(5, 0);
    for _ in 0..1000 {
        let v = verify_chain(
            &[2, 0, 1],
            &[p.clone(), p.clone(), p.clone()],
            &[p.clone(), p.clone(), p.clone(), p.clone()],
            &mut u,
        )
        .unwrap();
        assert_eq!(v.accepted, 3);
    }
}

#[test]
fn chain_contract_and_uniform_consumption() {
    let q = vec![vec![0.5f32, 0.5, 0.0], vec![0.0, 1.0, 0.0]];
    let p = vec![vec![0.5f32, 0.5, 0.0], vec![0.2, 0.3, 0.5], vec![0.0, 0.0, 1.0]];
    // x1 = 0 (ratio 1, accepted with u = 0.9), x2 = 1 (ratio 0.3, rejected with u = 0.5), residual (0.2, 0, 0.5)
    // sampled with u = 0.5 → cum 0.2 ≤ 0.35 < 0.7 → token 2.
    let mut u = ExplicitUniforms::new(&[0.9, 0.5, 0.5]);
    let v = verify_chain(&[0, 1], &q, &p, &mut u).unwrap();
    assert_eq!(v, Verification { accepted: 1, tokens: vec![0, 2] });
    assert_eq!(u.consumed(), 3);
    // All accepted: bonus from the last row, one uniform per position plus one.
    let mut u = ExplicitUniforms::new(&[0.1, 0.1, 0.3]);
    let v = verify_chain(&[0, 1], &q, &p, &mut u).unwrap();
    assert_eq!((v.accepted, v.tokens.clone(), u.consumed()), (2, vec![0, 1, 2], 3));
    assert!(v.all_accepted(2) && v.next_token() == Some(2));
    // Empty draft: just a sample of p_1.
    let v = verify_chain::<_, Vec<f32>, _>(&[], &[], &[vec![0.0f32, 1.0]], &mut ExplicitUniforms::new(&[0.5])).unwrap();
    assert_eq!(v, Verification { accepted: 0, tokens: vec![1] });
}

#[test]
fn verification_errors_are_typed() {
    let p = vec![vec![0.5f32, 0.5], vec![0.5, 0.5]];
    let mut u = SeededUniforms::new(0, 0);
    let q0 = vec![vec![1.0f32, 0.0]];
    assert_eq!(verify_chain(&[1], &q0, &p, &mut u), Err(SamplingError::ZeroDraftProbability { position: 0, token: 1 }));
    assert!(matches!(verify_chain(&[0], &q0, &p[..1], &mut u), Err(SamplingError::RowCount { .. })));
    assert!(matches!(verify_chain(&[0, 1], &q0, &p, &mut u), Err(SamplingError::RowCount { .. })));
    assert!(matches!(verify_chain(&[5], &q0, &p, &mut u), Err(SamplingError::TokenOutOfRange { token: 5, .. })));
    assert!(matches!(
        verify_chain(&[0], &[vec![1.0f32, 0.0, 0.0]], &p, &mut u),
        Err(SamplingError::VocabMismatch { .. })
    ));
    assert!(matches!(
        verify_chain(&[0], &q0, &[vec![0.5f32, f32::NAN], vec![0.5, 0.5]], &mut u),
        Err(SamplingError::InvalidProbability { index: 1, .. })
    ));
    assert!(matches!(
        verify_chain(&[0], &q0, &[vec![0.0f32, 0.0], vec![0.5, 0.5]], &mut u),
        Err(SamplingError::ZeroMass { .. })
    ));
    assert!(matches!(
        verify_greedy(&[0], &[vec![f32::NAN, 0.0], vec![0.0, 1.0]]),
        Err(SamplingError::NonFiniteLogit { .. })
    ));
    assert!(matches!(verify_greedy::<Vec<f32>>(&[], &[]), Err(SamplingError::RowCount { .. })));
    // Uniform sources: exhausted lists and out-of-range values are errors.
    assert_eq!(
        verify_chain(&[0], &q0, &p, &mut ExplicitUniforms::new(&[0.9])),
        Err(SamplingError::UniformsExhausted { consumed: 1 })
    );
    assert_eq!(
        verify_chain(&[0], &q0, &p, &mut ExplicitUniforms::new(&[1.0])),
        Err(SamplingError::InvalidUniform { value: 1.0 })
    );
    struct Bad;
    impl UniformSource for Bad {
        fn next_uniform(&mut self) -> Result<f64, SamplingError> {
            Ok(f64::NAN)
        }
    }
    assert!(matches!(verify_chain(&[0], &q0, &p, &mut Bad), Err(SamplingError::InvalidUniform { .. })));
    // Trees.
    assert!(matches!(TokenTree::new(vec![], vec![]), Err(SamplingError::InvalidTree { .. })));
    assert!(matches!(TokenTree::new(vec![0, 1], vec![None, Some(1)]), Err(SamplingError::InvalidTree { node: 1, .. })));
    assert!(matches!(TokenTree::new(vec![0, 1], vec![None, None]), Err(SamplingError::InvalidTree { node: 1, .. })));
    assert!(matches!(TokenTree::new(vec![0, 1], vec![Some(0), None]), Err(SamplingError::InvalidTree { node: 0, .. })));
    assert!(matches!(TokenTree::new(vec![0, 1], vec![None]), Err(SamplingError::RowCount { .. })));
    let tree = TokenTree::new(vec![0, 7], vec![None, Some(0)]).unwrap();
    assert!(matches!(verify_tree_greedy(&tree, &p), Err(SamplingError::TokenOutOfRange { token: 7, .. })));
    let tree = TokenTree::chain(0, &[1]);
    assert!(matches!(verify_tree_greedy(&tree, &p[..1]), Err(SamplingError::RowCount { .. })));
    assert!(matches!(
        verify_tree_rejection(&tree, &p, &[vec![1.0f32, 0.0], vec![]], Replacement::With, &mut u),
        Err(SamplingError::ZeroDraftProbability { position: 1, token: 1 })
    ));
    assert!(matches!(
        verify_siblings(&[0.5, 0.5], &[0.5, 0.5], &[3], Replacement::With, &mut u),
        Err(SamplingError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        relaxed_acceptance_probability(&[0.5, 0.5], 0, 0.0),
        Err(SamplingError::InvalidParam { name: "gamma", .. })
    ));
}

#[test]
fn greedy_and_token_match() {
    let p = vec![vec![0.1f32, 0.6, 0.3], vec![0.5, 0.5, 0.0], vec![0.0, 0.2, 0.8]];
    // argmax rows: 1, 0 (tie → lowest id), 2.
    assert_eq!(verify_greedy(&[1, 0], &p).unwrap(), Verification { accepted: 2, tokens: vec![1, 0, 2] });
    assert_eq!(verify_greedy(&[1, 1], &p).unwrap(), Verification { accepted: 1, tokens: vec![1, 0] });
    assert_eq!(verify_greedy(&[2, 1], &p).unwrap(), Verification { accepted: 0, tokens: vec![1] });
    // Raw logits work too.
    let logits = vec![vec![0.0f32, 3.0, 1.0], vec![2.0, 2.0, -1.0], vec![f32::NEG_INFINITY, 0.0, 1.0]];
    assert_eq!(verify_greedy(&[1, 0], &logits).unwrap().tokens, vec![1, 0, 2]);
    // mistral.rs's token matching gives the greedy tokens whatever the distribution.
    for d in [[1, 0], [1, 1], [2, 1], [0, 0]] {
        assert_eq!(verify_token_match(&d, &p).unwrap(), verify_greedy(&d, &p).unwrap());
    }
    let mut u = SeededUniforms::new(1, 0);
    assert_eq!(verify(Verifier::TokenMatch, &[2, 1], NO_Q, &p, &mut u).unwrap().tokens, vec![1]);
    assert_eq!(u.position(), 0, "token matching consumes no uniform");
    assert_eq!(greedy_accept_len(&[1, 0, 5], &[1, 0, 2, 9]), 2);
    assert_eq!(greedy_accept_len(&[], &[3]), 0);
}

#[test]
fn zero_residual_falls_back_to_p() {
    // p = q exactly: the residual is identically zero. Rejection cannot happen through the test (ratio 1), but the
    // sibling rule without replacement re-verifies the next candidate against an unchanged p' when p' = q'.
    let p = [0.25f32, 0.25, 0.5];
    // Candidates [2, 2] drawn with replacement; uniforms force nothing: ratio is 1 → accepted at once.
    let v = verify_siblings(&p, &p, &[2, 2], Replacement::With, &mut ExplicitUniforms::new(&[0.999])).unwrap();
    assert_eq!(v, SiblingVerdict::Accepted(0));
    // reference::residual falls back to p when p = q.
    assert_eq!(reference::residual(&[0.25, 0.75], &[0.25, 0.75]), vec![0.25, 0.75]);
}

#[test]
fn siblings_known_case() {
    // p = (0.5, 0.5, 0), q = (0, 0.2, 0.8), candidates [2, 1] without replacement.
    // c1 = 2: p'(2) = 0 → rejected (u = 0.1). p' = norm(max(0, p − q)) = (0.5, 0.3, 0)/0.8; q' = (0, 1, 0).
    // c2 = 1: ratio p'(1)/q'(1) = 0.375: u = 0.3 accepts.
    let (p, q) = ([0.5f32, 0.5, 0.0], [0.0f32, 0.2, 0.8]);
    let v = verify_siblings(&p, &q, &[2, 1], Replacement::Without, &mut ExplicitUniforms::new(&[0.1, 0.3])).unwrap();
    assert_eq!(v, SiblingVerdict::Accepted(1));
    // u = 0.5 rejects c2 too: p'' = norm(max(0, p' − q')) = (1, 0, 0) → token 0.
    let v =
        verify_siblings(&p, &q, &[2, 1], Replacement::Without, &mut ExplicitUniforms::new(&[0.1, 0.5, 0.7])).unwrap();
    assert_eq!(v, SiblingVerdict::Rejected(0));
}

#[test]
fn tree_structure_accessors() {
    let tree = TokenTree::new(vec![9, 1, 2, 3, 4], vec![None, Some(0), Some(0), Some(1), Some(1)]).unwrap();
    assert_eq!(tree.len(), 5);
    assert!(!tree.is_empty());
    assert_eq!(tree.children(0), &[1, 2]);
    assert_eq!(tree.children(1), &[3, 4]);
    assert_eq!(tree.children(4), &[] as &[usize]);
    assert_eq!(tree.children(99), &[] as &[usize]);
    assert_eq!(tree.path_to(4), vec![1, 4]);
    assert_eq!((tree.depth(4), tree.parent(4), tree.parent(0), tree.token(3)), (Some(2), Some(1), None, Some(3)));
    let chain = TokenTree::chain(7, &[1, 2, 3]);
    assert_eq!(chain, TokenTree::new(vec![7, 1, 2, 3], vec![None, Some(0), Some(1), Some(2)]).unwrap());
    assert_eq!(TokenTree::chain(7, &[]).children(0), &[] as &[usize]);
}

#[test]
fn tree_greedy_follows_argmax() {
    // Root children: tokens 1 (node 1), 2 (node 2); node 2's child: token 0 (node 3).
    let tree = TokenTree::new(vec![5, 1, 2, 0], vec![None, Some(0), Some(0), Some(2)]).unwrap();
    let p = vec![vec![0.1f32, 0.2, 0.7], vec![1.0, 0.0, 0.0], vec![0.6, 0.4, 0.0], vec![0.0, 0.0, 1.0]];
    let v = verify_tree_greedy(&tree, &p).unwrap();
    assert_eq!((v.path.clone(), v.tokens.clone(), v.accepted()), (vec![2, 3], vec![2, 0, 2], 2));
}

#[test]
fn relaxed_acceptance() {
    let p = [0.5f32, 0.3, 0.2, 0.0];
    assert!((relaxed_acceptance_probability(&p, 1, 1.0).unwrap() - 0.6).abs() < 1e-7);
    assert_eq!(relaxed_acceptance_probability(&p, 2, 0.1).unwrap(), 1.0);
    let rows = vec![p.to_vec(); 3];
    let mut u = SeededUniforms::new(0, 0);
    // Deterministic rule: accept iff p(w) > γ·max/2. γ = 1: thresholds 0.25 → 0 and 1 accepted, 2 rejected.
    assert_eq!(verify_relaxed(&[0, 1, 2], &rows, 1.0, RelaxedRule::DeterministicHalf, &mut u).unwrap(), 2);
    assert_eq!(u.position(), 0);
    // γ < 2 always accepts the argmax; tiny γ accepts every token with p > 0, never a zero-probability token.
    assert_eq!(verify_relaxed(&[0, 0, 0], &rows, 1.99, RelaxedRule::DeterministicHalf, &mut u).unwrap(), 3);
    assert_eq!(verify_relaxed(&[2, 1, 3], &rows, 1e-6, RelaxedRule::DeterministicHalf, &mut u).unwrap(), 2);
    // Bernoulli consumes one uniform per examined token.
    let mut e = ExplicitUniforms::new(&[0.5, 0.7]);
    assert_eq!(verify_relaxed(&[1, 1], &rows[..2], 1.0, RelaxedRule::Bernoulli, &mut e).unwrap(), 1);
    assert_eq!(e.consumed(), 2);
    assert!(matches!(
        verify_relaxed(&[1], &rows, 1.0, RelaxedRule::Bernoulli, &mut u),
        Err(SamplingError::RowCount { .. })
    ));
}

/// Autoregressive sampling from the toy LM with the uniform stream `u` (one uniform per token).
fn autoregressive(lm: &mut ToyLm, len: usize, u: &mut SeededUniforms) -> Vec<Token> {
    let mut out = Vec::new();
    while out.len() < len {
        let row = lm.row(&out);
        out.push(sample_from_probs(&row, u.next_uniform().unwrap()).unwrap());
    }
    out
}

#[test]
fn sample_match_equals_autoregressive_with_shared_stream() {
    // SpecExec invariant 6: lazy tree walk (and the chain special case) reproduces AR sampling token for token.
    let params = SamplingParams { temperature: 0.9, top_p: 0.95, ..Default::default() };
    let mut target = ToyLm::new(6, 1, 0.2, 1.5, params.clone());
    let mut draft = ToyLm::new(6, 2, 0.2, 1.5, params);
    for seed in 0..200u64 {
        let mut ar_u = SeededUniforms::new(seed, 0);
        let ar = autoregressive(&mut target, 12, &mut ar_u);
        // Speculative: deterministic top-2 trees of depth 2 from the draft, lazy SpecExec walk.
        let mut u = SeededUniforms::new(seed, 0);
        let mut out: Vec<Token> = Vec::new();
        while out.len() < 12 {
            let tree = top_k_tree(&mut draft, &out, 2, 2);
            let p: Vec<Vec<f32>> = (0..tree.len()).map(|i| target.row(&context(&tree, &out, i))).collect();
            let v = verify_tree_sample_match(&tree, &p, TreeSampling::Lazy, &mut u).unwrap();
            out.extend(&v.tokens);
        }
        assert_eq!(&out[..12], &ar[..], "seed {seed}");
        // The uniform count equals the number of emitted tokens.
        assert_eq!(u.position(), out.len() as u64);
        // Chain sample-match with a sampled draft: same tokens again.
        let mut u = SeededUniforms::new(seed, 0);
        let mut du = SeededUniforms::new(seed, 1);
        let mut out: Vec<Token> = Vec::new();
        while out.len() < 12 {
            let mut ctx = out.clone();
            for _ in 0..3 {
                let q = draft.row(&ctx);
                ctx.push(sample_from_probs(&q, du.next_uniform().unwrap()).unwrap());
            }
            let xs = &ctx[out.len()..];
            let p: Vec<Vec<f32>> = (0..=3).map(|j| target.row(&ctx[..out.len() + j])).collect();
            let v = verify_sample_match(xs, &p, &mut u).unwrap();
            out.extend(&v.tokens);
        }
        assert_eq!(&out[..12], &ar[..], "chain, seed {seed}");
    }
}

/// The context (committed prefix + path tokens) after node `i` of `tree` rooted after `prefix`.
fn context(tree: &TokenTree, prefix: &[Token], i: usize) -> Vec<Token> {
    let mut ctx = prefix.to_vec();
    ctx.extend(tree.path_to(i).iter().map(|&n| tree.token(n).unwrap()));
    ctx
}

/// A deterministic tree: the top-`k` draft tokens (by probability, ties by id) at every node, to depth `depth`.
fn top_k_tree(draft: &mut ToyLm, prefix: &[Token], k: usize, depth: usize) -> TokenTree {
    let (mut tokens, mut parents) = (vec![0 as Token], vec![None]);
    let mut frontier = vec![0usize];
    for _ in 0..depth {
        let mut next = Vec::new();
        for &node in &frontier {
            let tree = TokenTree::new(tokens.clone(), parents.clone()).unwrap();
            let q = draft.row(&context(&tree, prefix, node));
            let mut order: Vec<usize> = (0..q.len()).filter(|&t| q[t] > 0.0).collect();
            order.sort_by(|&a, &b| q[b].partial_cmp(&q[a]).unwrap().then(a.cmp(&b)));
            for &t in order.iter().take(k) {
                tokens.push(t as Token);
                parents.push(Some(node));
                next.push(tokens.len() - 1);
            }
        }
        frontier = next;
    }
    TokenTree::new(tokens, parents).unwrap()
}

#[test]
fn tree_greedy_equals_greedy_decoding() {
    let params = SamplingParams::greedy();
    let mut target = ToyLm::new(7, 3, 0.1, 1.0, params.clone());
    let mut draft = ToyLm::new(7, 4, 0.1, 1.0, SamplingParams::default());
    let mut greedy: Vec<Token> = Vec::new();
    while greedy.len() < 20 {
        let row = target.row(&greedy);
        greedy.push(effllm_sampling::argmax(&row).unwrap());
    }
    let mut out: Vec<Token> = Vec::new();
    while out.len() < 20 {
        let tree = top_k_tree(&mut draft, &out, 3, 2);
        let p: Vec<Vec<f32>> = (0..tree.len()).map(|i| target.row(&context(&tree, &out, i))).collect();
        out.extend(verify_tree_greedy(&tree, &p).unwrap().tokens);
    }
    assert_eq!(&out[..20], &greedy[..]);
}

// ---------------------------------------------------------------------------------------------------------------
// Property tests against the naive reference with identical uniforms.

fn row_strategy(v: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(prop_oneof![1 => Just(0.0f32), 3 => 0.001f32..1.0], v).prop_map(|mut r| {
        if r.iter().all(|&x| x == 0.0) {
            r[0] = 0.5;
        }
        r
    })
}

fn to64(r: &[f32]) -> Vec<f64> {
    r.iter().map(|&x| x as f64).collect()
}

/// A draft of length n sampled from its q rows, with all rows and uniforms.
#[allow(clippy::type_complexity)]
fn chain_case() -> impl Strategy<Value = (Vec<Token>, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f64>)> {
    (2usize..12, 0usize..5).prop_flat_map(|(v, n)| {
        (
            proptest::collection::vec(row_strategy(v), n),
            proptest::collection::vec(row_strategy(v), n + 1),
            proptest::collection::vec(0.0f64..1.0, n),
            proptest::collection::vec(0.0f64..1.0, 2 * n + 2),
        )
            .prop_map(|(q, p, draw, uniforms)| {
                let draft = q.iter().zip(&draw).map(|(row, &u)| sample_from_probs(row, u).unwrap()).collect();
                (draft, q, p, uniforms)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chain_matches_reference((draft, q, p, uniforms) in chain_case()) {
        let v = verify_chain(&draft, &q, &p, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        let d: Vec<usize> = draft.iter().map(|&x| x as usize).collect();
        let q64: Vec<Vec<f64>> = q.iter().map(|r| to64(r)).collect();
        let p64: Vec<Vec<f64>> = p.iter().map(|r| to64(r)).collect();
        let (acc, tokens) = reference::verify_chain(&d, &q64, &p64, &uniforms);
        prop_assert_eq!(v.accepted, acc);
        prop_assert_eq!(v.tokens.iter().map(|&t| t as usize).collect::<Vec<_>>(), tokens);
        prop_assert_eq!(&v.tokens[..v.accepted], &draft[..v.accepted]);
        // Verifier switch dispatches to the same function.
        let w = verify(Verifier::Rejection, &draft, &q, &p, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        prop_assert_eq!(w, v);
    }

    #[test]
    fn step_distribution_is_exact(v in 2usize..10, seed in any::<u64>()) {
        // Closed-form exactness identity on random p, q with zeros (specexec.md §5 invariant 1).
        let rng = effllm_tensor::rng::CounterRng::new(seed, 0);
        let row = |off: u64| -> Vec<f64> {
            let r: Vec<f64> = (0..v as u64).map(|i| { let u = rng.uniform_f64_at(off + i); if u < 0.3 { 0.0 } else { u } }).collect();
            if r.iter().all(|&x| x == 0.0) { vec![1.0; v] } else { r }
        };
        let (p, q) = (row(0), row(100));
        let out = reference::rejection_output_distribution(&p, &q);
        let pn = reference::normalize(&p);
        for (a, b) in out.iter().zip(&pn) { prop_assert!((a - b).abs() < 1e-12); }
        for m in 1..=3 {
            for with in [true, false] {
                let d = reference::siblings_output_distribution(&p, &q, m, with);
                for (a, b) in d.iter().zip(&pn) { prop_assert!((a - b).abs() < 1e-12, "m {} with {}", m, with); }
            }
        }
    }

    #[test]
    fn siblings_match_reference(
        (p, q, cand_u, uniforms, with) in (2usize..10).prop_flat_map(|v| (
            row_strategy(v), row_strategy(v), proptest::collection::vec(0.0f64..1.0, 0..4),
            proptest::collection::vec(0.0f64..1.0, 5), any::<bool>()))
    ) {
        // Draw the candidates from q (with or without replacement), as the contract requires.
        let mut qq = to64(&q);
        let mut cands = Vec::new();
        for &u in &cand_u {
            if qq.iter().sum::<f64>() <= 0.0 { break; }
            let c = reference::sample_index(&qq, u);
            cands.push(c);
            if !with { qq[c] = 0.0; }
        }
        let rep = if with { Replacement::With } else { Replacement::Without };
        let ctok: Vec<Token> = cands.iter().map(|&c| c as Token).collect();
        let got = verify_siblings(&p, &q, &ctok, rep, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        let want = reference::siblings_step(&to64(&p), &to64(&q), &cands, with, &uniforms);
        match (got, want) {
            (SiblingVerdict::Accepted(a), Ok(b)) => prop_assert_eq!(a, b),
            (SiblingVerdict::Rejected(a), Err(b)) => prop_assert_eq!(a as usize, b),
            (g, w) => prop_assert!(false, "got {:?} want {:?}", g, w),
        }
    }

    #[test]
    fn tree_rejection_on_a_chain_equals_chain_rejection((draft, q, p, uniforms) in chain_case()) {
        let tree = TokenTree::chain(0, &draft);
        let mut qt = q.clone();
        qt.push(Vec::new()); // the leaf's q row is never read
        let t = verify_tree_rejection(&tree, &p, &qt, Replacement::Without, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        let c = verify_chain(&draft, &q, &p, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        prop_assert_eq!(t.tokens, c.tokens);
        prop_assert_eq!(t.path, (1..=c.accepted).collect::<Vec<_>>());
    }

    #[test]
    fn eager_and_lazy_sample_match_agree_on_deterministic_samples((draft, _q, p, _u) in chain_case()) {
        // With one-hot target rows every sample is forced, so both sampling schedules emit the same tokens.
        let onehot: Vec<Vec<f32>> = p.iter().map(|r| {
            let a = effllm_sampling::argmax(r).unwrap() as usize;
            (0..r.len()).map(|i| if i == a { 1.0 } else { 0.0 }).collect()
        }).collect();
        let tree = TokenTree::chain(0, &draft);
        let mut u1 = SeededUniforms::new(1, 0);
        let mut u2 = SeededUniforms::new(1, 0);
        let lazy = verify_tree_sample_match(&tree, &onehot, TreeSampling::Lazy, &mut u1).unwrap();
        let eager = verify_tree_sample_match(&tree, &onehot, TreeSampling::EagerPerNode, &mut u2).unwrap();
        prop_assert_eq!(&lazy, &eager);
        prop_assert_eq!(u2.position(), tree.len() as u64);
        prop_assert_eq!(u1.position(), lazy.tokens.len() as u64);
        let greedy = verify_tree_greedy(&tree, &p).unwrap();
        prop_assert_eq!(greedy, lazy);
    }
}
