//! Tree growth and verification against the f64 reference (`specexec.md` §5 invariants 7, 8, 9, 12).

use effllm_sampling::{
    ExplicitUniforms, SamplingParams, TokenTree, TreeSampling, reference as sref, verify_tree_greedy,
    verify_tree_greedy_lazy, verify_tree_sample_match, verify_tree_sample_match_lazy,
};
use proptest::prelude::*;
use specexec::models::LookupLm;
use specexec::{DraftTree, FrontierPick, SpecExecConfig, grow_tree, reference};

/// A closed-form draft: logits depend on the whole path below the root.
fn draft_fn(vocab: usize, seed: u64, scale: f32) -> impl Fn(&[u32]) -> Vec<f32> {
    let lm = LookupLm::new(vocab, 64, seed, scale);
    move |path: &[u32]| lm.logits(path)
}

fn grow(cfg: &SpecExecConfig, vocab: usize, draft: &dyn Fn(&[u32]) -> Vec<f32>) -> (DraftTree, usize) {
    let mut asked = 0;
    let g = grow_tree(cfg, 0, vocab, |tree, nodes| {
        asked += nodes.len();
        for &u in nodes {
            // Every node handed to the draft has all its ancestors expanded before (they are its parents' rows).
            assert!(tree.node(u).depth < cfg.max_depth);
        }
        assert!(nodes.len() <= cfg.expand_batch);
        Ok(nodes.iter().flat_map(|&u| draft(&tree.path_tokens(u))).collect())
    })
    .unwrap();
    assert_eq!(g.expanded, asked);
    (g.tree, g.draft_forwards)
}

fn check_shape(tree: &DraftTree, cfg: &SpecExecConfig) {
    assert!(tree.n_draft() <= cfg.budget);
    let ln_decay = cfg.depth_decay.ln();
    for (i, n) in tree.nodes().iter().enumerate().skip(1) {
        let p = n.parent.unwrap();
        assert!(p < i, "topological order");
        assert!(n.depth <= cfg.max_depth);
        assert!(n.score <= tree.node(p).score + ln_decay, "scores decrease along paths");
        if cfg.depth_decay < 1.0 {
            assert!(n.score < tree.node(p).score);
        }
    }
    for i in 0..tree.len() {
        let ch = tree.children(i);
        assert!(ch.len() <= cfg.max_branch, "out-degree");
        let mut toks: Vec<u32> = ch.iter().map(|&c| tree.node(c).token).collect();
        toks.sort_unstable();
        toks.dedup();
        assert_eq!(toks.len(), ch.len(), "siblings carry distinct tokens");
    }
    // Mask rows equal the ancestor-walk reference (build_amask_slow).
    let want = reference::tree_mask(&tree.parents());
    for (i, row) in want.iter().enumerate() {
        assert_eq!(&tree.mask_row(i), row);
    }
}

fn cfg_strategy() -> impl Strategy<Value = (SpecExecConfig, usize, u64)> {
    (
        1usize..60,
        1usize..7,
        1usize..12,
        1usize..6,
        prop_oneof![Just(0.95), Just(0.7), Just(1.0)],
        prop_oneof![Just(1.0f32), Just(0.6)],
        prop_oneof![Just(None), Just(Some(-5.0))],
        any::<bool>(),
        3usize..14,
        any::<u64>(),
    )
        .prop_map(
            |(
                budget,
                max_depth,
                expand_batch,
                max_branch,
                depth_decay,
                draft_temperature,
                min_log_prob,
                first,
                vocab,
                seed,
            )| {
                let cfg = SpecExecConfig {
                    budget,
                    max_depth,
                    expand_batch,
                    max_branch,
                    depth_decay,
                    draft_temperature,
                    min_log_prob,
                    frontier: if first { FrontierPick::FirstBySlot } else { FrontierPick::TopScore },
                    ..Default::default()
                };
                (cfg, vocab, seed)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Invariant 8: budget, depth, branching, ancestor closure, decreasing scores, and the node set equals the
    /// top-K set by cumulative score of the reference's one-node-at-a-time best-first search (ties have
    /// probability 0 with these random logits).
    #[test]
    fn grown_tree_is_the_top_k_set((cfg, vocab, seed) in cfg_strategy()) {
        let draft = draft_fn(vocab, seed, 2.0);
        let (tree, _) = grow(&cfg, vocab, &draft);
        check_shape(&tree, &cfg);
        let mut d = |p: &[u32]| draft(p);
        let want = reference::best_first_tree(&mut d, cfg.budget, cfg.max_depth, cfg.max_branch, cfg.depth_decay, cfg.draft_temperature as f64, cfg.min_log_prob);
        let mut got: Vec<(Vec<u32>, f64)> = (1..tree.len()).map(|i| (tree.path_tokens(i), tree.node(i).score)).collect();
        let mut want: Vec<(Vec<u32>, f64)> = want.into_iter().map(|n| (n.path, n.score)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(&g.0, &w.0);
            prop_assert!(approx::relative_eq!(g.1, w.1, epsilon = 1e-9, max_relative = 1e-9), "{} vs {}", g.1, w.1);
        }
    }

    /// With the reference's forward cap the tree is still a valid, budgeted, ancestor-closed tree whose scores
    /// are the path scores, and each draft forward expands at most B nodes.
    #[test]
    fn capped_growth_is_still_a_valid_tree((cfg, vocab, seed) in cfg_strategy(), cap in 1usize..4) {
        let cfg = SpecExecConfig { max_draft_forwards: Some(cap), ..cfg };
        let draft = draft_fn(vocab, seed, 2.0);
        let (tree, forwards) = grow(&cfg, vocab, &draft);
        prop_assert!(forwards <= cap);
        check_shape(&tree, &cfg);
        for i in 1..tree.len() {
            let path = tree.path_tokens(i);
            let mut s = 0.0;
            for d in 0..path.len() {
                s += cfg.depth_decay.ln() + reference::log_softmax(&draft(&path[..d]), cfg.draft_temperature as f64)[path[d] as usize];
            }
            prop_assert!(approx::relative_eq!(tree.node(i).score, s, epsilon = 1e-9, max_relative = 1e-9));
        }
    }

    /// Invariant 9 and the lazy walk: the shared lazy verifiers equal the reference walk (one uniform per emitted
    /// token) and the eager-rows versions; the accepted set is one root path.
    #[test]
    fn lazy_walk_equals_reference_walk(n in 1usize..30, vocab in 2usize..8, seed in any::<u64>(), t in prop_oneof![Just(0.5f32), Just(1.0)]) {
        let rng = effllm_tensor::rng::CounterRng::new(seed, 0);
        let mut parents = vec![None];
        let mut tokens = vec![0u32];
        for i in 1..n {
            let m = parents.len();
            let p = (rng.uniform_f64_at(i as u64) * m as f64) as usize;
            // Distinct sibling tokens, as in SpecExec trees.
            let used: Vec<u32> = (1..m).filter(|&c| parents[c] == Some(p)).map(|c| tokens[c]).collect();
            if let Some(tok) = (0..vocab as u32).map(|k| (k + i as u32) % vocab as u32).find(|k| !used.contains(k)) {
                parents.push(Some(p));
                tokens.push(tok);
            }
        }
        let lm = LookupLm::new(vocab, 8, seed, 1.5);
        let params = SamplingParams { temperature: t, ..Default::default() };
        let rows: Vec<Vec<f32>> = (0..tokens.len()).map(|i| {
            let tree = TokenTree::new(tokens.clone(), parents.clone()).unwrap();
            let ctx: Vec<u32> = tree.path_to(i).iter().map(|&c| tokens[c]).collect();
            effllm_sampling::process_logits(&lm.logits(&ctx), &params, &[]).unwrap()
        }).collect();
        let tree = TokenTree::new(tokens.clone(), parents.clone()).unwrap();
        let uniforms: Vec<f64> = (0..tokens.len() + 1).map(|i| rng.uniform_f64_at(1000 + i as u64)).collect();
        let lazy = verify_tree_sample_match_lazy(&tree, |u| Ok(rows[u].clone()), &mut ExplicitUniforms::new(&uniforms)).unwrap();
        let eager = verify_tree_sample_match(&tree, &rows, TreeSampling::Lazy, &mut ExplicitUniforms::new(&uniforms)).unwrap();
        prop_assert_eq!(&lazy, &eager);
        let p64: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect();
        let (path, out) = reference::walk(&tokens, &parents, &p64, &uniforms);
        prop_assert_eq!(&lazy.path, &path);
        prop_assert_eq!(&lazy.tokens, &out);
        for w in lazy.path.windows(2) {
            prop_assert_eq!(tree.parent(w[1]), Some(w[0]));
        }
        let g = verify_tree_greedy_lazy(&tree, |u| Ok(rows[u].clone())).unwrap();
        prop_assert_eq!(g, verify_tree_greedy(&tree, &rows).unwrap());
    }
}

/// Invariant 8, last clause: with K at least the full k-ary depth-D tree and B large, the tree is the complete
/// top-k expansion.
#[test]
fn large_budget_gives_the_complete_expansion() {
    let (k, d, vocab) = (3usize, 4usize, 7usize);
    let full: usize = (1..=d as u32).map(|l| k.pow(l)).sum();
    let cfg =
        SpecExecConfig { budget: full + 10, max_depth: d, expand_batch: 1000, max_branch: k, ..Default::default() };
    let draft = draft_fn(vocab, 3, 1.0);
    let (tree, forwards) = grow(&cfg, vocab, &draft);
    assert_eq!(tree.n_draft(), full);
    assert_eq!(forwards, d, "one forward per level");
    for i in 0..tree.len() {
        let want = if tree.node(i).depth < d { k } else { 0 };
        assert_eq!(tree.children(i).len(), want);
    }
}

/// Invariant 12: the Monte Carlo mean of accepted tokens of the engine's first step equals
/// Σ_v P_target(path to v) for its tree (z-test at 4.5σ; fixed seeds).
#[test]
fn mean_acceptance_matches_expected_contribution() {
    let target = LookupLm::new(6, 3, 41, 1.5);
    let draft = target.perturbed(42, 0.8);
    let prompt = [1u32, 2, 3];
    let cfg = SpecExecConfig { budget: 12, max_depth: 4, expand_batch: 4, max_branch: 3, ..Default::default() };
    let engine = specexec::Engine::specexec(&draft, &target, cfg).unwrap();
    let n = 4000;
    let mut accepted = Vec::with_capacity(n);
    let mut tree = None;
    for seed in 0..n as u64 {
        let params = SamplingParams { temperature: 1.0, seed, ..Default::default() };
        let mut s = engine.start(&prompt, &params).unwrap();
        s.step().unwrap();
        accepted.push(s.stats().steps[0].accepted as f64);
        tree.get_or_insert_with(|| s.last_tree().unwrap().1.clone());
    }
    let tree = tree.unwrap();
    let params = SamplingParams::default();
    let p: Vec<Vec<f64>> = (0..tree.len())
        .map(|i| {
            let mut ctx = prompt.to_vec();
            ctx.extend(tree.path_tokens(i));
            sref::process(&target.logits(&ctx), &params, &[]).unwrap()
        })
        .collect();
    let want = reference::expected_accepted(&tree.tokens(), &tree.parents(), &p);
    let mean = accepted.iter().sum::<f64>() / n as f64;
    let var = accepted.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    assert!(want > 0.3, "the draft must be informative for this test to bite ({want})");
    assert!((mean - want).abs() < 4.5 * se, "mean {mean}, expected {want}, se {se}");
}
