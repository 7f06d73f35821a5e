//! Decode tokens/s of SmolLM2 (Q4_1 blocks uploaded as blocks) on a CUDA device, dense vs GRIFFIN at density 0.5,
//! launch by launch and through CUDA graphs (effllm-model's `GraphDecoder`, GRIFFIN's model from
//! `GriffinLlama::pruned_llama`), and the agreement of the GPU's pruned logits with the CPU's.
//!
//! `cargo run -p griffin --features cuda --release --example gpu_decode [-- DEVICE]` (default `Cuda(0)`). Needs
//! the model (`cargo xtask fetch-model`).

use std::time::Instant;

use effllm_model::{Batch, CausalLm, GraphDecoder, LlamaModel, LoadOptions, LogitRows};
use effllm_tensor::Device;
use griffin::{GriffinConfig, GriffinLlama};

const PROMPT_LEN: usize = 512;
const STEPS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ordinal: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let path = effllm_gguf::model_cache::smollm2_path().ok_or("model missing: run `cargo xtask fetch-model`")?;
    let cpu = LlamaModel::open_gguf(&path, &LoadOptions::default())?;
    let dev = Device::Cuda(ordinal);
    let gpu = cpu.to_device(&dev)?;
    let prompt: Vec<u32> = (0..PROMPT_LEN as u32).map(|i| 100 + (i * 37) % 20000).collect();
    println!("SmolLM2-135M Q4_1 on {dev:?}: prompt {PROMPT_LEN}, {STEPS} greedy tokens");

    // Agreement: the first 8 pruned steps on GPU vs CPU.
    let logits_of = |m: &LlamaModel| -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
        let g = GriffinLlama::new(m, GriffinConfig::with_density(0.5))?;
        let (mut s, mut c) = (g.new_sequence(), m.new_cache());
        let mut l = g.prefill(&mut s, &effllm_model::Batch::causal(&prompt, 0), &mut c, &LogitRows::Last)?;
        g.finalize(&mut s)?;
        let mut out = Vec::new();
        for i in 0..8 {
            let host = l.to_device(&Device::Cpu)?;
            out.push(host.to_vec::<f32>()?);
            let next = host.argmax(1, false)?.to_vec::<u32>()?[0];
            l = g.decode(&mut s, &Batch::causal(&[next], PROMPT_LEN + i), &mut c, &LogitRows::Last)?;
        }
        Ok(out)
    };
    let (a, b) = (logits_of(&cpu)?, logits_of(&gpu)?);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let num: f64 = x.iter().zip(y).map(|(p, q)| f64::from(p - q).powi(2)).sum::<f64>().sqrt();
        let den: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        println!("step {i}: pruned logits GPU vs CPU rel L2 {:.2e}", num / den);
    }

    for density in [None, Some(0.5)] {
        let g = GriffinLlama::new(&gpu, GriffinConfig::with_density(density.unwrap_or(1.0)))?;
        let (mut s, mut c) = (g.new_sequence(), gpu.new_cache());
        let mut l = g.prefill(&mut s, &Batch::causal(&prompt, 0), &mut c, &LogitRows::Last)?;
        g.finalize(&mut s)?;
        let mut best = f64::INFINITY;
        for rep in 0..3 {
            c.truncate(PROMPT_LEN);
            let (mut s2, c2) = (s.clone(), &mut c);
            let t = Instant::now();
            for i in 0..STEPS {
                let next = l.argmax(1, false)?.to_device(&Device::Cpu)?.to_vec::<u32>()?[0];
                let b = Batch::causal(&[next], PROMPT_LEN + i);
                l = match density {
                    None => gpu.forward(&b, c2, &LogitRows::Last)?,
                    Some(_) => g.decode(&mut s2, &b, c2, &LogitRows::Last)?,
                };
            }
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.min(dt);
            }
        }
        let label = density.map_or("dense".to_string(), |d| format!("GRIFFIN {d}"));
        println!("{label}: {:.1} tokens/s", STEPS as f64 / best);
    }

    // The same decode with each step replayed as a CUDA graph: the dense model, and GRIFFIN's pruned model loaded
    // with the dense prefill's cache.
    let g = GriffinLlama::new(&gpu, GriffinConfig::with_density(0.5))?;
    let (mut s, mut c) = (g.new_sequence(), gpu.new_cache());
    let l = g.prefill(&mut s, &Batch::causal(&prompt, 0), &mut c, &LogitRows::Last)?;
    g.finalize(&mut s)?;
    let first = l.argmax(1, false)?.to_vec::<u32>()?[0];
    let pruned = g.pruned_llama(&s)?;
    for (label, model) in [("dense, CUDA graph", &gpu), ("GRIFFIN 0.5, CUDA graph", &pruned)] {
        let mut d = GraphDecoder::new(model, PROMPT_LEN + STEPS + 1)?;
        let mut best = f64::INFINITY;
        for rep in 0..3 {
            d.load_cache(&c)?;
            let mut next = first;
            let t = Instant::now();
            for _ in 0..STEPS {
                d.decode_on_device(next)?;
                next = d.logits().argmax(1, false)?.to_vec::<u32>()?[0];
            }
            let dt = t.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.min(dt);
            }
        }
        println!("{label}: {:.1} tokens/s", STEPS as f64 / best);
    }
    Ok(())
}
