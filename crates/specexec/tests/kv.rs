//! KV bookkeeping (`specexec.md` §5 invariants 7 and 10): after every step both caches equal a fresh prefill of
//! the committed tokens (length, positions, keys and values), and the draft's tree batches (explicit masks over
//! non-contiguous cache slots, depth-based positions) give each node the logits of a causal forward over its path.

use effllm_model::{Batch, CausalLm, KvCache, LlamaModel, LogitRows};
use effllm_sampling::SamplingParams;
use specexec::models::{EarlyExit, TinyShape, tiny_llama};
use specexec::{ChainConfig, Engine, Method, SpecExecConfig, SpecInferConfig, reference};

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Compares every non-empty layer of `got` with a fresh prefill of `tokens`.
fn assert_cache_is_prefill<M: CausalLm>(model: &M, got: &KvCache, tokens: &[u32], what: &str) {
    assert_eq!(got.len(), tokens.len(), "{what}: length");
    let mut fresh = model.new_cache();
    if !tokens.is_empty() {
        model.forward(&Batch::causal(tokens, 0), &mut fresh, &LogitRows::Last).unwrap();
    }
    for l in 0..got.n_layers() {
        let (g, f) = (got.layer(l).unwrap(), fresh.layer(l).unwrap());
        assert_eq!(g.len(), f.len(), "{what}: layer {l} length");
        for h in 0..g.n_heads() {
            assert_eq!(g.positions(h), f.positions(h), "{what}: layer {l} head {h} positions");
            if g.is_empty() {
                continue;
            }
            let (gk, fk) = (g.keys(h).unwrap().to_vec::<f32>().unwrap(), f.keys(h).unwrap().to_vec::<f32>().unwrap());
            let (gv, fv) =
                (g.values(h).unwrap().to_vec::<f32>().unwrap(), f.values(h).unwrap().to_vec::<f32>().unwrap());
            assert!(rel_l2(&gk, &fk) < 1e-5 && rel_l2(&gv, &fv) < 1e-5, "{what}: layer {l} head {h} contents");
        }
    }
}

fn run_and_check<D: CausalLm>(draft: &D, target: &LlamaModel, method: Method, params: &SamplingParams) {
    let engine = Engine::new(draft, target, method.clone()).unwrap();
    let prompt = [5u32, 17, 3, 44, 8, 1, 60];
    let mut s = engine.start(&prompt, params).unwrap();
    for _ in 0..6 {
        s.step().unwrap();
        let seq = s.sequence().to_vec();
        assert_cache_is_prefill(target, s.target_cache(), &seq[..seq.len() - 1], &format!("target {method:?}"));
        let d = s.draft_cache().len();
        assert!(d < seq.len());
        assert_cache_is_prefill(draft, s.draft_cache(), &seq[..d], &format!("draft {method:?}"));
    }
}

#[test]
fn caches_equal_a_fresh_prefill_after_every_step() {
    let shape = TinyShape { n_layer: 3, ..Default::default() };
    let target = tiny_llama(shape, 21, 6.0, false).unwrap();
    let q4 = tiny_llama(shape, 21, 6.0, true).unwrap();
    let early = EarlyExit::new(&target, 2).unwrap();
    let spec = Method::SpecExec(SpecExecConfig {
        budget: 24,
        max_depth: 6,
        expand_batch: 5,
        max_branch: 4,
        ..Default::default()
    });
    for params in [SamplingParams::greedy(), SamplingParams { temperature: 0.8, seed: 9, ..Default::default() }] {
        run_and_check(&q4, &target, spec.clone(), &params);
        run_and_check(&early, &target, spec.clone(), &params);
        run_and_check(&q4, &target, Method::Chain(ChainConfig { draft_len: 4 }), &params);
        run_and_check(
            &q4,
            &target,
            Method::SpecInfer(SpecInferConfig { widths: vec![3, 2, 1], ..Default::default() }),
            &params,
        );
    }
}

/// Invariant 7 for the draft: each node's score equals the score recomputed from causal forwards over the
/// committed prefix plus the node's path, so every tree batch saw exactly its ancestors at the right positions.
/// Also for the target: its rows in the tree forward equal a causal forward over each node's path.
#[test]
fn tree_batches_equal_causal_forwards_over_each_path() {
    let target = tiny_llama(TinyShape::default(), 31, 6.0, false).unwrap();
    let draft = tiny_llama(TinyShape::default(), 31, 6.0, true).unwrap();
    let cfg = SpecExecConfig { budget: 40, max_depth: 6, expand_batch: 6, max_branch: 4, ..Default::default() };
    let engine = Engine::specexec(&draft, &target, cfg.clone()).unwrap();
    let mut s = engine.start(&[2, 9, 14, 3], &SamplingParams::greedy()).unwrap();
    for _ in 0..3 {
        s.step().unwrap();
        let (root, tree) = s.last_tree().unwrap();
        let prefix = s.sequence()[..=root].to_vec();
        // Second step onwards the draft had catch-up tokens and compacted slots before the tree.
        for i in 1..tree.len() {
            let path = tree.path_tokens(i);
            let mut score = 0.0;
            let mut ctx = prefix.clone();
            for &tok in &path {
                let mut c = draft.new_cache();
                let l =
                    draft.forward(&Batch::causal(&ctx, 0), &mut c, &LogitRows::Last).unwrap().to_vec::<f32>().unwrap();
                score += cfg.depth_decay.ln() + reference::log_softmax(&l, 1.0)[tok as usize];
                ctx.push(tok);
            }
            let got = tree.node(i).score;
            assert!((got - score).abs() < 1e-3 * (1.0 + score.abs()), "node {i}: {got} vs {score}");
        }
        // Target rows: a tree batch over the same tree equals causal forwards.
        let mut c = target.new_cache();
        target.forward(&Batch::causal(&prefix[..root], 0), &mut c, &LogitRows::Last).unwrap();
        let rows = target
            .forward(&Batch::tree(&tree.tokens(), &tree.parents(), root).unwrap(), &mut c, &LogitRows::All)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let v = target.vocab_size();
        for i in [0, tree.len() / 2, tree.len() - 1] {
            let mut ctx = prefix.clone();
            ctx.extend(tree.path_tokens(i));
            let mut c = target.new_cache();
            let want =
                target.forward(&Batch::causal(&ctx, 0), &mut c, &LogitRows::Last).unwrap().to_vec::<f32>().unwrap();
            assert!(rel_l2(&rows[i * v..(i + 1) * v], &want) < 1e-5);
        }
    }
}

/// With a stop token inside an accepted path (the target as its own draft accepts whole greedy paths), the step
/// that stops compacts both caches to the emitted prefix: the target cache equals a fresh prefill of the sequence
/// but its last token (the stop token), the draft cache a prefill of a prefix of it.
#[test]
fn caches_equal_a_fresh_prefill_after_a_stop_inside_the_accepted_path() {
    let shape = TinyShape { n_layer: 2, ..Default::default() };
    let target = tiny_llama(shape, 23, 6.0, false).unwrap();
    let prompt = [5u32, 17, 3, 44, 8];
    let greedy = SamplingParams::greedy();
    let full = specexec::autoregressive(&target, &prompt, 24, &greedy).unwrap().tokens;
    let methods = [
        Method::SpecExec(SpecExecConfig {
            budget: 16,
            max_depth: 8,
            expand_batch: 4,
            max_branch: 2,
            ..Default::default()
        }),
        Method::Chain(ChainConfig { draft_len: 6 }),
        Method::SpecInfer(SpecInferConfig { widths: vec![2, 1, 1, 1, 1, 1], ..Default::default() }),
    ];
    for method in methods {
        let engine = Engine::new(&target, &target, method.clone()).unwrap();
        let mut mid_path = false;
        // Stop tokens at several output positions; the first occurrence of each is where the session ends.
        for pos in [1, 3, 9] {
            let cut = full.iter().position(|&t| t == full[pos]).unwrap();
            let mut s = engine.start(&prompt, &greedy).unwrap().with_stop_tokens(&[full[pos]]).unwrap();
            while s.stopped().is_none() {
                s.step().unwrap();
            }
            let seq = s.sequence().to_vec();
            assert_eq!(&seq[prompt.len()..], &full[..=cut], "{method:?}");
            assert_cache_is_prefill(&target, s.target_cache(), &seq[..seq.len() - 1], &format!("target {method:?}"));
            let d = s.draft_cache().len();
            assert!(d < seq.len());
            assert_cache_is_prefill(&target, s.draft_cache(), &seq[..d], &format!("draft {method:?}"));
            let last = s.stats().steps.last().unwrap();
            mid_path |= last.accepted == last.emitted;
        }
        assert!(mid_path, "{method:?}: no stop token fell inside an accepted path");
    }
}
