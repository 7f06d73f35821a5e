//! Optimizer-step time of GaLore-AdamW over the parameter shapes of effllm-train's Llama presets, the Rust side of
//! the GPU comparison with galore-torch (`scripts/bench/galore_torch_step.py` times `GaLoreAdamW` on the same
//! shapes with the same rank, gap and scale).
//!
//! ```text
//! cargo run --release -p galore --example step_speed -- [--preset NAME]... [--device cpu|cuda:N]
//!     [--steps N] [--gap T] [--rank R] [--scale A] [--adamw-steps N]
//! cargo run --release -p galore --features cuda --example step_speed -- --device cuda:0
//! ```
//!
//! Defaults: both presets (`cpu-small`, `gpu-medium`), the device of `$EFFLLM_DEVICE` or the CPU, `T` = 200,
//! rank `d/4`, `α` = 0.25, `2T + 1` GaLore steps (refreshes at steps 0, T and 2T) and 50 steps of the
//! no-projection baseline. The parameters are the trainer's own (`Trainer::new(preset)`: tied 49152-token
//! embedding, norms, attention and FFN matrices, f32 masters); GaLore (std projection) covers the attention and FFN
//! matrices ([`is_llama_projection`]), the embedding and norm gains take the plain Adam path, as in the paper's
//! runs. Gradients are fixed seeded normals, one per parameter, made once on the device (the values do not change
//! the cost). Adam has galore-torch's defaults (HF ε placement, ε 1e-6, no weight decay).
//!
//! Every step is timed between two device synchronisations. Step 0 (state allocation plus the first SVDs) is
//! reported alone; the other steps are split into refresh steps (an SVD per GaLore matrix: on CUDA the gradient is
//! copied to the host, decomposed by faer and the basis uploaded) and ordinary steps. The last line per arm is one
//! JSON object with the same keys as the Python script's.

use std::time::Instant;

use effllm_optim::Optimizer;
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};
use effllm_train::{TrainConfig, Trainer};
use galore::{Adam, AdamConfig, GaLore, GaLoreParams, ProjType, is_llama_projection};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// SmolLM2's vocabulary, the corpus tokenizer of the presets.
const VOCAB: usize = 49152;

#[derive(Debug)]
struct Args {
    presets: Vec<String>,
    device: String,
    steps: Option<usize>,
    gap: u64,
    rank: Option<usize>,
    scale: f64,
    adamw_steps: usize,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        presets: Vec::new(),
        device: std::env::var("EFFLLM_DEVICE").unwrap_or_else(|_| "cpu".into()),
        steps: None,
        gap: 200,
        rank: None,
        scale: 0.25,
        adamw_steps: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--preset" => a.presets.push(value()?),
            "--device" => a.device = value()?,
            "--steps" => a.steps = Some(value()?.parse()?),
            "--gap" => a.gap = value()?.parse()?,
            "--rank" => a.rank = Some(value()?.parse()?),
            "--scale" => a.scale = value()?.parse()?,
            "--adamw-steps" => a.adamw_steps = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "step_speed [--preset NAME]... [--device cpu|cuda:N] [--steps N] [--gap T] [--rank R] [--scale A] \
                     [--adamw-steps N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    if a.presets.is_empty() {
        a.presets = vec!["cpu-small".into(), "gpu-medium".into()];
    }
    Ok(a)
}

/// Waits for queued device work (a no-op on the CPU).
fn sync(device: &Device) -> Res<()> {
    if let Device::Cuda(n) = device {
        effllm_tensor::cuda::device(*n)?.synchronize()?;
    }
    Ok(())
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| if v.len() % 2 == 1 { v[v.len() / 2] } else { 0.5 * (v[v.len() / 2 - 1] + v[v.len() / 2]) })
}

/// Milliseconds of each step (device synchronised before and after) and whether it computed bases.
fn time_steps(
    opt: &mut GaLore<Adam>,
    params: &mut [Tensor],
    grads: &[Tensor],
    steps: usize,
    device: &Device,
) -> Res<Vec<(f64, bool)>> {
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let svds = opt.svd_count();
        sync(device)?;
        let t0 = Instant::now();
        for (p, g) in params.iter_mut().zip(grads) {
            opt.step_param(p, g)?;
        }
        sync(device)?;
        out.push((1e3 * t0.elapsed().as_secs_f64(), opt.svd_count() > svds));
    }
    Ok(out)
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let device = Device::parse(&args.device)?;
    for preset in &args.presets {
        let mut cfg = TrainConfig::preset(preset)?;
        cfg.run.device = args.device.clone();
        let d = cfg.model.d_model;
        let rank = args.rank.unwrap_or(d / 4);
        let named: Vec<(String, Tensor)> = Trainer::new(cfg, VOCAB)?.parameters().to_vec();
        let grads: Vec<Tensor> = named
            .iter()
            .enumerate()
            .map(|(i, (_, p))| {
                let rng = CounterRng::new(42, i as u64);
                Ok(Tensor::randn(p.shape(), DType::F32, &Device::Cpu, &rng, 0, 0.0, 1.0)?.to_device(&device)?)
            })
            .collect::<Res<_>>()?;
        let total: usize = named.iter().map(|(_, p)| p.elem_count()).sum();
        let targets: Vec<&Tensor> = named.iter().filter(|(n, p)| is_llama_projection(n, p)).map(|(_, p)| p).collect();
        let target_elems: usize = targets.iter().map(|p| p.elem_count()).sum();
        let galore_steps = args.steps.unwrap_or(2 * args.gap as usize + 1);
        let settings = GaLoreParams {
            rank,
            update_proj_gap: args.gap,
            scale: args.scale,
            proj_type: ProjType::Std,
            matrix_shape: None,
        };
        for (arm, galore) in [("AdamW (no projection)", false), ("GaLoreAdamW", true)] {
            let mut params: Vec<Tensor> = named.iter().map(|(_, p)| p.detach().requires_grad()).collect();
            let mut opt = GaLore::new(Adam::new(AdamConfig::default())?);
            if galore {
                let fresh: Vec<(String, Tensor)> =
                    named.iter().map(|(n, _)| n.clone()).zip(params.iter().cloned()).collect();
                opt.add_targets(&fresh, is_llama_projection, settings)?;
            }
            let steps = if galore { galore_steps } else { args.adamw_steps };
            let times = time_steps(&mut opt, &mut params, &grads, steps, &device)?;
            let first = times.first().map(|t| t.0);
            let rest = times.get(1..).unwrap_or(&[]);
            let plain: Vec<f64> = rest.iter().filter(|t| !t.1).map(|t| t.0).collect();
            let refresh: Vec<f64> = rest.iter().filter(|t| t.1).map(|t| t.0).collect();
            let (plain_mean, refresh_mean) = (mean(&plain), mean(&refresh));
            // One period of T steps holds one refresh: the cost a long run sees per step.
            let amortized = match (plain_mean, refresh_mean, galore) {
                (Some(p), Some(r), true) => Some(((args.gap as f64 - 1.0) * p + r) / args.gap as f64),
                (Some(p), _, false) => Some(p),
                _ => None,
            };
            let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            println!(
                "{preset} on {device}, {arm}: step 0 {} ms; ordinary steps {} ms mean / {} ms median ({}); refresh \
                 steps {} ms mean ({}); amortised over T = {}: {} ms/step; {} SVDs",
                fmt(first),
                fmt(plain_mean),
                fmt(median(&plain)),
                plain.len(),
                fmt(refresh_mean),
                refresh.len(),
                args.gap,
                fmt(amortized),
                opt.svd_count()
            );
            let json = serde_json::json!({
                "impl": "effllm",
                "preset": preset,
                "device": device.to_string(),
                "optimizer": if galore { "GaLoreAdamW" } else { "AdamW" },
                "rank": if galore { Some(rank) } else { None },
                "update_proj_gap": args.gap,
                "scale": args.scale,
                "params": total,
                "tensors": named.len(),
                "galore_matrices": if galore { targets.len() } else { 0 },
                "galore_elements": if galore { target_elems } else { 0 },
                "steps": steps,
                "first_step_ms": first,
                "step_ms_mean": plain_mean,
                "step_ms_median": median(&plain),
                "ordinary_steps": plain.len(),
                "refresh_ms_mean": refresh_mean,
                "refresh_steps": refresh.len(),
                "amortized_ms": amortized,
                "svd_count": opt.svd_count(),
                "state_bytes": opt.state_bytes(),
            });
            println!("{json}");
        }
    }
    Ok(())
}
