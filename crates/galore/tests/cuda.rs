//! The CUDA path: GaLore steps with the parameter, gradient, moments and projections on device 0 (the SVD refresh
//! copies the gradient to the host and the basis back) against the same steps on the CPU. Without the `cuda`
//! feature or a usable GPU every test skips with a notice; `EFFLLM_REQUIRE_CUDA=1` turns that into a failure.
//! Run on a GPU machine: `EFFLLM_REQUIRE_CUDA=1 cargo test -p galore --features cuda --release --test cuda`.

use effllm_optim::Optimizer;
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};
use galore::{Adam, Adam8bit, AdamConfig, GaLore, GaLoreParams, InnerOptimizer, ProjType};

fn cuda() -> Option<Device> {
    if effllm_tensor::cuda::cuda_available() {
        return Some(Device::Cuda(0));
    }
    assert!(
        std::env::var("EFFLLM_REQUIRE_CUDA").as_deref() != Ok("1"),
        "EFFLLM_REQUIRE_CUDA=1 but no usable CUDA device"
    );
    eprintln!("skipped: no CUDA (build with --features cuda on a GPU machine)");
    None
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, 1.0).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let d: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    d / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// Runs 7 steps (refreshes at 0, 3, 6) of `inner` on a 256×96 GaLore weight and a plain 256-bias, on `dev`.
fn run<I: InnerOptimizer>(inner: I, ty: ProjType, dev: &Device) -> (Tensor, Tensor, usize) {
    let mut w = randn(&[256, 96], 1).to_device(dev).unwrap().requires_grad();
    let mut b = randn(&[256], 2).to_device(dev).unwrap().requires_grad();
    let mut opt = GaLore::new(inner);
    let params = GaLoreParams { rank: 24, update_proj_gap: 3, scale: 0.25, proj_type: ty, matrix_shape: None };
    opt.add_target(&w, params).unwrap();
    for s in 0..7 {
        opt.step_param(&mut w, &randn(&[256, 96], 10 + s).to_device(dev).unwrap()).unwrap();
        opt.step_param(&mut b, &randn(&[256], 20 + s).to_device(dev).unwrap()).unwrap();
        assert_eq!(w.device(), *dev);
    }
    let cpu = Device::Cpu;
    (w.to_device(&cpu).unwrap(), b.to_device(&cpu).unwrap(), opt.state_bytes())
}

#[test]
fn galore_adam_on_cuda_matches_cpu() {
    let Some(dev) = cuda() else { return };
    let cfg = AdamConfig { lr: 1e-2, weight_decay: 0.01, ..AdamConfig::default() };
    for ty in [ProjType::Std, ProjType::Left, ProjType::Full] {
        let (wc, bc, bytes_c) = run(Adam::new(cfg).unwrap(), ty, &Device::Cpu);
        let (wg, bg, bytes_g) = run(Adam::new(cfg).unwrap(), ty, &dev);
        assert!(rel(&wg, &wc) < 1e-5, "{ty:?}: W rel {}", rel(&wg, &wc));
        assert!(rel(&bg, &bc) < 1e-6, "{ty:?}: b rel {}", rel(&bg, &bc));
        assert_eq!(bytes_c, bytes_g);
    }
}

#[test]
fn galore_adam8bit_on_cuda_matches_cpu() {
    let Some(dev) = cuda() else { return };
    let cfg = AdamConfig { lr: 1e-2, ..AdamConfig::galore_8bit() };
    let (wc, bc, _) = run(Adam8bit::new(cfg).unwrap(), ProjType::Std, &Device::Cpu);
    let (wg, bg, _) = run(Adam8bit::new(cfg).unwrap(), ProjType::Std, &dev);
    assert!(rel(&wg, &wc) < 1e-4, "W rel {}", rel(&wg, &wc));
    assert!(rel(&bg, &bc) < 1e-6, "b rel {}", rel(&bg, &bc));
}
