//! [`GraphDecoder`]: decoding with the per-token step recorded as a CUDA graph, against the ordinary forward.
//!
//! A capture records everything queued on the device's stream, from any thread, so the tests of this binary run one
//! at a time (the `DEVICE` lock) and nothing else shares the binary. GPU tests skip without a usable GPU unless
//! `EFFLLM_REQUIRE_CUDA=1` (set by `cargo xtask gpu-test`'s `run.sh`).

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{GPU, gpu, tiny_gguf, tiny_gqa};
use effllm_gguf::GgmlType;
use effllm_model::{
    Batch, CausalLm, Device, GraphDecoder, KvCache, LlamaModel, LoadOptions, LogitRows, ModelError, WeightFormat,
};

static DEVICE: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    DEVICE.lock().unwrap_or_else(|e| e.into_inner())
}

fn model(weights: GgmlType, format: WeightFormat, device: Device) -> LlamaModel {
    let host = LlamaModel::from_gguf(&tiny_gguf(&tiny_gqa(weights), 7), &LoadOptions { format, ..Default::default() })
        .unwrap();
    host.to_device(&device).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn graph_decoder_rejects_bad_input() {
    let _g = lock();
    let cpu = model(GgmlType::F32, WeightFormat::F32, Device::Cpu);
    assert!(matches!(GraphDecoder::new(&cpu, 16).unwrap_err(), ModelError::Invalid { .. }));
    if !gpu() {
        return;
    }
    let m = model(GgmlType::F32, WeightFormat::F32, GPU);
    for bad in [0, 129, 100_000] {
        assert!(GraphDecoder::new(&m, bad).is_err(), "max_context {bad}");
    }
    let mut d = GraphDecoder::new(&m, 8).unwrap();
    assert!(d.decode(3).is_err(), "decode before prefill");
    assert!(d.prefill(&[]).is_err(), "empty prompt");
    assert!(d.prefill(&[1; 8]).is_err(), "a prompt leaving no room");
    assert!(matches!(d.prefill(&[1, 99]).unwrap_err(), ModelError::BadToken { id: 99, .. }));
    d.prefill(&[1, 2, 3]).unwrap();
    assert!(matches!(d.decode(61).unwrap_err(), ModelError::BadToken { id: 61, .. }));
    for t in 0..5 {
        d.decode(t).unwrap();
    }
    assert_eq!(d.len(), 8);
    assert!(matches!(d.decode(4).unwrap_err(), ModelError::ContextOverflow { cached: 8, new: 1, context: 8 }));
}

/// Every step's logits equal the ordinary forward's to f32 round-off (the attention kernel sums in another order),
/// for dense f32, Q4_1 blocks and bf16 weights; replaying the graph equals running the same step eagerly bitwise.
#[test]
fn graph_decode_matches_the_ordinary_forward() {
    let _g = lock();
    if !gpu() {
        return;
    }
    for (weights, format) in [
        (GgmlType::F32, WeightFormat::F32),
        (GgmlType::Q4_1, WeightFormat::Quantized),
        (GgmlType::Q8_0, WeightFormat::BF16),
    ] {
        let m = model(weights, format, GPU);
        // The second prompt crosses the attention's 64-slot chunk boundary while decoding.
        for prompt_len in [9usize, 60] {
            let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 17 + 3) % 61).collect();
            let follow = [11u32, 4, 58, 23, 23, 0, 9, 37, 12, 6, 50, 2, 19, 44];
            let mut cache = m.new_cache();
            let want =
                m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap().to_vec::<f32>().unwrap();
            let mut graph = GraphDecoder::new(&m, 100).unwrap();
            let mut eager = GraphDecoder::new(&m, 100).unwrap();
            eager.set_use_graph(false);
            let got = graph.prefill(&prompt).unwrap();
            assert_eq!(bits(&got), bits(&want), "{format:?}: prefill is the ordinary forward");
            eager.prefill(&prompt).unwrap();
            for (i, &t) in follow.iter().enumerate() {
                let pos = prompt.len() + i;
                let want = m
                    .forward(&Batch::causal(&[t], pos), &mut cache, &LogitRows::Last)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                let got = graph.decode(t).unwrap();
                let e = rel(&got, &want);
                assert!(e < 1e-5, "{format:?} prompt {prompt_len} step {i}: relative error {e}");
                assert_eq!(bits(&got), bits(&eager.decode(t).unwrap()), "{format:?} step {i}: replay = eager step");
                assert_eq!(graph.is_captured(), i >= 1, "the graph is recorded at the second decoded token");
            }
            assert!(!eager.is_captured());
            assert_eq!(graph.len(), prompt.len() + follow.len());
        }
    }
}

/// One recorded graph serves later sequences: a second prefill resets the position, and the decoded logits equal a
/// fresh decoder's bitwise.
#[test]
fn a_new_prompt_reuses_the_graph() {
    let _g = lock();
    if !gpu() {
        return;
    }
    let m = model(GgmlType::Q4_1, WeightFormat::Quantized, GPU);
    let mut reused = GraphDecoder::new(&m, 48).unwrap();
    let first = reused.generate_greedy(&[5, 6, 7, 8], 10).unwrap();
    assert!(reused.is_captured());
    let second = reused.generate_greedy(&[40, 2, 33], 12).unwrap();
    let mut fresh = GraphDecoder::new(&m, 48).unwrap();
    assert_eq!(fresh.generate_greedy(&[40, 2, 33], 12).unwrap(), second);
    assert_eq!(fresh.generate_greedy(&[5, 6, 7, 8], 10).unwrap(), first);
    assert_eq!(bits(&reused.logits().to_vec::<f32>().unwrap()).len(), 61);
}

/// A cache filled by the ordinary forward (here on the CPU) loads into the decoder; caches that are not a plain
/// sequence of this model's shape are refused.
#[test]
fn load_cache_checks_the_cache() {
    let _g = lock();
    if !gpu() {
        return;
    }
    let m = model(GgmlType::F32, WeightFormat::F32, GPU);
    let host = model(GgmlType::F32, WeightFormat::F32, Device::Cpu);
    let prompt = [9u32, 8, 7, 6, 5];
    let mut cache = host.new_cache();
    host.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
    let mut loaded = GraphDecoder::new(&m, 32).unwrap();
    loaded.load_cache(&cache).unwrap();
    let mut prefilled = GraphDecoder::new(&m, 32).unwrap();
    prefilled.prefill(&prompt).unwrap();
    let (a, b) = (loaded.decode(4).unwrap(), prefilled.decode(4).unwrap());
    assert!(rel(&a, &b) < 1e-5, "a CPU-filled cache decodes like a GPU prefill: {}", rel(&a, &b));
    cache.compact(&[0, 2, 1, 3, 4]).unwrap();
    assert!(loaded.load_cache(&cache).is_err(), "positions out of order");
    assert!(loaded.load_cache(&host.new_cache()).is_err(), "empty cache");
    let mut short = KvCache::new(2, 2, 16, &Device::Cpu);
    short.layer_mut(0).unwrap();
    assert!(loaded.load_cache(&short).is_err(), "two layers for a three-layer model");
    let mut long = host.new_cache();
    host.forward(&Batch::causal(&[1; 32], 0), &mut long, &LogitRows::Last).unwrap();
    assert!(loaded.load_cache(&long).is_err(), "no room left for a decoded token");
}

/// SmolLM2 (Q4_1 blocks and bf16): 32 greedy tokens from the graph decoder equal those of the ordinary forward.
#[test]
fn smollm2_greedy_equals_the_ordinary_forward() {
    let _g = lock();
    if !gpu() {
        return;
    }
    let Some(path) = effllm_gguf::model_cache::smollm2_path() else {
        assert!(!effllm_gguf::model_cache::require_model(), "EFFLLM_REQUIRE_MODEL=1 but the model is missing");
        eprintln!("skipped: SmolLM2 is not in the model cache (cargo xtask fetch-model)");
        return;
    };
    let prompt = [1u32, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    for format in [WeightFormat::Quantized, WeightFormat::BF16] {
        let m = LlamaModel::open_gguf(&path, &LoadOptions { format, ..Default::default() })
            .unwrap()
            .to_device(&GPU)
            .unwrap();
        let mut cache = m.new_cache();
        let mut logits = m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        let mut want = Vec::new();
        for i in 0..32 {
            let next = logits.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0];
            want.push(next);
            logits = m.forward(&Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last).unwrap();
        }
        let mut d = GraphDecoder::new(&m, 256).unwrap();
        assert_eq!(d.generate_greedy(&prompt, 32).unwrap(), want, "{format:?}");
    }
}
