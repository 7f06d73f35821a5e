//! `effllm`: generate text with SmolLM2 (or any Llama-family GGUF), measure perplexity on the Rust-docs corpus or
//! a file, and inspect GGUF files.
//!
//! ```text
//! effllm generate "Ownership in Rust means" --max-tokens 64
//! effllm generate --chat "What is a borrow checker?"
//! effllm perplexity                      # the corpus validation split
//! effllm perplexity notes.txt --context 512 --stride 256
//! effllm info                            # the default model; or `effllm info model.gguf`
//! ```
//!
//! Without `--model`, the SmolLM2-135M-Instruct GGUF is fetched into the model cache on first use
//! (`cargo xtask fetch-model` does the same).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use effllm_gguf::{GgufFile, ReadOptions, model_cache};
use effllm_model::{Batch, CausalLm, Device, GraphDecoder, LlamaModel, LoadOptions, LogitRows, WeightFormat};
use effllm_sampling::{Sampler, SamplingParams};
use effllm_tensor::quant::ActivationQuant;
use effllm_tokenizer::{ChatMessage, GgufTokenizer, PreTokenizerChoice};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(name = "effllm", version, about = "Efficient LLM inference and training: generate, perplexity, train, info")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a continuation of a prompt, streaming tokens to stdout (statistics go to stderr).
    Generate(GenerateArgs),
    /// Perplexity of the model on a text file, or on the Rust-docs corpus split.
    Perplexity(PerplexityArgs),
    /// Pretrain a Llama or a Megalodon from scratch on the Rust-docs corpus (SmolLM2 tokenizer) or a token file:
    /// `--config <file>` or `--preset`.
    Train(TrainArgs),
    /// Print a GGUF file's metadata, tensors and model configuration.
    Info {
        /// The GGUF file (default: the cached SmolLM2 model, fetched if absent).
        model: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// GGUF model file (default: SmolLM2-135M-Instruct Q4_1, fetched into the model cache on first use).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Weights as stored (quantized blocks), or dequantized to f32 / bf16 at load.
    #[arg(long, default_value = "quantized", value_parser = ["quantized", "f32", "bf16"])]
    weights: String,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Quantize activations to Q8 blocks in the quantized kernels (llama.cpp's numerics) instead of f32.
    #[arg(long)]
    q8_activations: bool,
    /// KV cache storage: f32 (exact) or f16 (llama.cpp's default; half the bytes that long-context decode reads).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// The prompt (read from stdin when absent).
    prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as a user turn (and add the assistant prompt).
    #[arg(long)]
    chat: bool,
    /// System message for `--chat` (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate at most (generation also stops at the end-of-sequence token).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus: keep the most likely tokens whose mass reaches p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep tokens with probability ≥ min_p · p_max (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// CTRL repetition penalty over the last `--repeat-last-n` tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Window of the repetition penalty.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Treat special-token strings in the prompt (e.g. `<|im_start|>`) as special tokens (off: they are text).
    #[arg(long)]
    parse_special: bool,
    /// On a CUDA device, decode launch by launch instead of replaying each step as a CUDA graph (the default there;
    /// same tokens, several times slower).
    #[arg(long)]
    no_graph: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// A JSON training config: a whole config, or `{"preset": "<name>", <sections overriding it>}`.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// A built-in preset: cpu-small (4 layers, d = 256; minutes on 2 cores), gpu-medium (8 layers, d = 512,
    /// bf16), cpu-small-megalodon / gpu-medium-megalodon (Megalodon of the same parameter count), tiny.
    #[arg(long)]
    preset: Option<String>,
    /// Train on a pre-tokenized corpus file (written by `--save-tokens`) instead of tokenizing the Rust docs: for
    /// machines without the docs or the tokenizer.
    #[arg(long, conflicts_with = "save_tokens")]
    tokens: Option<PathBuf>,
    /// Tokenize the Rust-docs corpus, write its training and validation streams to this file and exit.
    #[arg(long)]
    save_tokens: Option<PathBuf>,
    /// Override `run.steps`.
    #[arg(long)]
    steps: Option<usize>,
    /// Override `run.out_dir` (checkpoint, metrics.jsonl, config.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override `run.device` (`cpu`, `cuda:0`).
    #[arg(long)]
    device: Option<String>,
    /// Override `run.threads`.
    #[arg(long)]
    threads: Option<usize>,
    /// Continue from `<out>/checkpoint` if it exists.
    #[arg(long)]
    resume: bool,
    /// Print the resolved config as JSON and exit (a starting point for `--config`).
    #[arg(long)]
    print_config: bool,
}

#[derive(Args, Debug)]
struct PerplexityArgs {
    /// A UTF-8 text file (default: the Rust-docs corpus split given by `--split`).
    file: Option<PathBuf>,
    /// Corpus split when no file is given.
    #[arg(long, default_value = "validation", value_parser = ["train", "validation", "test"])]
    split: String,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Window stride in tokens (each token is scored once, with up to `context − stride` tokens of history).
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// Stop after scoring this many tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
    /// Write the evaluated documents' token ids as JSON (`[[ids of document 0], ...]`) so another implementation
    /// (e.g. llama.cpp) can score exactly the same windows.
    #[arg(long)]
    save_tokens: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

fn model_path(explicit: Option<&Path>) -> AnyResult<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if model_cache::smollm2_path().is_none() {
        eprintln!("effllm: SmolLM2-135M-Instruct is not cached yet; fetching it (once)");
    }
    Ok(model_cache::fetch_smollm2(|line| eprintln!("effllm: {line}"))?)
}

fn parse_device(s: &str) -> AnyResult<Device> {
    let dev = Device::parse(s)?;
    // Touch the device once so that a build without CUDA, or a machine without a GPU, fails here with a clear
    // error rather than in the middle of loading.
    effllm_tensor::Tensor::zeros(&[1], effllm_tensor::DType::F32, &dev)?;
    Ok(dev)
}

struct Loaded {
    model: LlamaModel,
    tokenizer: GgufTokenizer,
    load_s: f64,
}

fn load(args: &ModelArgs) -> AnyResult<Loaded> {
    if let Some(n) = args.threads {
        effllm_tensor::threads::set_num_threads(n)?;
    }
    let path = model_path(args.model.as_deref())?;
    let t0 = Instant::now();
    let file = GgufFile::open(&path, &ReadOptions::default())?;
    let tokenizer = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::FromMetadata)?;
    let format = match args.weights.as_str() {
        "f32" => WeightFormat::F32,
        "bf16" => WeightFormat::BF16,
        _ => WeightFormat::Quantized,
    };
    let model = LlamaModel::from_gguf(
        &file,
        &LoadOptions {
            format,
            device: parse_device(&args.device)?,
            activations: if args.q8_activations { ActivationQuant::Q8 } else { ActivationQuant::F32 },
        },
    )?
    .with_kv_cache_dtype(if args.kv_cache == "f16" {
        effllm_model::DType::F16
    } else {
        effllm_model::DType::F32
    })?;
    Ok(Loaded { model, tokenizer, load_s: t0.elapsed().as_secs_f64() })
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn generate(a: &GenerateArgs) -> AnyResult<()> {
    let prompt = match &a.prompt {
        Some(p) => p.clone(),
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let Loaded { model, tokenizer, load_s } = load(&a.model)?;
    let ids = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s.clone()));
        }
        msgs.push(ChatMessage::user(prompt));
        // The template is trusted; the user's text inside it is not re-parsed for specials by the template
        // renderer, but the rendered string is, so literal special strings in user text stay possible here.
        tokenizer.encode_chat(&msgs, true)?
    } else {
        tokenizer.encode(&prompt, a.parse_special)?
    };
    if ids.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    if ids.len() >= model.context_length() {
        return Err(format!(
            "the prompt has {} tokens but the model's context is {} (at least one slot must stay free to generate)",
            ids.len(),
            model.context_length()
        )
        .into());
    }
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        penalty_window: Some(a.repeat_last_n),
        seed: a.seed,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params)?;
    let eos = tokenizer.eos_id();
    let mut cache = model.new_cache();
    let mut history = ids.clone();
    // On a GPU the decode steps replay a CUDA graph (effllm-model's GraphDecoder): the same ops as the ordinary
    // forward, several times faster because one token is otherwise hundreds of separate kernel launches.
    let mut graph = match model.device() {
        Device::Cuda(_) if !a.no_graph => {
            Some(GraphDecoder::new(&model, model.context_length().min(ids.len() + a.max_tokens.max(1)))?)
        }
        _ => None,
    };
    let t0 = Instant::now();
    let mut logits = match graph.as_mut() {
        Some(g) => g.prefill(&ids)?,
        None => model.forward(&Batch::causal(&ids, 0), &mut cache, &LogitRows::Last)?.to_vec::<f32>()?,
    };
    let prefill_s = t0.elapsed().as_secs_f64();
    // Greedy sampling (temperature 0, no repetition penalty: the filters keep the argmax) on a fused GPU step: the
    // argmax is computed on the device and only the token id is read back per step, not the logits.
    let greedy_on_device =
        graph.as_ref().is_some_and(|g| g.is_fused()) && a.temperature == 0.0 && a.repeat_penalty == 1.0;
    let mut device_choice: Option<u32> = None;
    let mut stream = tokenizer.decode_stream(true);
    let mut out = std::io::stdout().lock();
    let t1 = Instant::now();
    let mut generated = 0usize;
    let mut stop = "max tokens";
    while generated < a.max_tokens {
        let next = match device_choice.take() {
            Some(t) => t,
            None => sampler.sample(&logits, &history)?,
        };
        generated += 1;
        history.push(next);
        if Some(next) == eos {
            stop = "end of sequence";
            break;
        }
        if let Some(text) = stream.step(next)? {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        if generated == a.max_tokens {
            break;
        }
        if history.len() >= model.context_length() {
            stop = "context full";
            break;
        }
        logits = match graph.as_mut() {
            Some(g) if greedy_on_device => {
                device_choice = Some(g.decode_greedy(next)?);
                continue;
            }
            Some(g) => g.decode(next)?,
            None => {
                let batch = Batch::causal(&[next], history.len() - 1);
                model.forward(&batch, &mut cache, &LogitRows::Last)?.to_vec::<f32>()?
            }
        };
    }
    let tail = stream.finish();
    out.write_all(tail.as_bytes())?;
    writeln!(out)?;
    let decode_s = t1.elapsed().as_secs_f64();
    eprintln!(
        "effllm: load {load_s:.2} s | prompt {} tokens, {:.1} tok/s | generated {generated} tokens, {:.1} tok/s | \
         stop: {stop} | peak RSS {}",
        ids.len(),
        ids.len() as f64 / prefill_s,
        generated as f64 / decode_s.max(1e-9),
        peak_rss().map_or("unknown".into(), |b| format!("{:.0} MiB", mib(b)))
    );
    Ok(())
}

fn perplexity(a: &PerplexityArgs) -> AnyResult<()> {
    use effllm_data::{Corpus, FnEncoder, Split, SplitConfig, TextEncoder, TokenCache, TokenizedSplit};
    let Loaded { model, tokenizer, .. } = load(&a.model)?;
    if a.context > model.context_length() {
        return Err(format!("--context {} exceeds the model's {}", a.context, model.context_length()).into());
    }
    let encoder = FnEncoder::new(tokenizer.fingerprint(), |t: &str| {
        tokenizer.encode(t, false).map_err(|e| Box::new(e) as effllm_data::EncodeError)
    });
    let (data, source) = match &a.file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            (
                TokenizedSplit::from_parts(
                    vec![p.display().to_string()],
                    vec![encoder.encode(&text).map_err(|e| e as Box<dyn std::error::Error>)?],
                ),
                p.display().to_string(),
            )
        }
        None => {
            let split = match a.split.as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                _ => Split::Validation,
            };
            eprintln!("effllm: loading the Rust-docs corpus");
            let corpus = Corpus::load_default()?;
            let (data, status) = TokenCache::at_default()?.split(&corpus, split, &SplitConfig::default(), &encoder)?;
            eprintln!(
                "effllm: {} split: {} documents, {} tokens (token cache: {status:?})",
                a.split,
                data.num_documents(),
                data.num_tokens()
            );
            (data, format!("Rust-docs corpus, {} split", a.split))
        }
    };
    if let Some(path) = &a.save_tokens {
        let docs: Vec<String> = (0..data.num_documents())
            .map(|i| format!("[{}]", data.document(i).iter().map(u32::to_string).collect::<Vec<_>>().join(",")))
            .collect();
        std::fs::write(path, format!("[{}]\n", docs.join(",\n")))?;
        eprintln!("effllm: wrote the token ids of {} documents to {}", docs.len(), path.display());
    }
    let windows: Vec<_> = data.perplexity_windows(a.context, a.stride)?.collect();
    let total: usize = windows.iter().map(|(_, w)| w.targets().len()).sum();
    let goal = if a.max_tokens == 0 { total } else { a.max_tokens.min(total) };
    let bar = indicatif::ProgressBar::new(goal as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {per_sec}, eta {eta} | ppl {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut nll, mut scored) = (0f64, 0usize);
    let t0 = Instant::now();
    for (_, w) in &windows {
        if scored >= goal {
            break;
        }
        let mut cache = model.new_cache();
        let rows: Vec<usize> = (w.score_from - 1..w.tokens.len() - 1).collect();
        let logits = model.forward(&Batch::causal(w.tokens, 0), &mut cache, &LogitRows::Rows(rows))?;
        let logp = logits.log_softmax(1)?.to_vec::<f32>()?;
        let v = model.vocab_size();
        for (r, &target) in w.targets().iter().enumerate() {
            nll -= logp[r * v + target as usize] as f64;
        }
        scored += w.targets().len();
        bar.set_position(scored.min(goal) as u64);
        bar.set_message(format!("{:.3}", (nll / scored as f64).exp()));
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "perplexity {:.4} over {scored} tokens ({source}; context {}, stride {}) | mean NLL {:.4} nats | {:.1} tok/s",
        (nll / scored.max(1) as f64).exp(),
        a.context,
        a.stride,
        nll / scored.max(1) as f64,
        scored as f64 / secs
    );
    Ok(())
}

fn train(a: &TrainArgs) -> AnyResult<()> {
    use effllm_train::{Event, TrainConfig, Trainer};
    use std::io::Write;
    let mut cfg = match (&a.config, &a.preset) {
        (Some(p), _) => TrainConfig::from_file(p)?,
        (None, Some(name)) => TrainConfig::preset(name)?,
        (None, None) => {
            let names: Vec<&str> = effllm_train::PRESETS.iter().map(|p| p.0).collect();
            return Err(format!("give --config <file> or --preset <{}>", names.join("|")).into());
        }
    };
    if let Some(s) = a.steps {
        cfg.run.steps = s;
    }
    if let Some(o) = &a.out {
        cfg.run.out_dir = o.clone();
    }
    if let Some(d) = &a.device {
        cfg.run.device = d.clone();
    }
    if a.threads.is_some() {
        cfg.run.threads = a.threads;
    }
    cfg.validate()?;
    if a.print_config {
        println!("{}", cfg.to_json());
        return Ok(());
    }
    let mut data = match &a.tokens {
        Some(path) => {
            let f = effllm_train::TokenFile::read(path)?;
            eprintln!(
                "effllm: {}: {} training and {} validation tokens, vocabulary {}, tokenizer `{}`",
                path.display(),
                f.train.len(),
                f.val.len(),
                f.vocab,
                f.fingerprint
            );
            f.into_train_data(cfg.data.seq_len)?
        }
        None => effllm_train::rust_docs(&cfg, &mut |l| eprintln!("effllm: {l}"))?,
    };
    if let Some(path) = &a.save_tokens {
        effllm_train::TokenFile::from_data(&data)?.write(path)?;
        println!(
            "wrote {} ({} training + {} validation tokens, vocabulary {}); train with `effllm train --tokens {}`",
            path.display(),
            data.train_stream().len(),
            data.val_stream().len(),
            data.vocab(),
            path.display()
        );
        return Ok(());
    }
    let out = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    std::fs::write(out.join("config.json"), cfg.to_json())?;
    let ckpt = effllm_train::checkpoint::checkpoint_dir(&cfg);
    let mut trainer = if a.resume && ckpt.join("trainer.json").exists() {
        let t = Trainer::resume(&ckpt, cfg.clone(), &data)?;
        eprintln!("effllm: resumed from {} at step {}", ckpt.display(), t.step());
        t
    } else {
        Trainer::new(cfg.clone(), data.vocab())?
    };
    eprintln!(
        "effllm: training {} parameters ({}, {} layers, d = {}) on {} ({:?}); {} training rows of {} tokens, {} tokens per step",
        trainer.num_parameters(),
        cfg.model.architecture.name(),
        cfg.model.n_layer,
        cfg.model.d_model,
        cfg.run.device,
        cfg.run.precision,
        data.train_rows(),
        cfg.data.seq_len,
        cfg.tokens_per_step()
    );
    let unigram = data.unigram_nats();
    if trainer.evals().is_empty() {
        let e = trainer.evaluate(&data)?;
        eprintln!("effllm: step 0: validation loss {:.4} nats (unigram baseline {unigram:.4})", e.loss);
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))
        .map_err(|e| format!("cannot open {}: {e}", out.join("metrics.jsonl").display()))?;
    let bar = indicatif::ProgressBar::new(cfg.run.steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps, eta {eta} | {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step() as u64);
    let t0 = Instant::now();
    let start_tokens = trainer.tokens_seen();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    // Without a terminal the bar is hidden and drops its `println`s: report on stderr directly then.
    let say = |line: String| if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) };
    let mut log_err = None;
    let result = trainer.run(&mut data, &mut |ev| {
        let line = match ev {
            Event::Step(r) => {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "loss {:.3} | lr {:.2e} | |g| {:.2} | {:.0} tok/s",
                    r.loss, r.lr, r.grad_norm, r.tokens_per_s
                ));
                format!(
                    "{{\"kind\":\"step\",\"step\":{},\"loss\":{},\"grad_norm\":{},\"lr\":{},\"tokens_per_s\":{}}}",
                    r.step, r.loss, r.grad_norm, r.lr, r.tokens_per_s
                )
            }
            Event::Eval(e) => {
                let m = e.memory;
                say(format!(
                    "step {}: validation loss {:.4} nats, perplexity {:.2} (unigram baseline {unigram:.4}) | \
                     memory MiB: params {:.1}, grads {:.1}, optimizer {:.1}, activations {:.1} (step peak {:.1})",
                    e.step,
                    e.loss,
                    e.perplexity,
                    mib(m.params),
                    mib(m.grads),
                    mib(m.optimizer_state),
                    mib(m.activations),
                    mib(m.step_peak)
                ));
                format!(
                    "{{\"kind\":\"eval\",\"step\":{},\"loss\":{},\"perplexity\":{},\"unigram\":{unigram},\"params_bytes\":{},\"grads_bytes\":{},\"optimizer_bytes\":{},\"activation_bytes\":{},\"step_peak_bytes\":{}}}",
                    e.step, e.loss, e.perplexity, m.params, m.grads, m.optimizer_state, m.activations, m.step_peak
                )
            }
            Event::Checkpoint(dir) => {
                say(format!("checkpoint: {}", dir.display()));
                return;
            }
        };
        if let Err(e) = writeln!(log, "{line}") {
            log_err.get_or_insert(e);
        }
    });
    bar.finish_and_clear();
    result?;
    if let Some(e) = log_err {
        eprintln!("effllm: warning: could not write metrics.jsonl: {e}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let tokens = trainer.tokens_seen() - start_tokens;
    let first = trainer.evals().first().map_or(f64::NAN, |e| e.loss);
    let last = trainer.evals().last().map_or(f64::NAN, |e| e.loss);
    println!(
        "trained {} steps in {secs:.0} s ({:.0} tok/s): validation loss {first:.4} → {last:.4} nats \
         (unigram baseline {unigram:.4}; {:.1}% of it); checkpoint in {}",
        trainer.step(),
        tokens as f64 / secs,
        100.0 * last / unigram,
        ckpt.display()
    );
    Ok(())
}

fn info(path: Option<&Path>) -> AnyResult<()> {
    let path = model_path(path)?;
    let f = GgufFile::open(&path, &ReadOptions::default())?;
    println!("file        {}", path.display());
    println!("size        {} bytes ({:.1} MiB)", f.file_len(), mib(f.file_len() as u64));
    println!(
        "GGUF        v{}, {} tensors, {} metadata keys, alignment {}, data at byte {}",
        f.version(),
        f.tensor_count(),
        f.metadata().len(),
        f.alignment(),
        f.data_start()
    );
    println!("metadata");
    for (k, v) in f.metadata().iter() {
        let shown = match v.as_array() {
            Some(a) => format!("[{} × {:?}]", a.len(), a.elem_type),
            None => {
                let s = match (v.as_str(), v.as_u64(), v.as_f64(), v.as_bool()) {
                    (Some(s), ..) => format!("{s:?}"),
                    (None, Some(n), ..) => n.to_string(),
                    (None, None, Some(x), _) => x.to_string(),
                    (None, None, None, Some(b)) => b.to_string(),
                    _ => format!("{v:?}"),
                };
                if s.chars().count() > 100 {
                    format!("{}… ({} chars)", s.chars().take(100).collect::<String>(), s.chars().count())
                } else {
                    s
                }
            }
        };
        println!("  {k:<42} {shown}");
    }
    let mut by_type: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for t in f.tensor_infos() {
        let e = by_type.entry(t.ty().name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.nbytes();
    }
    println!("tensors by type");
    for (ty, (n, bytes)) in &by_type {
        println!("  {ty:<6} {n:>5} tensors {:>10.1} MiB", mib(*bytes as u64));
    }
    match effllm_model::LlamaConfig::from_gguf(&f) {
        Ok(c) => println!(
            "model       llama: {} layers, d {}, {} heads / {} KV heads × {}, FFN {}, vocab {}, context {}, RoPE {:?} base {}, eps {:e}, tied embeddings {}, {:.1} M parameters",
            c.n_layer,
            c.d_model,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.d_ff,
            c.vocab,
            c.context,
            c.rope.style,
            c.rope.base,
            c.rms_eps,
            c.tied_embeddings,
            c.n_params() as f64 / 1e6
        ),
        Err(e) => println!("model       not loadable by effllm-model: {e}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(a) => generate(a),
        Command::Perplexity(a) => perplexity(a),
        Command::Train(a) => train(a),
        Command::Info { model } => info(model.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("effllm: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
