//! Shared helpers: random FFNs (dense and block-quantized), random inputs, a tiny random Llama, error measures.

#![allow(dead_code)]

use effllm_model::{Embedding, Linear, LlamaConfig, LlamaFfn, LlamaLayer, LlamaModel};
use effllm_tensor::quant::{QMatrix, QWeight, QuantType};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{Device, RopeConfig, RopeStyle, Tensor};
use griffin::{Act, Ffn};

/// Normal values (never exactly zero in practice), `scale`-scaled.
pub fn randn(n: usize, seed: u64, stream: u64, scale: f32) -> Vec<f32> {
    let rng = CounterRng::new(seed, stream);
    let mut v = vec![0f32; n];
    rng.fill_normal_f32(0, &mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// How the weights of a test FFN are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    F32,
    Q(QuantType),
}

pub fn linear(rows: usize, cols: usize, seed: u64, stream: u64, store: Store) -> Linear {
    let data = randn(rows * cols, seed, stream, 1.0 / (cols as f32).sqrt());
    match store {
        Store::F32 => Linear::Dense(Tensor::from_vec(data, &[rows, cols], &Device::Cpu).unwrap()),
        Store::Q(ty) => Linear::Quant(QWeight::new(QMatrix::quantize(ty, rows, cols, &data).unwrap())),
    }
}

pub fn tensor(rows: usize, cols: usize, seed: u64, stream: u64) -> Tensor {
    Tensor::from_vec(randn(rows * cols, seed, stream, 1.0), &[rows, cols], &Device::Cpu).unwrap()
}

pub fn glu(d: usize, d_ff: usize, seed: u64, act: Act, store: Store) -> Ffn {
    Ffn::glu(linear(d_ff, d, seed, 1, store), linear(d_ff, d, seed, 2, store), linear(d, d_ff, seed, 3, store), act)
        .unwrap()
}

pub fn plain_relu(d: usize, d_ff: usize, seed: u64, store: Store) -> Ffn {
    let b1 = Tensor::from_vec(randn(d_ff, seed, 4, 0.3), &[d_ff], &Device::Cpu).unwrap();
    let b2 = Tensor::from_vec(randn(d, seed, 5, 0.3), &[d], &Device::Cpu).unwrap();
    Ffn::plain(linear(d_ff, d, seed, 1, store), Some(b1), linear(d, d_ff, seed, 3, store), Some(b2), Act::Relu).unwrap()
}

pub fn rows_f64(t: &Tensor) -> Vec<Vec<f64>> {
    let c = t.shape()[1];
    t.to_vec_f64().unwrap().chunks(c.max(1)).map(<[f64]>::to_vec).collect()
}

/// ‖a − b‖ / ‖b‖ (0 when both are 0).
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

pub fn flat(v: &[Vec<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// Whether the k-th and (k+1)-th largest values are far enough apart that f32 rounding cannot swap them.
pub fn topk_gap_ok(acc: &[f32], k: usize) -> bool {
    if k == 0 || k >= acc.len() {
        return true;
    }
    let mut v: Vec<f32> = acc.to_vec();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
    (v[k - 1] - v[k]) > 1e-4 * (1.0 + v[k - 1].abs())
}

/// A tiny random Llama (2 layers, d = 64, d_ff = 96, vocab 64) with `store` weights for the 2-D matrices.
pub fn tiny_model(seed: u64, store: Store) -> LlamaModel {
    let (n_layer, n_head, n_head_kv, head_dim, d_ff, vocab) = (2, 4, 2, 16, 96, 64);
    let d = n_head * head_dim;
    let cfg = LlamaConfig {
        n_layer,
        d_model: d,
        n_head,
        n_head_kv,
        head_dim,
        d_ff,
        vocab,
        context: 256,
        rms_eps: 1e-5,
        rope: RopeConfig { style: RopeStyle::Interleaved, base: 10_000.0, rotary_dims: head_dim },
        tied_embeddings: true,
    };
    let gain = |s: u64| {
        Tensor::from_vec(randn(d, seed, s, 0.1).iter().map(|x| 1.0 + x).collect(), &[d], &Device::Cpu).unwrap()
    };
    let layers = (0..n_layer as u64)
        .map(|l| {
            let s = 100 + 20 * l;
            LlamaLayer {
                attn_norm: gain(s),
                wq: linear(n_head * head_dim, d, seed, s + 1, store),
                wk: linear(n_head_kv * head_dim, d, seed, s + 2, store),
                wv: linear(n_head_kv * head_dim, d, seed, s + 3, store),
                wo: linear(d, n_head * head_dim, seed, s + 4, store),
                ffn_norm: gain(s + 5),
                ffn: LlamaFfn {
                    gate: linear(d_ff, d, seed, s + 6, store),
                    up: linear(d_ff, d, seed, s + 7, store),
                    down: linear(d, d_ff, seed, s + 8, store),
                },
            }
        })
        .collect();
    let emb = Tensor::from_vec(randn(vocab * d, seed, 7, 1.0), &[vocab, d], &Device::Cpu).unwrap();
    LlamaModel::from_parts(cfg, Embedding::Dense(emb.clone()), layers, gain(9), Linear::Dense(emb)).unwrap()
}

pub fn tokens(n: usize, seed: u64, vocab: u32) -> Vec<u32> {
    let rng = CounterRng::new(seed, 77);
    (0..n).map(|i| (rng.uniform_f64_at(i as u64) * f64::from(vocab)) as u32 % vocab).collect()
}
