//! The decoder on CUDA: [`OffloadedLlama`] (layers streamed from pinned host memory) against the same model resident
//! on the GPU. GPU tests skip without a usable GPU unless `EFFLLM_REQUIRE_CUDA=1` (set by `cargo xtask gpu-test`'s
//! `run.sh`).

mod common;

use common::{GPU, gpu, tiny_gguf, tiny_gqa};
use effllm_gguf::GgmlType;
use effllm_model::{
    Batch, CausalLm, Device, LayeredLm, LlamaModel, LoadOptions, LogitRows, ModelError, NoHooks, OffloadedLlama,
    WeightFormat,
};

fn bits(t: &effllm_model::Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn offloading_needs_a_cuda_device() {
    let m = LlamaModel::from_gguf(&tiny_gguf(&tiny_gqa(GgmlType::F32), 1), &LoadOptions::default()).unwrap();
    assert!(matches!(OffloadedLlama::new(&m, Device::Cpu).unwrap_err(), ModelError::Tensor(_)));
    if !gpu() {
        assert!(matches!(OffloadedLlama::new(&m, GPU).unwrap_err(), ModelError::Tensor(_)));
        return;
    }
    assert!(OffloadedLlama::new(&m, GPU).unwrap().with_prefetch(0).is_err());
}

#[test]
fn offloaded_equals_resident_bitwise() {
    if !gpu() {
        return;
    }
    for (weights, format) in [
        (GgmlType::F32, WeightFormat::F32),
        (GgmlType::Q4_1, WeightFormat::Quantized),
        (GgmlType::Q8_0, WeightFormat::BF16),
    ] {
        let host =
            LlamaModel::from_gguf(&tiny_gguf(&tiny_gqa(weights), 7), &LoadOptions { format, ..Default::default() })
                .unwrap();
        let resident = host.to_device(&GPU).unwrap();
        for prefetch in [1, 2, 5] {
            let off = OffloadedLlama::new(&host, GPU).unwrap().with_prefetch(prefetch).unwrap();
            assert_eq!(off.n_layers(), 3);
            let (mut c_res, mut c_off) = (resident.new_cache(), off.new_cache());
            let prompt = [3u32, 17, 5, 42, 8, 8, 60, 1, 29];
            let batches = [
                Batch::causal(&prompt, 0),
                Batch::causal(&[11], 9),
                Batch::tree(&[4, 9, 13, 2, 7], &[None, Some(0), Some(0), Some(1), Some(3)], 10).unwrap(),
            ];
            for b in &batches {
                let a = resident.forward(b, &mut c_res, &LogitRows::All).unwrap();
                let o = off.forward(b, &mut c_off, &LogitRows::All).unwrap();
                assert_eq!(bits(&a), bits(&o), "{weights:?} {format:?} prefetch {prefetch}");
            }
            // A layer range on its own, as early-exit drafts run it.
            let h = off.embed(&[5, 6]).unwrap();
            let mut c2 = off.new_cache();
            let mut c3 = resident.new_cache();
            let b = Batch::causal(&[5, 6], 0);
            let part = off.run_layers(h.clone(), 0..2, &b, &mut c2, &mut NoHooks).unwrap();
            let want = resident.run_layers(h, 0..2, &b, &mut c3, &mut NoHooks).unwrap();
            assert_eq!(bits(&part), bits(&want));
            assert_eq!(off.uploaded_bytes() as usize, off.layer_bytes() * batches.len() + off.layer_bytes() * 2 / 3);
        }
    }
}

#[test]
fn smollm2_offloaded_greedy_and_timing() {
    if !gpu() {
        return;
    }
    let Some(path) = effllm_gguf::model_cache::smollm2_path() else {
        assert!(!effllm_gguf::model_cache::require_model(), "EFFLLM_REQUIRE_MODEL=1 but the model is missing");
        eprintln!("{}", effllm_gguf::model_cache::SKIP_NOTICE);
        return;
    };
    let host = LlamaModel::open_gguf(&path, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap();
    let resident = host.to_device(&GPU).unwrap();
    let off = OffloadedLlama::new(&host, GPU).unwrap();
    let prompt: Vec<u32> = (0..64u32).map(|i| 100 + (i * 37) % 20000).collect();
    let greedy = |m: &dyn CausalLm| -> (Vec<u32>, f64) {
        let mut cache = m.new_cache();
        let mut logits = m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        for i in 0..8 {
            let next = logits.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0];
            out.push(next);
            logits = m.forward(&Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last).unwrap();
        }
        (out, t.elapsed().as_secs_f64() / 8.0)
    };
    let (want, t_res) = greedy(&resident);
    let (got, t_off) = greedy(&off);
    assert_eq!(got, want);
    // One forward over 1 token and over 512 tree-sized batches: the offloaded cost is the weights' trip.
    let wide: Vec<u32> = (0..512u32).map(|i| 100 + (i * 53) % 20000).collect();
    let time = |m: &dyn CausalLm, toks: &[u32]| {
        let mut cache = m.new_cache();
        m.forward(&Batch::causal(toks, 0), &mut cache, &LogitRows::Last).unwrap().to_vec::<f32>().unwrap();
        let t = std::time::Instant::now();
        let mut cache = m.new_cache();
        m.forward(&Batch::causal(toks, 0), &mut cache, &LogitRows::Last).unwrap().to_vec::<f32>().unwrap();
        t.elapsed().as_secs_f64()
    };
    let (w1, w512) = (time(&off, &wide[..1]), time(&off, &wide));
    let (r1, r512) = (time(&resident, &wide[..1]), time(&resident, &wide));
    eprintln!(
        "SmolLM2 f32 on {:?}: {:.1} MB of layers per forward; decode {:.2} ms/token offloaded vs {:.2} resident; \
         forward over 1 token {:.2} ms offloaded ({:.1} GB/s) vs {:.2} resident; over 512 tokens {:.2} ms vs {:.2}",
        GPU,
        off.layer_bytes() as f64 / 1e6,
        t_off * 1e3,
        t_res * 1e3,
        w1 * 1e3,
        off.layer_bytes() as f64 / w1 / 1e9,
        r1 * 1e3,
        w512 * 1e3,
        r512 * 1e3
    );
}
