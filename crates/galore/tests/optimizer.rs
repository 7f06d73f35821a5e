//! Optimizer invariants (spec §5: 5–9, 11–13, 15, 18), checkpoints, layer-wise mode and bad input.

use std::sync::{Arc, Mutex};

use effllm_optim::{AdamW, AdamWConfig, OptimError, Optimizer, SgdConfig};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};
use galore::reference::{self, AdafactorMoments, AdamMoments, Mat, RefBasis};
use galore::{
    Adafactor, AdafactorConfig, Adam, Adam8bit, Adam8bitState, AdamConfig, Basis, BasisRequest, BasisSource, DecayMode,
    EpsMode, ExactSvd, GaLore, GaLoreError, GaLoreOptions, GaLoreParams, InnerOptimizer, ProjType, Replay, Sgd, Side,
    backward_layerwise,
};
use proptest::prelude::*;

fn randn(shape: &[usize], seed: u64, std: f64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, std).unwrap()
}

fn param(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed, 1.0).requires_grad()
}

/// The gradient of step `s` (decaying scale so the moments differ from the gradients).
fn grad(shape: &[usize], seed: u64, s: u64) -> Tensor {
    randn(shape, seed.wrapping_mul(1000).wrapping_add(s + 1), 1.0 / (1.0 + 0.2 * s as f64))
}

fn mat(t: &Tensor) -> Mat {
    let s = t.shape();
    Mat::from_f32(s[0], s[1], &t.to_vec::<f32>().unwrap())
}

/// `‖a − b‖_F`.
fn frobenius_diff(a: &Mat, b: &Mat) -> f64 {
    a.data.iter().zip(&b.data).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

fn ref_basis(b: &Basis) -> RefBasis {
    match b {
        Basis::Left(p) => RefBasis::Left(mat(p)),
        Basis::Right(p) => RefBasis::Right(mat(p)),
        Basis::Both { left, right } => RefBasis::Both(mat(left), mat(right)),
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn gp(rank: usize, gap: u64, scale: f64, proj_type: ProjType) -> GaLoreParams {
    GaLoreParams { rank, update_proj_gap: gap, scale, proj_type, matrix_shape: None }
}

fn eye(n: usize) -> Tensor {
    let mut v = vec![0f32; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    Tensor::from_vec(v, &[n, n], &Device::Cpu).unwrap()
}

/// A random `n × n` orthogonal matrix.
fn orthogonal(n: usize, seed: u64) -> Tensor {
    randn(&[n, n], seed, 1.0).qr().unwrap().0
}

fn adam_cfgs() -> impl Strategy<Value = AdamConfig> {
    (
        1e-3f64..5e-2,
        prop_oneof![Just(0.9f64), Just(0.5)],
        prop_oneof![Just(0.999f64), Just(0.9)],
        prop_oneof![Just(1e-6f64), Just(1e-3)],
        prop_oneof![Just(0.0f64), Just(0.1)],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lr, beta1, beta2, eps, weight_decay, correct_bias, hf_decay, hf_eps)| AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            correct_bias,
            decay: if hf_decay { DecayMode::HfAfterUpdate } else { DecayMode::TorchBeforeUpdate },
            eps_mode: if hf_eps { EpsMode::Hf } else { EpsMode::Torch },
        })
}

fn proj_types() -> impl Strategy<Value = ProjType> {
    prop_oneof![
        Just(ProjType::Std),
        Just(ProjType::ReverseStd),
        Just(ProjType::Left),
        Just(ProjType::Right),
        Just(ProjType::Full)
    ]
}

/// Runs `steps` updates of a fresh copy of `p0` with `opt` on the gradients `grad(shape, seed, s)`; returns the
/// parameter after each step.
fn trajectory(opt: &mut dyn Optimizer, p: &mut Tensor, seed: u64, steps: u64) -> Vec<Tensor> {
    let shape = p.shape().to_vec();
    (0..steps)
        .map(|s| {
            opt.step_param(p, &grad(&shape, seed, s)).unwrap();
            p.detach()
        })
        .collect()
}

/// A basis source that records the step of every call and delegates to exact SVD.
#[derive(Debug, Clone, Default)]
struct Recording(Arc<Mutex<Vec<u64>>>);

impl BasisSource for Recording {
    fn basis(&mut self, g: &Tensor, request: &BasisRequest) -> galore::Result<Basis> {
        self.0.lock().unwrap().push(request.step);
        ExactSvd.basis(g, request)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// GaLore-Adam (exact SVD, any projection type, ε and decay placement) follows the f64 reference step for step
    /// across several refreshes, given the same bases: parameters and both moments.
    #[test]
    fn galore_adam_matches_reference(m in 2usize..10, n in 2usize..10, rank in 1usize..10, ty in proj_types(),
                                     scale in 0.2f64..2.0, cfg in adam_cfgs(), seed in any::<u64>()) {
        let gap = 3;
        // At a `full` refresh R is diagonal: its off-diagonal entries are f32 rounding noise (~1e-7 |G|), which
        // Adam divides by ~ε, so ε = 1e-6 would compare the noise of f32 against that of f64.
        let cfg = if ty == ProjType::Full { AdamConfig { eps: cfg.eps.max(1e-3), ..cfg } } else { cfg };
        let mut w = param(&[m, n], seed);
        let mut w_ref = mat(&w);
        let mut opt = GaLore::new(Adam::new(cfg).unwrap());
        opt.add_target(&w, gp(rank, gap, scale, ty)).unwrap();
        let id = w.id().unwrap();
        let mut moments: Option<AdamMoments> = None;
        for s in 0..(3 * gap + 2) {
            let g = grad(&[m, n], seed, s);
            opt.step_param(&mut w, &g).unwrap();
            let basis = ref_basis(opt.projector(id).unwrap().basis().unwrap());
            reference::adam_step(&mut w_ref, &mat(&g), &mut moments, Some((&basis, scale)), &cfg);
            let st = opt.inner_state(id).unwrap();
            let mo = moments.as_ref().unwrap();
            prop_assert!(mat(&w).rel_err(&w_ref) < 1e-5, "step {}: W {}", s, mat(&w).rel_err(&w_ref));
            // The moments average projected gradients R = Pᵀ G, whose f32 rounding is relative to ‖G‖, not to R:
            // a rank-1 R can nearly cancel (seen at m = 4, n = 3, β1 = 0.5), so the error is measured against
            // ‖moment‖ plus the latest term's bound.
            let g_norm = mat(&g).norm();
            let m_scale = mo.m.norm() + (1.0 - cfg.beta1) * g_norm;
            let v_scale = mo.v.norm() + (1.0 - cfg.beta2) * g_norm * g_norm;
            prop_assert!(frobenius_diff(&mat(&st.exp_avg), &mo.m) < 1e-5 * m_scale, "step {}: M", s);
            prop_assert!(frobenius_diff(&mat(&st.exp_avg_sq), &mo.v) < 1e-5 * v_scale, "step {}: V", s);
        }
    }

    /// GaLore-Adafactor (factored second moment of `R`, momentum on the lr-scaled update, decay before the update)
    /// follows the f64 reference across refreshes, for a GaLore weight and a plain (vector) bias.
    #[test]
    fn galore_adafactor_matches_reference(m in 2usize..10, n in 2usize..10, rank in 1usize..10, ty in proj_types(),
                                          scale in 0.2f64..2.0, beta1 in prop_oneof![Just(None), Just(Some(0.9f64))],
                                          wd in prop_oneof![Just(0.0f64), Just(0.1)], clip in prop_oneof![Just(1.0f64), Just(1e-3)],
                                          seed in any::<u64>()) {
        let cfg = AdafactorConfig { lr: 1e-2, beta1, weight_decay: wd, clip_threshold: clip, ..AdafactorConfig::default() };
        let mut w = param(&[m, n], seed);
        let mut b = param(&[m], seed ^ 1);
        let (mut w_ref, mut b_ref) = (mat(&w), Mat::from_f32(1, m, &b.to_vec::<f32>().unwrap()));
        let mut opt = GaLore::new(Adafactor::new(cfg).unwrap());
        opt.add_target(&w, gp(rank, 3, scale, ty)).unwrap();
        let id = w.id().unwrap();
        let (mut sw, mut sb): (Option<AdafactorMoments>, Option<AdafactorMoments>) = (None, None);
        for s in 0..8 {
            let (g, gb) = (grad(&[m, n], seed, s), grad(&[m], seed ^ 1, s));
            opt.step_param(&mut w, &g).unwrap();
            opt.step_param(&mut b, &gb).unwrap();
            let basis = ref_basis(opt.projector(id).unwrap().basis().unwrap());
            reference::adafactor_step(&mut w_ref, &mat(&g), &mut sw, Some((&basis, scale)), true, &cfg);
            let gb = Mat::from_f32(1, m, &gb.to_vec::<f32>().unwrap());
            reference::adafactor_step(&mut b_ref, &gb, &mut sb, None, false, &cfg);
            prop_assert!(mat(&w).rel_err(&w_ref) < 1e-5, "step {}: W {}", s, mat(&w).rel_err(&w_ref));
            let b_now = Mat::from_f32(1, m, &b.to_vec::<f32>().unwrap());
            prop_assert!(b_now.rel_err(&b_ref) < 1e-5, "step {}: b", s);
        }
    }

    /// Invariant 5: an injected identity basis (`right`, r = n, α = 1) gives bitwise the inner optimizer's plain
    /// path — for HF and torch Adam, 8-bit Adam (f32 and quantized moments) and SGD.
    #[test]
    fn identity_basis_is_bitwise_the_inner_optimizer(m in 2usize..9, n in 2usize..9, cfg in adam_cfgs(),
                                                     momentum in prop_oneof![Just(0.0f64), Just(0.9)],
                                                     seed in any::<u64>()) {
        fn check<I: InnerOptimizer + Clone>(inner: I, m: usize, n: usize, seed: u64) -> Result<(), TestCaseError> {
            let m = m + n; // a full-rank right basis needs n ≤ m
            let mut w = param(&[m, n], seed);
            let mut plain_w = param(&[m, n], seed);
            let mut replay = Replay::new();
            replay.fixed(w.id().unwrap(), Basis::Right(eye(n)));
            let mut galore = GaLore::new(inner.clone()).with_basis_source(replay);
            galore.add_target(&w, gp(n, 2, 1.0, ProjType::Right)).unwrap();
            let mut plain = GaLore::new(inner);
            let a = trajectory(&mut galore, &mut w, seed, 5);
            let b = trajectory(&mut plain, &mut plain_w, seed, 5);
            for (x, y) in a.iter().zip(&b) {
                prop_assert_eq!(bits(x), bits(y));
            }
            Ok(())
        }
        check(Adam::new(cfg).unwrap(), m, n, seed)?;
        check(Adam8bit::new(cfg).unwrap(), m, n, seed)?;
        check(Adam8bit::new(cfg).unwrap().with_min_8bit_size(1).with_block_size(5).unwrap(), m, n, seed)?;
        let sgd = SgdConfig { lr: cfg.lr, momentum, dampening: 0.0, weight_decay: cfg.weight_decay, nesterov: momentum > 0.0 };
        check(Sgd::new(sgd).unwrap(), m, n, seed)?;
        let beta1 = (momentum > 0.0).then_some(momentum);
        check(Adafactor::new(AdafactorConfig { lr: cfg.lr, beta1, weight_decay: cfg.weight_decay, ..AdafactorConfig::default() }).unwrap(), m, n, seed)?;
    }

    /// Invariant 5, second part: with λ = 0, GaLore(α, η) on the identity basis equals Adam(η·α) up to rounding.
    #[test]
    fn scale_is_a_learning_rate_factor(n in 2usize..9, alpha in 0.1f64..3.0, cfg in adam_cfgs(), seed in any::<u64>()) {
        let cfg = AdamConfig { weight_decay: 0.0, ..cfg };
        let mut w = param(&[n + 1, n], seed);
        let mut plain_w = param(&[n + 1, n], seed);
        let mut replay = Replay::new();
        replay.fixed(w.id().unwrap(), Basis::Right(eye(n)));
        let mut galore = GaLore::new(Adam::new(cfg).unwrap()).with_basis_source(replay);
        galore.add_target(&w, gp(n, 2, alpha, ProjType::Right)).unwrap();
        let mut plain = GaLore::new(Adam::new(AdamConfig { lr: cfg.lr * alpha, ..cfg }).unwrap());
        let a = trajectory(&mut galore, &mut w, seed, 6);
        let b = trajectory(&mut plain, &mut plain_w, seed, 6);
        for (x, y) in a.iter().zip(&b) {
            prop_assert!(mat(x).rel_err(&mat(y)) < 1e-6);
        }
    }

    /// Invariant 6: GaLore around SGD with a full-rank orthogonal basis (left or right) is SGD (effllm-optim's,
    /// momentum, dampening, Nesterov and L2 decay included), up to rounding.
    #[test]
    fn galore_sgd_with_an_orthogonal_basis_is_sgd(m in 2usize..9, n in 2usize..9, left in any::<bool>(),
                                                  momentum in prop_oneof![Just(0.0f64), Just(0.9)],
                                                  nesterov in any::<bool>(), wd in prop_oneof![Just(0.0f64), Just(0.05)],
                                                  seed in any::<u64>()) {
        let cfg = SgdConfig { lr: 0.05, momentum, dampening: if nesterov { 0.0 } else { 0.2 }, weight_decay: wd,
                              nesterov: nesterov && momentum > 0.0 };
        let (m, n) = if left { (m, m + n) } else { (m + n, n) }; // a full-rank basis on the smaller side
        let mut w = param(&[m, n], seed);
        let mut plain_w = param(&[m, n], seed);
        let (basis, params) = if left {
            (Basis::Left(orthogonal(m, seed ^ 3)), gp(m, 2, 1.0, ProjType::Left))
        } else {
            (Basis::Right(orthogonal(n, seed ^ 3).t().unwrap().contiguous().unwrap()), gp(n, 2, 1.0, ProjType::Right))
        };
        let mut replay = Replay::new();
        replay.fixed(w.id().unwrap(), basis);
        let mut galore = GaLore::new(Sgd::new(cfg).unwrap()).with_basis_source(replay);
        galore.add_target(&w, params).unwrap();
        let mut sgd = effllm_optim::Sgd::new(cfg).unwrap();
        let a = trajectory(&mut galore, &mut w, seed, 6);
        let b = trajectory(&mut sgd, &mut plain_w, seed, 6);
        for (x, y) in a.iter().zip(&b) {
            prop_assert!(mat(x).rel_err(&mat(y)) < 1e-5, "{}", mat(x).rel_err(&mat(y)));
        }
    }

    /// Invariant 7: the first step from zero moments has the closed form
    /// `W₁ = (W₀ − η α back(R ⊘ (|R| + ε/√(1 − β₂)))) (1 − ηλ)` — no Python needed.
    #[test]
    fn first_step_has_the_closed_form(m in 2usize..10, n in 2usize..10, rank in 1usize..10, ty in proj_types(),
                                      scale in 0.2f64..2.0, wd in prop_oneof![Just(0.0f64), Just(0.1)],
                                      seed in any::<u64>()) {
        let cfg = AdamConfig { lr: 0.01, weight_decay: wd, eps: 1e-3, ..AdamConfig::default() };
        let mut w = param(&[m, n], seed);
        let w0 = mat(&w);
        let mut opt = GaLore::new(Adam::new(cfg).unwrap());
        opt.add_target(&w, gp(rank, 4, scale, ty)).unwrap();
        let g = grad(&[m, n], seed, 0);
        opt.step_param(&mut w, &g).unwrap();
        let basis = ref_basis(opt.projector(w.id().unwrap()).unwrap().basis().unwrap());
        let want = reference::first_step_closed_form(&w0, &mat(&g), &basis, scale, &cfg);
        prop_assert!(mat(&w).rel_err(&want) < 1e-6);
    }

    /// Invariant 8: over N steps the basis is computed exactly ⌊(N−1)/T⌋ + 1 times, at steps 0, T, 2T, …, and is
    /// bit-identical in between.
    #[test]
    fn refresh_schedule(gap in 1u64..6, steps in 1u64..20, seed in any::<u64>()) {
        let mut w = param(&[6, 4], seed);
        let rec = Recording::default();
        let mut opt = GaLore::new(Adam::new(AdamConfig::default()).unwrap()).with_basis_source(rec.clone());
        opt.add_target(&w, gp(2, gap, 1.0, ProjType::Std)).unwrap();
        let id = w.id().unwrap();
        let mut prev: Option<Vec<u32>> = None;
        for s in 0..steps {
            opt.step_param(&mut w, &grad(&[6, 4], seed, s)).unwrap();
            let Some(Basis::Right(p)) = opt.projector(id).unwrap().basis() else { panic!("std on 6x4 is right") };
            let now = bits(p);
            if s % gap != 0 {
                prop_assert_eq!(Some(&now), prev.as_ref(), "basis changed at step {}", s);
            }
            prev = Some(now);
        }
        let calls = rec.0.lock().unwrap().clone();
        prop_assert_eq!(calls.len() as u64, (steps - 1) / gap + 1);
        prop_assert_eq!(opt.svd_count(), (steps - 1) / gap + 1);
        prop_assert!(calls.iter().enumerate().all(|(i, &s)| s == i as u64 * gap));
    }

    /// Invariant 11: flipping the sign of basis vectors leaves every update unchanged within one period.
    #[test]
    fn sign_flips_do_not_change_updates_within_a_period(m in 2usize..9, n in 2usize..9, rank in 1usize..9,
                                                        flips in any::<u16>(), cfg in adam_cfgs(), seed in any::<u64>()) {
        let mut w = param(&[m, n], seed);
        let mut w2 = param(&[m, n], seed);
        let g0 = grad(&[m, n], seed, 0);
        let r = rank.min(m).min(n);
        let (u, _s, _v) = g0.thin_svd().unwrap();
        let p = u.narrow(1, 0, r).unwrap().contiguous().unwrap();
        let signs: Vec<f32> = (0..r).map(|i| if flips >> (i % 16) & 1 == 1 { -1.0 } else { 1.0 }).collect();
        let signs = Tensor::from_vec(signs, &[1, r], &Device::Cpu).unwrap().broadcast_as(&[m, r]).unwrap();
        let flipped = p.mul(&signs).unwrap();
        let run = |w: &mut Tensor, basis: Tensor| {
            let mut replay = Replay::new();
            replay.fixed(w.id().unwrap(), Basis::Left(basis));
            let mut opt = GaLore::new(Adam::new(cfg).unwrap()).with_basis_source(replay);
            opt.add_target(w, gp(rank, 10, 0.5, ProjType::Left)).unwrap();
            trajectory(&mut opt, w, seed, 5)
        };
        let a = run(&mut w, p);
        let b = run(&mut w2, flipped);
        for (x, y) in a.iter().zip(&b) {
            prop_assert!(mat(x).rel_err(&mat(y)) < 1e-6);
        }
    }

    /// Invariant 15: with identical bases, 8-bit Adam tracks f32 Adam within the quantization error; moments of
    /// fewer than `min_8bit_size` values are f32 and bitwise equal.
    #[test]
    fn eight_bit_tracks_fp32(seed in any::<u64>()) {
        let (m, n, rank) = (96, 64, 48); // R is 96×48 = 4608 ≥ 4096 values: quantized
        let cfg = AdamConfig { lr: 1e-2, ..AdamConfig::galore_8bit() };
        let mut w8 = param(&[m, n], seed);
        let mut w32 = param(&[m, n], seed);
        let basis = Basis::Right(orthogonal(n, seed ^ 5).narrow(0, 0, rank).unwrap().contiguous().unwrap());
        let build = |inner, w: &Tensor| {
            let mut replay = Replay::new();
            replay.fixed(w.id().unwrap(), basis.clone());
            let mut opt = GaLore::new(inner).with_basis_source(replay);
            opt.add_target(w, gp(rank, 100, 0.25, ProjType::Std)).unwrap();
            opt
        };
        let mut o8 = build(Adam8bit::new(cfg).unwrap(), &w8);
        let mut o32 = GaLore::new(Adam::new(cfg).unwrap());
        let mut replay = Replay::new();
        replay.fixed(w32.id().unwrap(), basis.clone());
        o32 = o32.with_basis_source(replay);
        o32.add_target(&w32, gp(rank, 100, 0.25, ProjType::Std)).unwrap();
        let w0 = mat(&w8);
        let a = trajectory(&mut o8, &mut w8, seed, 6);
        let b = trajectory(&mut o32, &mut w32, seed, 6);
        let (last8, last32) = (mat(a.last().unwrap()), mat(b.last().unwrap()));
        let moved = Mat { rows: m, cols: n, data: last32.data.iter().zip(&w0.data).map(|(x, y)| x - y).collect() };
        let err = Mat { rows: m, cols: n, data: last8.data.iter().zip(&last32.data).map(|(x, y)| x - y).collect() };
        // The dynamic map's relative step is ≤ ~5% near the top of a decade; the updates differ by far less.
        prop_assert!(err.norm() < 0.02 * moved.norm(), "8-bit vs f32: {} of the update", err.norm() / moved.norm());
        let quantized = matches!(o8.inner_state(w8.id().unwrap()), Some(Adam8bitState::Q8 { .. }));
        prop_assert!(quantized);
        // 8-bit moments take a quarter of the f32 bytes, plus one f32 scale per 256-value block.
        let q = 2 * (m * rank + 4 * (m * rank).div_ceil(256));
        prop_assert_eq!(o8.moment_bytes(), q);
        prop_assert_eq!(o32.moment_bytes(), 2 * 4 * m * rank);
        // Small tensors: f32 moments, bitwise Adam.
        let mut s8 = param(&[12, 10], seed);
        let mut s32 = param(&[12, 10], seed);
        let mut p8 = GaLore::new(Adam8bit::new(cfg).unwrap());
        let mut p32 = GaLore::new(Adam::new(cfg).unwrap());
        let a = trajectory(&mut p8, &mut s8, seed, 4);
        let b = trajectory(&mut p32, &mut s32, seed, 4);
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(bits(x), bits(y));
        }
    }

    /// Invariant 18: exporting mid-period, importing into a fresh optimizer (another parameter tensor) and
    /// continuing is bit-identical to an uninterrupted run — Adam, 8-bit Adam, SGD and Adafactor, GaLore and plain
    /// parameters — also when the state passed through f32 tensors, as effllm-train's checkpoints store it.
    #[test]
    fn resume_from_exported_state_is_bitwise(ty in proj_types(), cut in 1u64..7, seed in any::<u64>()) {
        fn run<I: InnerOptimizer + Clone>(inner: I, ty: ProjType, cut: u64, seed: u64) -> Result<(), TestCaseError> {
            let params = gp(24, 3, 0.5, ty);
            let mut w = param(&[80, 60], seed);
            let mut b = param(&[80], seed ^ 1);
            let mut full = GaLore::new(inner.clone());
            full.add_target(&w, params).unwrap();
            let mut resumed: Option<(GaLore<I>, Tensor, Tensor)> = None;
            for s in 0..8 {
                let (gw, gb) = (grad(&[80, 60], seed, s), grad(&[80], seed ^ 1, s));
                full.step_param(&mut w, &gw).unwrap();
                full.step_param(&mut b, &gb).unwrap();
                if let Some((opt, wr, br)) = resumed.as_mut() {
                    opt.step_param(wr, &gw).unwrap();
                    opt.step_param(br, &gb).unwrap();
                } else if s + 1 == cut {
                    // Move both parameters into a fresh optimizer through exported state.
                    let (sw, sb) = (resumed_state(&full, &w), resumed_state(&full, &b));
                    let wr = w.detach().requires_grad();
                    let br = b.detach().requires_grad();
                    let mut opt = GaLore::new(inner.clone());
                    opt.add_target(&wr, params).unwrap();
                    opt.import_state(&wr, sw).unwrap();
                    opt.import_state(&br, sb).unwrap();
                    resumed = Some((opt, wr, br));
                }
            }
            let (resumed, wr, br) = resumed.unwrap();
            prop_assert_eq!(bits(&w), bits(&wr));
            prop_assert_eq!(bits(&b), bits(&br));
            prop_assert_eq!(full.state_bytes(), resumed.state_bytes());
            prop_assert_eq!(full.svd_count(), resumed.svd_count());
            Ok(())
        }
        /// The exported state as effllm-train's checkpoints store it: every tensor as f32 (8-bit codes included).
        fn resumed_state<I: InnerOptimizer>(opt: &GaLore<I>, p: &Tensor) -> effllm_optim::ParamState {
            let mut st = opt.export_state(p.id().unwrap()).unwrap();
            for t in st.tensors.values_mut() {
                *t = t.to_dtype(DType::F32).unwrap();
            }
            st
        }
        let cfg = AdamConfig { lr: 1e-2, weight_decay: 0.01, ..AdamConfig::default() };
        run(Adam::new(cfg).unwrap(), ty, cut, seed)?;
        run(Adam8bit::new(cfg).unwrap().with_min_8bit_size(1000), ty, cut, seed)?;
        run(Sgd::new(SgdConfig { lr: 0.05, momentum: 0.9, ..SgdConfig::default() }).unwrap(), ty, cut, seed)?;
        run(Adafactor::new(AdafactorConfig { lr: 1e-2, beta1: Some(0.9), ..AdafactorConfig::default() }).unwrap(), ty, cut, seed)?;
    }
}

/// Invariant 9: the moments are not reset at a refresh: right after it, `M = β₁ M_prev + (1 − β₁) R_new` with
/// `R_new` in the new basis.
#[test]
fn moments_persist_across_a_refresh() {
    let cfg = AdamConfig { lr: 1e-2, ..AdamConfig::default() };
    let mut w = param(&[10, 6], 1);
    let mut opt = GaLore::new(Adam::new(cfg).unwrap());
    opt.add_target(&w, gp(3, 3, 1.0, ProjType::Std)).unwrap();
    let id = w.id().unwrap();
    for s in 0..3 {
        opt.step_param(&mut w, &grad(&[10, 6], 1, s)).unwrap();
    }
    let m_prev = mat(&opt.inner_state(id).unwrap().exp_avg);
    let old_basis = ref_basis(opt.projector(id).unwrap().basis().unwrap());
    let g = grad(&[10, 6], 1, 3);
    opt.step_param(&mut w, &g).unwrap(); // step 3 = T: refresh
    let new_basis = ref_basis(opt.projector(id).unwrap().basis().unwrap());
    assert_ne!(old_basis, new_basis);
    let r_new = reference::project(&mat(&g), &new_basis);
    let want =
        Mat { rows: 10, cols: 3, data: m_prev.data.iter().zip(&r_new.data).map(|(m, r)| 0.9 * m + 0.1 * r).collect() };
    let got = mat(&opt.inner_state(id).unwrap().exp_avg);
    assert!(got.rel_err(&want) < 1e-6, "{}", got.rel_err(&want));
    assert_eq!(opt.steps(id), 4);
}

/// Opt-in re-projection: at a refresh the first moment is carried into the new basis (`M P_old P_newᵀ` for the
/// right side) before the update; V is left as it is.
#[test]
fn first_moment_reprojection_is_opt_in() {
    let cfg = AdamConfig { lr: 1e-2, ..AdamConfig::default() };
    let mut w = param(&[10, 6], 2);
    let mut opt = GaLore::new(Adam::new(cfg).unwrap())
        .with_options(GaLoreOptions { reproject_first_moment: true, ..GaLoreOptions::default() });
    opt.add_target(&w, gp(3, 2, 1.0, ProjType::Right)).unwrap();
    let id = w.id().unwrap();
    for s in 0..2 {
        opt.step_param(&mut w, &grad(&[10, 6], 2, s)).unwrap();
    }
    let st = opt.inner_state(id).unwrap();
    let (m_prev, v_prev) = (mat(&st.exp_avg), mat(&st.exp_avg_sq));
    let RefBasis::Right(p_old) = ref_basis(opt.projector(id).unwrap().basis().unwrap()) else { panic!() };
    let g = grad(&[10, 6], 2, 2);
    opt.step_param(&mut w, &g).unwrap();
    let RefBasis::Right(p_new) = ref_basis(opt.projector(id).unwrap().basis().unwrap()) else { panic!() };
    let carried = m_prev.matmul(&p_old).matmul(&p_new.t());
    let r_new = g_project(&g, &p_new);
    let want_m =
        Mat { rows: 10, cols: 3, data: carried.data.iter().zip(&r_new.data).map(|(m, r)| 0.9 * m + 0.1 * r).collect() };
    let want_v = Mat {
        rows: 10,
        cols: 3,
        data: v_prev.data.iter().zip(&r_new.data).map(|(v, r)| 0.999 * v + 0.001 * r * r).collect(),
    };
    let st = opt.inner_state(id).unwrap();
    assert!(mat(&st.exp_avg).rel_err(&want_m) < 1e-5);
    assert!(mat(&st.exp_avg_sq).rel_err(&want_v) < 1e-5);
}

fn g_project(g: &Tensor, p: &Mat) -> Mat {
    reference::project(&mat(g), &RefBasis::Right(p.clone()))
}

/// Invariant 12 and the torch switches: parameters without GaLore settings get the inner optimizer unchanged —
/// with `AdamConfig::torch()` that is bitwise effllm-optim's `AdamW` (torch.optim semantics), while a GaLore
/// weight in the same optimizer is projected.
#[test]
fn plain_parameters_are_the_inner_optimizer() {
    let tc = AdamConfig { lr: 3e-2, weight_decay: 0.05, ..AdamConfig::torch() };
    let mut galore = GaLore::new(Adam::new(tc).unwrap());
    let mut adamw = AdamW::new(AdamWConfig {
        lr: tc.lr,
        beta1: tc.beta1,
        beta2: tc.beta2,
        eps: tc.eps,
        weight_decay: tc.weight_decay,
        amsgrad: false,
    })
    .unwrap();
    let mut w = param(&[8, 5], 3);
    galore.add_target(&w, gp(2, 3, 0.25, ProjType::Std)).unwrap();
    let mut b = param(&[8], 4);
    let mut b2 = param(&[8], 4);
    for s in 0..7 {
        galore.step_param(&mut w, &grad(&[8, 5], 3, s)).unwrap();
        galore.step_param(&mut b, &grad(&[8], 4, s)).unwrap();
        adamw.step_param(&mut b2, &grad(&[8], 4, s)).unwrap();
        assert_eq!(bits(&b), bits(&b2), "step {s}");
    }
    assert_eq!(galore.inner_state(w.id().unwrap()).unwrap().exp_avg.shape(), &[8, 2]);
    assert_eq!(galore.inner_state(b.id().unwrap()).unwrap().exp_avg.shape(), &[8]);
    // And the HF default plain path follows the f64 reference.
    let cfg = AdamConfig { lr: 2e-2, weight_decay: 0.1, ..AdamConfig::default() };
    let mut opt = GaLore::new(Adam::new(cfg).unwrap());
    let mut v = param(&[4, 3], 5);
    let mut v_ref = mat(&v);
    let mut moments = None;
    for s in 0..6 {
        let g = grad(&[4, 3], 5, s);
        opt.step_param(&mut v, &g).unwrap();
        reference::adam_step(&mut v_ref, &mat(&g), &mut moments, None, &cfg);
        assert!(mat(&v).rel_err(&v_ref) < 1e-6);
    }
}

/// Optimizer-state bytes (§2.6): for `std`, moments `2 · max(m, n) · r′` and basis `min(m, n) · r′` f32 values,
/// against Adam's `2mn`; plain parameters count in full.
#[test]
fn state_bytes_account_for_moments_and_bases() {
    let (m, n, r) = (64, 24, 8);
    let mut w = param(&[m, n], 1);
    let mut b = param(&[m], 2);
    let mut opt = GaLore::new(Adam::new(AdamConfig::default()).unwrap());
    opt.add_target(&w, gp(r, 10, 0.25, ProjType::Std)).unwrap();
    opt.step_param(&mut w, &grad(&[m, n], 1, 0)).unwrap();
    opt.step_param(&mut b, &grad(&[m], 2, 0)).unwrap();
    assert_eq!(opt.moment_bytes(), 4 * (2 * m.max(n) * r + 2 * m));
    assert_eq!(opt.basis_bytes(), 4 * m.min(n) * r);
    assert_eq!(opt.state_bytes(), opt.moment_bytes() + opt.basis_bytes());
    let mut adam = AdamW::new(AdamWConfig::default()).unwrap();
    let mut w2 = param(&[m, n], 1);
    adam.step_param(&mut w2, &grad(&[m, n], 1, 0)).unwrap();
    assert_eq!(adam.state_bytes(), 4 * 2 * m * n);
}

/// Rank capping is recorded where the user can see it, or rejected in strict mode; a `reverse_std` wide matrix with
/// a capped rank (square `R`) trains without a shape error.
#[test]
fn capped_ranks_are_recorded() {
    let w = param(&[4, 9], 1);
    let mut opt = GaLore::new(Adam::new(AdamConfig::default()).unwrap());
    opt.add_target(&w, gp(7, 5, 1.0, ProjType::ReverseStd)).unwrap();
    let notes = opt.rank_notices();
    assert_eq!(notes.len(), 1);
    assert_eq!((notes[0].requested, notes[0].effective, notes[0].m, notes[0].n), (7, 4, 4, 9));
    let mut w = w;
    for s in 0..3 {
        opt.step_param(&mut w, &grad(&[4, 9], 1, s)).unwrap();
    }
    let proj = opt.projector(w.id().unwrap()).unwrap();
    assert_eq!((proj.side(), proj.rank(), proj.low_rank_shape()), (Side::Right, 4, [4, 4]));
    let mut strict = GaLore::new(Adam::new(AdamConfig::default()).unwrap())
        .with_options(GaLoreOptions { strict_rank: true, ..GaLoreOptions::default() });
    assert!(matches!(
        strict.add_target(&w, gp(7, 5, 1.0, ProjType::Std)),
        Err(GaLoreError::RankTooLarge { requested: 7, max: 4, .. })
    ));
}

/// Layer-wise mode: updating each parameter inside the backward sweep gives bitwise the same parameters as
/// stepping after a full backward, while holding fewer gradient bytes at once.
#[test]
fn layerwise_updates_equal_stepping_after_backward() {
    let x = randn(&[5, 12], 1, 1.0);
    let build = || {
        let ws: Vec<Tensor> = vec![param(&[16, 12], 2), param(&[16], 3), param(&[8, 16], 4), param(&[4, 8], 5)];
        let mut opt = GaLore::new(Adam::new(AdamConfig { lr: 1e-2, ..AdamConfig::default() }).unwrap());
        for w in [&ws[0], &ws[2], &ws[3]] {
            opt.add_target(w, gp(3, 2, 0.25, ProjType::Std)).unwrap();
        }
        (ws, opt)
    };
    let loss_of = |ws: &[Tensor]| -> Tensor {
        let h = x
            .matmul(&ws[0].t().unwrap())
            .unwrap()
            .add(&ws[1].unsqueeze(0).unwrap().broadcast_as(&[5, 16]).unwrap())
            .unwrap();
        let h = h.relu().unwrap().matmul(&ws[2].t().unwrap()).unwrap().tanh().unwrap();
        h.matmul(&ws[3].t().unwrap()).unwrap().sqr().unwrap().sum_all().unwrap()
    };
    let (mut a, mut opt_a) = build();
    let (mut b, mut opt_b) = build();
    let total: usize = a.iter().map(|w| w.elem_count() * 4).sum();
    for _ in 0..4 {
        let grads = loss_of(&a).backward().unwrap();
        opt_a.step(&mut a, &grads).unwrap();
        let out = backward_layerwise(&loss_of(&b), &mut b, &mut opt_b).unwrap();
        assert_eq!(out.updated, 4);
        assert!(out.other_gradients.is_empty());
        assert!(out.peak_gradient_bytes < total, "{} of {total}", out.peak_gradient_bytes);
    }
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(bits(x), bits(y));
    }
}

/// Bad input: typed errors, never panics.
#[test]
fn bad_input_is_a_typed_error() {
    let adam = || Adam::new(AdamConfig::default()).unwrap();
    let mut opt = GaLore::new(adam());
    // Hyperparameters.
    assert!(matches!(
        Adam::new(AdamConfig { beta1: 1.0, ..AdamConfig::default() }),
        Err(GaLoreError::Optim(OptimError::InvalidHyperparameter { name: "beta1", .. }))
    ));
    assert!(Adam8bit::new(AdamConfig::default()).unwrap().with_block_size(0).is_err());
    assert!(matches!(
        Adafactor::new(AdafactorConfig { decay_rate: 0.5, ..AdafactorConfig::default() }),
        Err(GaLoreError::Optim(OptimError::InvalidHyperparameter { name: "decay_rate", .. }))
    ));
    // Settings and shapes.
    let w = param(&[6, 4], 1);
    assert!(matches!(
        opt.add_target(&w, gp(0, 5, 1.0, ProjType::Std)),
        Err(GaLoreError::InvalidSetting { name: "rank", .. })
    ));
    assert!(matches!(
        opt.add_target(&param(&[6], 1), gp(2, 5, 1.0, ProjType::Std)),
        Err(GaLoreError::NotAMatrix { .. })
    ));
    assert!(matches!(
        opt.add_target(&param(&[2, 3, 4], 1), gp(2, 5, 1.0, ProjType::Std)),
        Err(GaLoreError::NotAMatrix { .. })
    ));
    assert!(matches!(
        opt.add_target(&randn(&[6, 4], 1, 1.0), gp(2, 5, 1.0, ProjType::Std)),
        Err(GaLoreError::Optim(OptimError::NotAParameter { .. }))
    ));
    // A >2-D parameter with a declared matrix view trains.
    let mut t3 = param(&[2, 3, 4], 7);
    let view = GaLoreParams { matrix_shape: Some((6, 4)), ..gp(2, 5, 1.0, ProjType::Std) };
    opt.add_target(&t3, view).unwrap();
    opt.step_param(&mut t3, &grad(&[2, 3, 4], 7, 0)).unwrap();
    assert_eq!(opt.inner_state(t3.id().unwrap()).unwrap().exp_avg.shape(), &[6, 2]);
    // Gradient of the wrong shape.
    let mut w = w;
    opt.add_target(&w, gp(2, 5, 1.0, ProjType::Std)).unwrap();
    assert!(matches!(opt.step_param(&mut w, &grad(&[4, 6], 1, 0)), Err(OptimError::GradientMismatch { .. })));
    opt.step_param(&mut w, &grad(&[6, 4], 1, 0)).unwrap();
    // Settings cannot change once the parameter has state.
    assert!(matches!(opt.add_target(&w, gp(3, 5, 1.0, ProjType::Std)), Err(GaLoreError::BadState(_))));
    // Checkpoints that do not fit.
    let state = opt.export_state(w.id().unwrap()).unwrap();
    let fresh = |rank| {
        let w2 = param(&[6, 4], 1);
        let mut o = GaLore::new(adam());
        if rank > 0 {
            o.add_target(&w2, gp(rank, 5, 1.0, ProjType::Std)).unwrap();
        }
        (w2, o)
    };
    let (w2, mut o) = fresh(3);
    assert!(matches!(o.import_state(&w2, state.clone()), Err(OptimError::BadState { .. })), "rank differs");
    let (w2, mut o) = fresh(0);
    assert!(matches!(o.import_state(&w2, state.clone()), Err(OptimError::BadState { .. })), "not a target");
    let (w2, mut o) = fresh(2);
    let mut broken = state.clone();
    broken.tensors.remove("galore.basis");
    assert!(matches!(o.import_state(&w2, broken), Err(OptimError::BadState { .. })), "basis missing");
    let mut broken = state.clone();
    broken.tensors.insert("galore.basis".into(), randn(&[3, 4], 1, 1.0));
    assert!(matches!(o.import_state(&w2, broken), Err(OptimError::BadState { .. })), "basis shape");
    let mut broken = state.clone();
    broken.tensors.insert("exp_avg".into(), randn(&[6, 4], 1, 1.0));
    assert!(matches!(o.import_state(&w2, broken), Err(OptimError::BadState { .. })), "full-size moments");
    let mut plain_state = state.clone();
    plain_state.scalars.retain(|k, _| !k.starts_with("galore."));
    plain_state.tensors.retain(|k, _| !k.starts_with("galore."));
    assert!(matches!(o.import_state(&w2, plain_state), Err(OptimError::BadState { .. })), "no projector state");
    o.import_state(&w2, state).unwrap();
    // A replay source without a basis for this parameter.
    let mut w3 = param(&[6, 4], 9);
    let mut o = GaLore::new(adam()).with_basis_source(Replay::new());
    o.add_target(&w3, gp(2, 5, 1.0, ProjType::Std)).unwrap();
    let e = o.update(&mut w3, &grad(&[6, 4], 9, 0)).unwrap_err();
    assert!(matches!(e, GaLoreError::ReplayExhausted { refresh: 0, .. }), "{e}");
    // A replayed basis of the wrong side.
    let mut replay = Replay::new();
    replay.fixed(w3.id().unwrap(), Basis::Left(randn(&[6, 2], 1, 1.0)));
    let mut o = GaLore::new(adam()).with_basis_source(replay);
    o.add_target(&w3, gp(2, 5, 1.0, ProjType::Std)).unwrap();
    assert!(matches!(o.update(&mut w3, &grad(&[6, 4], 9, 0)), Err(GaLoreError::BadBasis(_))));
}
