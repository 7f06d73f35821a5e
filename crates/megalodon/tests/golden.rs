//! Golden test against PyTorch: `tests/fixtures/megalodon_torch.json`, written by
//! `scripts/fixtures/megalodon_torch.py` (the reference's documented formulas in torch, float64, with gradients from
//! torch.autograd). CEMA outputs, last states and gradients (w.r.t. every parameter, x and the incoming state), the
//! timestep norm's outputs, states and gradients (fresh, carried and masked), and chunked attention (in one call and
//! in pieces through the cache) must match to 1e-10 (values) and 1e-8 (gradients), relative L2.
//!
//! The fixture is produced on a machine with torch (`python3 scripts/fixtures/megalodon_torch.py >
//! crates/megalodon/tests/fixtures/megalodon_torch.json`; generated with torch 2.11 on the GPU machine and committed);
//! a missing or unreadable fixture fails the tests.

mod common;

use common::*;
use effllm_tensor::Tensor;
use megalodon::{Cema, CemaState, ChunkedAttention, KvCache, TimestepNorm, TsnState};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/megalodon_torch.json");
    let s = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (regenerate it with scripts/fixtures/megalodon_torch.py)"));
    serde_json::from_str(&s).expect("valid fixture JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
}

#[test]
fn cema_matches_torch_values_states_and_gradients() {
    let doc = fixture();
    let cases = doc["cema"].as_array().expect("cema cases");
    assert!(!cases.is_empty());
    for (ci, c) in cases.iter().enumerate() {
        let (d, n, b, l) = (usize_of(c, "D"), usize_of(c, "N"), usize_of(c, "B"), usize_of(c, "L"));
        let with_state = c["with_state"].as_bool().unwrap();
        let inp = &c["inputs"];
        let leaf = |k: &str, shape: &[usize]| t64(floats(&inp[k]), shape).requires_grad();
        let p = [
            leaf("alpha", &[d, n]),
            leaf("delta", &[d, n]),
            leaf("theta", &[d]),
            leaf("gamma_re", &[d, n]),
            leaf("gamma_im", &[d, n]),
            leaf("omega", &[d]),
        ];
        let x = leaf("x", &[b, d, l]); // the reference's (B, D, L)
        let cema =
            Cema::from_tensors(p[0].clone(), p[1].clone(), p[2].clone(), p[3].clone(), p[4].clone(), p[5].clone())
                .unwrap();
        let hx = with_state.then(|| (leaf("hx_re", &[b, d, n]), leaf("hx_im", &[b, d, n])));
        let mut st = match &hx {
            Some((r, i)) => CemaState::new(r.clone(), i.clone()).unwrap(),
            None => cema.init_state(b).unwrap(),
        };
        let y = cema.forward(&x.permute(&[0, 2, 1]).unwrap(), &mut st).unwrap().permute(&[0, 2, 1]).unwrap();
        let ey = rel(&v64(&y), &floats(&c["y"]));
        let (eh_re, eh_im) = (rel(&v64(st.h_re()), &floats(&c["h_re"])), rel(&v64(st.h_im()), &floats(&c["h_im"])));
        assert!(ey < 1e-10 && eh_re < 1e-10 && eh_im < 1e-10, "case {ci} (L = {l}): y {ey:e}, h {eh_re:e} {eh_im:e}");
        let w = &c["loss_weights"];
        let dot = |t: &Tensor, key: &str| t.mul(&t64(floats(&w[key]), t.shape())).unwrap().sum_all().unwrap();
        let loss = dot(&y.contiguous().unwrap(), "y")
            .add(&dot(st.h_re(), "h_re"))
            .unwrap()
            .add(&dot(st.h_im(), "h_im"))
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut leaves: Vec<(&str, &Tensor)> =
            ["alpha", "delta", "theta", "gamma_re", "gamma_im", "omega"].into_iter().zip(p.iter()).collect();
        leaves.push(("x", &x));
        if let Some((r, i)) = &hx {
            leaves.push(("hx_re", r));
            leaves.push(("hx_im", i));
        }
        for (name, t) in leaves {
            let e = rel(&v64(grads.get(t).unwrap()), &floats(&c["grads"][name]));
            assert!(e < 1e-8, "case {ci} (L = {l}): d{name} rel {e:e}");
        }
    }
}

#[test]
fn timestep_norm_matches_torch_values_states_and_gradients() {
    let doc = fixture();
    let cases = doc["timestep_norm"].as_array().expect("timestep_norm cases");
    assert!(!cases.is_empty());
    for (ci, c) in cases.iter().enumerate() {
        let (b, l, d, g) = (usize_of(c, "B"), usize_of(c, "L"), usize_of(c, "D"), usize_of(c, "G"));
        let eps = c["eps"].as_f64().unwrap();
        let x = t64(floats(&c["x"]), &[b, l, d]).requires_grad();
        let w = t64(floats(&c["w"]), &[d]).requires_grad();
        let bias = t64(floats(&c["b"]), &[d]).requires_grad();
        let mean = t64(floats(&c["mean"]), &[b, g]).requires_grad();
        let var = t64(floats(&c["var"]), &[b, g]).requires_grad();
        let count: Vec<u64> = c["count"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let mask: Option<Vec<bool>> = c["mask"].as_array().map(|m| m.iter().map(|v| v.as_bool().unwrap()).collect());
        let tsn = TimestepNorm::from_tensors(g, eps, w.clone(), bias.clone()).unwrap();
        let mut st = TsnState::new(count, mean.clone(), var.clone()).unwrap();
        let y = tsn.forward_masked(&x, mask.as_deref(), &mut st).unwrap();
        let kind = c["kind"].as_str().unwrap();
        assert!(rel(&v64(&y), &floats(&c["y"])) < 1e-10, "case {ci} ({kind}, G = {g}, L = {l}): y");
        let new_count: Vec<u64> = c["new_count"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(st.count(), &new_count[..]);
        assert!(rel(&v64(st.mean()), &floats(&c["new_mean"])) < 1e-10, "case {ci}: mean");
        assert!(rel(&v64(st.var()), &floats(&c["new_var"])) < 1e-10, "case {ci}: var");
        let grads = y.mul(&t64(floats(&c["loss_weights"]), &[b, l, d])).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("x", &x), ("w", &w), ("b", &bias), ("mean", &mean), ("var", &var)] {
            let want = floats(&c["grads"][name]);
            let got = v64(grads.get(t).unwrap());
            let e = if want.iter().all(|&v| v == 0.0) { max_abs_diff(&got, &want) } else { rel(&got, &want) };
            assert!(e < 1e-8, "case {ci} ({kind}, G = {g}, L = {l}): d{name} {e:e}");
        }
    }
}

#[test]
fn chunked_attention_matches_torch_in_one_call_and_in_pieces() {
    let doc = fixture();
    let cases = doc["attention"].as_array().expect("attention cases");
    assert!(!cases.is_empty());
    for c in cases {
        let (b, l, h, dz, dv, ch) = (
            usize_of(c, "B"),
            usize_of(c, "L"),
            usize_of(c, "H"),
            usize_of(c, "dz"),
            usize_of(c, "dv"),
            usize_of(c, "C"),
        );
        let attn = ChunkedAttention { chunk: ch, rope_base: c["base"].as_f64().unwrap(), scale: 1.0 };
        let (q, k, v) = (
            t64(floats(&c["q"]), &[b, l, h, dz]),
            t64(floats(&c["k"]), &[b, l, h, dz]),
            t64(floats(&c["v"]), &[b, l, h, dv]),
        );
        let want = floats(&c["out"]);
        let mut cache = KvCache::new();
        let one = v64(&attn.forward(&q, &k, &v, &mut cache).unwrap());
        assert!(rel(&one, &want) < 1e-10, "L = {l}: one call");
        // The spec's cached cases: 3 tokens, then 1 with a cache of count 3, then the rest.
        let mut cache = KvCache::new();
        let mut parts = Vec::new();
        let mut start = 0;
        for len in [3usize.min(l), 1, l] {
            let len = len.min(l - start);
            if len == 0 {
                continue;
            }
            parts.push(
                attn.forward(
                    &q.narrow(1, start, len).unwrap(),
                    &k.narrow(1, start, len).unwrap(),
                    &v.narrow(1, start, len).unwrap(),
                    &mut cache,
                )
                .unwrap(),
            );
            start += len;
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        assert!(rel(&v64(&Tensor::concat(&refs, 1).unwrap()), &want) < 1e-10, "L = {l}: pieces");
    }
}
