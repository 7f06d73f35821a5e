//! Megalodon against the Llama of equal parameter count (issue "megalodon", item 5), on the CPU:
//!
//! (a) both trained from scratch for the same tokens on the Rust-docs corpus — the same rows in the same order,
//! the same seed, warmup + cosine schedule and AdamW settings (presets `cpu-small` and `cpu-small-megalodon`,
//! ≈ 16.0 M parameters each, f32) — with the validation loss plotted against training tokens;
//!
//! (b) the cost of decoding one token after a context of 256 … 4k (8k with `--full`) tokens, with random weights
//! (cost does not depend on them): milliseconds per token and the bytes of what decoding carries — Megalodon's
//! state (timestep-norm statistics, CEMA state, the keys and values of the current chunk: bounded by the chunk
//! size) against the Llama's KV cache (growing with the context).
//!
//! `EFFLLM_TOKENS=<file>` trains on a pre-tokenized corpus (`effllm train --save-tokens`) instead of tokenizing the
//! Rust docs. The same comparison at the `gpu-medium` size runs on a GPU with `effllm-train`'s
//! `megalodon_vs_llama` example.

use std::time::Instant;

use effllm_model::{Batch, CausalLm, LogitRows};
use effllm_tensor::{Device, Tensor, no_grad};
use effllm_train::{Curve, TrainConfig, TrainData, Trainer, train_curve};
use megalodon::MegalodonState;

use crate::plot::{HLine, PlotSpec, Series, XAxis};
use crate::{Context, Options, Result, Scenario, ScenarioReport, Table, num};

/// The Megalodon-vs-Llama scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct MegalodonVsLlama;

/// Optimizer steps of each training run: quick and `--full`.
fn steps(options: &Options) -> usize {
    if options.full { 300 } else { 60 }
}

/// Context lengths of the decode measurement.
fn contexts(options: &Options) -> Vec<usize> {
    let mut c = vec![256, 512, 1024, 2048, 4096];
    if options.full {
        c.push(8192);
    }
    c
}

/// Decode steps timed at each context length (their median is reported).
const DECODE_STEPS: usize = 8;
/// Tokens per prefill call (bounds the logits buffer: `PREFILL · vocab` floats).
const PREFILL: usize = 256;

/// Bytes of every tensor a Megalodon state holds (f32; the per-row token counts are not tensors).
fn state_bytes(s: &MegalodonState) -> usize {
    let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
    let mut total = t(s.final_norm.mean()) + t(s.final_norm.var());
    for l in &s.layers {
        total += t(l.tsn.mean()) + t(l.tsn.var()) + t(l.cema.h_re()) + t(l.cema.h_im());
        if let Some((k, v)) = l.kv.keys_values() {
            total += t(k) + t(v);
        }
    }
    total
}

/// The corpus: a token file from `EFFLLM_TOKENS`, else the Rust docs.
fn corpus(cfg: &TrainConfig, ctx: &Context) -> Result<TrainData> {
    crate::training_corpus(cfg, ctx, "megalodon")
}

/// One decode measurement: median seconds per token and the bytes carried, at one context length.
struct DecodePoint {
    context: usize,
    llama_s: f64,
    megalodon_s: f64,
    llama_bytes: usize,
    megalodon_bytes: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Decode cost against context length for both models (random weights), each prefilled in `PREFILL`-token calls
/// up to each context length in turn.
fn decode_costs(ctx: &Context, vocab: usize, lens: &[usize]) -> Result<Vec<DecodePoint>> {
    let max = lens.iter().copied().max().unwrap_or(0);
    // The Llama's context (its RoPE and cache limit) is `seq_len`; the Megalodon has none.
    let mut lcfg = TrainConfig::preset("cpu-small")?;
    lcfg.data.seq_len = max + PREFILL + DECODE_STEPS * lens.len() + 1;
    lcfg.run.threads = Some(ctx.options.threads);
    let llama = Trainer::new(lcfg, vocab)?.model()?;
    let mut mcfg = TrainConfig::preset("cpu-small-megalodon")?;
    mcfg.run.threads = Some(ctx.options.threads);
    let mega = Trainer::new(mcfg, vocab)?.megalodon()?;
    // A fixed pseudo-random token stream.
    let token = |i: usize| ((i as u64 * 2_654_435_761) % vocab as u64) as u32;
    let mut cache = llama.new_cache();
    let mut state = mega.init_state(1)?;
    let (mut lpos, mut mpos) = (0usize, 0usize);
    let mut out = Vec::new();
    no_grad(|| -> Result<()> {
        for &len in lens {
            ctx.status(format!("megalodon: decode at context {len}"));
            while lpos < len {
                let n = PREFILL.min(len - lpos);
                let toks: Vec<u32> = (lpos..lpos + n).map(token).collect();
                llama.forward(&Batch::causal(&toks, lpos), &mut cache, &LogitRows::Last)?;
                lpos += n;
            }
            while mpos < len {
                let n = PREFILL.min(len - mpos);
                let toks: Vec<u32> = (mpos..mpos + n).map(token).collect();
                mega.forward(&Tensor::from_vec(toks, &[1, n], &Device::Cpu)?, &mut state)?;
                mpos += n;
            }
            let (mut lt, mut mt) = (Vec::new(), Vec::new());
            for _ in 0..DECODE_STEPS {
                let t0 = Instant::now();
                llama.forward(&Batch::causal(&[token(lpos)], lpos), &mut cache, &LogitRows::Last)?.to_vec::<f32>()?;
                lt.push(t0.elapsed().as_secs_f64());
                lpos += 1;
                let t0 = Instant::now();
                mega.step(&Tensor::from_vec(vec![token(mpos)], &[1], &Device::Cpu)?, &mut state)?.to_vec::<f32>()?;
                mt.push(t0.elapsed().as_secs_f64());
                mpos += 1;
            }
            out.push(DecodePoint {
                context: len,
                llama_s: median(lt),
                megalodon_s: median(mt),
                llama_bytes: cache.nbytes(),
                megalodon_bytes: state_bytes(&state),
            });
        }
        Ok(())
    })?;
    Ok(out)
}

impl Scenario for MegalodonVsLlama {
    fn name(&self) -> &'static str {
        "megalodon"
    }

    fn description(&self) -> &'static str {
        "Megalodon vs the equal-parameter Llama: validation loss at equal tokens on the Rust docs, decode cost and \
         state bytes against context length"
    }

    fn cases(&self, _options: &Options) -> usize {
        0
    }

    fn run(&self, ctx: &mut Context) -> Result<ScenarioReport> {
        let n = steps(&ctx.options);
        let configure = |preset: &str| -> Result<TrainConfig> {
            let mut cfg = TrainConfig::preset(preset)?;
            cfg.run.steps = n;
            cfg.run.eval_every = (n / 6).max(1);
            cfg.optim.warmup_steps = (n / 15).max(1);
            cfg.run.threads = Some(ctx.options.threads);
            cfg.run.out_dir = crate::target_dir().join("effllm-report").join(format!("{preset}-run"));
            Ok(cfg)
        };
        let (lcfg, mcfg) = (configure("cpu-small")?, configure("cpu-small-megalodon")?);
        ctx.status("megalodon: loading and tokenizing the corpus");
        let mut data = corpus(&lcfg, ctx)?;
        let unigram = data.unigram_nats();
        let mut curves: Vec<Curve> = Vec::new();
        for cfg in [&lcfg, &mcfg] {
            let arch = cfg.model.architecture.name();
            let c = train_curve(cfg, &mut data, &mut |s, val| {
                ctx.status(format!("megalodon: training {arch}, step {s}/{n}"));
                if let Some(v) = val {
                    ctx.log(format!("megalodon: {arch} step {s}: validation {v:.4} nats (unigram {unigram:.4})"));
                }
            })?;
            curves.push(c);
        }
        let (lc, mc) = (&curves[0], &curves[1]);
        let mut table = Table::new(
            format!(
                "Validation loss at equal training tokens (f32, {} × {} tokens per step, lr {} peak for both)",
                lcfg.data.batch_size, lcfg.data.seq_len, lcfg.optim.lr
            ),
            &["step", "tokens", "Llama val", "Megalodon val", "Megalodon − Llama", "Llama train", "Megalodon train"],
        );
        for (a, b) in lc.points.iter().zip(&mc.points) {
            table.row(vec![
                a.step.to_string(),
                a.tokens.to_string(),
                num(a.val_loss),
                num(b.val_loss),
                format!("{:+.3}", b.val_loss - a.val_loss),
                a.train_loss.map_or("—".into(), num),
                b.train_loss.map_or("—".into(), num),
            ]);
        }
        let mut speed =
            Table::new("Training runs", &["model", "parameters", "peak lr", "tokens/s", "train s", "final val loss"]);
        for c in &curves {
            speed.row(vec![
                c.architecture.clone(),
                c.parameters.to_string(),
                format!("{:e}", c.lr),
                num(c.tokens_per_s),
                num(c.train_seconds),
                num(c.points.last().map_or(f64::NAN, |p| p.val_loss)),
            ]);
        }
        let lens = contexts(&ctx.options);
        let decode = decode_costs(ctx, data.vocab(), &lens)?;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let mut dec = Table::new(
            "Decoding one token after a context (random weights, batch 1, f32; median of 8 steps)",
            &["context", "Llama ms/token", "Megalodon ms/token", "Llama KV cache MiB", "Megalodon state MiB"],
        );
        for p in &decode {
            dec.row(vec![
                p.context.to_string(),
                num(1e3 * p.llama_s),
                num(1e3 * p.megalodon_s),
                num(mib(p.llama_bytes)),
                num(mib(p.megalodon_bytes)),
            ]);
        }
        let (lf, mf) =
            (lc.points.last().map_or(f64::NAN, |p| p.val_loss), mc.points.last().map_or(f64::NAN, |p| p.val_loss));
        let curve_pts = |c: &Curve| c.points.iter().map(|p| (p.tokens as f64, p.val_loss)).collect::<Vec<_>>();
        let ctx_series = |name: &str, f: &dyn Fn(&DecodePoint) -> f64| Series {
            name: name.into(),
            points: decode.iter().map(|p| (p.context as f64, f(p))).collect(),
        };
        Ok(ScenarioReport {
            title: "Megalodon vs an equal-parameter Llama (CPU)".into(),
            notes: vec![
                format!(
                    "Same {} training tokens for both ({n} steps of {}), same row order, seed, warmup + cosine \
                     schedule and AdamW (β = ({}, {}), weight decay {} on matrices, clip {}), peak lr {} for both; \
                     Llama {} parameters, Megalodon {} (same d = {}, layers, vocabulary and tied embedding; \
                     Megalodon's FFN narrowed to 672 to match). Final validation loss: Llama {lf:.3}, Megalodon \
                     {mf:.3} nats (unigram baseline {unigram:.3}).",
                    lcfg.tokens_per_step() * n,
                    lcfg.tokens_per_step(),
                    lcfg.optim.beta1,
                    lcfg.optim.beta2,
                    lcfg.optim.weight_decay,
                    lcfg.optim.clip_norm,
                    lcfg.optim.lr,
                    lc.parameters,
                    mc.parameters,
                    lcfg.model.d_model,
                ),
                format!(
                    "Megalodon's attention chunk is {} tokens, half the {}-token training rows, so its CEMA and \
                     timestep norm carry every row's first chunk into the second.",
                    mcfg.model.megalodon.as_ref().map_or(0, |m| m.chunk_size),
                    mcfg.data.seq_len
                ),
                "Decode: each model is prefilled to the context length (256-token calls), then 8 single-token steps \
                 are timed; the Llama's KV cache is its allocated buffers, Megalodon's state every tensor of its \
                 MegalodonState (bounded: the keys and values of at most one chunk)."
                    .into(),
            ],
            tables: vec![table, speed, dec],
            plots: vec![
                PlotSpec {
                    file_stem: "megalodon-loss".into(),
                    title: "Validation loss at equal tokens (Rust docs, 16.0 M parameters each)".into(),
                    x_label: "training tokens".into(),
                    y_label: "validation cross-entropy (nats per token)".into(),
                    x: XAxis::Linear,
                    series: vec![
                        Series { name: "Llama (cpu-small)".into(), points: curve_pts(lc) },
                        Series { name: "Megalodon (cpu-small-megalodon)".into(), points: curve_pts(mc) },
                    ],
                    hlines: vec![HLine { name: "unigram baseline".into(), y: unigram }],
                },
                PlotSpec {
                    file_stem: "megalodon-decode-time".into(),
                    title: "Decode time per token against context length".into(),
                    x_label: "context (tokens)".into(),
                    y_label: "ms per token".into(),
                    x: XAxis::Log2,
                    series: vec![
                        ctx_series("Llama", &|p| 1e3 * p.llama_s),
                        ctx_series("Megalodon", &|p| 1e3 * p.megalodon_s),
                    ],
                    hlines: Vec::new(),
                },
                PlotSpec {
                    file_stem: "megalodon-decode-memory".into(),
                    title: "Decoding state against context length".into(),
                    x_label: "context (tokens)".into(),
                    y_label: "MiB (Llama KV cache, Megalodon state)".into(),
                    x: XAxis::Log2,
                    series: vec![
                        ctx_series("Llama KV cache", &|p| mib(p.llama_bytes)),
                        ctx_series("Megalodon state", &|p| mib(p.megalodon_bytes)),
                    ],
                    hlines: Vec::new(),
                },
            ],
            targets: Vec::new(),
        })
    }
}
