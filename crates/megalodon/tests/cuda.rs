//! The CUDA path against the CPU: the convolution kernel (forward and the backward correlations), the fused CEMA
//! power/decayed sums (forward and backward), the CEMA scan kernel, the timestep-norm kernels (forward and backward),
//! and the whole model (forward, step, gradients) on device 0. Without the `cuda` feature or a usable GPU every test skips with a notice;
//! `EFFLLM_REQUIRE_CUDA=1` turns that into a failure.
//! Run on a GPU machine: `EFFLLM_REQUIRE_CUDA=1 cargo test -p megalodon --features cuda --release --test cuda`.

mod common;

use common::*;
use effllm_tensor::{DType, Device, Tensor, no_grad};
use megalodon::{Megalodon, MegalodonConfig, TimestepNorm, TsnState, causal_conv};

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

fn f32t(v: &[f64], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape, &Device::Cpu)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu).unwrap().to_vec_f64().unwrap()
}

#[test]
fn conv_kernel_and_its_backward_match_cpu() {
    let Some(dev) = cuda() else { return };
    let (b, d, l) = (2, 5, 700);
    let x = randn(b * d * l, 1, 1, 0.0, 1.0);
    let k = randn(d * l, 1, 2, 0.0, 0.2);
    let w = randn(b * d * l, 1, 3, 0.0, 1.0);
    let run = |dev: &Device| {
        let (xt, kt) = (f32t(&x, &[b, d, l], dev).requires_grad(), f32t(&k, &[d, l], dev).requires_grad());
        let y = causal_conv(&xt, &kt).unwrap();
        let g = y.mul(&f32t(&w, &[b, d, l], dev)).unwrap().sum_all().unwrap().backward().unwrap();
        (host(&y), host(g.get(&xt).unwrap()), host(g.get(&kt).unwrap()))
    };
    let (yc, gxc, gkc) = run(&Device::Cpu);
    let (yg, gxg, gkg) = run(&dev);
    assert!(rel(&yg, &yc) < 1e-5, "y rel {:e}", rel(&yg, &yc));
    assert!(rel(&gxg, &gxc) < 1e-5, "dx rel {:e}", rel(&gxg, &gxc));
    assert!(rel(&gkg, &gkc) < 1e-5, "dk rel {:e}", rel(&gkg, &gkc));
}

#[test]
fn cema_scan_kernel_and_fft_path_match_cpu() {
    let Some(dev) = cuda() else { return };
    let (d, n, b, l) = (8, 16, 3, 257);
    let p = cema_params(d, n, 2);
    let cpu = cema_from(&p).map_parameters(|t| Ok(t.to_dtype(DType::F32)?)).unwrap();
    let gpu = cpu.map_parameters(|t| Ok(t.to_device(&dev)?)).unwrap();
    let x = randn(b * l * d, 2, 1, 0.0, 1.0);
    let (_, st) = random_state(b, d, n, 2);
    let state_on = |dev: &Device| {
        megalodon::CemaState::new(
            st.h_re().to_dtype(DType::F32).unwrap().to_device(dev).unwrap(),
            st.h_im().to_dtype(DType::F32).unwrap().to_device(dev).unwrap(),
        )
        .unwrap()
    };
    for scan in [true, false] {
        let (mut sc, mut sg) = (state_on(&Device::Cpu), state_on(&dev));
        let (yc, yg) = no_grad(|| {
            let xc = f32t(&x, &[b, l, d], &Device::Cpu);
            let xg = f32t(&x, &[b, l, d], &dev);
            if scan {
                (cpu.forward_scan(&xc, &mut sc).unwrap(), gpu.forward_scan(&xg, &mut sg).unwrap())
            } else {
                (cpu.forward(&xc, &mut sc).unwrap(), gpu.forward(&xg, &mut sg).unwrap())
            }
        });
        assert!(rel(&host(&yg), &host(&yc)) < 1e-4, "scan {scan}: y rel {:e}", rel(&host(&yg), &host(&yc)));
        assert!(rel(&host(sg.h_re()), &host(sc.h_re())) < 1e-4, "scan {scan}: h_re");
        assert!(rel(&host(sg.h_im()), &host(sc.h_im())) < 1e-4, "scan {scan}: h_im");
    }
}

#[test]
fn timestep_norm_kernel_matches_cpu() {
    let Some(dev) = cuda() else { return };
    let (b, l, d, g) = (3, 50, 24, 4);
    let x = randn(b * l * d, 3, 1, 1.0, 2.0);
    let w = randn(d, 3, 2, 0.0, 0.3);
    let bias = randn(d, 3, 3, 0.0, 0.3);
    let mean = randn(b * g, 3, 4, 0.0, 1.0);
    let var: Vec<f64> = randn(b * g, 3, 5, 0.0, 1.0).iter().map(|u| 0.5 + u.abs()).collect();
    let mask: Vec<bool> = (0..b * l).map(|i| i % 7 == 3).collect();
    let wout = randn(b * l * d, 3, 6, 0.0, 1.0);
    let run = |dev: &Device, masked: bool| {
        let (wt, bt) = (f32t(&w, &[d], dev).requires_grad(), f32t(&bias, &[d], dev).requires_grad());
        let tsn = TimestepNorm::from_tensors(g, 1e-5, wt.clone(), bt).unwrap();
        let xt = f32t(&x, &[b, l, d], dev).requires_grad();
        let mut st = TsnState::new(vec![5; b], f32t(&mean, &[b, g], dev), f32t(&var, &[b, g], dev)).unwrap();
        let y = tsn.forward_masked(&xt, if masked { Some(&mask) } else { None }, &mut st).unwrap();
        let gr = y.mul(&f32t(&wout, &[b, l, d], dev)).unwrap().sum_all().unwrap().backward().unwrap();
        (
            host(&y),
            host(st.mean()),
            host(st.var()),
            st.count().to_vec(),
            host(gr.get(&xt).unwrap()),
            host(gr.get(&wt).unwrap()),
        )
    };
    for masked in [false, true] {
        let c = run(&Device::Cpu, masked);
        let gp = run(&dev, masked);
        assert!(rel(&gp.0, &c.0) < 1e-5, "masked {masked}: y rel {:e}", rel(&gp.0, &c.0));
        assert!(rel(&gp.1, &c.1) < 1e-5 && rel(&gp.2, &c.2) < 1e-5, "masked {masked}: state");
        assert_eq!(gp.3, c.3);
        assert!(rel(&gp.4, &c.4) < 1e-4 && rel(&gp.5, &c.5) < 1e-4, "masked {masked}: gradients");
    }
}

#[test]
fn model_forward_step_and_gradients_match_cpu() {
    let Some(dev) = cuda() else { return };
    let cfg = MegalodonConfig { num_layers: 2, chunk_size: 16, ..MegalodonConfig::tiny(97) };
    let cpu = Megalodon::new(cfg, DType::F32, &Device::Cpu, 5).unwrap();
    let gpu = cpu.to_device(&dev).unwrap();
    let (b, l) = (2, 40);
    let tok: Vec<u32> = (0..b * l).map(|i| ((i * 37 + 11) % 97) as u32).collect();
    let ids = |dev: &Device| Tensor::from_vec(tok.clone(), &[b, l], &Device::Cpu).unwrap().to_device(dev).unwrap();
    let (mut sc, mut sg) = (cpu.init_state(b).unwrap(), gpu.init_state(b).unwrap());
    let (lc, lg) = no_grad(|| {
        (host(&cpu.forward(&ids(&Device::Cpu), &mut sc).unwrap()), host(&gpu.forward(&ids(&dev), &mut sg).unwrap()))
    });
    assert!(rel(&lg, &lc) < 1e-4, "logits rel {:e}", rel(&lg, &lc));
    let next = |dev: &Device| Tensor::from_vec(vec![3u32, 90], &[2], &Device::Cpu).unwrap().to_device(dev).unwrap();
    for _ in 0..20 {
        let (a, c) =
            (host(&cpu.step(&next(&Device::Cpu), &mut sc).unwrap()), host(&gpu.step(&next(&dev), &mut sg).unwrap()));
        assert!(rel(&c, &a) < 1e-4, "step rel {:e}", rel(&c, &a));
    }
    // One training gradient.
    let grad_norms = |m: &Megalodon, dev: &Device| {
        let m = m.requires_grad().unwrap();
        let mut st = m.init_state(b).unwrap();
        let logits = m.forward(&ids(dev), &mut st).unwrap();
        let targets = Tensor::from_vec(tok.iter().map(|t| (t + 1) % 97).collect::<Vec<u32>>(), &[b * l], &Device::Cpu)
            .unwrap()
            .to_device(dev)
            .unwrap();
        let loss = logits.reshape(&[b * l, 97]).unwrap().cross_entropy(&targets).unwrap();
        let g = loss.backward().unwrap();
        m.named_parameters()
            .iter()
            .map(|(_, t)| host(g.get(t).unwrap()).iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect::<Vec<f64>>()
    };
    let (nc, ng) = (grad_norms(&cpu, &Device::Cpu), grad_norms(&gpu, &dev));
    assert!(rel(&ng, &nc) < 1e-3, "gradient norms rel {:e}", rel(&ng, &nc));
}

#[test]
fn fused_cema_ops_and_their_gradients_match_cpu() {
    use megalodon::cema_ops::{decayed_sum, power_sum};
    let Some(dev) = cuda() else { return };
    // Lengths across several 64-step tiles, R > 1, a shift of 1 (the state bias).
    let (r, d, n, l) = (3, 5, 16, 300);
    let cre = randn(r * d * n, 4, 1, 0.0, 1.0);
    let cim = randn(r * d * n, 4, 2, 0.0, 1.0);
    let m: Vec<f64> = randn(d * n, 4, 3, 0.0, 1.0).iter().map(|v| -0.01 - 0.05 * v.abs()).collect();
    let ph = randn(d * n, 4, 4, 0.0, 1.0);
    let wout = randn(r * d * l, 4, 5, 0.0, 1.0);
    let run = |dev: &Device| {
        let ts = [
            f32t(&cre, &[r, d, n], dev).requires_grad(),
            f32t(&cim, &[r, d, n], dev).requires_grad(),
            f32t(&m, &[d, n], dev).requires_grad(),
            f32t(&ph, &[d, n], dev).requires_grad(),
        ];
        let y = power_sum(&ts[0], &ts[1], &ts[2], &ts[3], l, 1).unwrap();
        let g = y.mul(&f32t(&wout, &[r, d, l], dev)).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![host(&y)];
        out.extend(ts.iter().map(|t| host(g.get(t).unwrap())));
        out
    };
    for (i, (c, gp)) in run(&Device::Cpu).iter().zip(run(&dev)).enumerate() {
        assert!(rel(&gp, c) < 1e-4, "power_sum output/gradient {i}: rel {:e}", rel(&gp, c));
    }
    let b = 2;
    let x = randn(b * l * d, 4, 6, 0.0, 1.0);
    let wout = randn(2 * b * d * n, 4, 7, 0.0, 1.0);
    let run = |dev: &Device| {
        let ts = [
            f32t(&x, &[b, l, d], dev).requires_grad(),
            f32t(&m, &[d, n], dev).requires_grad(),
            f32t(&ph, &[d, n], dev).requires_grad(),
        ];
        let y = decayed_sum(&ts[0], &ts[1], &ts[2]).unwrap();
        let g = y.mul(&f32t(&wout, &[2, b, d, n], dev)).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![host(&y)];
        out.extend(ts.iter().map(|t| host(g.get(t).unwrap())));
        out
    };
    for (i, (c, gp)) in run(&Device::Cpu).iter().zip(run(&dev)).enumerate() {
        assert!(rel(&gp, c) < 1e-4, "decayed_sum output/gradient {i}: rel {:e}", rel(&gp, c));
    }
}
