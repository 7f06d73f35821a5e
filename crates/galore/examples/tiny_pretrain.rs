//! A small pretraining comparison on the CPU: a 2-layer Llama (d = 64) trained from scratch on a synthetic
//! second-order Markov language with plain Adam, GaLore (rank d/4) and GaLore with 8-bit moments, same data order,
//! same schedule. Prints validation loss (and its floor, the source's conditional entropy), optimizer-state bytes
//! and step time per arm, and the validation curves as a markdown table.
//!
//! `cargo run -p galore --release --example tiny_pretrain [-- STEPS [GALORE_LR [ADAM_LR]]]` (defaults: 600 steps,
//! GaLore lr 1e-2 — the paper's —, Adam lr 3e-3).
//!
//! This is a stand-in until effllm-train's trainer takes a pluggable optimizer (the issue's `bench-all` scenario on
//! the Rust-docs corpus): it uses effllm-model's decoder and autograd directly, one sequence per forward.

use std::time::Instant;

use effllm_model::{Batch, CausalLm, Embedding, Linear, LlamaConfig, LlamaFfn, LlamaLayer, LlamaModel, LogitRows};
use effllm_optim::Optimizer;
use effllm_optim::schedule::WarmupCosine;
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{Device, RopeConfig, RopeStyle, Tensor};
use galore::{Adam, Adam8bit, AdamConfig, GaLore, GaLoreParams, InnerOptimizer, ProjType, is_llama_projection};

const VOCAB: usize = 64;
const D: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const FF: usize = 176;
const SEQ: usize = 48;
const BATCH: usize = 8;
const EVAL_WINDOWS: usize = 32;
/// Probabilities of the four successors of every context `(a, b)`.
const PROBS: [f64; 4] = [0.55, 0.25, 0.15, 0.05];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The `k`-th successor of context `(a, b)` (a fixed pseudo-random table).
fn successor(a: u32, b: u32, k: usize) -> u32 {
    let h = (a as u64 * 73_856_093) ^ (b as u64 * 19_349_663) ^ (k as u64 * 83_492_791);
    (h.wrapping_mul(2_654_435_761) >> 7) as u32 % VOCAB as u32
}

/// `n` tokens of the Markov source, from a seeded uniform stream.
fn stream(seed: u64, n: usize) -> Vec<u32> {
    let rng = CounterRng::new(seed, 0);
    let mut out = vec![1u32, 2];
    for i in 0..n as u64 {
        let u = rng.uniform_f64_at(i);
        let (mut k, mut acc) = (0, PROBS[0]);
        while u >= acc && k < 3 {
            k += 1;
            acc += PROBS[k];
        }
        let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
        out.push(successor(a, b, k));
    }
    out
}

/// The model's parameters as named leaves, initialised from `seed` (scaled normal matrices, unit gains).
fn init(seed: u64) -> Res<Vec<(String, Tensor)>> {
    let mut stream = 0;
    let mut mat = |rows: usize, cols: usize| -> Res<Tensor> {
        stream += 1;
        let rng = CounterRng::new(seed, stream);
        let std = 1.0 / (cols as f64).sqrt();
        Ok(Tensor::randn(&[rows, cols], effllm_tensor::DType::F32, &Device::Cpu, &rng, 0, 0.0, std)?.requires_grad())
    };
    let ones = || -> Res<Tensor> { Ok(Tensor::ones(&[D], effllm_tensor::DType::F32, &Device::Cpu)?.requires_grad()) };
    let mut p = vec![("embedding".to_string(), mat(VOCAB, D)?)];
    for i in 0..LAYERS {
        p.push((format!("layers.{i}.attn_norm"), ones()?));
        for n in ["wq", "wk", "wv", "wo"] {
            p.push((format!("layers.{i}.{n}"), mat(D, D)?));
        }
        p.push((format!("layers.{i}.ffn_norm"), ones()?));
        p.push((format!("layers.{i}.ffn.gate"), mat(FF, D)?));
        p.push((format!("layers.{i}.ffn.up"), mat(FF, D)?));
        p.push((format!("layers.{i}.ffn.down"), mat(D, FF)?));
    }
    p.push(("norm".to_string(), ones()?));
    Ok(p)
}

/// The decoder over the current parameter tensors (tied embeddings).
fn model(p: &[(String, Tensor)]) -> Res<LlamaModel> {
    let cfg = LlamaConfig {
        n_layer: LAYERS,
        d_model: D,
        n_head: HEADS,
        n_head_kv: HEADS,
        head_dim: D / HEADS,
        d_ff: FF,
        vocab: VOCAB,
        context: SEQ + 1,
        rms_eps: 1e-5,
        rope: RopeConfig { style: RopeStyle::Interleaved, base: 10_000.0, rotary_dims: D / HEADS },
        tied_embeddings: true,
    };
    let t = |i: usize| p[i].1.clone();
    let lin = |i: usize| Linear::Dense(p[i].1.clone());
    let layers = (0..LAYERS)
        .map(|l| {
            let o = 1 + 9 * l;
            LlamaLayer {
                attn_norm: t(o),
                wq: lin(o + 1),
                wk: lin(o + 2),
                wv: lin(o + 3),
                wo: lin(o + 4),
                ffn_norm: t(o + 5),
                ffn: LlamaFfn { gate: lin(o + 6), up: lin(o + 7), down: lin(o + 8) },
            }
        })
        .collect();
    Ok(LlamaModel::from_parts(cfg, Embedding::Dense(t(0)), layers, t(p.len() - 1), lin(0))?)
}

/// Mean next-token cross-entropy over the windows starting at `starts`.
fn loss(p: &[(String, Tensor)], data: &[u32], starts: &[usize]) -> Res<Tensor> {
    let m = model(p)?;
    let mut total: Option<Tensor> = None;
    for &s in starts {
        let (x, y) = (&data[s..s + SEQ], &data[s + 1..s + SEQ + 1]);
        let logits = m.forward(&Batch::causal(x, 0), &mut m.new_cache(), &LogitRows::All)?;
        let ce = logits.cross_entropy(&Tensor::from_slice(y, &[SEQ], &Device::Cpu)?)?;
        total = Some(match total {
            Some(t) => t.add(&ce)?,
            None => ce,
        });
    }
    Ok(total.ok_or("no windows")?.affine(1.0 / starts.len() as f64, 0.0)?)
}

struct Arm {
    name: &'static str,
    curve: Vec<(usize, f64)>,
    state_bytes: usize,
    ms_per_step: f64,
    svds: u64,
}

fn train<I: InnerOptimizer>(
    name: &'static str,
    mut opt: GaLore<I>,
    galore: Option<GaLoreParams>,
    steps: usize,
) -> Res<Arm> {
    let train = stream(1, 200_000);
    let val = stream(2, 20_000);
    let mut p = init(7)?;
    if let Some(g) = galore {
        opt.add_targets(&p, is_llama_projection, g)?;
    }
    let sched = WarmupCosine::new(opt.learning_rate(), 0.1 * opt.learning_rate(), (steps / 20) as u64, steps as u64)?;
    let batches = CounterRng::new(3, 0);
    let val_starts: Vec<usize> = (0..EVAL_WINDOWS).map(|i| i * (val.len() - SEQ - 1) / EVAL_WINDOWS).collect();
    let mut curve = Vec::new();
    let mut secs = 0.0;
    for s in 0..steps {
        let starts: Vec<usize> = (0..BATCH)
            .map(|b| (batches.uniform_f64_at((s * BATCH + b) as u64) * (train.len() - SEQ - 1) as f64) as usize)
            .collect();
        let t0 = Instant::now();
        opt.set_learning_rate(sched.lr(s as u64));
        let grads = loss(&p, &train, &starts)?.backward()?;
        let mut tensors: Vec<Tensor> = p.iter().map(|(_, t)| t.clone()).collect();
        opt.step(&mut tensors, &grads)?;
        for ((_, t), new) in p.iter_mut().zip(tensors) {
            *t = new;
        }
        secs += t0.elapsed().as_secs_f64();
        if (s + 1) % (steps / 10).max(1) == 0 || s == 0 {
            let v = effllm_tensor::no_grad(|| loss(&p, &val, &val_starts))?.to_scalar::<f32>()? as f64;
            curve.push((s + 1, v));
            eprintln!("{name}: step {} val loss {v:.4}", s + 1);
        }
    }
    Ok(Arm {
        name,
        curve,
        state_bytes: opt.state_bytes(),
        ms_per_step: 1e3 * secs / steps as f64,
        svds: opt.svd_count(),
    })
}

fn main() -> Res<()> {
    let steps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(600);
    let galore_lr: f64 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(1e-2);
    let adam_lr: f64 = std::env::args().nth(3).map(|s| s.parse()).transpose()?.unwrap_or(3e-3);
    let floor = -PROBS.iter().map(|p| p * p.ln()).sum::<f64>();
    let adam = AdamConfig { lr: adam_lr, ..AdamConfig::default() };
    let galore_cfg = AdamConfig { lr: galore_lr, ..AdamConfig::default() };
    let g =
        GaLoreParams { rank: D / 4, update_proj_gap: 50, scale: 0.25, proj_type: ProjType::Std, matrix_shape: None };
    let arms = vec![
        train("Adam", GaLore::new(Adam::new(adam)?), None, steps)?,
        train("GaLore r=16 (α 0.25)", GaLore::new(Adam::new(galore_cfg)?), Some(g), steps)?,
        // The toy's low-rank moments (≤ 176×16 values) are below bitsandbytes' 4096-value threshold: quantize all.
        train("GaLore 8-bit r=16", GaLore::new(Adam8bit::new(galore_cfg)?.with_min_8bit_size(0)), Some(g), steps)?,
    ];
    println!(
        "steps {steps}, batch {BATCH}×{SEQ} tokens, d {D}, {LAYERS} layers, vocab {VOCAB}, Adam lr {adam_lr:e}, GaLore lr \
         {galore_lr:e}; loss floor (source entropy) {floor:.4} nats\n"
    );
    println!(
        "| arm | final val loss | val ppl | ppl ÷ Adam | optimizer state (bytes) | state ÷ Adam | ms / step | SVDs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let base = &arms[0];
    let (base_loss, base_bytes) = (base.curve.last().unwrap().1, base.state_bytes as f64);
    for a in &arms {
        let l = a.curve.last().unwrap().1;
        println!(
            "| {} | {l:.4} | {:.3} | {:.3} | {} | {:.3} | {:.1} | {} |",
            a.name,
            l.exp(),
            (l - base_loss).exp(),
            a.state_bytes,
            a.state_bytes as f64 / base_bytes,
            a.ms_per_step,
            a.svds
        );
    }
    println!("\n| step | {} |", arms.iter().map(|a| a.name).collect::<Vec<_>>().join(" | "));
    println!("|---:|{}", "---:|".repeat(arms.len()));
    for i in 0..base.curve.len() {
        let row: Vec<String> = arms.iter().map(|a| format!("{:.4}", a.curve[i].1)).collect();
        println!("| {} | {} |", base.curve[i].0, row.join(" | "));
    }
    Ok(())
}
