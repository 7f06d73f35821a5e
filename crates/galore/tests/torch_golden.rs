//! Golden test against galore-torch 1.0 (`GaLoreProjector`, `GaLoreAdamW`; float32 on the CPU), from
//! `tests/fixtures/galore_torch.json`, written by `scripts/fixtures/galore_torch.py` (see its docstring to
//! regenerate it).
//!
//! - Projector, replay: torch's basis installed in our projector gives torch's `R` and `α·back(R)`.
//! - Projector, own SVD: our basis spans torch's subspace (`α·back(project(G))` and `PPᵀ` / `PᵀP` are
//!   sign-invariant), and `‖R‖² = Σ_{i≤r′} s_i²` with torch's singular values.
//! - Optimizer, replay: torch's bases fed through [`Replay`] at the refreshes (steps 0, T, 2T, 3T): W, b and all four
//!   moments match torch after every step, across three refreshes (moments are kept across them).
//! - Optimizer, own SVD: W and b match for the first period (signs do not matter within one).
//! - GaLoreAdafactor (fixed lr, as `torchrun_main.py` runs it), replaying torch's bases: W, b, the factored
//!   second moment of W's low-rank gradient, b's full one and the first moment match after every step.
//!
//! The fixture was produced with torch 2.11 on the GPU machine (see the script) and is committed; a missing or
//! unreadable fixture fails the tests.

use effllm_optim::Optimizer;
use effllm_tensor::{Device, Tensor, TensorId};
use galore::{
    Adafactor, AdafactorConfig, Adam, AdamConfig, Basis, BasisSource, DecayMode, EpsMode, ExactSvd, GaLore,
    GaLoreParams, GaLoreProjector, ParamKey, ProjType, Replay, SecondMoment,
};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as usize).collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing"))
}

fn tensor(v: &Value, shape: &[usize]) -> Tensor {
    Tensor::from_vec(floats(v), shape, &Device::Cpu).unwrap()
}

/// `‖a − b‖ / ‖b‖`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    if n > 0.0 { d / n } else { d }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

/// torch's basis of a record (`ortho` or `ortho_a` / `ortho_b`) for a projector of `proj_type` on `m × n`.
fn torch_basis(rec: &Value, proj_type: ProjType, m: usize, n: usize) -> Basis {
    if rec.get("ortho_a").is_some() {
        let left = tensor(&rec["ortho_a"], &usizes(&rec["ortho_a_shape"]));
        let right = tensor(&rec["ortho_b"], &usizes(&rec["ortho_b_shape"]));
        return Basis::Both { left, right };
    }
    let p = tensor(&rec["ortho"], &usizes(&rec["ortho_shape"]));
    match proj_type.side(m, n) {
        galore::Side::Left => Basis::Left(p),
        galore::Side::Right => Basis::Right(p),
        galore::Side::Both => unreachable!("full records hold ortho_a / ortho_b"),
    }
}

/// `XXᵀ` for right bases, `XᵀX`-free form for left ones: the projector matrix onto the basis' span (sign-free).
fn span_projector(b: &Basis) -> Vec<f32> {
    let p = |x: &Tensor, rows: bool| -> Vec<f32> {
        let q = if rows { x.t().unwrap().matmul(x).unwrap() } else { x.matmul(&x.t().unwrap()).unwrap() };
        vec_of(&q)
    };
    match b {
        Basis::Left(x) => p(x, false),
        Basis::Right(x) => p(x, true),
        Basis::Both { left, right } => [p(left, false), p(right, true)].concat(),
    }
}

/// The committed fixture (generated on a machine with torch by `scripts/fixtures/galore_torch.py`).
fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/galore_torch.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (regenerate it with scripts/fixtures/galore_torch.py)"));
    let doc: Value = serde_json::from_str(&text).expect("valid fixture JSON");
    assert_eq!(doc["reference"].as_str(), Some("galore-torch==1.0"));
    doc
}

#[test]
fn projector_matches_galore_torch() {
    let doc = load();
    let version = doc["torch_version"].as_str().unwrap().to_string();
    let cases = doc["projector_cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "{} projector cases", cases.len());
    for (ci, c) in cases.iter().enumerate() {
        let (m, n) = (num(c, "m") as usize, num(c, "n") as usize);
        let ty = ProjType::from_name(c["proj_type"].as_str().unwrap()).unwrap();
        let params = GaLoreParams {
            rank: num(c, "rank") as usize,
            update_proj_gap: 4,
            scale: num(c, "scale"),
            proj_type: ty,
            matrix_shape: None,
        };
        let g = tensor(&c["g"], &[m, n]);
        let want_r = floats(&c["r"]);
        let want_back = floats(&c["back"]);
        let what = format!("case {ci} ({m}x{n} {ty:?} rank {} scale {}) vs torch {version}", params.rank, params.scale);

        // Replay: torch's basis in our projector.
        let mut proj = GaLoreProjector::new(params, &[m, n]).unwrap();
        assert_eq!(proj.low_rank_shape().to_vec(), usizes(&c["r_shape"]), "{what}");
        proj.set_basis(torch_basis(c, ty, m, n)).unwrap();
        let r = proj.project_current(&g).unwrap();
        assert!(rel(&vec_of(&r), &want_r) < 1e-6, "{what}: R {}", rel(&vec_of(&r), &want_r));
        let back = proj.project_back(&r).unwrap();
        assert!(rel(&vec_of(&back), &want_back) < 1e-6, "{what}: back {}", rel(&vec_of(&back), &want_back));

        // Own SVD: the same subspace and energy.
        let mut own = GaLoreProjector::new(params, &[m, n]).unwrap();
        own.refresh(&g, ParamKey::standalone(), 0, &mut ExactSvd).unwrap();
        let r = own.project_current(&g).unwrap();
        let back = own.project_back(&r).unwrap();
        assert!(rel(&vec_of(&back), &want_back) < 1e-4, "{what}: own back {}", rel(&vec_of(&back), &want_back));
        let torch_span = span_projector(proj.basis().unwrap());
        let own_span = span_projector(own.basis().unwrap());
        assert!(rel(&own_span, &torch_span) < 1e-4, "{what}: span {}", rel(&own_span, &torch_span));
        let s = floats(&c["singular_values"]);
        let energy: f64 = s[..own.rank()].iter().map(|x| (*x as f64).powi(2)).sum();
        let r2: f64 = vec_of(&r).iter().map(|x| (*x as f64).powi(2)).sum();
        assert!((r2 - energy).abs() < 1e-5 * energy, "{what}: ‖R‖² {r2} vs Σs² {energy}");
    }
}

/// One optimizer case: W (GaLore) and b (plain) in one optimizer.
struct Run {
    w: Tensor,
    b: Tensor,
    opt: GaLore<Adam>,
}

/// The case's GaLore group settings.
fn galore_params(c: &Value) -> GaLoreParams {
    let g = &c["galore"];
    GaLoreParams {
        rank: num(g, "rank") as usize,
        update_proj_gap: num(g, "update_proj_gap") as u64,
        scale: num(g, "scale"),
        proj_type: ProjType::from_name(g["proj_type"].as_str().unwrap()).unwrap(),
        matrix_shape: None,
    }
}

fn case_settings(c: &Value) -> (GaLoreParams, AdamConfig) {
    let params = galore_params(c);
    let hp = &c["hyperparameters"];
    let cfg = AdamConfig {
        lr: num(hp, "lr"),
        beta1: hp["betas"][0].as_f64().unwrap(),
        beta2: hp["betas"][1].as_f64().unwrap(),
        eps: num(hp, "eps"),
        weight_decay: num(hp, "weight_decay"),
        correct_bias: hp["correct_bias"].as_bool().unwrap(),
        decay: DecayMode::HfAfterUpdate,
        eps_mode: EpsMode::Hf,
    };
    (params, cfg)
}

/// A run whose basis source is built from W's id.
fn run(c: &Value, source: impl FnOnce(TensorId) -> Box<dyn BasisSource>) -> Run {
    let (m, n) = (num(c, "m") as usize, num(c, "n") as usize);
    let (params, cfg) = case_settings(c);
    let w = tensor(&c["w0"], &[m, n]).requires_grad();
    let b = tensor(&c["b0"], &[m]).requires_grad();
    let mut opt = GaLore::new(Adam::new(cfg).unwrap()).with_basis_source(source(w.id().unwrap()));
    opt.add_target(&w, params).unwrap();
    Run { w, b, opt }
}

#[test]
fn galore_adamw_matches_galore_torch() {
    let doc = load();
    let version = doc["torch_version"].as_str().unwrap().to_string();
    let cases = doc["optimizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 9, "{} optimizer cases", cases.len());
    for (ci, c) in cases.iter().enumerate() {
        let (m, n) = (num(c, "m") as usize, num(c, "n") as usize);
        let (params, _) = case_settings(c);
        let gap = params.update_proj_gap as usize;
        let after = c["after_each_step"].as_array().unwrap();
        let (gw, gb) = (c["grads_w"].as_array().unwrap(), c["grads_b"].as_array().unwrap());

        // torch's bases at its refreshes (steps 0, T, 2T, ...); they must hold still in between.
        let mut refreshes = Vec::new();
        for (s, rec) in after.iter().enumerate() {
            if s % gap == 0 {
                refreshes.push(torch_basis(rec, params.proj_type, m, n));
            } else {
                let key = if rec.get("ortho").is_some() { "ortho" } else { "ortho_a" };
                assert_eq!(after[s - 1][key], rec[key], "case {ci}: torch's basis changed at step {s} (T = {gap})");
            }
        }
        let n_refreshes = refreshes.len();
        let mut replayed = run(c, move |id| {
            let mut replay = Replay::new();
            for b in refreshes {
                replay.push(id, b);
            }
            Box::new(replay)
        });
        let mut free = run(c, |_| Box::new(ExactSvd));

        for (s, rec) in after.iter().enumerate() {
            let what =
                format!("case {ci} ({m}x{n} {:?} rank {}) step {s} vs torch {version}", params.proj_type, params.rank);
            assert_eq!(num(rec, "step") as usize, s + 1, "{what}");
            let (g_w, g_b) = (tensor(&gw[s], &[m, n]), tensor(&gb[s], &[m]));
            let r = &mut replayed;
            r.opt.step_param(&mut r.w, &g_w).unwrap();
            r.opt.step_param(&mut r.b, &g_b).unwrap();
            let st_w = r.opt.inner_state(r.w.id().unwrap()).unwrap();
            let st_b = r.opt.inner_state(r.b.id().unwrap()).unwrap();
            assert_eq!(st_w.exp_avg.shape().to_vec(), usizes(&rec["w_exp_avg_shape"]), "{what}");
            for (name, got, want, tol) in [
                ("W", vec_of(&r.w), floats(&rec["w"]), 1e-6),
                ("b", vec_of(&r.b), floats(&rec["b"]), 1e-6),
                ("W exp_avg", vec_of(&st_w.exp_avg), floats(&rec["w_exp_avg"]), 1e-5),
                ("W exp_avg_sq", vec_of(&st_w.exp_avg_sq), floats(&rec["w_exp_avg_sq"]), 1e-5),
                ("b exp_avg", vec_of(&st_b.exp_avg), floats(&rec["b_exp_avg"]), 1e-6),
                ("b exp_avg_sq", vec_of(&st_b.exp_avg_sq), floats(&rec["b_exp_avg_sq"]), 1e-6),
            ] {
                let e = rel(&got, &want);
                assert!(e < tol, "{what}: {name} rel {e:e}\nours  {got:?}\ntorch {want:?}");
            }

            // Own SVD: W within the first period (LAPACK's and faer's signs differ), b always.
            free.opt.step_param(&mut free.w, &g_w).unwrap();
            free.opt.step_param(&mut free.b, &g_b).unwrap();
            if s < gap {
                let e = rel(&vec_of(&free.w), &floats(&rec["w"]));
                assert!(e < 1e-5, "{what}: W with our own SVD, rel {e:e}");
            }
            assert!(rel(&vec_of(&free.b), &floats(&rec["b"])) < 1e-6, "{what}: b with our own SVD");
        }
        let id = replayed.w.id().unwrap();
        assert_eq!(replayed.opt.projector(id).unwrap().svd_count() as usize, n_refreshes);
    }
}

#[test]
fn galore_adafactor_matches_galore_torch() {
    let doc = load();
    let version = doc["torch_version"].as_str().unwrap().to_string();
    let cases = doc["adafactor_cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "{} adafactor cases", cases.len());
    for (ci, c) in cases.iter().enumerate() {
        let (m, n) = (num(c, "m") as usize, num(c, "n") as usize);
        let params = galore_params(c);
        let hp = &c["hyperparameters"];
        assert_eq!((hp["scale_parameter"].as_bool(), hp["relative_step"].as_bool()), (Some(false), Some(false)));
        let cfg = AdafactorConfig {
            lr: num(hp, "lr"),
            beta1: hp["beta1"].as_f64(),
            eps: hp["eps"][0].as_f64().unwrap(),
            clip_threshold: num(hp, "clip_threshold"),
            decay_rate: num(hp, "decay_rate"),
            weight_decay: num(hp, "weight_decay"),
        };
        let gap = params.update_proj_gap as usize;
        let after = c["after_each_step"].as_array().unwrap();
        let (gw, gb) = (c["grads_w"].as_array().unwrap(), c["grads_b"].as_array().unwrap());
        let mut w = tensor(&c["w0"], &[m, n]).requires_grad();
        let mut b = tensor(&c["b0"], &[m]).requires_grad();
        let mut replay = Replay::new();
        for (s, rec) in after.iter().enumerate() {
            if s % gap == 0 {
                replay.push(w.id().unwrap(), torch_basis(rec, params.proj_type, m, n));
            }
        }
        let mut opt = GaLore::new(Adafactor::new(cfg).unwrap()).with_basis_source(replay);
        opt.add_target(&w, params).unwrap();
        for (s, rec) in after.iter().enumerate() {
            let what = format!(
                "adafactor case {ci} ({m}x{n} {:?} rank {}) step {s} vs torch {version}",
                params.proj_type, params.rank
            );
            opt.step_param(&mut w, &tensor(&gw[s], &[m, n])).unwrap();
            opt.step_param(&mut b, &tensor(&gb[s], &[m])).unwrap();
            let st_w = opt.inner_state(w.id().unwrap()).unwrap();
            let st_b = opt.inner_state(b.id().unwrap()).unwrap();
            let SecondMoment::Factored { row, col } = &st_w.second else { panic!("{what}: W's moment is factored") };
            let SecondMoment::Full(v_b) = &st_b.second else { panic!("{what}: b's moment is full") };
            let mut checks = vec![
                ("W", vec_of(&w), floats(&rec["w"])),
                ("b", vec_of(&b), floats(&rec["b"])),
                ("W exp_avg_sq_row", vec_of(row), floats(&rec["w_exp_avg_sq_row"])),
                ("W exp_avg_sq_col", vec_of(col), floats(&rec["w_exp_avg_sq_col"])),
                ("b exp_avg_sq", vec_of(v_b), floats(&rec["b_exp_avg_sq"])),
            ];
            if let Some(m1) = &st_w.exp_avg {
                checks.push(("W exp_avg", vec_of(m1), floats(&rec["w_exp_avg"])));
            }
            assert_eq!(st_w.exp_avg.is_some(), rec.get("w_exp_avg").is_some(), "{what}");
            for (name, got, want) in checks {
                let e = rel(&got, &want);
                assert!(e < 1e-5, "{what}: {name} rel {e:e}\nours  {got:?}\ntorch {want:?}");
            }
        }
    }
}
