//! RoPE against the numpy fixture (`scripts/fixtures/rope_reference.py`): interleaved on GGUF-layout heads,
//! NeoX on HF-layout heads, the per-head row permutation between them, and the NeoX-on-GGUF mistake.

use effllm_model::reference;
use effllm_tensor::{Device, RopeConfig, RopeStyle, Tensor};

fn fx() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/rope_reference.json")).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// `[pos][head][dim]` values through `Tensor::rope` (positions as the seq axis, heads as heads).
fn tensor_rope(q: &[f64], positions: &[u32], n_head: usize, d: usize, style: RopeStyle, base: f64) -> Vec<f64> {
    let s = positions.len();
    let t = Tensor::from_vec(q.to_vec(), &[1, s, n_head, d], &Device::Cpu).unwrap().transpose(1, 2).unwrap();
    let pos = Tensor::from_slice(positions, &[s], &Device::Cpu).unwrap();
    let out = t.rope(&pos, &RopeConfig { style, base, rotary_dims: d }).unwrap();
    out.transpose(1, 2).unwrap().contiguous().unwrap().to_vec_f64().unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn rope_matches_numpy_in_both_layouts() {
    let f = fx();
    let (d, n_head, base) =
        (f["head_dim"].as_u64().unwrap() as usize, f["n_head"].as_u64().unwrap() as usize, f["base"].as_f64().unwrap());
    let positions: Vec<u32> = f["positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    let (q_gguf, q_hf) = (floats(&f["q_gguf"]), floats(&f["q_hf"]));
    let inter = tensor_rope(&q_gguf, &positions, n_head, d, RopeStyle::Interleaved, base);
    assert!(max_diff(&inter, &floats(&f["interleaved_of_q_gguf"])) < 1e-9);
    let neox = tensor_rope(&q_hf, &positions, n_head, d, RopeStyle::NeoX, base);
    assert!(max_diff(&neox, &floats(&f["neox_of_q_hf"])) < 1e-9);
    // The mistake (NeoX on GGUF weights) is far off.
    let wrong = tensor_rope(&q_gguf, &positions, n_head, d, RopeStyle::NeoX, base);
    assert!(max_diff(&wrong, &floats(&f["neox_of_q_gguf"])) < 1e-9);
    assert!(max_diff(&wrong, &inter) > 0.1);
    // The f64 reference's per-vector RoPE agrees too, and the permutation maps one layout onto the other.
    let perm: Vec<usize> = f["gguf_from_hf"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    for (pi, &p) in positions.iter().enumerate() {
        for h in 0..n_head {
            let at = (pi * n_head + h) * d;
            let mut v = q_gguf[at..at + d].to_vec();
            reference::rope(&mut v, p, &RopeConfig { style: RopeStyle::Interleaved, base, rotary_dims: d });
            assert!(max_diff(&v, &inter[at..at + d]) < 1e-9);
            for (g, &hf) in perm.iter().enumerate() {
                assert_eq!(q_gguf[at + g], q_hf[at + hf]);
                assert!((inter[at + g] - neox[at + hf]).abs() < 1e-9);
            }
        }
    }
}
