//! Training the `cpu-small` Llama (4 layers, d = 256, SmolLM2 tokenizer, ≈ 16 M parameters) from scratch on the
//! Rust-docs corpus (CPU, f32): training tokens/s, and the validation loss against the corpus' unigram baseline
//! as training goes — issue "Training"'s CPU benchmark and its "the loss falls well below the unigram entropy"
//! check, plotted. The GPU comparison with PyTorch eager (same architecture, batch and dtype) runs on the GPU
//! machine with `effllm-train`'s `train_speed` example and `scripts/bench/train_torch.py`; its figures are in
//! `docs/benchmarks.md`.

use std::time::Instant;

use effllm_train::{TrainConfig, Trainer};

use crate::plot::{HLine, PlotSpec, Series, XAxis};
use crate::{Context, Options, Result, Scenario, ScenarioReport, Table, num};

/// The training scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct Train;

/// Optimizer steps: quick and `--full`.
fn steps(options: &Options) -> usize {
    if options.full { 300 } else { 60 }
}

impl Scenario for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn description(&self) -> &'static str {
        "pretrain the cpu-small Llama on the Rust docs: tokens/s and validation loss vs the unigram baseline"
    }

    fn cases(&self, _options: &Options) -> usize {
        0
    }

    fn run(&self, ctx: &mut Context) -> Result<ScenarioReport> {
        let mut cfg = TrainConfig::preset("cpu-small")?;
        let n = steps(&ctx.options);
        cfg.run.steps = n;
        cfg.run.eval_every = (n / 6).max(1);
        cfg.optim.warmup_steps = (n / 15).max(1);
        cfg.run.threads = Some(ctx.options.threads);
        cfg.run.out_dir = crate::target_dir().join("effllm-report").join("train-run");
        ctx.status("train: loading and tokenizing the corpus");
        let mut data = effllm_train::rust_docs(&cfg, &mut |l| ctx.log(format!("train: {l}")))?;
        let unigram = data.unigram_nats();
        let mut trainer = Trainer::new(cfg.clone(), data.vocab())?;
        let first = trainer.evaluate(&data)?;
        let mut table = Table::new(
            "Validation loss while training cpu-small (f32, 8 × 128 tokens per step)",
            &["step", "tokens", "train loss", "val loss", "val perplexity", "vs unigram", "tok/s (last step)"],
        );
        table.row(vec![
            "0".into(),
            "0".into(),
            "—".into(),
            num(first.loss),
            num(first.perplexity),
            num(first.loss - unigram),
            "—".into(),
        ]);
        // Training loss averaged over each evaluation interval, plotted at the evaluation steps (the axis ticks sit
        // at the data's x values).
        let (mut train_pts, mut val_pts) = (Vec::new(), vec![(0.0, first.loss)]);
        let (mut interval_sum, mut interval_n) = (0.0, 0usize);
        let t0 = Instant::now();
        for s in 1..=n {
            ctx.status(format!("train: step {s}/{n}"));
            let r = trainer.train_step(&mut data)?;
            interval_sum += r.loss;
            interval_n += 1;
            if s % cfg.run.eval_every == 0 || s == n {
                train_pts.push((s as f64, interval_sum / interval_n as f64));
                (interval_sum, interval_n) = (0.0, 0);
                let e = trainer.evaluate(&data)?;
                val_pts.push((s as f64, e.loss));
                table.row(vec![
                    s.to_string(),
                    trainer.tokens_seen().to_string(),
                    num(r.loss),
                    num(e.loss),
                    num(e.perplexity),
                    num(e.loss - unigram),
                    num(r.tokens_per_s),
                ]);
                ctx.log(format!("train: step {s}: validation {:.4} nats (unigram {unigram:.4})", e.loss));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let tok_s = trainer.tokens_seen() as f64 / secs;
        let m = trainer.memory();
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let mut mem = Table::new(
            "Memory of one step (MiB)",
            &["parameters", "gradients", "AdamW state", "activations", "step peak"],
        );
        mem.row(vec![
            num(mib(m.params)),
            num(mib(m.grads)),
            num(mib(m.optimizer_state)),
            num(mib(m.activations)),
            num(mib(m.step_peak)),
        ]);
        let last = trainer.evals().last().map_or(f64::NAN, |e| e.loss);
        Ok(ScenarioReport {
            title: "Training (effllm-train), cpu-small on the Rust docs".into(),
            notes: vec![
                format!(
                    "{n} steps of 1024 tokens in {secs:.0} s: {tok_s:.0} training tokens/s on {} threads (forward, \
                     backward, AdamW). Validation loss {:.3} → {last:.3} nats; the unigram baseline (validation tokens \
                     under the training split's token frequencies) is {unigram:.3} nats.",
                    ctx.options.threads, first.loss
                ),
                "The GPU ratio against PyTorch eager (same architecture, batch, dtype) is measured on the GPU machine \
                 (`train_speed` example, `scripts/bench/train_torch.py`); see docs/benchmarks.md."
                    .into(),
            ],
            tables: vec![table, mem],
            plots: vec![PlotSpec {
                file_stem: "train".into(),
                title: "cpu-small on the Rust docs: loss vs step".into(),
                x_label: "optimizer step (1024 tokens each)".into(),
                y_label: "cross-entropy (nats per token)".into(),
                x: XAxis::Linear,
                series: vec![
                    Series { name: "training loss (interval mean)".into(), points: train_pts },
                    Series { name: "validation loss".into(), points: val_pts },
                ],
                hlines: vec![HLine { name: "unigram baseline".into(), y: unigram }],
            }],
            targets: Vec::new(),
        })
    }
}
