//! The decoder against its f64 reference on random tiny models, and the cache/mask/layer-range invariants.

mod common;

use common::{Edit, Tiny, rel_l2, tiny_gguf, tiny_gguf_with};
use effllm_gguf::GgmlType;
use effllm_model::reference::ReferenceLlama;
use effllm_model::{
    Batch, CaptureHidden, CausalLm, ForwardHooks, LayeredLm, LlamaFfn, LlamaModel, LoadOptions, LogitRows, NoHooks,
    SinkWindowPolicy, Tensor, WeightFormat,
};
use proptest::prelude::*;

fn load(t: &Tiny, seed: u64, format: WeightFormat) -> LlamaModel {
    LlamaModel::from_gguf(&tiny_gguf(t, seed), &LoadOptions { format, ..Default::default() }).unwrap()
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503))) % vocab as u64) as u32)
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn tiny_strategy() -> impl Strategy<Value = Tiny> {
    (
        1usize..=2,
        prop::sample::select(vec![(4, 2, 8), (4, 4, 8), (2, 1, 16), (6, 2, 16), (2, 2, 32)]),
        1usize..=3,
        17usize..70,
        prop::sample::select(vec![GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0]),
        any::<bool>(),
    )
        .prop_map(|(n_layer, (n_head, n_head_kv, head_dim), ff, vocab, weights, tied)| Tiny {
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            d_ff: 32 * ff,
            vocab,
            context: 128,
            weights,
            tied,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Prefill logits of every position equal the f64 reference (same dequantized weights) within f32 rounding.
    #[test]
    fn prefill_matches_reference(t in tiny_strategy(), seed in any::<u64>(), n in 1usize..12, f32_weights in any::<bool>()) {
        let format = if f32_weights { WeightFormat::F32 } else { WeightFormat::Quantized };
        let m = load(&t, seed, format);
        let r = ReferenceLlama::from_model(&m).unwrap();
        let toks = tokens(n, t.vocab, seed);
        let mut cache = m.new_cache();
        let got = m.forward(&Batch::causal(&toks, 0), &mut cache, &LogitRows::All).unwrap();
        prop_assert_eq!(got.shape(), &[n, t.vocab]);
        let want: Vec<f64> = r.forward_causal(&toks).concat();
        let err = rel_l2(&flat(&got), &want);
        prop_assert!(err < 1e-5, "rel L2 {err}");
        prop_assert_eq!(cache.len(), n);
    }

    /// Chunked prefill and token-by-token decode give the logits of a one-shot prefill.
    #[test]
    fn incremental_equals_prefill(t in tiny_strategy(), seed in any::<u64>(), n in 2usize..14, cut in 1usize..13) {
        let m = load(&t, seed, WeightFormat::Quantized);
        let toks = tokens(n, t.vocab, seed);
        let full = flat(&m.forward(&Batch::causal(&toks, 0), &mut m.new_cache(), &LogitRows::All).unwrap());
        let cut = cut.min(n - 1);
        let mut cache = m.new_cache();
        let mut got = flat(&m.forward(&Batch::causal(&toks[..cut], 0), &mut cache, &LogitRows::All).unwrap());
        for (i, &tok) in toks.iter().enumerate().skip(cut) {
            got.extend(flat(&m.forward(&Batch::causal(&[tok], i), &mut cache, &LogitRows::Last).unwrap()));
        }
        let full64: Vec<f64> = full.iter().map(|&x| x as f64).collect();
        prop_assert!(rel_l2(&got, &full64) < 1e-5);
    }

    /// A token tree verified in one batch: every node's logits equal the reference run on prefix + its ancestors;
    /// compacting the cache to one root-to-leaf path leaves exactly the cache of that path.
    #[test]
    fn tree_batch_matches_reference_and_compaction_keeps_path(t in tiny_strategy(), seed in any::<u64>(), p in 1usize..6, parent_seed in any::<u64>(), nodes in 1usize..8) {
        let m = load(&t, seed, WeightFormat::Quantized);
        let r = ReferenceLlama::from_model(&m).unwrap();
        let prefix = tokens(p, t.vocab, seed);
        let tree_toks = tokens(nodes, t.vocab, seed ^ 7);
        let parents: Vec<Option<usize>> = (0..nodes)
            .map(|i| if i == 0 { None } else { let k = (parent_seed >> (i % 60)) as usize % (i + 1); (k < i).then_some(k) })
            .collect();
        let mut cache = m.new_cache();
        m.forward(&Batch::causal(&prefix, 0), &mut cache, &LogitRows::Last).unwrap();
        let batch = Batch::tree(&tree_toks, &parents, p).unwrap();
        let got = flat(&m.forward(&batch, &mut cache, &LogitRows::All).unwrap());
        let ancestors = |i: usize| { let mut v = vec![]; let mut n = Some(i); while let Some(x) = n { v.push(x); n = parents[x]; } v };
        let all_toks: Vec<u32> = prefix.iter().chain(&tree_toks).copied().collect();
        let mut pos: Vec<u32> = (0..p as u32).collect();
        pos.extend(&batch.positions);
        let vis = |i: usize, j: usize| if i < p { j <= i } else { j < p || ancestors(i - p).contains(&(j - p)) };
        let want: Vec<f64> = r.forward(&all_toks, &pos, &vis)[p..].concat();
        prop_assert!(rel_l2(&got, &want) < 1e-5);

        // Accept the path to the last node, then decode one more token: equals a fresh causal run.
        let mut path = ancestors(nodes - 1);
        path.reverse();
        let keep: Vec<usize> = (0..p).chain(path.iter().map(|&i| p + i)).collect();
        cache.compact(&keep).unwrap();
        let mut seq = prefix.clone();
        seq.extend(path.iter().map(|&i| tree_toks[i]));
        let next = (seq.len() as u32 * 5 + 3) % t.vocab as u32;
        let after = flat(&m.forward(&Batch::causal(&[next], seq.len()), &mut cache, &LogitRows::Last).unwrap());
        seq.push(next);
        let fresh = flat(&m.forward(&Batch::causal(&seq, 0), &mut m.new_cache(), &LogitRows::Last).unwrap());
        let fresh64: Vec<f64> = fresh.iter().map(|&x| x as f64).collect();
        prop_assert!(rel_l2(&after, &fresh64) < 1e-5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// An f16 KV cache: chunked prefill plus token-by-token decode track a one-shot prefill, and the logits stay
    /// within f16 rounding of the f32 cache's; layer 0's keys and values (which do not depend on the cache) read
    /// back as exactly the f32 cache's rounded to f16.
    #[test]
    fn f16_cache_matches_itself_and_tracks_f32(t in tiny_strategy(), seed in any::<u64>(), n in 2usize..14, cut in 1usize..13) {
        let m32 = load(&t, seed, WeightFormat::Quantized);
        let m16 = m32.clone().with_kv_cache_dtype(effllm_model::DType::F16).unwrap();
        prop_assert_eq!(m16.kv_cache_dtype(), effllm_model::DType::F16);
        let toks = tokens(n, t.vocab, seed);
        let mut full_cache = m16.new_cache();
        let full = flat(&m16.forward(&Batch::causal(&toks, 0), &mut full_cache, &LogitRows::All).unwrap());
        let cut = cut.min(n - 1);
        let mut cache = m16.new_cache();
        prop_assert_eq!(cache.layer(0).unwrap().dtype(), effllm_model::DType::F16);
        let mut got = flat(&m16.forward(&Batch::causal(&toks[..cut], 0), &mut cache, &LogitRows::All).unwrap());
        for (i, &tok) in toks.iter().enumerate().skip(cut) {
            got.extend(flat(&m16.forward(&Batch::causal(&[tok], i), &mut cache, &LogitRows::Last).unwrap()));
        }
        // Not to f32 rounding: the paths differ in the last f32 bits of deeper layers' keys, which can move their
        // f16 rounding by an ulp (2⁻¹¹ relative).
        let full64: Vec<f64> = full.iter().map(|&x| x as f64).collect();
        let err = rel_l2(&got, &full64);
        prop_assert!(err < 2e-3, "incremental vs one-shot, f16 cache: rel L2 {err}");

        let mut cache32 = m32.new_cache();
        let wide = flat(&m32.forward(&Batch::causal(&toks, 0), &mut cache32, &LogitRows::All).unwrap());
        let wide64: Vec<f64> = wide.iter().map(|&x| x as f64).collect();
        let err = rel_l2(&full, &wide64);
        prop_assert!(err < 5e-3, "f16 cache vs f32 cache: rel L2 {err}");
        // The same one-shot prefill in both, so layer 0 computed the same f32 keys and values before storing them.
        let (l16, l32) = (full_cache.layer(0).unwrap(), cache32.layer(0).unwrap());
        for h in 0..l16.n_heads() {
            for (a, b) in [(l16.keys(h).unwrap(), l32.keys(h).unwrap()), (l16.values(h).unwrap(), l32.values(h).unwrap())] {
                prop_assert_eq!(a.dtype(), effllm_model::DType::F32);
                let rounded: Vec<f32> = flat(&b).iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                prop_assert_eq!(flat(&a), rounded);
            }
        }
    }
}

#[test]
fn kv_cache_dtype_other_than_f32_or_f16_is_an_error() {
    let m = load(&Tiny::default_f32(), 5, WeightFormat::F32);
    let err = m.with_kv_cache_dtype(effllm_model::DType::BF16).unwrap_err().to_string();
    assert!(err.contains("bf16") && err.contains("f16"), "{err}");
}

#[test]
fn truncate_then_continue_equals_fresh() {
    let t = Tiny { weights: GgmlType::Q4_1, ..Tiny::default_f32() };
    let m = load(&t, 11, WeightFormat::Quantized);
    let toks = tokens(10, t.vocab, 3);
    let mut cache = m.new_cache();
    m.forward(&Batch::causal(&toks, 0), &mut cache, &LogitRows::Last).unwrap();
    cache.truncate(6);
    assert_eq!(cache.len(), 6);
    let alt = [5u32, 9];
    let got = flat(&m.forward(&Batch::causal(&alt, 6), &mut cache, &LogitRows::All).unwrap());
    let mut seq = toks[..6].to_vec();
    seq.extend(alt);
    let want = flat(&m.forward(&Batch::causal(&seq, 0), &mut m.new_cache(), &LogitRows::Rows(vec![6, 7])).unwrap());
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert!(rel_l2(&got, &want64) < 1e-6);
}

#[test]
fn layer_ranges_compose_and_capture_hidden_state() {
    let t = Tiny { n_layer: 3, ..Tiny::default_f32() };
    let m = load(&t, 5, WeightFormat::Quantized);
    let toks = tokens(7, t.vocab, 1);
    let batch = Batch::causal(&toks, 0);
    let full = flat(&m.forward(&batch, &mut m.new_cache(), &LogitRows::All).unwrap());
    let mut cache = m.new_cache();
    let mut cap = CaptureHidden { layers: vec![0, 2], ..Default::default() };
    let h = m.embed(&toks).unwrap();
    let h = m.run_layers(h, 0..1, &batch, &mut cache, &mut cap).unwrap();
    assert_eq!(cache.layer(0).unwrap().len(), 7);
    assert_eq!(cache.layer(1).unwrap().len(), 0, "layers outside the range are untouched");
    let h = m.run_layers(h, 1..3, &batch, &mut cache, &mut cap).unwrap();
    assert_eq!(flat(&m.unembed(&h).unwrap()), full);
    assert_eq!(cap.captured.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(flat(&cap.captured[1].1), flat(&h));
    assert!(m.run_layers(m.embed(&toks).unwrap(), 2..4, &batch, &mut m.new_cache(), &mut NoHooks).is_err());
}

/// GRIFFIN-style FFN override: running the FFN over every neuron (a permuted subset) equals the dense FFN; over a
/// strict subset it equals the reference with the other neurons' down columns zeroed.
#[test]
fn ffn_subset_override() {
    struct Subset(Vec<u32>, Vec<LlamaFfn>, Vec<usize>);
    impl ForwardHooks for Subset {
        fn ffn_override(&mut self, layer: usize, ffn: &LlamaFfn, x: &Tensor) -> effllm_model::Result<Option<Tensor>> {
            if self.1.len() <= layer {
                self.1.push(ffn.subset(&self.0)?);
            }
            self.2.push(layer);
            Ok(Some(self.1[layer].forward(x)?))
        }
    }
    let t = Tiny { weights: GgmlType::Q4_1, ..Tiny::default_f32() };
    let m = load(&t, 8, WeightFormat::Quantized);
    let toks = tokens(5, t.vocab, 2);
    let batch = Batch::causal(&toks, 0);
    let dense = flat(&m.forward(&batch, &mut m.new_cache(), &LogitRows::All).unwrap());
    let mut all: Vec<u32> = (0..t.d_ff as u32).collect();
    all.reverse();
    let mut hooks = Subset(all, vec![], vec![]);
    let got = flat(&m.forward_with_hooks(&batch, &mut m.new_cache(), &LogitRows::All, &mut hooks).unwrap());
    assert_eq!(hooks.2, vec![0, 1]);
    let dense64: Vec<f64> = dense.iter().map(|&x| x as f64).collect();
    assert!(rel_l2(&got, &dense64) < 1e-5);
    assert!(m.layers()[0].ffn.subset(&[t.d_ff as u32]).is_err());
}

/// StreamingLLM through the policy hook: the cache never exceeds sink + recent, and the logits equal the
/// reference where each token sees the sink and its recent window.
#[test]
fn sink_window_policy_matches_reference() {
    let t = Tiny { weights: GgmlType::Q8_0, ..Tiny::default_f32() };
    let m = load(&t, 21, WeightFormat::Quantized);
    let r = ReferenceLlama::from_model(&m).unwrap();
    let (sink, recent) = (2usize, 4usize);
    let toks = tokens(14, t.vocab, 4);
    let mut cache = m.new_cache().with_policy(Box::new(SinkWindowPolicy { sink, recent }));
    let mut got = Vec::new();
    for (i, &tok) in toks.iter().enumerate() {
        got.extend(flat(&m.forward(&Batch::causal(&[tok], i), &mut cache, &LogitRows::Last).unwrap()));
        assert!(cache.len() <= sink + recent);
    }
    let pos: Vec<u32> = (0..toks.len() as u32).collect();
    let want: Vec<f64> = r.forward(&toks, &pos, &|i, j| j <= i && (j < sink || j + recent > i)).concat();
    assert!(rel_l2(&got, &want) < 1e-5, "{}", rel_l2(&got, &want));
    assert_eq!(cache.layer(0).unwrap().positions(0), &[0, 1, 10, 11, 12, 13]);
}

#[test]
fn bad_batches_are_typed_errors() {
    let t = Tiny { context: 16, ..Tiny::default_f32() };
    let m = load(&t, 1, WeightFormat::Quantized);
    let mut cache = m.new_cache();
    let e = m.forward(&Batch::causal(&[t.vocab as u32], 0), &mut cache, &LogitRows::Last).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let long = tokens(17, t.vocab, 1);
    let e = m.forward(&Batch::causal(&long, 0), &mut cache, &LogitRows::Last).unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
    assert!(m.forward(&Batch::causal(&[], 0), &mut cache, &LogitRows::Last).is_err());
    assert!(Batch::tree(&[1, 2], &[None, Some(1)], 0).is_err());
    let e = m.forward(&Batch::causal(&[1, 2], 0), &mut cache, &LogitRows::Rows(vec![2])).unwrap_err();
    assert!(e.to_string().contains("row 2"), "{e}");
    assert!(cache.compact(&[0, 0]).is_err());
}

#[test]
fn bad_gguf_files_are_typed_errors() {
    use effllm_gguf::{GgufFile, ReadOptions};
    use effllm_model::ModelError;
    let t = Tiny::default_f32();
    let load = |edit: &Edit| -> Result<LlamaModel, ModelError> {
        let f = GgufFile::parse(&tiny_gguf_with(&t, 1, edit, |_| {}), &ReadOptions::default())?;
        LlamaModel::from_gguf(&f, &LoadOptions::default())
    };
    let e = load(&Edit { arch: Some("gpt2"), ..Edit::default() }).unwrap_err();
    assert!(matches!(&e, ModelError::UnsupportedArchitecture { found, .. } if found == "gpt2"), "{e}");
    let e = load(&Edit { skip: Some("blk.1.ffn_up.weight"), ..Edit::default() }).unwrap_err();
    assert!(matches!(&e, ModelError::MissingTensor(n) if n == "blk.1.ffn_up.weight"), "{e}");
    let e = load(&Edit { widen: Some("blk.0.attn_k.weight"), ..Edit::default() }).unwrap_err();
    assert!(matches!(&e, ModelError::BadTensorShape { name, .. } if name == "blk.0.attn_k.weight"), "{e}");
    // An unsupported quant type (Q6_K bytes are never interpreted: the type alone is refused).
    let wide = Tiny { n_head: 32, n_head_kv: 8, head_dim: 8, d_ff: 256, n_layer: 1, ..t };
    let bytes = tiny_gguf_with(&wide, 1, &Edit { skip: Some("blk.0.attn_q.weight"), ..Edit::default() }, |w| {
        w.add_tensor("blk.0.attn_q.weight", GgmlType::Q6_K, &[256, 256], vec![0u8; 256 * 210]);
    });
    let f = GgufFile::parse(&bytes, &ReadOptions::default()).unwrap();
    let e = LlamaModel::from_gguf(&f, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnsupportedWeightType { name, ty } if name == "blk.0.attn_q.weight" && ty == "Q6_K"),
        "{e}"
    );
    // A truncated file fails in the GGUF reader with its own error.
    let full = tiny_gguf_with(&t, 1, &Edit::default(), |_| {});
    assert!(GgufFile::parse(&full[..full.len() - 7], &ReadOptions::default()).is_err());
}

/// Long batches take the GEMM attention path (≥ 32 rows, chunks of 256): equal to the reference, to token-by-token
/// decoding, and for a wide token tree too.
#[test]
fn long_batches_use_gemm_attention_and_match() {
    let t = Tiny { weights: GgmlType::Q4_1, context: 512, ..Tiny::default_f32() };
    let m = load(&t, 13, WeightFormat::Quantized);
    let r = ReferenceLlama::from_model(&m).unwrap();
    let toks = tokens(300, t.vocab, 9);
    let got = flat(&m.forward(&Batch::causal(&toks, 0), &mut m.new_cache(), &LogitRows::All).unwrap());
    let want: Vec<f64> = r.forward_causal(&toks).concat();
    assert!(rel_l2(&got, &want) < 1e-5, "{}", rel_l2(&got, &want));
    // Prefix of 40 (GEMM path), then a 40-node tree (GEMM path with a tree mask).
    let mut cache = m.new_cache();
    m.forward(&Batch::causal(&toks[..40], 0), &mut cache, &LogitRows::Last).unwrap();
    let parents: Vec<Option<usize>> = (0..40).map(|i| if i < 4 { None } else { Some(i / 2 - 1) }).collect();
    let batch = Batch::tree(&toks[40..80], &parents, 40).unwrap();
    let got = flat(&m.forward(&batch, &mut cache, &LogitRows::All).unwrap());
    let ancestors = |i: usize| {
        let mut v = vec![];
        let mut n = Some(i);
        while let Some(x) = n {
            v.push(x);
            n = parents[x];
        }
        v
    };
    let mut pos: Vec<u32> = (0..40).collect();
    pos.extend(&batch.positions);
    let vis = |i: usize, j: usize| if i < 40 { j <= i } else { j < 40 || ancestors(i - 40).contains(&(j - 40)) };
    let want: Vec<f64> = r.forward(&toks[..80], &pos, &vis)[40..].concat();
    assert!(rel_l2(&got, &want) < 1e-5, "{}", rel_l2(&got, &want));
}

/// On the CPU a quantized LM head is loaded in the GEMV layout (its one-row product reads the split-scale copy), the
/// layout survives moving the model to the CPU again, and the head's one-row product matches the same product
/// through the ggml rows within f32 summation error.
#[test]
fn cpu_quantized_head_takes_the_gemv_layout() {
    use effllm_model::Linear;
    use effllm_tensor::quant::{BlockLayout, QWeight};
    let t = Tiny { weights: GgmlType::Q4_1, ..Tiny::default_f32() };
    let m = load(&t, 13, WeightFormat::Quantized);
    let Linear::Quant(head) = m.lm_head_weight() else { panic!("a quantized head") };
    assert_eq!(head.block_layout(), BlockLayout::Gemv);
    let moved = m.to_device(&effllm_tensor::Device::Cpu).unwrap();
    let Linear::Quant(head2) = moved.lm_head_weight() else { panic!("a quantized head") };
    assert_eq!(head2.block_layout(), BlockLayout::Gemv);
    let rng = effllm_tensor::rng::CounterRng::new(3, 0);
    let cpu = effllm_tensor::Device::Cpu;
    let h = Tensor::randn(&[1, head.n_cols()], effllm_tensor::DType::F32, &cpu, &rng, 0, 0.0, 1.0).unwrap();
    let rows = QWeight::new(head.matrix().clone());
    let (a, b) = (flat(&h.linear_q(head).unwrap()), flat(&h.linear_q(&rows).unwrap()));
    let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    assert!(rel_l2(&a, &b64) < 1e-6);
}
