//! SpecExec with an offloaded target on a GPU: `cargo run --release -p specexec --features cuda --example offloaded
//! -- [cuda:N] [tokens]`.
//!
//! Target: SmolLM2-135M in f32 whose 30 decoder layers stream from pinned host memory for every forward
//! ([`effllm_model::OffloadedLlama`]); draft: the same model's Q4_1 blocks, resident on the GPU. Compares, in one
//! run, autoregressive decoding of the offloaded target with SpecExec at budgets K = 16 … 1024 (greedy and
//! T = 0.6), through [`specexec::compare::compare_with_autoregressive`] (untimed warm-up first, prefill excluded).
//! The prompts here are fixed token ids (no tokenizer or corpus needed for a speed comparison); `bench-all`'s
//! `specexec` scenario runs the same comparison on corpus prompts. The pair is far smaller than the paper's
//! (Llama-2-70B offloaded, 7B draft): the offloaded forward here costs tens of milliseconds, not seconds.

use effllm_model::{Device, LlamaModel, LoadOptions, OffloadedLlama, WeightFormat};
use effllm_sampling::SamplingParams;
use specexec::compare::{ComparisonConfig, compare_with_autoregressive};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::parse(args.first().map_or("cuda:0", String::as_str))?;
    let new_tokens: usize = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let path = effllm_gguf::model_cache::fetch_smollm2(|l| eprintln!("{l}"))?;
    let host = LlamaModel::open_gguf(&path, &LoadOptions { format: WeightFormat::F32, ..Default::default() })?;
    let target = OffloadedLlama::new(&host, device)?;
    let draft = LlamaModel::open_gguf(&path, &LoadOptions::default())?.to_device(&device)?;
    let prompts: Vec<Vec<u32>> =
        (0..3u32).map(|p| (0..96u32).map(|i| 100 + (i * 37 + p * 1013) % 20000).collect()).collect();
    println!(
        "target: SmolLM2 f32, {:.0} MB of layers streamed per forward on {device}; draft: SmolLM2 Q4_1 resident",
        target.layer_bytes() as f64 / 1e6
    );
    println!(
        "{:>16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "method", "T", "tok/s", "tok/step", "target s", "draft s", "speedup"
    );
    let cfg = ComparisonConfig::new(new_tokens, &[16, 64, 256, 1024]);
    for temperature in [0.0f32, 0.6] {
        let params = SamplingParams { temperature, seed: 7, ..SamplingParams::greedy() };
        let rows = compare_with_autoregressive(&draft, &target, &prompts, &params, &cfg, |m| {
            eprintln!("T={temperature}: {m}")
        })?;
        let base = rows[0].clone();
        for r in &rows {
            println!(
                "{:>16} {temperature:>6.1} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>9.2}",
                r.method.to_string(),
                r.tokens_per_second(),
                r.tokens_per_step(),
                r.target_s,
                r.draft_s,
                r.speedup_over(&base)
            );
        }
    }
    Ok(())
}
