//! Quantized GEMV throughput on this CPU: `cargo run --release -p effllm-tensor --example qgemv_speed -- [threads]`.
//! Prints GB/s of weight bytes streamed for SmolLM2's shapes, with f32 and Q8 activations, when the weights fit
//! in cache (one matrix reused) and when they stream from memory (30 copies, one per layer, visited in turn).
//! A second argument keeps only the cases whose label contains it (e.g. `"Q4_1 1536x576 Q8 cached"`).

use std::time::Instant;

use effllm_tensor::quant::{ActivationQuant, KernelPath, QMatrix, QuantType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map_or(Ok(1), |a| a.parse())?;
    let only = std::env::args().nth(2).unwrap_or_default();
    effllm_tensor::threads::set_num_threads(threads)?;
    let shapes = [
        (QuantType::Q4_1, 576, 576),
        (QuantType::Q4_1, 1536, 576),
        (QuantType::Q4_1, 576, 1536),
        (QuantType::Q4_1, 49152, 576),
        (QuantType::Q8_0, 49152, 576),
    ];
    for (ty, n, k) in shapes {
        let data: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let copies = if n * k > 10_000_000 { 1 } else { 30 };
        let mats: Vec<QMatrix> = (0..copies).map(|_| QMatrix::quantize(ty, n, k, &data)).collect::<Result<_, _>>()?;
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0f32; n];
        for act in [ActivationQuant::F32, ActivationQuant::Q8] {
            for (label, set) in [("cached", &mats[..1]), ("streamed", &mats[..])] {
                if !format!("{ty:?} {n}x{k} {act:?} {label}").contains(&only) {
                    continue;
                }
                let reps = (200_000_000 / mats[0].nbytes()).max(3);
                let t = Instant::now();
                for r in 0..reps {
                    set[r % set.len()].gemv_with(&x, &mut y, KernelPath::Auto, act)?;
                }
                let s = t.elapsed().as_secs_f64();
                println!(
                    "{ty:?} {n}x{k} {act:?} {label:8}: {:7.1} us/gemv  {:6.2} GB/s",
                    s / reps as f64 * 1e6,
                    (reps * mats[0].nbytes()) as f64 / s / 1e9
                );
            }
        }
    }
    Ok(())
}
