//! Where a training step's time goes: forward (to the loss), backward, optimizer, for a preset's shapes on
//! synthetic tokens. `cargo run --release -p effllm-train --example train_speed -- [preset] [steps]`.

use std::time::Instant;

use effllm_data::TokenizedSplit;
use effllm_train::{TrainConfig, TrainData, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map_or("cpu-small", String::as_str);
    let steps: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let mut cfg = TrainConfig::preset(preset)?;
    if let Ok(d) = std::env::var("EFFLLM_DEVICE") {
        cfg.run.device = d;
    }
    if let Ok(p) = std::env::var("EFFLLM_PRECISION") {
        cfg.run.precision = if p == "bf16" { effllm_train::Precision::Bf16 } else { effllm_train::Precision::F32 };
    }
    let vocab = 49152;
    let n = (steps + 2) * cfg.tokens_per_step() + 10 * (cfg.data.seq_len + 1);
    let doc: Vec<u32> = (0..n as u64).map(|i| ((i * 2654435761) % vocab as u64) as u32).collect();
    let train = TokenizedSplit::from_parts(vec!["t".into()], vec![doc.clone()]);
    let val = TokenizedSplit::from_parts(vec!["v".into()], vec![doc[..8 * (cfg.data.seq_len + 1)].to_vec()]);
    let mut data = TrainData::from_documents(&train, &val, vocab, None, cfg.data.seq_len, "speed")?;
    let mut t = Trainer::new(cfg.clone(), vocab)?;
    // Exact phase times on a GPU (waits for the device after each phase); off for throughput.
    t.set_synchronized_timing(std::env::var("EFFLLM_SYNC_TIMING").is_ok_and(|v| v == "1"));
    t.train_step(&mut data)?; // warm-up
    let profile = std::env::var("EFFLLM_PROFILE_BACKWARD").is_ok_and(|v| v == "1");
    effllm_tensor::autograd::profile::set_enabled(profile);
    let device = effllm_tensor::Device::parse(&cfg.run.device)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        let r = t.train_step(&mut data)?;
        // Each step ends when the device has finished it (the next step would otherwise overlap its tail).
        if let effllm_tensor::Device::Cuda(n) = device {
            effllm_tensor::cuda::device(n)?.synchronize()?;
        }
        let s = t0.elapsed().as_secs_f64();
        times.push(s);
        let p = t.last_step_timing();
        println!(
            "{preset} on {}: step {:.3} s = forward {:.3} + backward {:.3} + update {:.3} ({:.0} tok/s, loss {:.3})",
            cfg.run.device,
            s,
            p.forward_s,
            p.backward_s,
            p.update_s,
            cfg.tokens_per_step() as f64 / s,
            r.loss
        );
    }
    times.sort_by(f64::total_cmp);
    if let Some(&median) = times.get(times.len() / 2) {
        println!(
            "{{\"preset\": \"{preset}\", \"device\": \"{}\", \"precision\": \"{:?}\", \"steps\": {steps}, \"median_step_s\": {median:.5}, \"median_tokens_per_s\": {:.0}}}",
            cfg.run.device,
            cfg.run.precision,
            cfg.tokens_per_step() as f64 / median
        );
    }
    if profile {
        effllm_tensor::autograd::profile::set_enabled(false);
        println!("backward rules over {steps} steps (device synchronised around each):");
        for r in effllm_tensor::autograd::profile::take().iter().take(20) {
            println!("  {:<16} {:>6} calls {:>9.1} ms", r.op, r.calls, 1e3 * r.seconds);
        }
        println!("forward of recorded ops over {steps} steps (device synchronised around each):");
        for r in effllm_tensor::autograd::profile::take_forward().iter().take(20) {
            println!("  {:<16} {:>6} calls {:>9.1} ms", r.op, r.calls, 1e3 * r.seconds);
        }
    }
    Ok(())
}
