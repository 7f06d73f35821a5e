//! Prefill and greedy-decode speed of SmolLM2 on this machine: `cargo run --release -p effllm-model --example
//! speed -- [prompt_len] [decode_tokens] [f32|q8]`.

use std::time::Instant;

use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows, WeightFormat};
use effllm_tensor::quant::ActivationQuant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prompt_len: usize = args.first().map_or(Ok(128), |a| a.parse())?;
    let n_decode: usize = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let format = if args.get(2).is_some_and(|a| a == "f32") { WeightFormat::F32 } else { WeightFormat::Quantized };
    let activations = if args.get(2).is_some_and(|a| a == "q8") { ActivationQuant::Q8 } else { ActivationQuant::F32 };
    let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
    let model = LlamaModel::open_gguf(&path, &LoadOptions { format, activations, ..Default::default() })?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + (i * 37) % 20000).collect();
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let mut logits = model.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..n_decode {
        let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
        logits = model.forward(&Batch::causal(&[next], prompt_len + i), &mut cache, &LogitRows::Last)?;
    }
    let decode = t1.elapsed().as_secs_f64();
    println!(
        "{format:?} {activations:?}: prefill {prompt_len} tokens in {prefill:.3} s ({:.1} tok/s); decode {n_decode} tokens in {decode:.3} s ({:.1} tok/s)",
        prompt_len as f64 / prefill,
        n_decode as f64 / decode
    );
    Ok(())
}
