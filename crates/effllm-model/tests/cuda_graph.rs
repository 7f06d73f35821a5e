//! [`GraphDecoder`]: decoding with the per-token step recorded as a CUDA graph, against the ordinary forward.
//!
//! A capture records everything queued on the device's stream, from any thread, so the tests of this binary run one
//! at a time (the `DEVICE` lock) and nothing else shares the binary. GPU tests skip without a usable GPU unless
//! `EFFLLM_REQUIRE_CUDA=1` (set by `cargo xtask gpu-test`'s `run.sh`).

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{GPU, Tiny, gpu, tiny_gguf, tiny_gqa};
use effllm_gguf::GgmlType;
use effllm_model::Linear;
use effllm_model::{
    Batch, CausalLm, Device, GraphDecoder, KvCache, LlamaFfn, LlamaLayer, LlamaModel, LoadOptions, LogitRows,
    ModelError, WeightFormat,
};
use effllm_tensor::DType;
use effllm_tensor::quant::ActivationQuant;

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
    assert!(d.fused_supported() && d.is_fused(), "heads of 16 and f32 weights take the fused step");
    // Heads of 8 (not a multiple of 16) and Q8-activation weights (other numerics) keep the unfused step.
    let narrow = LlamaModel::from_gguf(&tiny_gguf(&Tiny::default_f32(), 7), &LoadOptions::default())
        .unwrap()
        .to_device(&GPU)
        .unwrap();
    let q8_act = LlamaModel::from_gguf(
        &tiny_gguf(&tiny_gqa(GgmlType::Q4_1), 7),
        &LoadOptions { activations: ActivationQuant::Q8, ..Default::default() },
    )
    .unwrap()
    .to_device(&GPU)
    .unwrap();
    for m in [&narrow, &q8_act] {
        let mut d = GraphDecoder::new(m, 16).unwrap();
        assert!(!d.fused_supported() && !d.is_fused());
        assert!(matches!(d.set_fused(true).unwrap_err(), ModelError::Invalid { .. }));
        d.set_fused(false).unwrap();
        assert_eq!(d.generate_greedy(&[1, 2, 3], 4).unwrap().len(), 4);
    }
}

/// The unfused step: every step's logits equal the ordinary forward's to f32 round-off (the attention kernel sums in
/// another order), for dense f32, Q4_1 blocks and bf16 weights; replaying the graph equals running the same step
/// eagerly bitwise.
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
            graph.set_fused(false).unwrap();
            eager.set_fused(false).unwrap();
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

/// `m` with each layer's linear maps replaced by `map` of them and the LM head by `head`.
fn rebuilt(m: &LlamaModel, map: &dyn Fn(&Linear) -> Linear, head: Linear) -> LlamaModel {
    let layers = m
        .layers()
        .iter()
        .map(|l| LlamaLayer {
            attn_norm: l.attn_norm.clone(),
            wq: map(&l.wq),
            wk: map(&l.wk),
            wv: map(&l.wv),
            wo: map(&l.wo),
            ffn_norm: l.ffn_norm.clone(),
            ffn: LlamaFfn { gate: map(&l.ffn.gate), up: map(&l.ffn.up), down: map(&l.ffn.down) },
        })
        .collect();
    LlamaModel::from_parts(m.config().clone(), m.embedding().clone(), layers, m.final_norm_weight().clone(), head)
        .unwrap()
}

/// `m` with every dense linear map's weight rounded to `dtype` (bf16 or f16) and stored as `stored`: the same
/// weights in two storage formats.
fn rounded(m: &LlamaModel, dtype: DType, stored: DType) -> LlamaModel {
    let map = |l: &Linear| match l {
        Linear::Dense(w) => Linear::Dense(w.to_dtype(dtype).unwrap().to_dtype(stored).unwrap()),
        other => other.clone(),
    };
    rebuilt(m, &map, map(m.lm_head_weight()))
}

/// The fused step (five kernels per layer) against the ordinary forward of the same weights, for every storage
/// format it reads: dense f32, bf16 and f16 (compared with the same rounded weights held as f32, since the ordinary
/// 16-bit path also rounds the activations), Q4_1 and Q8_0 blocks. The cache comes from the reference model's
/// prefill, so only the decode steps are compared: logits to f32 round-off at every step, over prompts whose decode
/// stays in the first 64-slot attention chunk, crosses into the second, and runs in the second; replay equals the
/// eager fused step bitwise, and so does the persistent kernel (the same phases with the same reductions).
#[test]
fn fused_step_matches_the_ordinary_forward() {
    let _g = lock();
    if !gpu() {
        return;
    }
    let f32_model = model(GgmlType::F32, WeightFormat::F32, GPU);
    let q4_1 = model(GgmlType::Q4_1, WeightFormat::Quantized, GPU);
    let q8_0 = model(GgmlType::Q8_0, WeightFormat::Quantized, GPU);
    let cases = [
        ("f32", f32_model.clone(), f32_model.clone()),
        ("bf16", rounded(&f32_model, DType::BF16, DType::BF16), rounded(&f32_model, DType::BF16, DType::F32)),
        ("f16", rounded(&f32_model, DType::F16, DType::F16), rounded(&f32_model, DType::F16, DType::F32)),
        ("Q4_1", q4_1.clone(), q4_1),
        ("Q8_0", q8_0.clone(), q8_0),
    ];
    for (name, fast, reference) in &cases {
        for prompt_len in [9usize, 60, 110] {
            let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 13 + 5) % 61).collect();
            let follow = [11u32, 4, 58, 23, 23, 0, 9, 37, 12, 6, 50, 2, 19, 44];
            let mut cache = reference.new_cache();
            reference.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
            let mut graph = GraphDecoder::new(fast, 128).unwrap();
            let mut eager = GraphDecoder::new(fast, 128).unwrap();
            let mut persistent = GraphDecoder::new(fast, 128).unwrap();
            assert!(graph.fused_supported() && graph.is_fused(), "{name}: the fused step is the default");
            eager.set_use_graph(false);
            persistent.set_persistent(true).unwrap();
            assert!(persistent.is_persistent() && !graph.is_persistent());
            graph.load_cache(&cache).unwrap();
            eager.load_cache(&cache).unwrap();
            persistent.load_cache(&cache).unwrap();
            let mut worst = 0f64;
            for (i, &t) in follow.iter().enumerate() {
                let pos = prompt.len() + i;
                let want = reference
                    .forward(&Batch::causal(&[t], pos), &mut cache, &LogitRows::Last)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                let got = graph.decode(t).unwrap();
                let e = rel(&got, &want);
                worst = worst.max(e);
                assert!(e < 1e-5, "{name} prompt {prompt_len} step {i}: relative error {e}");
                assert_eq!(bits(&got), bits(&eager.decode(t).unwrap()), "{name} step {i}: replay = eager step");
                assert_eq!(bits(&got), bits(&persistent.decode(t).unwrap()), "{name} step {i}: persistent kernel");
            }
            eprintln!("fused {name}, prompt {prompt_len}: worst relative error {worst:.2e}");
            assert!(graph.is_captured());
            assert!(!persistent.is_captured(), "the persistent step is one launch, not a graph");
        }
    }
}

/// `m` (untied) with an LM head whose odd rows repeat the even ones: every odd token ties with the even one before it.
fn tied_rows(m: &LlamaModel) -> LlamaModel {
    let Linear::Dense(w) = m.lm_head_weight() else { panic!("a dense LM head") };
    let (vocab, d) = (w.shape()[0], w.shape()[1]);
    let mut rows = w.to_vec::<f32>().unwrap();
    for r in (1..vocab).step_by(2) {
        rows.copy_within((r - 1) * d..r * d, r * d);
    }
    let head = effllm_tensor::Tensor::from_vec(rows, &[vocab, d], &Device::Cpu).unwrap().to_device(&GPU).unwrap();
    rebuilt(m, &Linear::clone, Linear::Dense(head))
}

/// Greedy decoding on the device (the fused step feeds its own argmax to the next step; the graph, or the persistent
/// kernel, is launched back to back) chooses exactly what the host chooses from the same steps' logits, for dense,
/// bf16 and Q4_1 weights and for an LM head whose logits tie in pairs (the smaller id wins, as on the host); it
/// continues where it stopped, and refuses to run past `max_context`.
#[test]
fn device_greedy_equals_host_greedy() {
    let _g = lock();
    if !gpu() {
        return;
    }
    let f32_model = model(GgmlType::F32, WeightFormat::F32, GPU);
    let cases = [
        ("f32", f32_model.clone()),
        ("bf16", rounded(&f32_model, DType::BF16, DType::BF16)),
        ("Q4_1", model(GgmlType::Q4_1, WeightFormat::Quantized, GPU)),
        ("tied logits", tied_rows(&f32_model)),
    ];
    let prompt = [3u32, 41, 7, 7, 19, 60, 2];
    for ((name, m), persistent) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
        let mut device = GraphDecoder::new(m, 64).unwrap();
        assert!(device.is_fused());
        device.set_persistent(persistent).unwrap();
        let mut got = device.generate_greedy(&prompt, 40).unwrap();
        got.extend(device.greedy_continue(got[39], 10).unwrap());
        let mut host = GraphDecoder::new(m, 64).unwrap();
        let mut logits = host.prefill(&prompt).unwrap();
        let mut want = Vec::new();
        for i in 0..50 {
            let t = argmax_of(&logits) as u32;
            want.push(t);
            if i < 49 {
                logits = host.decode(t).unwrap();
            }
        }
        assert_eq!(got, want, "{name}, persistent {persistent}");
        // One token at a time with only the argmax read back (what `effllm generate` does at temperature 0).
        let mut stepwise = GraphDecoder::new(m, 64).unwrap();
        stepwise.set_persistent(persistent).unwrap();
        stepwise.prefill(&prompt).unwrap();
        let mut one_by_one = vec![want[0]];
        for i in 0..49 {
            one_by_one.push(stepwise.decode_greedy(one_by_one[i]).unwrap());
        }
        assert_eq!(one_by_one, want, "{name}, persistent {persistent}: decode_greedy");
        if !persistent {
            stepwise.set_fused(false).unwrap();
            stepwise.prefill(&prompt).unwrap();
            assert_eq!(stepwise.decode_greedy(want[0]).unwrap(), want[1], "{name}: unfused decode_greedy");
        }
        if *name == "tied logits" {
            assert!(got.iter().all(|t| t % 2 == 0), "ties go to the smaller id: {got:?}");
        }
        assert_eq!(device.len(), prompt.len() + 49);
        assert!(matches!(
            device.greedy_continue(got[49], 9).unwrap_err(),
            ModelError::ContextOverflow { cached: 56, new: 9, context: 64 }
        ));
        assert_eq!(device.greedy_continue(got[49], 0).unwrap(), Vec::<u32>::new());
        assert!(matches!(device.greedy_continue(61, 1).unwrap_err(), ModelError::BadToken { id: 61, .. }));
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
        let mut unfused = GraphDecoder::new(&m, 256).unwrap();
        unfused.set_fused(false).unwrap();
        assert_eq!(unfused.generate_greedy(&prompt, 32).unwrap(), want, "{format:?}, unfused step");
        let mut fused = GraphDecoder::new(&m, 256).unwrap();
        assert!(fused.is_fused());
        if format == WeightFormat::Quantized {
            assert_eq!(fused.generate_greedy(&prompt, 32).unwrap(), want, "{format:?}, fused step");
            continue;
        }
        // bf16: the ordinary forward rounds every GEMV's input and output to bf16, the fused step keeps them in f32,
        // so the two differ by bf16 rounding. Teacher-forced on the ordinary tokens: close logits, and the same
        // argmax at nearly every step.
        let mut logits = fused.prefill(&prompt).unwrap();
        let mut cache = m.new_cache();
        let mut reference = m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        let (mut same, mut worst) = (0, 0f64);
        for (i, &t) in want.iter().enumerate() {
            let r = reference.to_vec::<f32>().unwrap();
            worst = worst.max(rel(&logits, &r));
            same += usize::from(argmax_of(&logits) == argmax_of(&r));
            logits = fused.decode(t).unwrap();
            reference = m.forward(&Batch::causal(&[t], prompt.len() + i), &mut cache, &LogitRows::Last).unwrap();
        }
        eprintln!("SmolLM2 bf16, fused vs ordinary: worst relative error {worst:.2e}, same argmax {same}/32");
        assert!(worst < 5e-2, "bf16 fused logits {worst} from the ordinary forward's");
        assert!(same >= 28, "same argmax at {same} of 32 steps");
    }
}

fn argmax_of(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}
