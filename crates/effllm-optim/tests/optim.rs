//! The optimizers, the schedule and clipping against the naive f64 reference, and their use from a backward sweep.
//!
//! Tolerances: parameters after several f32 steps vs the f64 reference, `‖got − want‖ / ‖want‖ < 1e-5` (state and
//! arithmetic in f32); schedule and clipping coefficients to 1e-12 (both f64).

use effllm_optim::reference::{self, AdamState};
use effllm_optim::schedule::WarmupCosine;
use effllm_optim::{AdamW, AdamWConfig, OptimError, Optimizer, Sgd, SgdConfig, clip};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Gradients, Tensor};
use proptest::prelude::*;

fn normals(n: usize, seed: u64, stream: u64, scale: f64) -> Vec<f64> {
    let rng = CounterRng::new(seed, stream);
    (0..n as u64).map(|i| rng.normal_at(i) * scale).collect()
}

fn param(v: &[f64]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(f, &[v.len()], &Device::Cpu).unwrap().requires_grad()
}

fn f32_as_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

/// f32-rounded values as f64 (the reference starts from exactly what the f32 parameter holds).
fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn adamw_matches_reference(n in 1usize..40, steps in 1usize..8, lr in 1e-4f64..1e-1, wd in 0.0f64..0.2,
                               amsgrad in any::<bool>(), seed in any::<u64>()) {
        let cfg = AdamWConfig { lr, weight_decay: wd, amsgrad, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg).unwrap();
        let init = rounded(&normals(n, seed, 0, 1.0));
        let mut p = param(&init);
        let mut want = init.clone();
        let mut st = AdamState::default();
        for s in 0..steps {
            // Gradients of varying scale, so that AMSGrad's maximum matters.
            let g = rounded(&normals(n, seed, 1 + s as u64, 1.0 / (1.0 + s as f64)));
            let gt = Tensor::from_vec(g.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[n], &Device::Cpu).unwrap();
            opt.step_param(&mut p, &gt).unwrap();
            reference::adamw_step(&mut want, &g, &mut st, lr, cfg.beta1, cfg.beta2, cfg.eps, wd, amsgrad);
        }
        let err = rel_l2(&f32_as_f64(&p), &want);
        prop_assert!(err < 1e-5, "rel L2 {err:e}");
        prop_assert_eq!(opt.steps(p.id().unwrap()), steps as u64);
        prop_assert_eq!(opt.state_bytes(), n * 4 * if amsgrad { 3 } else { 2 });
    }

    #[test]
    fn sgd_matches_reference(n in 1usize..40, steps in 1usize..8, lr in 1e-4f64..1e-1, momentum in 0.0f64..0.99,
                             dampening in 0.0f64..0.5, wd in 0.0f64..0.2, nesterov in any::<bool>(), seed in any::<u64>()) {
        let dampening = if nesterov { 0.0 } else { dampening };
        let momentum = if nesterov { momentum.max(0.1) } else { momentum };
        let mut opt = Sgd::new(SgdConfig { lr, momentum, dampening, weight_decay: wd, nesterov }).unwrap();
        let init = rounded(&normals(n, seed, 0, 1.0));
        let mut p = param(&init);
        let mut want = init.clone();
        let mut buf = None;
        for s in 0..steps {
            let g = rounded(&normals(n, seed, 1 + s as u64, 1.0));
            let gt = Tensor::from_vec(g.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[n], &Device::Cpu).unwrap();
            opt.step_param(&mut p, &gt).unwrap();
            reference::sgd_step(&mut want, &g, &mut buf, lr, momentum, dampening, wd, nesterov);
        }
        let err = rel_l2(&f32_as_f64(&p), &want);
        prop_assert!(err < 1e-5, "rel L2 {err:e}");
    }

    #[test]
    fn schedule_matches_reference(peak in 1e-5f64..1e-2, frac in 0.0f64..1.0, warmup in 0u64..50, extra in 1u64..500, s in 0u64..700) {
        let min = peak * frac;
        let total = warmup + extra;
        let sch = WarmupCosine::new(peak, min, warmup, total).unwrap();
        let want = reference::warmup_cosine(s, peak, min, warmup, total);
        prop_assert!((sch.lr(s) - want).abs() <= 1e-12 * peak);
        prop_assert!(sch.lr(s) <= peak * (1.0 + 1e-12) && sch.lr(s) >= 0.0);
        if s >= warmup && s < total {
            prop_assert!(sch.lr(s + 1) <= sch.lr(s) + 1e-15, "the cosine part never rises");
        }
    }

    #[test]
    fn clipping_matches_reference(sizes in prop::collection::vec(1usize..20, 1..5), scale in 0.01f64..10.0, max_norm in 0.1f64..5.0, seed in any::<u64>()) {
        let vals: Vec<Vec<f64>> = sizes.iter().enumerate().map(|(i, &n)| rounded(&normals(n, seed, i as u64, scale))).collect();
        let mut grads = Gradients::new();
        let leaves: Vec<Tensor> = vals.iter().map(|v| param(v)).collect();
        for (leaf, v) in leaves.iter().zip(&vals) {
            grads.insert(leaf.id().unwrap(), Tensor::from_vec(v.clone(), &[v.len()], &Device::Cpu).unwrap());
        }
        let (want_norm, want) = reference::clip_grad_norm(&vals, max_norm);
        let norm = clip::clip_grad_norm(&mut grads, max_norm).unwrap();
        prop_assert!((norm - want_norm).abs() <= 1e-12 * want_norm);
        for (leaf, w) in leaves.iter().zip(&want) {
            let got = grads.get(leaf).unwrap().to_vec_f64().unwrap();
            prop_assert!(rel_l2(&got, w) < 1e-12);
        }
        prop_assert!(clip::global_norm(&grads).unwrap() <= max_norm * (1.0 + 1e-9));
    }
}

/// Training a tiny least-squares problem: the loss falls, and stepping from the gradient-ready callback (one
/// parameter at a time, gradient freed at once) gives exactly the parameters of stepping over the set afterwards.
#[test]
fn callback_driven_steps_equal_set_steps() {
    let x = Tensor::from_vec(normals(24, 1, 0, 1.0), &[6, 4], &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let y = Tensor::from_vec(normals(6 * 3, 1, 1, 1.0), &[6, 3], &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let init_w = param(&rounded(&normals(12, 1, 2, 0.5))).reshape(&[3, 4]).unwrap().detach().requires_grad();
    let init_b = param(&rounded(&normals(3, 1, 3, 0.5)));
    let loss_of = |w: &Tensor, b: &Tensor| {
        x.linear(w).unwrap().add(b).unwrap().sub(&y).unwrap().sqr().unwrap().sum_all().unwrap()
    };
    let cfg = AdamWConfig { lr: 0.05, ..AdamWConfig::default() };

    // Over the set.
    let mut params = vec![init_w.clone(), init_b.clone()];
    let mut opt = AdamW::new(cfg).unwrap();
    let first = loss_of(&params[0], &params[1]).to_scalar::<f32>().unwrap();
    for _ in 0..20 {
        let grads = loss_of(&params[0], &params[1]).backward().unwrap();
        opt.step(&mut params, &grads).unwrap();
    }
    let last = loss_of(&params[0], &params[1]).to_scalar::<f32>().unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");

    // From the callback.
    let mut cb_params = vec![init_w.clone(), init_b.clone()];
    let mut cb_opt = AdamW::new(cfg).unwrap();
    for _ in 0..20 {
        let loss = loss_of(&cb_params[0], &cb_params[1]);
        let mut grads = Gradients::new();
        let mut fired = 0;
        grads
            .accumulate_with(&loss, None, &mut |id, store| {
                let g = store.take_id(id).expect("the gradient is in the store when the callback runs");
                let p = cb_params.iter_mut().find(|p| p.id() == Some(id)).expect("a known parameter");
                cb_opt.step_param(p, &g).map_err(|e| match e {
                    OptimError::Tensor(t) => t,
                    other => panic!("{other}"),
                })?;
                fired += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(fired, 2);
        assert!(grads.is_empty());
    }
    for (a, b) in params.iter().zip(&cb_params) {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert!(b.is_leaf());
    }
}

/// bf16 parameters are updated in f32 and rounded once; the id survives the update.
#[test]
fn bf16_parameters_keep_their_dtype_and_id() {
    let mut p = param(&rounded(&normals(8, 4, 0, 1.0))).to_dtype(DType::BF16).unwrap().detach().requires_grad();
    let id = p.id();
    let g = Tensor::from_vec(normals(8, 4, 1, 1.0), &[8], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let before = p.to_vec_f64().unwrap();
    let mut opt = Sgd::new(SgdConfig { lr: 0.1, ..SgdConfig::default() }).unwrap();
    opt.step_param(&mut p, &g).unwrap();
    assert_eq!(p.dtype(), DType::BF16);
    assert_eq!(p.id(), id);
    let want: Vec<f64> = before.iter().zip(g.to_vec_f64().unwrap()).map(|(x, g)| x - 0.1 * g).collect();
    // One bf16 rounding of the result (8 significant bits).
    assert!(rel_l2(&p.to_vec_f64().unwrap(), &want) < 1e-2);
}

/// Bad hyperparameters and non-parameters are typed errors.
#[test]
fn errors_are_typed() {
    let bad = |r: Result<AdamW, OptimError>| matches!(r, Err(OptimError::InvalidHyperparameter { .. }));
    assert!(bad(AdamW::new(AdamWConfig { lr: -1.0, ..AdamWConfig::default() })));
    assert!(bad(AdamW::new(AdamWConfig { beta1: 1.0, ..AdamWConfig::default() })));
    assert!(bad(AdamW::new(AdamWConfig { beta2: -0.1, ..AdamWConfig::default() })));
    assert!(bad(AdamW::new(AdamWConfig { eps: f64::NAN, ..AdamWConfig::default() })));
    assert!(matches!(
        Sgd::new(SgdConfig { nesterov: true, momentum: 0.0, ..SgdConfig::default() }),
        Err(OptimError::InvalidHyperparameter { .. })
    ));
    assert!(WarmupCosine::new(1e-3, 2e-3, 0, 10).is_err());
    assert!(WarmupCosine::new(1e-3, 0.0, 10, 10).is_err());
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let mut plain = Tensor::from_vec(vec![1f32, 2.0], &[2], &Device::Cpu).unwrap();
    let g = Tensor::from_vec(vec![0.5f32, 0.5], &[2], &Device::Cpu).unwrap();
    assert!(matches!(opt.step_param(&mut plain, &g), Err(OptimError::NotAParameter { .. })));
    let mut p = plain.requires_grad();
    let g3 = Tensor::from_vec(vec![0.5f32, 0.5, 0.5], &[3], &Device::Cpu).unwrap();
    assert!(matches!(opt.step_param(&mut p, &g3), Err(OptimError::GradientMismatch { .. })));
    let mut grads = Gradients::new();
    grads.insert(p.id().unwrap(), Tensor::from_vec(vec![f32::NAN, 1.0], &[2], &Device::Cpu).unwrap());
    assert!(matches!(clip::clip_grad_norm(&mut grads, 1.0), Err(OptimError::NonFiniteNorm(_))));
    opt.step_param(&mut p, &g).unwrap();
    assert_eq!(opt.state_bytes(), 2 * 2 * 4);
    assert!(opt.forget(p.id().unwrap()));
    assert_eq!(opt.state_bytes(), 0);
}

/// Checkpointing: after `k` steps, the exported state imported into a fresh optimizer for a fresh copy of the
/// parameter continues bitwise as the original does.
fn resume_is_bitwise(mut make: impl FnMut() -> Box<dyn Optimizer>) {
    let init = normals(13, 7, 0, 1.0);
    let grad = |s: u64| {
        Tensor::from_vec(normals(13, 7, 100 + s, 0.5).iter().map(|&x| x as f32).collect(), &[13], &Device::Cpu).unwrap()
    };
    let mut a = param(&init);
    let mut opt_a = make();
    for s in 0..3 {
        opt_a.step_param(&mut a, &grad(s)).unwrap();
    }
    let id = a.id().unwrap();
    let state = opt_a.export_state(id).expect("state after three steps");
    let mut b = Tensor::from_vec(a.to_vec::<f32>().unwrap(), &[13], &Device::Cpu).unwrap().requires_grad();
    let mut opt_b = make();
    assert_eq!(opt_b.name(), opt_a.name());
    opt_b.import_state(&b, state).unwrap();
    assert_eq!(opt_b.state_bytes(), opt_a.state_bytes());
    for s in 3..6 {
        opt_a.step_param(&mut a, &grad(s)).unwrap();
        opt_b.step_param(&mut b, &grad(s)).unwrap();
    }
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
}

#[test]
fn exported_state_resumes_bitwise() {
    resume_is_bitwise(|| Box::new(AdamW::new(AdamWConfig { lr: 0.05, ..AdamWConfig::default() }).unwrap()));
    resume_is_bitwise(|| {
        Box::new(AdamW::new(AdamWConfig { lr: 0.05, amsgrad: true, ..AdamWConfig::default() }).unwrap())
    });
    resume_is_bitwise(|| Box::new(Sgd::new(SgdConfig { lr: 0.1, momentum: 0.9, ..SgdConfig::default() }).unwrap()));
}

#[test]
fn bad_state_is_a_typed_error() {
    let p = param(&normals(4, 1, 0, 1.0));
    let mut adam = AdamW::new(AdamWConfig::default()).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.step_param(&mut p.clone(), &Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], &[4], &Device::Cpu).unwrap())
        .unwrap();
    let good = opt.export_state(p.id().unwrap()).unwrap();
    let mut missing = good.clone();
    missing.tensors.remove("exp_avg_sq");
    assert!(matches!(adam.import_state(&p, missing), Err(OptimError::BadState { .. })));
    let mut wrong_shape = good.clone();
    wrong_shape.tensors.insert("exp_avg".into(), Tensor::from_vec(vec![1.0f32; 5], &[5], &Device::Cpu).unwrap());
    let e = adam.import_state(&p, wrong_shape).unwrap_err();
    assert!(e.to_string().contains("exp_avg"), "{e}");
    let mut bad_step = good.clone();
    bad_step.scalars.insert("step".into(), -1.5);
    assert!(matches!(adam.import_state(&p, bad_step), Err(OptimError::BadState { .. })));
    let mut ams = AdamW::new(AdamWConfig { amsgrad: true, ..AdamWConfig::default() }).unwrap();
    assert!(matches!(ams.import_state(&p, good), Err(OptimError::BadState { .. })));
}

/// AdamW's fused CPU pass (contiguous f32) and its composed tensor-op form (any other layout, and CUDA) give the
/// same parameters: a transposed parameter takes the composed path.
#[test]
fn fused_and_composed_adamw_agree() {
    let init = normals(24, 3, 0, 1.0);
    let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.1, amsgrad: true, ..AdamWConfig::default() };
    let mut a = param(&init).reshape(&[4, 6]).unwrap().detach().requires_grad();
    // The same logical [4, 6] values, stored transposed.
    let base = param(&init).reshape(&[4, 6]).unwrap().detach().t().unwrap().contiguous().unwrap();
    let mut b = base.t().unwrap().requires_grad(); // [4, 6], not contiguous
    assert!(!b.is_contiguous());
    let (mut oa, mut ob) = (AdamW::new(cfg).unwrap(), AdamW::new(cfg).unwrap());
    for s in 0..4 {
        let g: Vec<f32> = normals(24, 3, 10 + s, 0.3).iter().map(|&x| x as f32).collect();
        let ga = Tensor::from_vec(g.clone(), &[4, 6], &Device::Cpu).unwrap();
        oa.step_param(&mut a, &ga).unwrap();
        ob.step_param(&mut b, &ga).unwrap();
        // The write-back made b contiguous: store it transposed again so every step takes the composed path.
        let stored_t = b.detach().t().unwrap().contiguous().unwrap();
        b.replace_data(&stored_t.t().unwrap()).unwrap();
        assert!(!b.is_contiguous());
    }
    let init32 = rounded(&init);
    let da: Vec<f64> = f32_as_f64(&a).iter().zip(&init32).map(|(x, y)| x - y).collect();
    let db: Vec<f64> = f32_as_f64(&b.contiguous().unwrap()).iter().zip(&init32).map(|(x, y)| x - y).collect();
    assert!(rel_l2(&db, &da) < 1e-5, "updates differ: {:e}", rel_l2(&db, &da));
}

/// A scaled step (global-norm clipping's factor handed to the optimizer) is the step on the scaled gradient, bit for
/// bit, for AdamW (its own override) and SGD (the trait's default).
#[test]
fn scaled_steps_equal_steps_on_scaled_gradients() {
    let makers: [fn() -> Box<dyn Optimizer>; 2] = [
        || Box::new(AdamW::new(AdamWConfig { lr: 0.02, weight_decay: 0.1, ..AdamWConfig::default() }).unwrap()),
        || Box::new(Sgd::new(SgdConfig { lr: 0.05, momentum: 0.9, ..SgdConfig::default() }).unwrap()),
    ];
    for make in makers {
        let (mut oa, mut ob) = (make(), make());
        let mut a = param(&normals(30, 8, 0, 1.0)).requires_grad();
        let mut b = param(&normals(30, 8, 0, 1.0)).requires_grad();
        for s in 0..3 {
            let g = param(&normals(30, 8, 1 + s, 2.0));
            oa.step_param_scaled(&mut a, &g, 0.3).unwrap();
            ob.step_param(&mut b, &g.affine(0.3, 0.0).unwrap()).unwrap();
        }
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{}", oa.name());
    }
}
