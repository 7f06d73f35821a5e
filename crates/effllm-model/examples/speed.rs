//! Prefill and greedy-decode speed of SmolLM2 on this machine: `cargo run --release -p effllm-model --example
//! speed -- [prompt_len] [decode_tokens] [f32|bf16|q8|quantized] [device] [f32|f16]` (device `cpu` or `cuda:N`;
//! CUDA needs `--features cuda`; the last argument is the KV cache's storage dtype, f32 by default). With `EFFLLM_SPEED_RANDOM=1` the model is SmolLM2-135M's shape with random dense weights
//! (f32 or bf16) instead of the GGUF file: speed does not depend on the values, and no model file is needed (for
//! machines without network); `quantized` then quantizes the random weights to Q4_1 blocks.
//!
//! On a CUDA device the decode is also timed through [`GraphDecoder`] (the per-token step replayed as a CUDA graph,
//! unfused and fused) in the same run, and its greedy tokens are compared with the ordinary forward's.

use std::time::Instant;

use effllm_model::{
    Batch, CausalLm, Embedding, GraphDecoder, Linear, LlamaConfig, LlamaFfn, LlamaLayer, LlamaModel, LoadOptions,
    LogitRows, WeightFormat,
};
use effllm_tensor::quant::{ActivationQuant, QMatrix, QWeight, QuantType};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, RopeConfig, RopeStyle, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prompt_len: usize = args.first().map_or(Ok(128), |a| a.parse())?;
    let n_decode: usize = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let format = match args.get(2).map(String::as_str) {
        Some("f32") => WeightFormat::F32,
        Some("bf16") => WeightFormat::BF16,
        _ => WeightFormat::Quantized,
    };
    let device = effllm_model::Device::parse(args.get(3).map_or("cpu", String::as_str))?;
    let activations = if args.get(2).is_some_and(|a| a == "q8") { ActivationQuant::Q8 } else { ActivationQuant::F32 };
    let model = if std::env::var("EFFLLM_SPEED_RANDOM").is_ok_and(|v| v == "1") {
        random_smollm2(format, &device)?
    } else {
        let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
        LlamaModel::open_gguf(&path, &LoadOptions { format, activations, device })?
    };
    let kv = match args.get(4).map(String::as_str) {
        Some("f16") => DType::F16,
        _ => DType::F32,
    };
    let model = model.with_kv_cache_dtype(kv)?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + (i * 37) % 20000).collect();
    // Warm-up (kernel compilation on a GPU, thread pools, first allocations): a short prefill and two decode steps.
    {
        let mut cache = model.new_cache();
        let warm = &prompt[..prompt_len.clamp(1, 8)];
        let logits = model.forward(&Batch::causal(warm, 0), &mut cache, &LogitRows::Last)?;
        let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
        for i in 0..2 {
            model.forward(&Batch::causal(&[next], warm.len() + i), &mut cache, &LogitRows::Last)?;
        }
    }
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let mut logits = model.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut generated = Vec::with_capacity(n_decode);
    for i in 0..n_decode {
        let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
        generated.push(next);
        logits = model.forward(&Batch::causal(&[next], prompt_len + i), &mut cache, &LogitRows::Last)?;
    }
    let decode = t1.elapsed().as_secs_f64();
    println!(
        "{device:?} {format:?} {activations:?}, {kv} KV cache: prefill {prompt_len} tokens in {prefill:.3} s ({:.1} tok/s); decode {n_decode} tokens in {decode:.3} s ({:.1} tok/s)",
        prompt_len as f64 / prefill,
        n_decode as f64 / decode
    );
    println!("greedy ids: {:?}", &generated[..generated.len().min(16)]);
    if device.is_cpu() {
        return Ok(());
    }
    // The same decode with the step replayed as a CUDA graph, first with the model's own ops (unfused), then with the
    // fused step where the model allows it; a warm-up sequence records each graph first.
    let eager_rate = n_decode as f64 / decode;
    for fused in [false, true] {
        let mut decoder = GraphDecoder::new(&model, prompt_len + n_decode + 1)?;
        if fused && !decoder.fused_supported() {
            println!("graph decode (fused step): not supported for this model");
            continue;
        }
        decoder.set_fused(fused)?;
        decoder.generate_greedy(&prompt[..prompt_len.clamp(1, 8)], 4)?;
        let logits = decoder.prefill(&prompt)?;
        let mut next = logits.iter().enumerate().fold(0, |b, (i, &x)| if x > logits[b] { i } else { b }) as u32;
        let t2 = Instant::now();
        let mut graph_ids = Vec::with_capacity(n_decode);
        for i in 0..n_decode {
            graph_ids.push(next);
            if i + 1 < n_decode {
                decoder.decode_on_device(next)?;
                next = decoder.logits().argmax(1, false)?.to_vec::<u32>()?[0];
            }
        }
        let graph = t2.elapsed().as_secs_f64();
        // The ordinary loop above ran one forward more (the logits after the last token); compare per decoded token.
        let graph_rate = (n_decode - 1).max(1) as f64 / graph;
        let agree = generated.iter().zip(&graph_ids).take_while(|(a, b)| a == b).count();
        let step = if fused { "fused step" } else { "unfused step" };
        println!(
            "graph decode ({step}): {graph_rate:.1} tok/s vs {eager_rate:.1} tok/s launch by launch ({:.2}x); greedy tokens equal for {agree}/{n_decode}",
            graph_rate / eager_rate
        );
        if fused {
            // The fused step's greedy loop on the device (no host round trip per token, replays queued back to
            // back), through the graph and then with the step as one persistent (cooperative) kernel.
            for (persistent, label) in [(false, "graph decode"), (true, "persistent kernel decode")] {
                decoder.set_persistent(persistent)?;
                if persistent {
                    decoder.generate_greedy(&prompt[..prompt_len.clamp(1, 8)], 4)?;
                }
                decoder.prefill(&prompt)?;
                let t = Instant::now();
                let rest = decoder.greedy_continue(graph_ids[0], n_decode - 1)?;
                let rate = (n_decode - 1).max(1) as f64 / t.elapsed().as_secs_f64();
                let same = rest.iter().zip(&generated[1..]).take_while(|(a, b)| a == b).count();
                println!(
                    "{label} (fused step, greedy loop on the device): {rate:.1} tok/s ({:.2}x launch by launch); greedy tokens equal for {}/{n_decode}",
                    rate / eager_rate,
                    same + 1
                );
            }
        }
    }
    Ok(())
}

/// SmolLM2-135M's shape (30 layers, d = 576, 9 query / 3 KV heads, d_ff = 1536, tied 49152-token embedding) with
/// N(0, 0.02²) weights on `device`: f32, bf16, or (`Quantized`) Q4_1 blocks for the layers' linear maps with an f32
/// embedding and LM head.
fn random_smollm2(format: WeightFormat, device: &Device) -> Result<LlamaModel, Box<dyn std::error::Error>> {
    let dtype = if format == WeightFormat::BF16 { DType::BF16 } else { DType::F32 };
    let cfg = LlamaConfig {
        n_layer: 30,
        d_model: 576,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        d_ff: 1536,
        vocab: 49152,
        context: 8192,
        rms_eps: 1e-5,
        rope: RopeConfig { style: RopeStyle::NeoX, base: 100_000.0, rotary_dims: 64 },
        tied_embeddings: true,
    };
    let mut stream = 0u64;
    let mut normal = |shape: &[usize]| -> Result<Tensor, Box<dyn std::error::Error>> {
        stream += 1;
        let t = Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(7, stream), 0, 0.0, 0.02)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    };
    let ones = |n: usize| Tensor::from_vec(vec![1f32; n], &[n], &Device::Cpu)?.to_device(device);
    let (d, hd) = (cfg.d_model, cfg.head_dim);
    let embedding = normal(&[cfg.vocab, d])?;
    let mut linear = |rows: usize, cols: usize| -> Result<Linear, Box<dyn std::error::Error>> {
        let w = normal(&[rows, cols])?;
        if format != WeightFormat::Quantized {
            return Ok(Linear::Dense(w));
        }
        let data = w.to_dtype(DType::F32)?.to_vec::<f32>()?;
        Ok(Linear::Quant(QWeight::new(QMatrix::quantize(QuantType::Q4_1, rows, cols, &data)?).to_device(device)?))
    };
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for _ in 0..cfg.n_layer {
        layers.push(LlamaLayer {
            attn_norm: ones(d)?,
            wq: linear(cfg.n_head * hd, d)?,
            wk: linear(cfg.n_head_kv * hd, d)?,
            wv: linear(cfg.n_head_kv * hd, d)?,
            wo: linear(d, cfg.n_head * hd)?,
            ffn_norm: ones(d)?,
            ffn: LlamaFfn { gate: linear(cfg.d_ff, d)?, up: linear(cfg.d_ff, d)?, down: linear(d, cfg.d_ff)? },
        });
    }
    let lm_head = Linear::Dense(embedding.clone());
    Ok(LlamaModel::from_parts(cfg, Embedding::Dense(embedding), layers, ones(d)?, lm_head)?)
}
