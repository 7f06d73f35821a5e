//! GRIFFIN on a tiny random Llama (f32 and Q4_1 weights): invariants 2, 3a, 8c, 12 and 13 through the model's
//! hooks, per-sequence experts in packed batches, class mode, and the typed errors.

mod common;

use common::*;
use effllm_model::{Batch, BatchMask, CausalLm, LlamaModel, LogitRows};
use effllm_tensor::quant::QuantType;
use griffin::{GriffinConfig, GriffinError, GriffinLlama, Selection, StatScope};
use proptest::prelude::*;

fn greedy_next(logits: &effllm_tensor::Tensor) -> u32 {
    logits.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0]
}

fn store(q: bool) -> Store {
    if q { Store::Q(QuantType::Q4_1) } else { Store::F32 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// 2 and 3a: prompt logits and the prompt KV cache are bitwise the dense model's at any density (so the first
    /// greedy token is too); the experts do not change while decoding.
    #[test]
    fn prefill_untouched(seed in 0u64..200, density in 0.0f64..1.0, n in 2usize..24, q in any::<bool>()) {
        let m = tiny_model(seed, store(q));
        let prompt = tokens(n, seed, 64);
        let mut dense_cache = m.new_cache();
        let dense = m.forward(&Batch::causal(&prompt, 0), &mut dense_cache, &LogitRows::All).unwrap();
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(density)).unwrap();
        let mut seq = g.new_sequence();
        let mut cache = m.new_cache();
        let ours = g.prefill(&mut seq, &Batch::causal(&prompt, 0), &mut cache, &LogitRows::All).unwrap();
        prop_assert_eq!(ours.to_vec::<f32>().unwrap(), dense.to_vec::<f32>().unwrap());
        for l in 0..2 {
            let (a, b) = (cache.layer(l).unwrap(), dense_cache.layer(l).unwrap());
            for h in 0..a.n_heads() {
                prop_assert_eq!(a.keys(h).unwrap().to_vec::<f32>().unwrap(), b.keys(h).unwrap().to_vec::<f32>().unwrap());
                prop_assert_eq!(a.values(h).unwrap().to_vec::<f32>().unwrap(), b.values(h).unwrap().to_vec::<f32>().unwrap());
            }
        }
        g.finalize(&mut seq).unwrap();
        let before: Vec<_> = (0..2).map(|l| seq.experts(l).cloned()).collect();
        let mut logits = ours.narrow(0, n - 1, 1).unwrap();
        for i in 0..3 {
            let next = greedy_next(&logits);
            logits = g.decode(&mut seq, &Batch::causal(&[next], n + i), &mut cache, &LogitRows::Last).unwrap();
        }
        let after: Vec<_> = (0..2).map(|l| seq.experts(l).cloned()).collect();
        prop_assert_eq!(before, after);
    }

    /// 12: one teacher-forced pass over prompt + continuation equals prefill + finalize + token-by-token decode, and
    /// prefill + finalize + one multi-token decode pass (no re-selection after finalize).
    #[test]
    fn teacher_forcing(seed in 0u64..200, density in 0.1f64..1.0, n in 2usize..16, c in 1usize..8, q in any::<bool>()) {
        let m = tiny_model(seed, store(q));
        let all = tokens(n + c, seed, 64);
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(density)).unwrap();
        // Token by token.
        let mut seq = g.new_sequence();
        let mut cache = m.new_cache();
        let mut rows = vec![g.prefill(&mut seq, &Batch::causal(&all[..n], 0), &mut cache, &LogitRows::Last).unwrap()];
        g.finalize(&mut seq).unwrap();
        for i in 0..c - 1 {
            rows.push(g.decode(&mut seq, &Batch::causal(&[all[n + i]], n + i), &mut cache, &LogitRows::Last).unwrap());
        }
        let step: Vec<f64> = rows.iter().flat_map(|r| r.to_vec_f64().unwrap()).collect();
        // One pass.
        let mut seq1 = g.new_sequence();
        let mut cache1 = m.new_cache();
        let want_rows = LogitRows::Rows((n - 1..n + c - 1).collect());
        let one = g.teacher_forced(&mut seq1, &Batch::causal(&all[..n + c - 1], 0), n, &mut cache1, &want_rows).unwrap();
        let one = one.to_vec_f64().unwrap();
        prop_assert!(rel_l2(&one, &step) < 1e-4, "rel {}", rel_l2(&one, &step));
        for l in 0..2 {
            prop_assert_eq!(seq1.experts(l), seq.experts(l));
        }
        // Prefill + finalize + one multi-token decode.
        let mut seq2 = g.new_sequence();
        let mut cache2 = m.new_cache();
        let first = g.prefill(&mut seq2, &Batch::causal(&all[..n], 0), &mut cache2, &LogitRows::Last).unwrap();
        g.finalize(&mut seq2).unwrap();
        let mut multi = first.to_vec_f64().unwrap();
        if c > 1 {
            let rest = g.decode(&mut seq2, &Batch::causal(&all[n..n + c - 1], n), &mut cache2, &LogitRows::All).unwrap();
            multi.extend(rest.to_vec_f64().unwrap());
        }
        prop_assert!(rel_l2(&multi, &step) < 1e-4, "rel {}", rel_l2(&multi, &step));
    }
}

/// 1 through the model: density 1 decode is bitwise the dense model's (f32 and Q4_1).
#[test]
fn density_one_bitwise_model() {
    for q in [false, true] {
        let m = tiny_model(3, store(q));
        let prompt = tokens(9, 3, 64);
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(1.0)).unwrap();
        let (mut seq, mut cache, mut dcache) = (g.new_sequence(), m.new_cache(), m.new_cache());
        let mut a = g.prefill(&mut seq, &Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        let mut b = m.forward(&Batch::causal(&prompt, 0), &mut dcache, &LogitRows::Last).unwrap();
        g.finalize(&mut seq).unwrap();
        for i in 0..4 {
            assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
            let next = greedy_next(&b);
            a = g.decode(&mut seq, &Batch::causal(&[next], 9 + i), &mut cache, &LogitRows::Last).unwrap();
            b = m.forward(&Batch::causal(&[next], 9 + i), &mut dcache, &LogitRows::Last).unwrap();
        }
    }
}

/// 3d/13 through the model: chunked prefill selects exactly the experts of a one-shot prefill (WholePrompt);
/// under LastMultiTokenChunk, the experts come from the last chunk alone (same cache prefix).
#[test]
fn chunked_prefill_and_scope() {
    let m = tiny_model(5, Store::F32);
    let prompt = tokens(20, 5, 64);
    let g = GriffinLlama::new(&m, GriffinConfig::default()).unwrap();
    let (mut one, mut c1) = (g.new_sequence(), m.new_cache());
    g.prefill(&mut one, &Batch::causal(&prompt, 0), &mut c1, &LogitRows::Last).unwrap();
    let (mut ch, mut c2) = (g.new_sequence(), m.new_cache());
    for (a, b) in [(0, 7), (7, 8), (8, 20)] {
        g.prefill(&mut ch, &Batch::causal(&prompt[a..b], a), &mut c2, &LogitRows::Last).unwrap();
    }
    for l in 0..2 {
        let (s1, s2) = (one.stat(l).unwrap().sumsq(), ch.stat(l).unwrap().sumsq());
        let (a, b): (Vec<f64>, Vec<f64>) =
            (s1.iter().map(|&v| f64::from(v)).collect(), s2.iter().map(|&v| f64::from(v)).collect());
        assert!(rel_l2(&a, &b) < 1e-5);
    }
    g.finalize(&mut one).unwrap();
    g.finalize(&mut ch).unwrap();
    for l in 0..2 {
        assert_eq!(one.experts(l), ch.experts(l), "layer {l}");
    }
    // Reference scope: forward() re-selects on every multi-token batch from that batch alone.
    let gr =
        GriffinLlama::new(&m, GriffinConfig { scope: StatScope::LastMultiTokenChunk, ..Default::default() }).unwrap();
    let (mut r, mut c3) = (gr.new_sequence(), m.new_cache());
    gr.forward(&mut r, &Batch::causal(&prompt[..12], 0), &mut c3, &LogitRows::Last).unwrap();
    gr.forward(&mut r, &Batch::causal(&prompt[12..], 12), &mut c3, &LogitRows::Last).unwrap();
    assert!(r.is_finalized());
    // Expected: the statistic of rows 12..20 alone, with the cache of rows 0..12 (a WholePrompt sequence that sees
    // only the second chunk).
    let (mut w, mut c4) = (g.new_sequence(), m.new_cache());
    m.forward(&Batch::causal(&prompt[..12], 0), &mut c4, &LogitRows::Last).unwrap();
    g.prefill(&mut w, &Batch::causal(&prompt[12..], 12), &mut c4, &LogitRows::Last).unwrap();
    g.finalize(&mut w).unwrap();
    for l in 0..2 {
        assert_eq!(r.experts(l), w.experts(l), "layer {l}");
    }
}

/// 8c: changing layer 1's FFN leaves layer 0's experts unchanged.
#[test]
fn layers_select_independently() {
    let m = tiny_model(7, Store::F32);
    let mut layers = m.layers().to_vec();
    layers[1].ffn.up = linear(96, 64, 99, 1, Store::F32);
    let m2 = LlamaModel::from_parts(
        m.config().clone(),
        m.embedding().clone(),
        layers,
        m.final_norm_weight().clone(),
        m.lm_head_weight().clone(),
    )
    .unwrap();
    let prompt = tokens(10, 7, 64);
    let experts = |m: &LlamaModel| {
        let g = GriffinLlama::new(m, GriffinConfig::default()).unwrap();
        let (mut s, mut c) = (g.new_sequence(), m.new_cache());
        g.prefill(&mut s, &Batch::causal(&prompt, 0), &mut c, &LogitRows::Last).unwrap();
        g.finalize(&mut s).unwrap();
        (s.experts(0).cloned(), s.experts(1).cloned())
    };
    let (a, b) = (experts(&m), experts(&m2));
    assert_eq!(a.0, b.0);
    assert_ne!(a.1, b.1);
}

/// Packed batches: two sequences in one forward (block-diagonal explicit mask) keep their own statistics and
/// experts; every row's logits match the sequence run alone.
#[test]
fn packed_batch_per_sequence_experts() {
    let m = tiny_model(11, Store::F32);
    let g = GriffinLlama::new(&m, GriffinConfig::default()).unwrap();
    let (pa, pb) = (tokens(5, 1, 64), tokens(7, 2, 64));
    // Alone.
    let alone = |p: &[u32], next: u32| {
        let (mut s, mut c) = (g.new_sequence(), m.new_cache());
        g.prefill(&mut s, &Batch::causal(p, 0), &mut c, &LogitRows::Last).unwrap();
        g.finalize(&mut s).unwrap();
        let l = g.decode(&mut s, &Batch::causal(&[next], p.len()), &mut c, &LogitRows::Last).unwrap();
        (s, l.to_vec_f64().unwrap())
    };
    let (sa, la) = alone(&pa, 3);
    let (sb, lb) = alone(&pb, 4);
    assert_ne!(sa.experts(0), sb.experts(0), "the test needs different expert sets");
    // Packed prefill: rows 0..5 sequence 0, rows 5..12 sequence 1, a padding row at the end.
    let t = 13;
    let mut mask = vec![0u8; t * t];
    let seg = |i: usize| {
        if i < 5 {
            0
        } else if i < 12 {
            1
        } else {
            2
        }
    };
    for i in 0..t {
        for j in 0..=i {
            if seg(i) == seg(j) {
                mask[i * t + j] = 1;
            }
        }
    }
    let mut toks = [pa.clone(), pb.clone()].concat();
    toks.push(0);
    let positions: Vec<u32> = (0..5).chain(0..7).chain(0..1).collect();
    let batch = Batch { tokens: toks, positions, mask: BatchMask::Explicit { mask, cols: t } };
    let row_seq: Vec<Option<usize>> = (0..t).map(|i| (seg(i) < 2).then_some(seg(i))).collect();
    let mut seqs = vec![g.new_sequence(), g.new_sequence()];
    let mut cache = m.new_cache();
    g.forward_packed(&mut seqs, &row_seq, &batch, &mut cache, &LogitRows::Last).unwrap();
    assert_eq!((seqs[0].prompt_tokens(), seqs[1].prompt_tokens()), (5, 7));
    for s in &mut seqs {
        g.finalize(s).unwrap();
    }
    for l in 0..2 {
        assert_eq!(seqs[0].experts(l), sa.experts(l));
        assert_eq!(seqs[1].experts(l), sb.experts(l));
    }
    // Packed decode: one new token per sequence, each seeing its own prefix.
    let cols = t + 2;
    let mut mask = vec![0u8; 2 * cols];
    (0..5).for_each(|j| mask[j] = 1);
    mask[t] = 1;
    (5..12).for_each(|j| mask[cols + j] = 1);
    mask[cols + t + 1] = 1;
    let batch = Batch { tokens: vec![3, 4], positions: vec![5, 7], mask: BatchMask::Explicit { mask, cols } };
    let out = g.forward_packed(&mut seqs, &[Some(0), Some(1)], &batch, &mut cache, &LogitRows::All).unwrap();
    let v = out.to_vec_f64().unwrap();
    let vocab = 64;
    assert!(rel_l2(&v[..vocab], &la) < 1e-4, "{}", rel_l2(&v[..vocab], &la));
    assert!(rel_l2(&v[vocab..], &lb) < 1e-4, "{}", rel_l2(&v[vocab..], &lb));
}

/// Class mode through the model: every row but the last is bitwise dense.
#[test]
fn class_mode_model() {
    let m = tiny_model(13, Store::F32);
    let g = GriffinLlama::new(&m, GriffinConfig::default()).unwrap();
    let prompt = tokens(9, 13, 64);
    let a = g.class_forward(&Batch::causal(&prompt, 0), &mut m.new_cache(), &LogitRows::All).unwrap();
    let b = m.forward(&Batch::causal(&prompt, 0), &mut m.new_cache(), &LogitRows::All).unwrap();
    assert_eq!(
        a.narrow(0, 0, 8).unwrap().to_vec::<f32>().unwrap(),
        b.narrow(0, 0, 8).unwrap().to_vec::<f32>().unwrap()
    );
    assert_ne!(
        a.narrow(0, 8, 1).unwrap().to_vec::<f32>().unwrap(),
        b.narrow(0, 8, 1).unwrap().to_vec::<f32>().unwrap()
    );
    assert!(matches!(
        g.class_forward(&Batch::causal(&prompt[..1], 0), &mut m.new_cache(), &LogitRows::All),
        Err(GriffinError::InvalidArgument { .. })
    ));
}

/// Bad input: densities outside [0, 1] (and 0 for magnitude), a wrong schedule length, decode before finalize,
/// finalize without a prompt, prefill after finalize, a GLU FFN without a gate, shape mismatches.
#[test]
fn typed_errors() {
    let m = tiny_model(17, Store::F32);
    for d in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            GriffinLlama::new(&m, GriffinConfig::with_density(d)),
            Err(GriffinError::InvalidDensity { .. })
        ));
    }
    let mag0 = GriffinConfig { selection: Selection::Magnitude, ..GriffinConfig::with_density(0.0) };
    assert!(matches!(GriffinLlama::new(&m, mag0), Err(GriffinError::InvalidDensity { .. })));
    let sched = GriffinConfig { per_layer: Some(vec![0.5; 3]), ..Default::default() };
    assert!(matches!(GriffinLlama::new(&m, sched), Err(GriffinError::ScheduleLength { found: 3, layers: 2 })));
    let bad_layer = GriffinConfig { per_layer: Some(vec![0.5, 2.0]), ..Default::default() };
    assert!(matches!(GriffinLlama::new(&m, bad_layer), Err(GriffinError::InvalidDensity { .. })));

    let g = GriffinLlama::new(&m, GriffinConfig::default()).unwrap();
    let mut seq = g.new_sequence();
    let mut cache = m.new_cache();
    assert!(matches!(
        g.decode(&mut seq, &Batch::causal(&[1], 0), &mut cache, &LogitRows::Last),
        Err(GriffinError::NotFinalized { .. })
    ));
    assert!(matches!(g.finalize(&mut seq), Err(GriffinError::EmptyPrompt { .. })));
    g.prefill(&mut seq, &Batch::causal(&[1, 2, 3], 0), &mut cache, &LogitRows::Last).unwrap();
    g.finalize(&mut seq).unwrap();
    assert!(matches!(g.finalize(&mut seq), Err(GriffinError::AlreadyFinalized { .. })));
    assert!(matches!(
        g.prefill(&mut seq, &Batch::causal(&[4], 3), &mut cache, &LogitRows::Last),
        Err(GriffinError::AlreadyFinalized { .. })
    ));
    // A model error passes through typed.
    assert!(matches!(
        g.decode(&mut seq, &Batch::causal(&[999], 3), &mut cache, &LogitRows::Last),
        Err(GriffinError::Model(_))
    ));

    let ffn = glu(32, 64, 1, griffin::Act::Silu, Store::F32);
    let gate_missing = griffin::Ffn::from_parts(
        griffin::FfnForm::Glu { act: griffin::Act::Gelu },
        None,
        ffn.up().clone(),
        ffn.down_weight().clone(),
        None,
        None,
    );
    assert!(matches!(gate_missing, Err(GriffinError::NotGated { .. })));
    let wrong_down = griffin::Ffn::glu(
        ffn.gate().unwrap().clone(),
        ffn.up().clone(),
        linear(32, 32, 1, 3, Store::F32),
        griffin::Act::Silu,
    );
    assert!(matches!(wrong_down, Err(GriffinError::ShapeMismatch { .. })));
    let gf = griffin::GriffinFfn::new(ffn, GriffinConfig::default(), 0).unwrap();
    let mut st = gf.new_stat();
    assert!(matches!(gf.prefill(&tensor(2, 31, 1, 1), &mut st), Err(GriffinError::ShapeMismatch { .. })));
    assert!(matches!(gf.select(&griffin::NeuronStat::new(7)), Err(GriffinError::ShapeMismatch { .. })));
    assert!(matches!(
        griffin::select_experts(&[1.0; 4], 5, &Selection::TopK, true),
        Err(GriffinError::InvalidArgument { .. })
    ));
}

/// `pruned_llama`: a plain LlamaModel with each layer's FFN cut to the sequence's experts decodes like
/// `GriffinLlama::decode` (f32 and Q4_1, several densities); it needs finalized experts.
#[test]
fn pruned_llama_decodes_like_griffin() {
    for (seed, q, density) in [(3u64, false, 0.5), (11, true, 0.25), (5, true, 0.75)] {
        let m = tiny_model(seed, store(q));
        let prompt = tokens(12, seed, 64);
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(density)).unwrap();
        let mut seq = g.new_sequence();
        assert!(matches!(g.pruned_llama(&seq), Err(GriffinError::NotFinalized { .. })));
        let mut cache = m.new_cache();
        let mut logits = g.prefill(&mut seq, &Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        g.finalize(&mut seq).unwrap();
        let pruned = g.pruned_llama(&seq).unwrap();
        let mut pruned_cache = m.new_cache();
        m.forward(&Batch::causal(&prompt, 0), &mut pruned_cache, &LogitRows::Last).unwrap();
        for i in 0..4 {
            let next = greedy_next(&logits);
            let b = Batch::causal(&[next], prompt.len() + i);
            logits = g.decode(&mut seq, &b, &mut cache, &LogitRows::Last).unwrap();
            let ours = pruned.forward(&b, &mut pruned_cache, &LogitRows::Last).unwrap().to_vec_f64().unwrap();
            let want = logits.to_vec_f64().unwrap();
            let num: f64 = ours.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f64 = want.iter().map(|b| b * b).sum();
            assert!((num / den).sqrt() < 1e-5, "seed {seed} density {density} step {i}: {}", (num / den).sqrt());
        }
    }
}
