//! The whole model (spec §5, 19–23): against the f64 reference model with every parameter random (the "+1"
//! reparameterisations and biases exercised), prefill + steps = one forward across chunk boundaries, any split
//! with state passing = one shot, end-to-end causality, the two-hop residual, the parameter count, finite-difference
//! gradients, and typed errors for bad configs, states and tokens.

// Index loops mirror the equations (t, d, n) in these checks.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::HashMap;

use common::*;
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor, no_grad};
use megalodon::reference::ReferenceMegalodon;
use megalodon::{CemaPath, Megalodon, MegalodonConfig, MegalodonError, MegalodonLayer, NormalizedFfn};
use proptest::prelude::*;

/// The spec's §9 G4 tiny config.
fn cfg() -> MegalodonConfig {
    MegalodonConfig {
        num_layers: 2,
        model_dim: 32,
        z_dim: 16,
        value_dim: 64,
        num_heads: 2,
        ffn_hidden_dim: 64,
        vocab_size: 50,
        cema_ndim: 4,
        chunk_size: 8,
        norm_num_groups: 4,
        ..MegalodonConfig::tiny(50)
    }
}

fn all_switches() -> MegalodonConfig {
    MegalodonConfig { swiglu: true, rescale_nffn: true, scale_emb: true, share_emb: true, ..cfg() }
}

/// Every parameter overwritten with seeded random values (zero-initialised norms and q/k affine included).
fn random_model(cfg: MegalodonConfig, dtype: DType, seed: u64) -> Megalodon {
    let m = Megalodon::new(cfg, DType::F64, &Device::Cpu, seed).unwrap();
    let mut stream = 100;
    m.map_parameters(|name, t| {
        stream += 1;
        let std = if name == "embed" || name.ends_with("theta") { 1.0 } else { 0.3 };
        let v = randn(t.elem_count(), seed, stream, 0.0, std);
        Ok(Tensor::from_vec(v, t.shape(), &Device::Cpu)?.to_dtype(dtype)?)
    })
    .unwrap()
}

fn reference_of(m: &Megalodon) -> ReferenceMegalodon {
    let params: HashMap<String, Vec<f64>> = m.named_parameters().into_iter().map(|(n, t)| (n, v64(&t))).collect();
    ReferenceMegalodon::new(m.config().clone(), params)
}

fn tokens(b: usize, l: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let rng = CounterRng::new(seed, 7);
    (0..b)
        .map(|bi| {
            (0..l).map(|t| (rng.uniform_f64_at((bi * l + t) as u64) * vocab as f64) as u32 % vocab as u32).collect()
        })
        .collect()
}

fn ids(tok: &[Vec<u32>]) -> Tensor {
    Tensor::from_vec(tok.concat(), &[tok.len(), tok[0].len()], &Device::Cpu).unwrap()
}

fn forward(m: &Megalodon, tok: &[Vec<u32>]) -> Vec<f64> {
    let mut st = m.init_state(tok.len()).unwrap();
    v64(&m.forward(&ids(tok), &mut st).unwrap())
}

#[test]
fn matches_the_reference_model() {
    for (i, c) in [cfg(), all_switches()].into_iter().enumerate() {
        let m = random_model(c, DType::F64, 1 + i as u64);
        let r = reference_of(&m);
        for l in [5usize, 8, 24] {
            let tok = tokens(2, l, 50, 10 + l as u64);
            let (got, want) = (forward(&m, &tok), r.forward(&tok));
            assert!(rel(&got, &want) < 1e-10, "config {i}, L = {l}: rel {:e}", rel(&got, &want));
        }
    }
}

#[test]
fn f32_model_matches_the_reference() {
    let m = random_model(cfg(), DType::F32, 3);
    let r = reference_of(&m);
    let tok = tokens(2, 24, 50, 4);
    let (got, want) = (forward(&m, &tok), r.forward(&tok));
    assert!(rel(&got, &want) < 1e-4, "rel {:e}", rel(&got, &want));
}

#[test]
fn prefill_then_steps_equals_one_forward_across_chunk_ends() {
    let m = random_model(all_switches(), DType::F64, 5);
    let c = 8;
    let total = 2 * c + 5;
    let tok = tokens(2, total, 50, 6);
    let full = forward(&m, &tok);
    let v = 50;
    for prefill in [c - 1, c, c + 1, 2 * c] {
        let mut st = m.init_state(2).unwrap();
        let pre: Vec<Vec<u32>> = tok.iter().map(|r| r[..prefill].to_vec()).collect();
        let logits = v64(&m.forward(&ids(&pre), &mut st).unwrap());
        for bi in 0..2 {
            let got = &logits[bi * prefill * v..(bi + 1) * prefill * v];
            let want = &full[bi * total * v..bi * total * v + prefill * v];
            assert!(rel(got, want) < 1e-10);
        }
        for t in prefill..total {
            let step_ids = Tensor::from_vec(vec![tok[0][t], tok[1][t]], &[2], &Device::Cpu).unwrap();
            let got = v64(&m.step(&step_ids, &mut st).unwrap());
            for bi in 0..2 {
                let want = &full[(bi * total + t) * v..(bi * total + t + 1) * v];
                assert!(rel(&got[bi * v..(bi + 1) * v], want) < 1e-9, "prefill {prefill}, step at {t}");
            }
            assert!(st.layers.iter().all(|s| s.kv.count() < c && s.kv.count() == (t + 1) % c));
        }
        assert_eq!(st.position(), total as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    #[test]
    fn any_split_with_state_passing_equals_one_shot(a in 1usize..20, b in 1usize..20, seed in 0u64..100) {
        let m = random_model(cfg(), DType::F64, 40 + seed % 3);
        let total = 21;
        let tok = tokens(2, total, 50, seed);
        let full = forward(&m, &tok);
        let mut cuts = vec![a, b];
        cuts.sort();
        cuts.dedup();
        let mut st = m.init_state(2).unwrap();
        let mut rows: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
        let mut start = 0;
        for end in cuts.into_iter().chain(std::iter::once(total)) {
            let piece: Vec<Vec<u32>> = tok.iter().map(|r| r[start..end].to_vec()).collect();
            let lg = v64(&m.forward(&ids(&piece), &mut st).unwrap());
            let n = (end - start) * 50;
            rows[0].extend(&lg[..n]);
            rows[1].extend(&lg[n..]);
            start = end;
        }
        prop_assert!(rel(&rows.concat(), &full) < 1e-10);
    }
}

#[test]
fn scan_path_forward_equals_fft_path() {
    let m = random_model(cfg(), DType::F64, 7);
    let tok = tokens(2, 19, 50, 8);
    let full = forward(&m, &tok);
    let mut st = m.init_state(2).unwrap();
    let scan = no_grad(|| v64(&m.forward_path(&ids(&tok), &mut st, CemaPath::Scan).unwrap()));
    assert!(rel(&scan, &full) < 1e-10);
}

#[test]
fn future_tokens_never_change_earlier_logits() {
    let m = random_model(cfg(), DType::F64, 9);
    let tok = tokens(1, 20, 50, 10);
    let y = forward(&m, &tok);
    for t_change in [3usize, 8, 15] {
        let mut t2 = tok.clone();
        t2[0][t_change] = (t2[0][t_change] + 17) % 50;
        let y2 = forward(&m, &t2);
        assert!(max_abs_diff(&y[..t_change * 50], &y2[..t_change * 50]) < 1e-12, "changed before {t_change}");
        assert!(max_abs_diff(&y[t_change * 50..], &y2[t_change * 50..]) > 1e-6, "the change had no effect");
    }
}

#[test]
fn two_hop_residual() {
    let c = cfg();
    let x = t64(randn(2 * 11 * 32, 11, 1, 0.0, 1.0), &[2, 11, 32]);
    // W_h1 = W_h2 = 0 and b_h1 = 0: the layer is the identity.
    let layer = MegalodonLayer::new(&c, DType::F64, &Device::Cpu, 3).unwrap();
    let zeroed = layer
        .map_parameters(&mut |n: &str, t: &Tensor| {
            Ok(if matches!(n, "wh1.weight" | "wh1.bias" | "wh2.weight") { t.affine(0.0, 0.0)? } else { t.clone() })
        })
        .unwrap();
    let mut st = zeroed.init_state(2).unwrap();
    let y = zeroed.forward(&x, &mut st, CemaPath::Fft).unwrap();
    assert!(max_abs_diff(&v64(&y), &v64(&x)) < 1e-15);
    // fc2 = 0: the block output is the block input x, not the layer output y.
    let ffn = NormalizedFfn::new(&all_switches(), 1, DType::F64, &Device::Cpu, 4).unwrap();
    let ffn0 = ffn
        .map_parameters(&mut |n: &str, t: &Tensor| Ok(if n == "fc2" { t.affine(0.0, 0.0)? } else { t.clone() }))
        .unwrap();
    let mut st = layer.init_state(2).unwrap();
    let y = layer.forward(&x, &mut st, CemaPath::Fft).unwrap();
    assert!(max_abs_diff(&v64(&y), &v64(&x)) > 1e-3);
    assert!(max_abs_diff(&v64(&ffn0.forward(&y, &x).unwrap()), &v64(&x)) < 1e-15);
}

#[test]
fn parameter_count_matches_the_formula_and_the_registry() {
    for c in [cfg(), all_switches(), MegalodonConfig { swiglu: true, ..cfg() }, MegalodonConfig::tiny(256)] {
        let m = Megalodon::new(c.clone(), DType::F32, &Device::Cpu, 1).unwrap();
        let n: usize = m.named_parameters().iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(n as u64, c.param_count());
    }
    let row = |layers, d, h, z, e, f, swiglu, share| MegalodonConfig {
        num_layers: layers,
        model_dim: d,
        num_heads: h,
        z_dim: z,
        value_dim: e,
        ffn_hidden_dim: f,
        vocab_size: 32_000,
        chunk_size: 2048,
        norm_num_groups: 32,
        swiglu,
        share_emb: share,
        ..MegalodonConfig::tiny(32_000)
    };
    let billions = |c: MegalodonConfig| (c.param_count() as f64 / 1e7).round() / 100.0;
    assert_eq!(billions(row(12, 1024, 1, 256, 2048, 2560, false, false)), 0.22);
    assert_eq!(billions(row(24, 2048, 2, 512, 4096, 4864, false, false)), 1.34);
    assert_eq!(billions(row(24, 2048, 2, 512, 4096, 3584, true, true)), 1.33);
    assert_eq!(billions(row(32, 4096, 4, 1024, 8192, 11264, false, false)), 7.12);
    assert_eq!(billions(row(32, 4096, 4, 1024, 8192, 8192, true, false)), 7.39);
}

#[test]
fn gradients_reach_every_parameter_and_match_finite_differences() {
    let m = random_model(all_switches(), DType::F64, 12).requires_grad().unwrap();
    let tok = tokens(2, 11, 50, 13);
    let w = randn(2 * 11 * 50, 12, 2, 0.0, 1.0);
    let loss_of = |m: &Megalodon| -> Tensor {
        let mut st = m.init_state(2).unwrap();
        m.forward(&ids(&tok), &mut st)
            .unwrap()
            .reshape(&[2 * 11 * 50])
            .unwrap()
            .mul(&t64(w.clone(), &[2 * 11 * 50]))
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss_of(&m).backward().unwrap();
    let params = m.named_parameters();
    for (name, t) in &params {
        let g = grads.get(t).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(v64(g).iter().any(|&v| v != 0.0), "zero gradient for {name}");
    }
    for name in [
        "embed",
        "layers.0.cema.alpha",
        "layers.1.cema.theta",
        "layers.0.cema.gamma_im",
        "layers.0.tsn.weight",
        "layers.1.wz.bias",
        "layers.0.qk_gamma",
        "layers.1.ffn.fc3",
        "layers.0.ffn.alpha",
        "final_norm.bias",
    ] {
        let (_, t) = params.iter().find(|(n, _)| n == name).unwrap();
        let x0 = v64(t);
        let g = v64(grads.get(t).unwrap());
        let f = |v: &[f64]| {
            no_grad(|| {
                let mm = m
                    .map_parameters(|n, p| Ok(if n == name { t64(v.to_vec(), p.shape()) } else { p.detach() }))
                    .unwrap();
                v64(&loss_of(&mm))[0]
            })
        };
        check_grad(name, &x0, &g, &f, 6, 1e-6);
    }
}

#[test]
fn bad_configs_states_and_tokens_are_typed_errors() {
    let bad =
        |c: MegalodonConfig| matches!(Megalodon::new(c, DType::F32, &Device::Cpu, 1), Err(MegalodonError::Config(_)));
    assert!(bad(MegalodonConfig { z_dim: 15, ..cfg() }), "z_dim % heads");
    assert!(bad(MegalodonConfig { value_dim: 63, ..cfg() }), "value_dim % heads");
    assert!(bad(MegalodonConfig { norm_num_groups: 5, ..cfg() }), "model_dim % groups");
    assert!(bad(MegalodonConfig { chunk_size: 0, ..cfg() }), "chunk 0");
    assert!(bad(MegalodonConfig { z_dim: 6, num_heads: 2, ..cfg() }), "odd head dim");
    let m = random_model(cfg(), DType::F64, 14);
    let one = Tensor::from_vec(vec![1u32, 2], &[2], &Device::Cpu).unwrap();
    let mut foreign = Megalodon::new(cfg(), DType::F64, &Device::Cpu, 2).unwrap().init_state(2).unwrap();
    assert!(matches!(m.step(&one, &mut foreign), Err(MegalodonError::State { .. })), "another model's state");
    let mut st3 = m.init_state(3).unwrap();
    assert!(matches!(m.step(&one, &mut st3), Err(MegalodonError::State { .. })), "another batch size");
    let mut st = m.init_state(2).unwrap();
    let oov = Tensor::from_vec(vec![1u32, 50], &[2], &Device::Cpu).unwrap();
    assert!(matches!(m.step(&oov, &mut st), Err(MegalodonError::InvalidArgument { .. })));
    let strict = random_model(MegalodonConfig { strict_reference_shapes: true, ..cfg() }, DType::F64, 15);
    let mut st = strict.init_state(1).unwrap();
    assert!(strict.forward(&ids(&tokens(1, 12, 50, 1)), &mut st).is_err(), "12 is neither < 8 nor a multiple of 8");
    assert!(strict.forward(&ids(&tokens(1, 6, 50, 1)), &mut st).is_ok());
    assert!(strict.forward(&ids(&tokens(1, 3, 50, 1)), &mut st).is_err(), "6 + 3 crosses the chunk end");
}
