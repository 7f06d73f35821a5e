use effllm_tensor::{DType, Device, Tensor, rng::CounterRng};
use std::time::Instant;
fn main() {
    let (r, v) = (1024, 49152);
    let x =
        Tensor::randn(&[r, v], DType::F32, &Device::Cpu, &CounterRng::new(1, 1), 0, 0.0, 1.0).unwrap().requires_grad();
    let t = Tensor::from_vec((0..r as u32).map(|i| i * 37 % v as u32).collect(), &[r], &Device::Cpu).unwrap();
    for _ in 0..2 {
        let t0 = Instant::now();
        let l = x.cross_entropy(&t).unwrap();
        let f = t0.elapsed().as_secs_f64();
        let g = l.backward().unwrap();
        let b = t0.elapsed().as_secs_f64() - f;
        let t1 = Instant::now();
        let _s = x.detach().softmax(1).unwrap();
        let sm = t1.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _s = x.detach().logsumexp(1, false).unwrap();
        let lse = t1.elapsed().as_secs_f64();
        println!("ce fwd {f:.3} s, bwd {b:.3} s, softmax {sm:.3}, logsumexp {lse:.3} {}", g.len());
    }
}
