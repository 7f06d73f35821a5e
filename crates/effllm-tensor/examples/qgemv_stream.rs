//! One fused GEMV streamed from DRAM, for profiling: `cargo run --release -p effllm-tensor --example qgemv_stream --
//! [Q4_1|Q8_0] [seconds] [threads] [f32|q8]` (the last: the activations' format). Rotates over copies of SmolLM2's
//! 49152×576 LM head covering 1 GiB (twice the L3 of the Xeon slice it was written on), as `bench-all`'s streamed
//! GEMV does, and prints GB/s.

use std::time::Instant;

use effllm_tensor::quant::{ActivationQuant, KernelPath, QMatrix, QuantType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ty = match std::env::args().nth(1).as_deref() {
        Some("Q8_0") => QuantType::Q8_0,
        Some("Q4_0") => QuantType::Q4_0,
        _ => QuantType::Q4_1,
    };
    let secs: f64 = std::env::args().nth(2).map_or(Ok(5.0), |a| a.parse())?;
    let threads: usize = std::env::args().nth(3).map_or(Ok(2), |a| a.parse())?;
    let act = match std::env::args().nth(4).as_deref() {
        Some("q8") => ActivationQuant::Q8,
        _ => ActivationQuant::F32,
    };
    effllm_tensor::threads::set_num_threads(threads)?;
    let (n, k) = (49152, 576);
    let data: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let q = QMatrix::quantize(ty, n, k, &data)?;
    let copies = (1usize << 30).div_ceil(q.nbytes());
    let mats: Vec<QMatrix> =
        (0..copies).map(|_| QMatrix::from_bytes(ty, n, k, q.as_bytes().to_vec())).collect::<Result<_, _>>()?;
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; n];
    for m in &mats {
        m.gemv_with(&x, &mut y, KernelPath::Auto, act)?;
    }
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < secs {
        mats[reps % copies].gemv_with(&x, &mut y, KernelPath::Auto, act)?;
        reps += 1;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{ty:?} {n}x{k}, {act:?} activations, streamed ({copies} copies): {:7.1} us/gemv  {:6.2} GB/s",
        s / reps as f64 * 1e6,
        (reps * q.nbytes()) as f64 / s / 1e9
    );
    Ok(())
}
