//! Megalodon against the Llama of equal parameter count, trained for the same tokens (same data order, seed and
//! schedule shape) on a pre-tokenized corpus file; prints the validation-loss curves as JSON on stdout.
//!
//! ```sh
//! # On a machine with the Rust docs: write the token file once.
//! cargo run --release -p effllm-cli -- train --preset cpu-small --save-tokens rust-docs.tokens
//! # On the GPU machine:
//! cargo run --release -p effllm-train --features cuda --example megalodon_vs_llama -- \
//!     --tokens rust-docs.tokens --size gpu-medium --device cuda:0 --steps 300 --warmup 20 --eval-every 25 > curves.json
//! ```
//!
//! `--size` picks the pair (`cpu-small` with `cpu-small-megalodon`, `gpu-medium` with `gpu-medium-megalodon`).
//! Both run in f32 (Megalodon has no bf16 path; the Llama is run in f32 too so the numerics match).
//! `--llama-lr`, `--megalodon-lr` override each preset's peak learning rate (the minimum is a tenth of it);
//! `--steps`, `--eval-every`, `--warmup`, `--eval-sequences`, `--threads` override the run; `--only llama` or
//! `--only megalodon` trains one of the pair (e.g. a learning-rate probe). The token file can also come from
//! `EFFLLM_TOKENS`.

use effllm_train::{Precision, TokenFile, TrainConfig, train_curve};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag =
        |name: &str| -> Option<String> { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned() };
    for a in args.iter().filter(|a| a.starts_with("--")) {
        const KNOWN: &[&str] = &[
            "--tokens",
            "--size",
            "--device",
            "--steps",
            "--eval-every",
            "--warmup",
            "--eval-sequences",
            "--threads",
            "--llama-lr",
            "--megalodon-lr",
            "--only",
        ];
        if !KNOWN.contains(&a.as_str()) {
            return Err(format!("unknown flag {a} (known: {})", KNOWN.join(", ")).into());
        }
    }
    let tokens = flag("--tokens")
        .or_else(|| std::env::var("EFFLLM_TOKENS").ok())
        .ok_or("give --tokens FILE (or EFFLLM_TOKENS): write one with `effllm train --save-tokens FILE`")?;
    let size = flag("--size").unwrap_or_else(|| "gpu-medium".into());
    let parse = |name: &str| -> Result<Option<f64>, Box<dyn std::error::Error>> {
        Ok(flag(name).map(|v| v.parse::<f64>()).transpose().map_err(|e| format!("{name}: {e}"))?)
    };
    let file = TokenFile::read(std::path::Path::new(&tokens))?;
    eprintln!(
        "{tokens}: {} training + {} validation tokens, vocabulary {}, tokenizer `{}`",
        file.train.len(),
        file.val.len(),
        file.vocab,
        file.fingerprint
    );
    let mut curves = Vec::new();
    // Both presets of a pair share seq_len, so one packing serves both (and gives both the same row order).
    let seq_len = TrainConfig::preset(&size)?.data.seq_len;
    let mut data = file.into_train_data(seq_len)?;
    let only = flag("--only");
    if let Some(o) = &only
        && o != "llama"
        && o != "megalodon"
    {
        return Err(format!("--only {o}: expected llama or megalodon").into());
    }
    for (arch, preset, lr_flag) in
        [("llama", size.clone(), "--llama-lr"), ("megalodon", format!("{size}-megalodon"), "--megalodon-lr")]
    {
        if only.as_deref().is_some_and(|o| o != arch) {
            continue;
        }
        let mut cfg = TrainConfig::preset(&preset)?;
        cfg.run.precision = Precision::F32;
        if let Some(d) = flag("--device") {
            cfg.run.device = d;
        }
        if let Some(s) = parse("--steps")? {
            cfg.run.steps = s as usize;
        }
        if let Some(s) = parse("--eval-every")? {
            cfg.run.eval_every = s as usize;
        }
        if let Some(s) = parse("--warmup")? {
            cfg.optim.warmup_steps = s as usize;
        }
        if let Some(s) = parse("--eval-sequences")? {
            cfg.data.eval_sequences = s as usize;
        }
        if let Some(s) = parse("--threads")? {
            cfg.run.threads = Some(s as usize);
        }
        if let Some(lr) = parse(lr_flag)? {
            (cfg.optim.lr, cfg.optim.min_lr) = (lr, lr / 10.0);
        }
        cfg.validate()?;
        if cfg.data.seq_len != seq_len {
            return Err(format!("{preset} has seq_len {}, the pair's Llama {seq_len}", cfg.data.seq_len).into());
        }
        eprintln!(
            "{preset}: {} steps of {} tokens on {}, lr {}",
            cfg.run.steps,
            cfg.tokens_per_step(),
            cfg.run.device,
            cfg.optim.lr
        );
        let curve = train_curve(&cfg, &mut data, &mut |s, val| {
            if let Some(v) = val {
                eprintln!("{preset}: step {s}: validation loss {v:.4}");
            }
        })?;
        eprintln!("{preset}: {:.0} tokens/s, {} parameters", curve.tokens_per_s, curve.parameters);
        curves.push(serde_json::json!({ "preset": preset, "device": cfg.run.device, "curve": curve }));
    }
    let out = serde_json::json!({ "size": size, "unigram_nats": data.unigram_nats(), "runs": curves });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
