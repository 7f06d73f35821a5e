//! Decode cost against context length, and one training step, for the spec's CPU-sized model (4 layers, D = 128,
//! C = 128, vocab 256, f32): after a prefill of `n` tokens, the mean wall time of a `step` is flat in `n` (the
//! state is a fixed size: TSN statistics, CEMA state and at most one chunk of keys), unlike a full-attention cache.
//!
//! `cargo run -p megalodon --release --example decode_cost [-- CONTEXT...]` (default 128 1024 4096 16384).

use std::time::Instant;

use effllm_tensor::{DType, Device, Tensor, no_grad};
use megalodon::{Megalodon, MegalodonConfig};

fn main() -> megalodon::Result<()> {
    let contexts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let contexts = if contexts.is_empty() { vec![128, 1024, 4096, 16384] } else { contexts };
    let cfg = MegalodonConfig::tiny(256);
    let params = cfg.param_count();
    let model = Megalodon::new(cfg, DType::F32, &Device::Cpu, 1)?;
    println!("Megalodon tiny: {params} parameters, {} threads", effllm_tensor::threads::num_threads());
    println!("| context | prefill tokens/s | step ms (mean of 64) | state floats |");
    println!("|---:|---:|---:|---:|");
    for &n in &contexts {
        let tokens: Vec<u32> = (0..n).map(|i| ((i * 2_654_435_761usize) >> 7) as u32 % 256).collect();
        let mut state = model.init_state(1)?;
        let t0 = Instant::now();
        no_grad(|| -> megalodon::Result<()> {
            for piece in tokens.chunks(1024) {
                model.forward(&Tensor::from_vec(piece.to_vec(), &[1, piece.len()], &Device::Cpu)?, &mut state)?;
            }
            Ok(())
        })?;
        let prefill = n as f64 / t0.elapsed().as_secs_f64();
        let steps = 64;
        let t0 = Instant::now();
        for i in 0..steps {
            model.step(&Tensor::from_vec(vec![(i * 7 % 256) as u32], &[1], &Device::Cpu)?, &mut state)?;
        }
        let step_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let floats: usize = state
            .layers
            .iter()
            .map(|l| {
                l.tsn.mean().elem_count() * 2
                    + l.cema.h_re().elem_count() * 2
                    + l.kv.keys_values().map_or(0, |(k, v)| k.elem_count() + v.elem_count())
            })
            .sum();
        println!("| {n} | {prefill:.0} | {step_ms:.2} | {floats} |");
    }
    // One training step's forward + backward at batch 2 × 1024 (8 chunks).
    let trainable = model.requires_grad()?;
    let (b, l) = (2, 1024);
    let ids: Vec<u32> = (0..b * l).map(|i| (i * 31 % 256) as u32).collect();
    let targets: Vec<u32> = ids.iter().map(|t| (t + 1) % 256).collect();
    let t0 = Instant::now();
    let mut state = trainable.init_state(b)?;
    let logits = trainable.forward(&Tensor::from_vec(ids, &[b, l], &Device::Cpu)?, &mut state)?;
    let loss = logits.reshape(&[b * l, 256])?.cross_entropy(&Tensor::from_vec(targets, &[b * l], &Device::Cpu)?)?;
    let fwd = t0.elapsed().as_secs_f64();
    loss.backward()?;
    let total = t0.elapsed().as_secs_f64();
    println!(
        "training step, batch {b} x {l}: forward {:.0} ms, forward + backward {:.0} ms ({:.0} tokens/s)",
        fwd * 1e3,
        total * 1e3,
        (b * l) as f64 / total
    );
    Ok(())
}
