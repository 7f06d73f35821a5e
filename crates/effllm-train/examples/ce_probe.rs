use effllm_tensor::{DType, Device, Tensor, rng::CounterRng};
use std::time::Instant;
fn main() {
    let (r, v) = (1024, 49152);
    let x =
        Tensor::randn(&[r, v], DType::F32, &Device::Cpu, &CounterRng::new(1, 1), 0, 0.0, 1.0).unwrap().requires_grad();
    let t = Tensor::from_vec((0..r as u32).map(|i| i * 37 % v as u32).collect(), &[r], &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t0 = Instant::now();
        let _l = x.cross_entropy(&t).unwrap();
        let f = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let _l = x.detach().cross_entropy(&t).unwrap();
        let d = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let _l = effllm_tensor::no_grad(|| x.cross_entropy(&t).unwrap());
        let n = t0.elapsed().as_secs_f64();
        println!("ce leaf {f:.3} s, detached {d:.3} s, no_grad {n:.3}");
    }
}
