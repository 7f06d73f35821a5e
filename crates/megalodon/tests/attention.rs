//! Chunked normalized attention (spec §5, 16–18): against the f64 reference, confined to its chunk, RoPE restarting
//! per chunk, streaming through the cache in any pieces = one call (the cache never reaches C), and the bound on
//! normalized logits.

// Index loops mirror the equations (t, d, n) in these checks.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use effllm_tensor::Tensor;
use megalodon::reference;
use megalodon::{ChunkedAttention, KvCache};
use proptest::prelude::*;

fn qkv(b: usize, l: usize, h: usize, dz: usize, dv: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        randn(b * l * h * dz, seed, 1, 0.0, 1.0),
        randn(b * l * h * dz, seed, 2, 0.0, 1.0),
        randn(b * l * h * dv, seed, 3, 0.0, 1.0),
    )
}

fn run_pieces(attn: &ChunkedAttention, q: &Tensor, k: &Tensor, v: &Tensor, cuts: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let l = q.shape()[1];
    let mut cache = KvCache::new();
    let mut outs = Vec::new();
    let mut counts = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&l)) {
        if end <= start {
            continue;
        }
        let n = end - start;
        outs.push(
            attn.forward(
                &q.narrow(1, start, n).unwrap(),
                &k.narrow(1, start, n).unwrap(),
                &v.narrow(1, start, n).unwrap(),
                &mut cache,
            )
            .unwrap(),
        );
        counts.push(cache.count());
        start = end;
    }
    let refs: Vec<&Tensor> = outs.iter().collect();
    (v64(&Tensor::concat(&refs, 1).unwrap()), counts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn matches_reference_in_any_pieces(b in 1usize..3, h in 1usize..3, l in 1usize..30, chunk in 1usize..9, cut_a in 0usize..30, cut_b in 0usize..30, seed in 0u64..1000) {
        let (dz, dv) = (4, 3);
        let (q, k, v) = qkv(b, l, h, dz, dv, seed);
        let want = reference::chunked_attention(&q, &k, &v, (b, l, h, dz, dv), chunk, 10_000.0, 1.0);
        let attn = ChunkedAttention { chunk, rope_base: 10_000.0, scale: 1.0 };
        let (qt, kt, vt) = (t64(q, &[b, l, h, dz]), t64(k, &[b, l, h, dz]), t64(v, &[b, l, h, dv]));
        let (one, counts) = run_pieces(&attn, &qt, &kt, &vt, &[]);
        prop_assert!(rel(&one, &want) < 1e-12, "one call: {:e}", rel(&one, &want));
        prop_assert_eq!(counts[0], l % chunk);
        let mut cuts = vec![cut_a.min(l), cut_b.min(l)];
        cuts.sort();
        let (pieces, counts) = run_pieces(&attn, &qt, &kt, &vt, &cuts);
        prop_assert!(rel(&pieces, &want) < 1e-12, "pieces {:?}: {:e}", cuts, rel(&pieces, &want));
        prop_assert!(counts.iter().all(|&c| c < chunk));
    }
}

#[test]
fn confined_to_its_chunk() {
    let (b, l, h, dz, dv, c) = (1, 24, 2, 4, 3, 8);
    let (q, k, v) = qkv(b, l, h, dz, dv, 5);
    let attn = ChunkedAttention { chunk: c, rope_base: 10_000.0, scale: 1.0 };
    let run = |k: &[f64], v: &[f64]| {
        let mut cache = KvCache::new();
        v64(&attn
            .forward(
                &t64(q.clone(), &[b, l, h, dz]),
                &t64(k.to_vec(), &[b, l, h, dz]),
                &t64(v.to_vec(), &[b, l, h, dv]),
                &mut cache,
            )
            .unwrap())
    };
    let y = run(&k, &v);
    // Perturb the keys and values of position 10 (chunk 1): only outputs 10..16 may move.
    let (mut k2, mut v2) = (k.clone(), v.clone());
    for i in 0..h * dz {
        k2[10 * h * dz + i] += 3.0;
    }
    for i in 0..h * dv {
        v2[10 * h * dv + i] -= 2.0;
    }
    let y2 = run(&k2, &v2);
    for t in 0..l {
        let same = y[t * h * dv..(t + 1) * h * dv] == y2[t * h * dv..(t + 1) * h * dv];
        assert_eq!(same, !(10..16).contains(&t), "position {t}");
    }
}

#[test]
fn rope_restarts_every_chunk() {
    let (b, h, dz, dv, c) = (2, 2, 6, 4, 5);
    let (q, k, v) = qkv(b, c, h, dz, dv, 6);
    // Two chunks with identical q, k, v give identical outputs.
    let twice = |x: &[f64], w: usize| -> Tensor {
        let one = t64(x.to_vec(), &[b, c, h, w]);
        Tensor::concat(&[&one, &one], 1).unwrap()
    };
    let attn = ChunkedAttention { chunk: c, rope_base: 10_000.0, scale: 1.0 };
    let mut cache = KvCache::new();
    let y = attn.forward(&twice(&q, dz), &twice(&k, dz), &twice(&v, dv), &mut cache).unwrap();
    let first = v64(&y.narrow(1, 0, c).unwrap());
    let second = v64(&y.narrow(1, c, c).unwrap());
    assert!(max_abs_diff(&first, &second) < 1e-14);
}

#[test]
fn normalized_logits_are_bounded() {
    // With γ = β = 0, q and k are unit vectors (ẑ/√dz): every score q·k lies in [−1, 1].
    let (b, l, h, dz) = (1, 6, 1, 8);
    let z = t64(randn(b * l * h * dz, 7, 1, 0.0, 3.0), &[b, l, h, dz]);
    let ones = t64(vec![1.0; dz], &[dz]);
    let qn = z.rms_norm(&ones, 1e-5).unwrap().affine(1.0 / (dz as f64).sqrt(), 0.0).unwrap();
    let qv = v64(&qn);
    for i in 0..l {
        for j in 0..l {
            let s: f64 = (0..dz).map(|c| qv[i * dz + c] * qv[j * dz + c]).sum();
            assert!(s.abs() <= 1.0, "score {s}");
        }
    }
}
