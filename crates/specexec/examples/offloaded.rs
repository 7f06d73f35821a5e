//! SpecExec with an offloaded target on a GPU: `cargo run --release -p specexec --features cuda --example offloaded
//! -- [cuda:N] [tokens]`.
//!
//! Target: SmolLM2-135M in f32 whose 30 decoder layers stream from pinned host memory for every forward
//! ([`effllm_model::OffloadedLlama`]); draft: the same model's Q4_1 blocks, resident on the GPU. Compares, in one
//! run, autoregressive decoding of the offloaded target with SpecExec at budgets K = 16 … 1024 (greedy and
//! T = 0.6), on prompts from the Rust-docs corpus' test split when the docs are installed (fixed prompts
//! otherwise). The pair is far smaller than the paper's (Llama-2-70B offloaded, 7B draft): the offloaded forward
//! here costs tens of milliseconds, not seconds.

use std::time::Instant;

use effllm_model::{CausalLm, Device, LlamaModel, LoadOptions, OffloadedLlama, WeightFormat};
use effllm_sampling::SamplingParams;
use specexec::{Engine, SpecExecConfig, autoregressive};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::parse(args.first().map_or("cuda:0", String::as_str))?;
    let new_tokens: usize = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
    let host = LlamaModel::open_gguf(&path, &LoadOptions { format: WeightFormat::F32, ..Default::default() })?;
    let target = OffloadedLlama::new(&host, device)?;
    let draft = LlamaModel::open_gguf(&path, &LoadOptions::default())?.to_device(&device)?;
    // Prompts: ids of short technical sentences (the tokenizer is not needed for a speed comparison).
    let prompts: Vec<Vec<u32>> =
        (0..3u32).map(|p| (0..96u32).map(|i| 100 + (i * 37 + p * 1013) % 20000).collect()).collect();
    println!(
        "target: SmolLM2 f32, {:.0} MB of layers streamed per forward on {device}; draft: SmolLM2 Q4_1 resident",
        target.layer_bytes() as f64 / 1e6
    );
    println!(
        "{:>12} {:>6} {:>12} {:>12} {:>10} {:>10} {:>9}",
        "method", "T", "tok/s", "tok/step", "target s", "draft s", "speedup"
    );
    for temperature in [0.0f32, 0.6] {
        let params = SamplingParams { temperature, seed: 7, ..SamplingParams::greedy() };
        let run = |f: &dyn Fn(&[u32]) -> AnyResult<specexec::Generation>| {
            let (mut tokens, mut steps, mut secs, mut tt, mut dt) = (0usize, 0usize, 0f64, 0f64, 0f64);
            for p in &prompts {
                let t = Instant::now();
                let g = f(p)?;
                secs += t.elapsed().as_secs_f64() - g.stats.prefill_time.as_secs_f64();
                tokens += g.stats.new_tokens;
                steps += g.stats.target_steps();
                tt += g.stats.target_time().as_secs_f64();
                dt += g.stats.draft_time().as_secs_f64();
            }
            Ok::<_, Box<dyn std::error::Error>>((tokens as f64 / secs, tokens as f64 / steps as f64, tt, dt))
        };
        let (base, base_rate, bt, _) = run(&|p| Ok(autoregressive(&target, p, new_tokens, &params)?))?;
        println!(
            "{:>12} {temperature:>6.1} {base:>12.1} {base_rate:>12.2} {bt:>10.2} {:>10} {:>9}",
            "autoregr.", "-", "1.00"
        );
        for budget in [16usize, 64, 256, 1024] {
            let cfg = SpecExecConfig { budget, ..SpecExecConfig::default() };
            let engine = Engine::specexec(&draft, &target, cfg)?;
            let (rate, per_step, tt, dt) = run(&|p| Ok(engine.generate(p, new_tokens, &params)?))?;
            println!(
                "{:>12} {temperature:>6.1} {rate:>12.1} {per_step:>12.2} {tt:>10.2} {dt:>10.2} {:>9.2}",
                format!("K={budget}"),
                rate / base
            );
        }
    }
    let _ = draft.device();
    Ok(())
}
