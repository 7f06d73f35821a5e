//! Timestep-norm invariants (spec §5, 10–15 and 22): the closed form, causality, t = 0 is GroupNorm, split/stream
//! with the carried state, invariance to per-group shifts and to scale, padding = deleting the step, gradients
//! against central finite differences (x, weight, bias, incoming mean and variance), and typed errors.

// Index loops mirror the equations (t, d, n) in these checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use effllm_tensor::{DType, Device, Tensor, no_grad};
use megalodon::reference::{self, TsnState as RefState};
use megalodon::{MegalodonError, TimestepNorm, TsnState};
use proptest::prelude::*;

struct Case {
    b: usize,
    d: usize,
    g: usize,
    x: Vec<f64>,
    w: Vec<f64>,
    bias: Vec<f64>,
}

fn case(b: usize, l: usize, d: usize, g: usize, seed: u64) -> Case {
    Case {
        b,
        d,
        g,
        // x ~ N(1, 2²) as in the spec's check.
        x: randn(b * l * d, seed, 1, 1.0, 2.0),
        w: randn(d, seed, 2, 0.0, 0.3),
        bias: randn(d, seed, 3, 0.0, 0.3),
    }
}

fn norm(c: &Case) -> TimestepNorm {
    TimestepNorm::from_tensors(c.g, 1e-5, t64(c.w.clone(), &[c.d]), t64(c.bias.clone(), &[c.d])).unwrap()
}

/// A carried state: count 5, random means, variances in (0.5, 2).
fn carried(c: &Case, seed: u64) -> (RefState, TsnState) {
    let mean = randn(c.b * c.g, seed, 4, 0.0, 1.0);
    let var: Vec<f64> = randn(c.b * c.g, seed, 5, 0.0, 1.0).iter().map(|u| 0.5 + 1.5 / (1.0 + (-u).exp())).collect();
    let count = vec![5u64; c.b];
    let r = RefState { count: count.clone(), mean: mean.clone(), var: var.clone() };
    (r, TsnState::new(count, t64(mean, &[c.b, c.g]), t64(var, &[c.b, c.g])).unwrap())
}

fn fresh_ref(c: &Case) -> RefState {
    RefState { count: vec![0; c.b], mean: vec![0.0; c.b * c.g], var: vec![1.0; c.b * c.g] }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn matches_the_closed_form(b in 1usize..3, l in 1usize..20, g in 1usize..4, gs in 1usize..5, with_state: bool, seed in 0u64..1000) {
        let c = case(b, l, g * gs, g, seed);
        let tsn = norm(&c);
        let (mut want_st, mut st) = if with_state { carried(&c, seed) } else { (fresh_ref(&c), tsn.init_state(b).unwrap()) };
        let want = reference::timestep_norm(&c.x, b, l, c.d, g, &c.w, &c.bias, 1e-5, &mut want_st, None);
        let y = tsn.forward(&t64(c.x.clone(), &[b, l, c.d]), &mut st).unwrap();
        prop_assert!(rel(&v64(&y), &want) < 1e-10, "y rel {:e}", rel(&v64(&y), &want));
        prop_assert_eq!(st.count(), &want_st.count[..]);
        prop_assert!(rel(&v64(st.mean()), &want_st.mean) < 1e-10);
        prop_assert!(rel(&v64(st.var()), &want_st.var) < 1e-10);
    }

    #[test]
    fn split_and_carry_equals_one_pass(l in 2usize..30, split in 1usize..29, seed in 0u64..1000) {
        let s = split.min(l - 1);
        let c = case(2, l, 12, 3, seed);
        let tsn = norm(&c);
        let x = t64(c.x.clone(), &[2, l, 12]);
        let mut one = tsn.init_state(2).unwrap();
        let y = v64(&tsn.forward(&x, &mut one).unwrap());
        let mut st = tsn.init_state(2).unwrap();
        let y1 = tsn.forward(&x.narrow(1, 0, s).unwrap(), &mut st).unwrap();
        let y2 = tsn.forward(&x.narrow(1, s, l - s).unwrap(), &mut st).unwrap();
        prop_assert!(rel(&v64(&Tensor::concat(&[&y1, &y2], 1).unwrap()), &y) < 1e-12);
        prop_assert!(rel(&v64(st.mean()), &v64(one.mean())) < 1e-12 && rel(&v64(st.var()), &v64(one.var())) < 1e-12);
        prop_assert_eq!(st.count(), one.count());
    }
}

#[test]
fn closed_form_of_the_spec_check() {
    // G = 2, group size 3, L = 9, x ~ N(1, 2²): mean and population variance of every feature of the group so far.
    let c = case(1, 9, 6, 2, 77);
    let mut st = norm(&c).init_state(1).unwrap();
    let y = v64(&norm(&c).forward(&t64(c.x.clone(), &[1, 9, 6]), &mut st).unwrap());
    for t in 0..9 {
        for g in 0..2 {
            let vals: Vec<f64> =
                (0..=t).flat_map(|s| (0..3).map(move |i| (s, g * 3 + i))).map(|(s, i)| c.x[s * 6 + i]).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|z| (z - m).powi(2)).sum::<f64>() / vals.len() as f64;
            for i in g * 3..g * 3 + 3 {
                let want = (c.x[t * 6 + i] - m) / (v + 1e-5).sqrt() * (1.0 + c.w[i]) + c.bias[i];
                assert!((y[t * 6 + i] - want).abs() < 1e-12, "t {t} i {i}");
            }
        }
    }
}

#[test]
fn first_step_is_group_norm() {
    let c = case(2, 1, 12, 4, 21);
    let mut st = norm(&c).init_state(2).unwrap();
    let y = v64(&norm(&c).forward(&t64(c.x.clone(), &[2, 1, 12]), &mut st).unwrap());
    for bi in 0..2 {
        for g in 0..4 {
            let row = &c.x[bi * 12 + g * 3..bi * 12 + g * 3 + 3];
            let m = row.iter().sum::<f64>() / 3.0;
            let v = row.iter().map(|z| (z - m).powi(2)).sum::<f64>() / 3.0;
            for k in 0..3 {
                let i = g * 3 + k;
                let want = (row[k] - m) / (v + 1e-5).sqrt() * (1.0 + c.w[i]) + c.bias[i];
                assert!((y[bi * 12 + i] - want).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn causal_in_time() {
    let c = case(2, 15, 8, 2, 22);
    let tsn = norm(&c);
    let run = |x: &[f64]| {
        let mut st = tsn.init_state(2).unwrap();
        v64(&tsn.forward(&t64(x.to_vec(), &[2, 15, 8]), &mut st).unwrap())
    };
    let y = run(&c.x);
    for t_change in [0usize, 7, 14] {
        let mut x2 = c.x.clone();
        x2[(15 + t_change) * 8 + 3] += 4.0;
        let y2 = run(&x2);
        for t in 0..t_change {
            for i in 0..8 {
                assert_eq!(y[(15 + t) * 8 + i], y2[(15 + t) * 8 + i], "t {t} changed after changing {t_change}");
            }
        }
    }
}

#[test]
fn invariant_to_group_shifts_and_scale() {
    let c = case(1, 10, 8, 2, 23);
    let tsn = TimestepNorm::from_tensors(2, 1e-12, t64(c.w.clone(), &[8]), t64(c.bias.clone(), &[8])).unwrap();
    let run = |x: &[f64]| {
        let mut st = tsn.init_state(1).unwrap();
        v64(&tsn.forward(&t64(x.to_vec(), &[1, 10, 8]), &mut st).unwrap())
    };
    let y = run(&c.x);
    // +3 on every feature of group 0 at every step, −1.5 on group 1.
    let shifted: Vec<f64> = c.x.iter().enumerate().map(|(i, v)| v + if i % 8 < 4 { 3.0 } else { -1.5 }).collect();
    assert!(rel(&run(&shifted), &y) < 1e-9);
    let scaled: Vec<f64> = c.x.iter().map(|v| 7.5 * v).collect();
    assert!(rel(&run(&scaled), &y) < 1e-9);
}

#[test]
fn padding_outputs_zero_and_equals_deleting_the_step() {
    let (b, l, d, g) = (2, 12, 6, 3);
    let c = case(b, l, d, g, 24);
    let tsn = norm(&c);
    let mask: Vec<bool> = (0..b * l).map(|i| i % 5 == 2 || i == l + 11).collect();
    let (want_ref_state, st0) = carried(&c, 24);
    let mut st = st0.clone();
    let y = v64(&tsn.forward_masked(&t64(c.x.clone(), &[b, l, d]), Some(&mask), &mut st).unwrap());
    let mut rs = want_ref_state.clone();
    let want = reference::timestep_norm(&c.x, b, l, d, g, &c.w, &c.bias, 1e-5, &mut rs, Some(&mask));
    assert!(rel(&y, &want) < 1e-10);
    assert_eq!(st.count(), &rs.count[..]);
    for bi in 0..b {
        // The same row with its masked steps deleted.
        let keep: Vec<usize> = (0..l).filter(|&t| !mask[bi * l + t]).collect();
        let xs: Vec<f64> = keep.iter().flat_map(|&t| c.x[(bi * l + t) * d..(bi * l + t + 1) * d].to_vec()).collect();
        let row_state =
            TsnState::new(vec![5], st0.mean().narrow(0, bi, 1).unwrap(), st0.var().narrow(0, bi, 1).unwrap()).unwrap();
        let mut rst = row_state;
        let yk = v64(&tsn.forward(&t64(xs, &[1, keep.len(), d]), &mut rst).unwrap());
        for (j, &t) in keep.iter().enumerate() {
            assert!(rel(&y[(bi * l + t) * d..(bi * l + t + 1) * d], &yk[j * d..(j + 1) * d]) < 1e-12);
        }
        for t in (0..l).filter(|&t| mask[bi * l + t]) {
            assert!(y[(bi * l + t) * d..(bi * l + t + 1) * d].iter().all(|&v| v == 0.0), "masked output is 0");
        }
        assert!(rel(&v64(rst.mean()), &v64(&st.mean().narrow(0, bi, 1).unwrap())) < 1e-12);
    }
}

#[test]
fn gradients_match_finite_differences() {
    let (b, l, d, g) = (2, 7, 6, 2);
    let c = case(b, l, d, g, 25);
    let (_, st0) = carried(&c, 25);
    let mask: Vec<bool> = (0..b * l).map(|i| i == 3 || i == l + 5).collect();
    let wout = randn(b * l * d, 25, 9, 0.0, 1.0);
    let vals = vec![c.x.clone(), c.w.clone(), c.bias.clone(), v64(st0.mean()), v64(st0.var())];
    for masked in [false, true] {
        let loss = |vals: &[Vec<f64>], track: bool| -> (Tensor, Vec<Tensor>) {
            let shapes: [&[usize]; 5] = [&[b, l, d], &[d], &[d], &[b, g], &[b, g]];
            let ts: Vec<Tensor> = vals
                .iter()
                .zip(shapes)
                .map(|(v, s)| if track { t64(v.clone(), s).requires_grad() } else { t64(v.clone(), s) })
                .collect();
            let tsn = TimestepNorm::from_tensors(g, 1e-5, ts[1].clone(), ts[2].clone()).unwrap();
            let mut st = TsnState::new(vec![5; b], ts[3].clone(), ts[4].clone()).unwrap();
            let y = tsn.forward_masked(&ts[0], if masked { Some(&mask) } else { None }, &mut st).unwrap();
            (y.mul(&t64(wout.clone(), &[b, l, d])).unwrap().sum_all().unwrap(), ts)
        };
        let (lv, ts) = loss(&vals, true);
        let grads = lv.backward().unwrap();
        for (k, name) in ["x", "weight", "bias", "mean0", "var0"].iter().enumerate() {
            let gk = v64(grads.get(&ts[k]).unwrap());
            let f = |v: &[f64]| {
                let mut vv = vals.clone();
                vv[k] = v.to_vec();
                no_grad(|| v64(&loss(&vv, false).0)[0])
            };
            check_grad(name, &vals[k], &gk, &f, 84, 1e-6);
        }
    }
    // Fresh state (count 0): the prior gets no gradient.
    let ts: Vec<Tensor> = vec![t64(c.x.clone(), &[b, l, d]).requires_grad()];
    let tsn = norm(&c);
    let mut st = tsn.init_state(b).unwrap();
    let m0 = st.mean().clone().requires_grad();
    st = TsnState::new(vec![0; b], m0.clone(), st.var().clone()).unwrap();
    let y = tsn.forward(&ts[0], &mut st).unwrap();
    let gr = y.mul(&t64(wout, &[b, l, d])).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(v64(gr.get(&m0).unwrap()).iter().all(|&v| v == 0.0));
}

#[test]
fn f32_matches_the_f64_reference() {
    let c = case(2, 64, 32, 4, 26);
    let tsn32 = norm(&c).map_parameters(|t| Ok(t.to_dtype(DType::F32)?)).unwrap();
    let mut st = tsn32.init_state(2).unwrap();
    let x = Tensor::from_vec(c.x.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[2, 64, 32], &Device::Cpu).unwrap();
    let y = v64(&tsn32.forward(&x, &mut st).unwrap());
    let mut rs = fresh_ref(&c);
    let want = reference::timestep_norm(&c.x, 2, 64, 32, 4, &c.w, &c.bias, 1e-5, &mut rs, None);
    assert!(rel(&y, &want) < 1e-5);
}

#[test]
fn bad_input_is_a_typed_error() {
    let dev = Device::Cpu;
    assert!(matches!(TimestepNorm::new(10, 3, 1e-5, DType::F32, &dev), Err(MegalodonError::Config(_))));
    assert!(matches!(TimestepNorm::new(12, 0, 1e-5, DType::F32, &dev), Err(MegalodonError::Config(_))));
    let tsn = TimestepNorm::new(12, 3, 1e-5, DType::F64, &dev).unwrap();
    let mut st = tsn.init_state(2).unwrap();
    assert!(matches!(tsn.forward(&t64(vec![0.0; 12], &[1, 1, 12]), &mut st), Err(MegalodonError::State { .. })));
    assert!(matches!(tsn.forward(&t64(vec![0.0; 20], &[2, 1, 10]), &mut st), Err(MegalodonError::Shape { .. })));
    assert!(matches!(
        tsn.forward_masked(&t64(vec![0.0; 24], &[2, 1, 12]), Some(&[true]), &mut st),
        Err(MegalodonError::Shape { .. })
    ));
}
