//! The fused CUDA AdamW step (one kernel per parameter) against the CPU's fused step: same f32 formula, so the
//! parameters and moments agree to f32 rounding (`sqrtf` and division may differ by an ulp) over many steps, with
//! and without weight decay; AMSGrad takes the composed path on the device and is checked the same way. Without
//! the `cuda` feature or a usable GPU the tests skip with a notice; `EFFLLM_REQUIRE_CUDA=1` turns that into a
//! failure. Run on a GPU machine: `EFFLLM_REQUIRE_CUDA=1 cargo test -p effllm-optim --features cuda --test cuda`.

use effllm_optim::{AdamW, AdamWConfig, Optimizer};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};

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

fn randn(shape: &[usize], seed: u64, std: f64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, std).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let d: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    d / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// 20 AdamW steps on a 300×77 parameter with gradients of shrinking scale, on `dev`, each gradient scaled by
/// `grad_scale` (clipping's factor: inside the fused kernel on CUDA).
fn run(cfg: AdamWConfig, dev: &Device, grad_scale: f64) -> (Tensor, Tensor, Tensor) {
    let mut opt = AdamW::new(cfg).unwrap();
    let mut p = randn(&[300, 77], 1, 1.0).to_device(dev).unwrap().requires_grad();
    for s in 0..20u64 {
        let g = randn(&[300, 77], 100 + s, 1.0 / (1.0 + s as f64)).to_device(dev).unwrap();
        opt.step_param_scaled(&mut p, &g, grad_scale).unwrap();
    }
    let st = opt.export_state(p.id().unwrap()).unwrap();
    (p.detach(), st.tensors["exp_avg"].clone(), st.tensors["exp_avg_sq"].clone())
}

#[test]
fn fused_cuda_adamw_matches_the_cpu() {
    let Some(dev) = cuda() else { return };
    for (wd, amsgrad, scale) in [(0.0, false, 1.0), (0.1, false, 1.0), (0.1, true, 1.0), (0.1, false, 0.37)] {
        let cfg = AdamWConfig { lr: 3e-3, weight_decay: wd, amsgrad, ..AdamWConfig::default() };
        let (pc, mc, vc) = run(cfg, &Device::Cpu, scale);
        let (pg, mg, vg) = run(cfg, &dev, scale);
        assert_eq!(pg.device(), dev, "the parameter stays on the device");
        for (what, a, b) in [("param", &pg, &pc), ("exp_avg", &mg, &mc), ("exp_avg_sq", &vg, &vc)] {
            let e = rel(a, b);
            assert!(e < 1e-6, "wd {wd} amsgrad {amsgrad} scale {scale}: {what} rel L2 {e:e}");
        }
    }
}
