//! Offloaded vs resident SmolLM2 on a GPU: `cargo run --release -p effllm-model --features cuda --example offload --
//! [f32|bf16|quantized] [cuda:N]`. Prints the time of one forward over K new tokens (K = 1 … 1024, the tree sizes
//! of SpecExec) with the layers streamed from pinned host memory and with the model resident, and greedy decode
//! tokens/s of both.

use std::time::Instant;

use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows, OffloadedLlama, WeightFormat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = match args.first().map(String::as_str) {
        Some("bf16") => WeightFormat::BF16,
        Some("quantized") => WeightFormat::Quantized,
        _ => WeightFormat::F32,
    };
    let device = effllm_model::Device::parse(args.get(1).map_or("cuda:0", String::as_str))?;
    let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
    let host = LlamaModel::open_gguf(&path, &LoadOptions { format, ..Default::default() })?;
    let resident = host.to_device(&device)?;
    let offloaded = OffloadedLlama::new(&host, device)?;
    println!(
        "{format:?} on {device}: {:.1} MB of decoder layers streamed per forward",
        offloaded.layer_bytes() as f64 / 1e6
    );
    let prompt: Vec<u32> = (0..128u32).map(|i| 100 + (i * 37) % 20000).collect();
    let forward_ms = |m: &dyn CausalLm, k: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let mut cache = m.new_cache();
            m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?.to_vec::<f32>()?;
            let toks: Vec<u32> = (0..k as u32).map(|i| 200 + (i * 53) % 20000).collect();
            let t = Instant::now();
            m.forward(&Batch::causal(&toks, prompt.len()), &mut cache, &LogitRows::Last)?.to_vec::<f32>()?;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(best)
    };
    println!("{:>6} {:>14} {:>14} {:>10}", "K", "offloaded ms", "resident ms", "off/res");
    for k in [1usize, 16, 64, 256, 1024] {
        let (o, r) = (forward_ms(&offloaded, k)?, forward_ms(&resident, k)?);
        println!("{k:>6} {o:>14.2} {r:>14.2} {:>10.2}", o / r);
    }
    let decode = |m: &dyn CausalLm| -> Result<f64, Box<dyn std::error::Error>> {
        let mut cache = m.new_cache();
        let mut logits = m.forward(&Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last)?;
        let n = 32;
        let t = Instant::now();
        for i in 0..n {
            let next = logits.argmax(1, false)?.to_vec::<u32>()?[0];
            logits = m.forward(&Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last)?;
        }
        logits.to_vec::<f32>()?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let (o, r) = (decode(&offloaded)?, decode(&resident)?);
    println!(
        "greedy decode at context 128: offloaded {o:.1} tok/s ({:.1} GB/s of weights), resident {r:.1} tok/s",
        o * offloaded.layer_bytes() as f64 / 1e9
    );
    Ok(())
}
