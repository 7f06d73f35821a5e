//! CEMA invariants (spec §5, 1–9 and 22): the FFT path equals the f64 recurrence for outputs and final state,
//! impulse responses, split/stream = one pass (also with `step`), causality, linearity and time invariance,
//! stability and coefficient ranges, the init's frequency multiset, the paper/code reparameterisation, and
//! gradients against central finite differences.

// Index loops mirror the equations (t, d, n) in these checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use effllm_tensor::{DType, Device, Tensor, no_grad};
use megalodon::reference::{self, CemaParams};
use megalodon::{Cema, MegalodonError, causal_conv};
use proptest::prelude::*;
use realfft::num_complex::Complex64;

fn zeros_c(len: usize) -> Vec<Complex64> {
    vec![Complex64::new(0.0, 0.0); len]
}

/// FFT path from `hx` against the reference scan: (output error, state error).
fn fft_vs_scan(p: &CemaParams, b: usize, l: usize, seed: u64, with_state: bool) -> (f64, f64) {
    let x = randn(b * l * p.d, seed, 20, 0.0, 1.0);
    let cema = cema_from(p);
    let (hx, mut st) = if with_state {
        random_state(b, p.d, p.n, seed)
    } else {
        (zeros_c(b * p.d * p.n), cema.init_state(b).unwrap())
    };
    let (want_y, want_h) = reference::cema_scan(p, &x, b, l, &hx);
    let y = cema.forward(&t64(x, &[b, l, p.d]), &mut st).unwrap();
    (rel(&v64(&y), &want_y), crel(&state_values(&st), &want_h))
}

#[test]
fn fft_equals_recurrence_on_the_spec_lengths() {
    for (i, &l) in [1usize, 2, 3, 31, 32, 33, 1000].iter().enumerate() {
        let p = cema_params(3, 4, 100 + i as u64);
        for with_state in [false, true] {
            let (ey, eh) = fft_vs_scan(&p, 2, l, 7 + i as u64, with_state);
            assert!(ey < 1e-10 && eh < 1e-10, "L = {l}, state {with_state}: y {ey:e}, h {eh:e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn fft_equals_recurrence_on_random_shapes(d in 1usize..5, n in 1usize..6, b in 1usize..3, l in 1usize..70, seed in 0u64..1000) {
        let p = cema_params(d, n, seed);
        let (ey, eh) = fft_vs_scan(&p, b, l, seed + 1, true);
        prop_assert!(ey < 1e-10 && eh < 1e-10, "y {:e}, h {:e}", ey, eh);
    }

    #[test]
    fn scan_path_equals_recurrence(d in 1usize..5, n in 1usize..6, b in 1usize..3, l in 1usize..40, seed in 0u64..1000) {
        let p = cema_params(d, n, seed);
        let x = randn(b * l * d, seed, 21, 0.0, 1.0);
        let (hx, mut st) = random_state(b, d, n, seed);
        let (want_y, want_h) = reference::cema_scan(&p, &x, b, l, &hx);
        let y = cema_from(&p).forward_scan(&t64(x, &[b, l, d]), &mut st).unwrap();
        prop_assert!(rel(&v64(&y), &want_y) < 1e-12);
        prop_assert!(crel(&state_values(&st), &want_h) < 1e-12);
    }

    #[test]
    fn split_and_carry_equals_one_pass(l in 2usize..60, split in 1usize..59, seed in 0u64..1000) {
        let s = split.min(l - 1);
        let (d, n, b) = (3, 4, 2);
        let p = cema_params(d, n, seed);
        let cema = cema_from(&p);
        let x = t64(randn(b * l * d, seed, 22, 0.0, 1.0), &[b, l, d]);
        let mut one = cema.init_state(b).unwrap();
        let y_all = v64(&cema.forward(&x, &mut one).unwrap());
        let mut st = cema.init_state(b).unwrap();
        let y1 = cema.forward(&x.narrow(1, 0, s).unwrap(), &mut st).unwrap();
        let y2 = cema.forward(&x.narrow(1, s, l - s).unwrap(), &mut st).unwrap();
        let joined = v64(&Tensor::concat(&[&y1, &y2], 1).unwrap());
        prop_assert!(rel(&joined, &y_all) < 1e-10);
        prop_assert!(crel(&state_values(&st), &state_values(&one)) < 1e-10);
        // The second half token by token with `step`.
        let mut st = cema.init_state(b).unwrap();
        let y1 = cema.forward(&x.narrow(1, 0, s).unwrap(), &mut st).unwrap();
        let mut parts = vec![y1];
        for t in s..l {
            let xt = x.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            parts.push(cema.step(&xt, &mut st).unwrap().unsqueeze(1).unwrap());
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        prop_assert!(rel(&v64(&Tensor::concat(&refs, 1).unwrap()), &y_all) < 1e-10);
    }

    #[test]
    fn causal_conv_matches_direct_convolution(b in 1usize..3, d in 1usize..4, l in 1usize..80, seed in 0u64..1000) {
        let x = randn(b * d * l, seed, 30, 0.0, 1.0);
        let k = randn(d * l, seed, 31, 0.0, 1.0);
        let y = causal_conv(&t64(x.clone(), &[b, d, l]), &t64(k.clone(), &[d, l])).unwrap();
        let want = reference::causal_conv(&x, &k, b * d, d, l);
        prop_assert!(rel(&v64(&y), &want) < 1e-12);
    }
}

#[test]
fn impulse_responses_and_no_wraparound() {
    let (d, n) = (3, 4);
    let p = cema_params(d, n, 5);
    let cema = cema_from(&p);
    for l in [1usize, 2, 3, 31, 32, 33, 1000] {
        let k = reference::cema_kernel(&p, l);
        // x = e_0 gives y_t = k_t + ω·[t = 0].
        let mut x = vec![0.0; l * d];
        for di in 0..d {
            x[di] = 1.0;
        }
        let mut st = cema.init_state(1).unwrap();
        let y = v64(&cema.forward(&t64(x, &[1, l, d]), &mut st).unwrap());
        for t in 0..l {
            for di in 0..d {
                let want = k[di * l + t] + if t == 0 { p.omega[di] } else { 0.0 };
                assert!((y[t * d + di] - want).abs() < 1e-12, "L = {l}, t = {t}: {} vs {want}", y[t * d + di]);
            }
        }
        // x = e_{L−1}: every earlier output is zero (a circular convolution would wrap the tail around).
        let mut x = vec![0.0; l * d];
        for di in 0..d {
            x[(l - 1) * d + di] = 1.0;
        }
        let mut st = cema.init_state(1).unwrap();
        let y = v64(&cema.forward(&t64(x, &[1, l, d]), &mut st).unwrap());
        assert!(y[..(l - 1) * d].iter().all(|v| v.abs() < 1e-12), "L = {l}: wrapped around");
    }
    // The kernel tensor itself.
    let kt = v64(&cema.kernel(33).unwrap());
    assert!(rel(&kt, &reference::cema_kernel(&p, 33)) < 1e-12);
}

#[test]
fn causality_future_inputs_never_change_earlier_outputs() {
    let (d, n, b, l) = (3, 4, 2, 40);
    let p = cema_params(d, n, 9);
    let cema = cema_from(&p);
    let x = randn(b * l * d, 9, 40, 0.0, 1.0);
    let run = |x: &[f64], scan: bool| {
        let (_, mut st) = random_state(b, d, n, 3);
        let xt = t64(x.to_vec(), &[b, l, d]);
        v64(&if scan { cema.forward_scan(&xt, &mut st) } else { cema.forward(&xt, &mut st) }.unwrap())
    };
    for t_change in [0usize, 13, 39] {
        let mut x2 = x.clone();
        for bi in 0..b {
            for di in 0..d {
                x2[(bi * l + t_change) * d + di] += 5.0;
            }
        }
        for scan in [true, false] {
            let (y1, y2) = (run(&x, scan), run(&x2, scan));
            for bi in 0..b {
                for t in 0..t_change {
                    for di in 0..d {
                        let i = (bi * l + t) * d + di;
                        // Exact for the scan, round-off for the FFT.
                        let tol = if scan { 0.0 } else { 1e-12 };
                        assert!((y1[i] - y2[i]).abs() <= tol, "scan {scan}: t = {t} moved after changing {t_change}");
                    }
                }
            }
        }
    }
}

#[test]
fn linear_and_time_invariant_from_the_zero_state() {
    let (d, n, b, l) = (2, 3, 1, 25);
    let p = cema_params(d, n, 12);
    let cema = cema_from(&p);
    let run = |x: &[f64], len: usize| {
        let mut st = cema.init_state(b).unwrap();
        v64(&cema.forward(&t64(x.to_vec(), &[b, len, d]), &mut st).unwrap())
    };
    let x1 = randn(l * d, 12, 50, 0.0, 1.0);
    let x2 = randn(l * d, 12, 51, 0.0, 1.0);
    let (a, c) = (0.7, -1.9);
    let mix: Vec<f64> = x1.iter().zip(&x2).map(|(u, v)| a * u + c * v).collect();
    let want: Vec<f64> = run(&x1, l).iter().zip(run(&x2, l)).map(|(u, v)| a * u + c * v).collect();
    assert!(rel(&run(&mix, l), &want) < 1e-12);
    // Prepending 4 zero steps shifts the output by 4 steps.
    let shift = 4;
    let mut padded = vec![0.0; shift * d];
    padded.extend(&x1);
    let y = run(&padded, l + shift);
    assert!(y[..shift * d].iter().all(|v| v.abs() < 1e-15));
    assert!(rel(&y[shift * d..], &run(&x1, l)) < 1e-12);
}

#[test]
fn coefficients_are_stable_and_in_range() {
    let (d, n) = (4, 5);
    let p = cema_params(d, n, 13);
    let co = reference::cema_coeffs(&p);
    let cema = cema_from(&p);
    let c = cema.coeffs().unwrap();
    let (pp, lm, ph) = (v64(&c.p), v64(&c.log_mag), v64(&c.phase));
    for di in 0..d {
        for ni in 0..n {
            let i = di * n + ni;
            assert!(pp[i] > 0.0 && pp[i] < 1.0);
            assert!(lm[i] < 0.0 && lm[i].exp() > 0.0, "|q| in (0, 1)");
            assert!((pp[i] - co.p[i]).abs() < 1e-15 && (lm[i].exp() - co.q[i].norm()).abs() < 1e-14);
            // arg q_{d,n} = n · φ_d (mod 2π), n = 1..N.
            let base = ph[di * n];
            let want = base * (ni + 1) as f64;
            let diff = (ph[i] - want).rem_euclid(std::f64::consts::TAU);
            assert!(diff < 1e-12 || (std::f64::consts::TAU - diff) < 1e-12);
        }
    }
    // |k_j| ≤ Σ_n |γ_n| p_n |q_n|^j: a geometric envelope.
    let l = 200;
    let k = reference::cema_kernel(&p, l);
    let kt = v64(&cema.kernel(l).unwrap());
    for di in 0..d {
        for j in 0..l {
            let bound: f64 = (0..n)
                .map(|ni| {
                    let i = di * n + ni;
                    co.gamma[i].norm() * co.p[i] * co.q[i].norm().powi(j as i32)
                })
                .sum();
            assert!(kt[di * l + j].abs() <= bound + 1e-12 && k[di * l + j].abs() <= bound + 1e-12);
        }
    }
}

#[test]
fn init_is_seeded_and_its_frequencies_are_the_reference_multiset() {
    let d = 12;
    let a = Cema::new(d, 4, DType::F64, &Device::Cpu, 3).unwrap();
    let b = Cema::new(d, 4, DType::F64, &Device::Cpu, 3).unwrap();
    let c = Cema::new(d, 4, DType::F64, &Device::Cpu, 4).unwrap();
    for (x, y) in a.parameters().iter().zip(b.parameters()) {
        assert_eq!(v64(x), v64(y), "same seed, same init");
    }
    assert_ne!(v64(a.parameters()[2]), v64(c.parameters()[2]), "another seed permutes differently");
    let mut f: Vec<f64> = v64(a.parameters()[2]).iter().map(|t| 1.0 / (1.0 + (-t).exp())).collect();
    f.sort_by(f64::total_cmp);
    let mut want: Vec<f64> = (1..=d).map(|k| (d as f64).powf(-(k as f64) / d as f64)).collect();
    want.sort_by(f64::total_cmp);
    assert!(max_abs_diff(&f, &want) < 1e-12);
    assert!(v64(a.parameters()[5]).iter().all(|w| w.abs() <= 1.0), "omega truncated to [-1, 1]");
    assert!(v64(a.parameters()[4]).iter().all(|&g| g == 0.0), "gamma_im starts at 0");
}

#[test]
fn paper_parameterisation_is_the_same_model() {
    let (d, n, b, l) = (3, 4, 2, 30);
    let p = cema_params(d, n, 14);
    let cema = cema_from(&p);
    let (er, ei) = cema.to_paper_eta().unwrap();
    let s = (n as f64).sqrt();
    let eta: Vec<Complex64> = v64(&er).iter().zip(v64(&ei)).map(|(&r, i)| Complex64::new(r / s, i / s)).collect();
    let x = randn(b * l * d, 14, 60, 0.0, 1.0);
    let want = reference::cema_scan_paper(&p, &eta, &x, b, l);
    let mut st = cema.init_state(b).unwrap();
    let y = v64(&cema.forward(&t64(x, &[b, l, d]), &mut st).unwrap());
    assert!(rel(&y, &want) < 1e-12);
    // And back.
    let back = cema.with_paper_eta(&er, &ei).unwrap();
    assert!(rel(&v64(back.parameters()[3]), &p.gamma_re) < 1e-12);
    assert!(rel(&v64(back.parameters()[4]), &p.gamma_im) < 1e-12);
}

#[test]
fn real_limit_is_megas_damped_ema() {
    // Phase 0 (σ(theta) → 0) and γ real: y_t = Σ_n γ_n h_{t,n} + ω x_t with h_t = p x_t + (1 − p δ') h_{t−1}, the real
    // EMA of Mega (before its silu), with Mega's names swapped (Megalodon alpha ↔ Mega delta).
    let (d, n, l) = (2, 3, 20);
    let mut p = cema_params(d, n, 15);
    p.theta = vec![-60.0; d];
    p.gamma_im = vec![0.0; d * n];
    let x = randn(l * d, 15, 70, 0.0, 1.0);
    let mut st = cema_from(&p).init_state(1).unwrap();
    let y = v64(&cema_from(&p).forward(&t64(x.clone(), &[1, l, d]), &mut st).unwrap());
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut want = vec![0.0; l * d];
    for di in 0..d {
        let mut h = vec![0.0; n];
        for t in 0..l {
            let mut acc = 0.0;
            for ni in 0..n {
                let i = di * n + ni;
                let (pm, qm) = (sig(p.alpha[i]), 1.0 - sig(p.alpha[i]) * sig(p.delta[i]));
                h[ni] = pm * x[t * d + di] + qm * h[ni];
                acc += p.gamma_re[i] / (n as f64).sqrt() * h[ni];
            }
            want[t * d + di] = acc + p.omega[di] * x[t * d + di];
        }
    }
    assert!(rel(&y, &want) < 1e-12);
}

#[test]
fn gradients_match_finite_differences() {
    // B = 2 with distinct non-zero states: catches the class of bug fixed upstream in cff8ba5.
    let (d, n, b, l) = (2, 3, 2, 9);
    let p = cema_params(d, n, 16);
    let x0 = randn(b * l * d, 16, 80, 0.0, 1.0);
    let (_, st0) = random_state(b, d, n, 16);
    let (hr0, hi0) = (v64(st0.h_re()), v64(st0.h_im()));
    let wy = randn(b * l * d, 16, 81, 0.0, 1.0);
    let wh = randn(2 * b * d * n, 16, 82, 0.0, 1.0);
    // loss = Σ wy ⊙ y + Σ wh ⊙ (h_re, h_im): exercises the output and the carried state.
    let loss_of = |vals: &[Vec<f64>]| -> (Tensor, Vec<Tensor>) {
        let shapes: [&[usize]; 9] =
            [&[d, n], &[d, n], &[d], &[d, n], &[d, n], &[d], &[b, l, d], &[b, d, n], &[b, d, n]];
        let ts: Vec<Tensor> = vals.iter().zip(shapes).map(|(v, s)| t64(v.clone(), s).requires_grad()).collect();
        let cema = Cema::from_tensors(
            ts[0].clone(),
            ts[1].clone(),
            ts[2].clone(),
            ts[3].clone(),
            ts[4].clone(),
            ts[5].clone(),
        )
        .unwrap();
        let mut st = megalodon::CemaState::new(ts[7].clone(), ts[8].clone()).unwrap();
        let y = cema.forward(&ts[6], &mut st).unwrap();
        let hcat = Tensor::concat(&[st.h_re(), st.h_im()], 0).unwrap().reshape(&[2 * b * d * n]).unwrap();
        let l = y
            .reshape(&[b * l * d])
            .unwrap()
            .mul(&t64(wy.clone(), &[b * l * d]))
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&hcat.mul(&t64(wh.clone(), &[2 * b * d * n])).unwrap().sum_all().unwrap())
            .unwrap();
        (l, ts)
    };
    let vals = vec![
        p.alpha.clone(),
        p.delta.clone(),
        p.theta.clone(),
        p.gamma_re.clone(),
        p.gamma_im.clone(),
        p.omega.clone(),
        x0,
        hr0,
        hi0,
    ];
    let (l, ts) = loss_of(&vals);
    let grads = l.backward().unwrap();
    let names = ["alpha", "delta", "theta", "gamma_re", "gamma_im", "omega", "x", "h_re", "h_im"];
    for (k, name) in names.iter().enumerate() {
        let g = v64(grads.get(&ts[k]).unwrap_or_else(|| panic!("no gradient for {name}")));
        let f = |v: &[f64]| {
            let mut vv = vals.clone();
            vv[k] = v.to_vec();
            no_grad(|| v64(&loss_of(&vv).0)[0])
        };
        check_grad(name, &vals[k], &g, &f, 40, 1e-6);
    }
}

#[test]
fn causal_conv_gradients_match_finite_differences() {
    let (b, d, l) = (2, 2, 11);
    let x0 = randn(b * d * l, 17, 90, 0.0, 1.0);
    let k0 = randn(d * l, 17, 91, 0.0, 1.0);
    let w = randn(b * d * l, 17, 92, 0.0, 1.0);
    let loss = |x: &[f64], k: &[f64], track: bool| -> (Tensor, Tensor, Tensor) {
        let (mut xt, mut kt) = (t64(x.to_vec(), &[b, d, l]), t64(k.to_vec(), &[d, l]));
        if track {
            xt = xt.requires_grad();
            kt = kt.requires_grad();
        }
        let y = causal_conv(&xt, &kt).unwrap();
        (y.mul(&t64(w.clone(), &[b, d, l])).unwrap().sum_all().unwrap(), xt, kt)
    };
    let (lv, xt, kt) = loss(&x0, &k0, true);
    let g = lv.backward().unwrap();
    check_grad("x", &x0, &v64(g.get(&xt).unwrap()), &|v| v64(&loss(v, &k0, false).0)[0], 44, 1e-7);
    check_grad("k", &k0, &v64(g.get(&kt).unwrap()), &|v| v64(&loss(&x0, v, false).0)[0], 22, 1e-7);
}

#[test]
fn bad_input_is_a_typed_error() {
    let p = cema_params(3, 4, 18);
    let cema = cema_from(&p);
    let mut st = cema.init_state(2).unwrap();
    let x = t64(vec![0.5; 2 * 5 * 4], &[2, 5, 4]);
    assert!(matches!(cema.forward(&x, &mut st), Err(MegalodonError::Shape { .. })));
    let x = t64(vec![0.5; 5 * 3], &[1, 5, 3]);
    assert!(matches!(cema.forward(&x, &mut st), Err(MegalodonError::State { .. })), "batch 1 input, batch 2 state");
    // The recurrence refuses tracked inputs instead of silently dropping their gradient.
    let x = t64(vec![0.5; 2 * 5 * 3], &[2, 5, 3]).requires_grad();
    assert!(matches!(cema.forward_scan(&x, &mut st), Err(MegalodonError::NotDifferentiable { .. })));
    assert!(no_grad(|| cema.forward_scan(&x, &mut st)).is_ok());
    assert!(matches!(Cema::new(0, 4, DType::F32, &Device::Cpu, 1), Err(MegalodonError::Config(_))));
    assert!(causal_conv(&t64(vec![1.0; 6], &[1, 2, 3]), &t64(vec![1.0; 4], &[2, 2])).is_err());
}

#[test]
fn f32_fft_path_matches_the_f64_reference() {
    let (d, n, b, l) = (4, 16, 2, 300);
    let p = cema_params(d, n, 19);
    let x = randn(b * l * d, 19, 95, 0.0, 1.0);
    let (hx, st64) = random_state(b, d, n, 19);
    let (want, want_h) = reference::cema_scan(&p, &x, b, l, &hx);
    let c32 = cema_from(&p).map_parameters(|t| Ok(t.to_dtype(DType::F32)?)).unwrap();
    let mut st =
        megalodon::CemaState::new(st64.h_re().to_dtype(DType::F32).unwrap(), st64.h_im().to_dtype(DType::F32).unwrap())
            .unwrap();
    let xt = Tensor::from_vec(x.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[b, l, d], &Device::Cpu).unwrap();
    let y = v64(&c32.forward(&xt, &mut st).unwrap());
    approx::assert_relative_eq!(rel(&y, &want), 0.0, epsilon = 1e-4);
    assert!(crel(&state_values(&st), &want_h) < 1e-4);
}

#[test]
fn fused_power_and_decayed_sums_match_direct_sums_and_finite_differences() {
    use megalodon::cema_ops::{decayed_sum, power_sum};
    // Lengths past the 64-step re-anchoring of the walked powers.
    let (r, d, n, l) = (2, 2, 3, 150);
    let cre = randn(r * d * n, 30, 1, 0.0, 1.0);
    let cim = randn(r * d * n, 30, 2, 0.0, 1.0);
    let m: Vec<f64> = randn(d * n, 30, 3, 0.0, 1.0).iter().map(|v| -0.02 - 0.05 * v.abs()).collect();
    let ph = randn(d * n, 30, 4, 0.0, 1.0);
    let q: Vec<Complex64> = m.iter().zip(&ph).map(|(&a, &b)| Complex64::from_polar(a.exp(), b)).collect();
    for shift in [0usize, 1] {
        let got = v64(&power_sum(
            &t64(cre.clone(), &[r, d, n]),
            &t64(cim.clone(), &[r, d, n]),
            &t64(m.clone(), &[d, n]),
            &t64(ph.clone(), &[d, n]),
            l,
            shift,
        )
        .unwrap());
        let mut want = vec![0.0; r * d * l];
        for ri in 0..r {
            for di in 0..d {
                for j in 0..l {
                    want[(ri * d + di) * l + j] = (0..n)
                        .map(|ni| {
                            (Complex64::new(cre[(ri * d + di) * n + ni], cim[(ri * d + di) * n + ni])
                                * q[di * n + ni].powi((j + shift) as i32))
                            .re
                        })
                        .sum();
                }
            }
        }
        assert!(rel(&got, &want) < 1e-12, "shift {shift}: {:e}", rel(&got, &want));
    }
    let wout = randn(r * d * l, 30, 5, 0.0, 1.0);
    let vals = vec![cre.clone(), cim.clone(), m.clone(), ph.clone()];
    let loss = |v: &[Vec<f64>], track: bool| -> (Tensor, Vec<Tensor>) {
        let shapes: [&[usize]; 4] = [&[r, d, n], &[r, d, n], &[d, n], &[d, n]];
        let ts: Vec<Tensor> = v
            .iter()
            .zip(shapes)
            .map(|(x, s)| if track { t64(x.clone(), s).requires_grad() } else { t64(x.clone(), s) })
            .collect();
        let y = power_sum(&ts[0], &ts[1], &ts[2], &ts[3], l, 1).unwrap();
        (y.reshape(&[r * d * l]).unwrap().mul(&t64(wout.clone(), &[r * d * l])).unwrap().sum_all().unwrap(), ts)
    };
    let (lv, ts) = loss(&vals, true);
    let g = lv.backward().unwrap();
    for (k, name) in ["c_re", "c_im", "log_mag", "phase"].iter().enumerate() {
        let f = |x: &[f64]| {
            let mut vv = vals.clone();
            vv[k] = x.to_vec();
            v64(&loss(&vv, false).0)[0]
        };
        check_grad(name, &vals[k], &v64(g.get(&ts[k]).unwrap()), &f, 12, 1e-6);
    }
    // decayed_sum
    let b = 2;
    let x = randn(b * l * d, 30, 6, 0.0, 1.0);
    let got =
        v64(&decayed_sum(&t64(x.clone(), &[b, l, d]), &t64(m.clone(), &[d, n]), &t64(ph.clone(), &[d, n])).unwrap());
    let mut want = vec![0.0; 2 * b * d * n];
    for bi in 0..b {
        for di in 0..d {
            for ni in 0..n {
                let s: Complex64 =
                    (0..l).map(|j| q[di * n + ni].powi((l - 1 - j) as i32) * x[(bi * l + j) * d + di]).sum();
                want[(bi * d + di) * n + ni] = s.re;
                want[b * d * n + (bi * d + di) * n + ni] = s.im;
            }
        }
    }
    assert!(rel(&got, &want) < 1e-12);
    let wout = randn(2 * b * d * n, 30, 7, 0.0, 1.0);
    let vals = vec![x, m, ph];
    let loss = |v: &[Vec<f64>], track: bool| -> (Tensor, Vec<Tensor>) {
        let shapes: [&[usize]; 3] = [&[b, l, d], &[d, n], &[d, n]];
        let ts: Vec<Tensor> = v
            .iter()
            .zip(shapes)
            .map(|(x, s)| if track { t64(x.clone(), s).requires_grad() } else { t64(x.clone(), s) })
            .collect();
        let y = decayed_sum(&ts[0], &ts[1], &ts[2]).unwrap();
        (y.reshape(&[2 * b * d * n]).unwrap().mul(&t64(wout.clone(), &[2 * b * d * n])).unwrap().sum_all().unwrap(), ts)
    };
    let (lv, ts) = loss(&vals, true);
    let g = lv.backward().unwrap();
    for (k, name) in ["x", "log_mag", "phase"].iter().enumerate() {
        let f = |xx: &[f64]| {
            let mut vv = vals.clone();
            vv[k] = xx.to_vec();
            v64(&loss(&vv, false).0)[0]
        };
        check_grad(name, &vals[k], &v64(g.get(&ts[k]).unwrap()), &f, 40, 1e-6);
    }
}
