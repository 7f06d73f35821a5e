//! Prefill and greedy-decode speed of SmolLM2 on this machine: `cargo run --release -p effllm-model --example
//! speed -- [prompt_len] [decode_tokens] [f32|bf16|q8|quantized] [device]` (device `cpu` or `cuda:N`; CUDA needs
//! `--features cuda`).

use std::time::Instant;

use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows, WeightFormat};
use effllm_tensor::quant::ActivationQuant;

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
    let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
    let model = LlamaModel::open_gguf(&path, &LoadOptions { format, activations, device })?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + (i * 37) % 20000).collect();
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
        "{device:?} {format:?} {activations:?}: prefill {prompt_len} tokens in {prefill:.3} s ({:.1} tok/s); decode {n_decode} tokens in {decode:.3} s ({:.1} tok/s)",
        prompt_len as f64 / prefill,
        n_decode as f64 / decode
    );
    println!("greedy ids: {:?}", &generated[..generated.len().min(16)]);
    Ok(())
}
