//! GaLore (`galore` crate) against AdamW in pretraining: the `cpu-small` Llama (4 layers, d = 256, ≈ 16 M
//! parameters, SmolLM2 tokenizer) trained from scratch on the Rust-docs corpus three times — AdamW, GaLore-AdamW at
//! rank d/4 = 64 and GaLore with 8-bit Adam moments at rank d/4 — with the same steps, data order, seed,
//! schedule shape and clipping (issue 6, item 6).
//!
//! The paper's recipe (arXiv 2403.03507, its C4 runs and `torchrun_main.py`): GaLore (std projection, `T` = 200,
//! `α` = 0.25) on the attention and FFN matrices only; the embedding (tied with the LM head) and the norm gains
//! take the inner optimizer's plain path; one learning rate for the whole GaLore optimizer, larger than AdamW's
//! (the paper: 0.01 for GaLore vs AdamW's best of {1e-3, 5e-4}); weight decay 0. Here AdamW keeps the preset's
//! lr 2e-3 (min 2e-4) and GaLore gets the paper's 0.01 (min 1e-3), so `α·η` on the projected matrices is 2.5e-3,
//! near AdamW's step. Weight decay is 0 in all three runs (the paper's setting). The inner Adam has the AdamW
//! run's semantics (PyTorch ε placement, β = (0.9, 0.95), ε 1e-8), so the projection and the learning rate are
//! the only differences. Learning rates were not tuned on this corpus.
//!
//! Reported: validation loss and perplexity, optimizer-state bytes (whole model, and the projected matrices alone,
//! read per parameter from the optimizers), parameter and gradient bytes, step times, and the update time of the
//! steps that recompute the SVD bases against the others. The GPU step-time comparison with galore-torch runs on
//! the GPU machine (`galore`'s `step_speed` example, `scripts/bench/galore_torch_step.py`; docs/galore.md).

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use effllm_optim::{AdamW, Optimizer, ParamState};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor, TensorId};
use effllm_train::{TrainConfig, TrainData, Trainer};
use galore::{
    Adam, Adam8bit, AdamConfig, DecayMode, EpsMode, ExactSvd, GaLore, GaLoreParams, GaLoreProjector, InnerOptimizer,
    ParamKey, ProjType,
};

use crate::plot::{HLine, PlotSpec, Series, XAxis};
use crate::{Context, Options, Result, Scenario, ScenarioReport, Table, Target, num, pct};

/// The GaLore scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct GaloreScenario;

/// Optimizer steps per run: quick and `--full`.
fn steps(options: &Options) -> usize {
    if options.full { 300 } else { 30 }
}

/// AdamW's learning rate (the `cpu-small` preset's) and GaLore's (the paper's small-model value).
const ADAMW_LR: f64 = 2e-3;
const GALORE_LR: f64 = 1e-2;
/// Projection gap and scale of the paper's C4 runs.
const GAP: u64 = 200;
const SCALE: f64 = 0.25;

/// What the scenario reads from an optimizer after training, beyond [`Optimizer::state_bytes`].
trait Probe: Optimizer {
    /// State bytes held for parameter `id` (0 if this optimizer does not step it).
    fn bytes_of(&self, id: TensorId) -> usize;
    /// SVD bases computed so far.
    fn svds(&self) -> u64;
}

fn tensor_bytes(state: Option<ParamState>) -> usize {
    state.map_or(0, |s| s.tensors.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum())
}

impl Probe for AdamW {
    /// The exported moments (f32, as held).
    fn bytes_of(&self, id: TensorId) -> usize {
        tensor_bytes(self.export_state(id))
    }

    fn svds(&self) -> u64 {
        0
    }
}

impl<I: InnerOptimizer + Send> Probe for GaLore<I>
where
    I::State: Send,
{
    /// The inner optimizer's (low-rank) moments as held (8-bit codes and scales for `Adam8bit`) plus the basis.
    fn bytes_of(&self, id: TensorId) -> usize {
        self.inner_state(id).map_or(0, |s| self.inner().state_bytes(s))
            + self.projector(id).map_or(0, |p| p.basis_bytes())
    }

    fn svds(&self) -> u64 {
        self.svd_count()
    }
}

/// An optimizer behind a shared handle: the trainer steps one clone, the scenario keeps another to read the
/// per-parameter state and the SVD count (the trainer owns its optimizers as `Box<dyn Optimizer>`).
struct Shared<O>(Arc<Mutex<O>>);

impl<O> Shared<O> {
    fn lock(&self) -> std::sync::MutexGuard<'_, O> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<O: Optimizer> Optimizer for Shared<O> {
    fn step_param(&mut self, param: &mut Tensor, grad: &Tensor) -> effllm_optim::Result<()> {
        self.lock().step_param(param, grad)
    }

    fn learning_rate(&self) -> f64 {
        self.lock().learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lock().set_learning_rate(lr);
    }

    fn state_bytes(&self) -> usize {
        self.lock().state_bytes()
    }

    fn forget(&mut self, id: TensorId) -> bool {
        self.lock().forget(id)
    }

    fn name(&self) -> &'static str {
        self.lock().name()
    }

    fn export_state(&self, id: TensorId) -> Option<ParamState> {
        self.lock().export_state(id)
    }

    fn import_state(&mut self, param: &Tensor, state: ParamState) -> effllm_optim::Result<()> {
        self.lock().import_state(param, state)
    }
}

/// The inner Adam of the GaLore runs: the AdamW run's hyperparameters and PyTorch semantics.
fn inner_adam(cfg: &TrainConfig, weight_decay: f64) -> AdamConfig {
    let o = &cfg.optim;
    AdamConfig {
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay,
        correct_bias: true,
        decay: DecayMode::TorchBeforeUpdate,
        eps_mode: EpsMode::Torch,
    }
}

/// GaLore around `inner` with the attention and FFN matrices of `group` as targets (rank `d/4`, std, `T`, `α`).
fn galore_over<I: InnerOptimizer>(
    inner: I,
    cfg: &TrainConfig,
    group: &[(String, Tensor)],
) -> effllm_train::Result<GaLore<I>> {
    let mut g = GaLore::new(inner);
    g.add_targets(group, galore::is_llama_projection, galore_params(cfg)).map_err(galore_err)?;
    Ok(g)
}

/// GaLore's settings for the projected matrices of `cfg`'s model.
fn galore_params(cfg: &TrainConfig) -> GaLoreParams {
    GaLoreParams {
        rank: cfg.model.d_model / 4,
        update_proj_gap: GAP,
        scale: SCALE,
        proj_type: ProjType::Std,
        matrix_shape: None,
    }
}

/// Milliseconds of one basis refresh of every projected matrix (the SVD work of a refresh step), on seeded
/// gradients of their shapes: the median of `reps` timings. A run shorter than `T + 2` steps has no refresh step
/// after the first, so this is measured on its own as well.
fn time_refresh(shapes: &[Vec<usize>], params: GaLoreParams, reps: usize) -> Result<f64> {
    let grads = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(Tensor::randn(s, DType::F32, &Device::Cpu, &CounterRng::new(11, i as u64), 0, 0.0, 1.0)?))
        .collect::<Result<Vec<_>>>()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        for (g, s) in grads.iter().zip(shapes) {
            let mut proj = GaLoreProjector::new(params, s)?;
            proj.refresh(g, ParamKey::standalone(), 0, &mut ExactSvd)?;
        }
        times.push(1e3 * t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn galore_err(e: galore::GaLoreError) -> effllm_train::TrainError {
    match e {
        galore::GaLoreError::Optim(e) => e.into(),
        other => effllm_train::TrainError::Config(format!("GaLore: {other}")),
    }
}

/// One run's figures.
#[derive(Debug)]
struct Arm {
    name: &'static str,
    lr: f64,
    /// Validation loss at step 0 and at every evaluation.
    val: Vec<(f64, f64)>,
    /// Training loss averaged over each evaluation interval, at the interval's last step.
    train: Vec<(f64, f64)>,
    /// Wall time of each `train_step` (ms) and whether it computed SVD bases.
    step_ms: Vec<f64>,
    update_ms: Vec<f64>,
    refresh: Vec<bool>,
    state_bytes: usize,
    projected_state_bytes: usize,
    /// Shapes of the projected matrices.
    projected_shapes: Vec<Vec<usize>>,
    params_bytes: usize,
    grad_bytes: usize,
    svds: u64,
}

impl Arm {
    fn final_loss(&self) -> f64 {
        self.val.last().map_or(f64::NAN, |v| v.1)
    }

    /// Mean of `xs` over steps 2.. whose refresh flag is `refresh`.
    fn mean_after_first(&self, xs: &[f64], refresh: bool) -> (f64, usize) {
        let v: Vec<f64> =
            xs.iter().zip(&self.refresh).skip(1).filter(|(_, r)| **r == refresh).map(|(x, _)| *x).collect();
        (if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }, v.len())
    }
}

/// Trains one arm: `make(cfg, weight_decay, group)` builds each group's optimizer.
fn run_arm<O: Probe + Send + 'static>(
    ctx: &mut Context,
    name: &'static str,
    mut cfg: TrainConfig,
    lr: f64,
    data: &mut TrainData,
    projected: impl Fn(&str, &Tensor) -> bool,
    make: impl Fn(&TrainConfig, f64, &[(String, Tensor)]) -> effllm_train::Result<O>,
) -> Result<Arm> {
    cfg.optim.lr = lr;
    cfg.optim.min_lr = 0.1 * lr;
    let handles: RefCell<Vec<Arc<Mutex<O>>>> = RefCell::new(Vec::new());
    let factory =
        |c: &TrainConfig, wd: f64, group: &[(String, Tensor)]| -> effllm_train::Result<Box<dyn Optimizer + Send>> {
            let h = Arc::new(Mutex::new(make(c, wd, group)?));
            handles.borrow_mut().push(Arc::clone(&h));
            Ok(Box::new(Shared(h)))
        };
    let mut trainer = Trainer::with_group_optimizer(cfg.clone(), data.vocab(), &factory)?;
    let handles = handles.into_inner();
    let svds = || handles.iter().map(|h| h.lock().unwrap_or_else(PoisonError::into_inner).svds()).sum::<u64>();
    let n = cfg.run.steps;
    let first = trainer.evaluate(data)?;
    let mut arm = Arm {
        name,
        lr,
        val: vec![(0.0, first.loss)],
        train: Vec::new(),
        step_ms: Vec::with_capacity(n),
        update_ms: Vec::with_capacity(n),
        refresh: Vec::with_capacity(n),
        state_bytes: 0,
        projected_state_bytes: 0,
        projected_shapes: Vec::new(),
        params_bytes: 0,
        grad_bytes: 0,
        svds: 0,
    };
    let (mut sum, mut count) = (0.0, 0usize);
    for s in 1..=n {
        ctx.status(format!("galore: {name}: step {s}/{n}"));
        let before = svds();
        let t0 = Instant::now();
        let r = trainer.train_step(data)?;
        arm.step_ms.push(1e3 * t0.elapsed().as_secs_f64());
        arm.update_ms.push(1e3 * trainer.last_step_timing().update_s);
        arm.refresh.push(svds() > before);
        sum += r.loss;
        count += 1;
        if s % cfg.run.eval_every == 0 || s == n {
            arm.train.push((s as f64, sum / count as f64));
            (sum, count) = (0.0, 0);
            let e = trainer.evaluate(data)?;
            arm.val.push((s as f64, e.loss));
            ctx.log(format!("galore: {name}: step {s}: validation {:.4} nats", e.loss));
        }
    }
    let ids: Vec<TensorId> =
        trainer.parameters().iter().filter(|(n, t)| projected(n, t)).filter_map(|(_, t)| t.id()).collect();
    arm.projected_shapes =
        trainer.parameters().iter().filter(|(n, t)| projected(n, t)).map(|(_, t)| t.shape().to_vec()).collect();
    let m = trainer.memory();
    arm.state_bytes = m.optimizer_state;
    arm.params_bytes = m.params;
    arm.grad_bytes = m.grads;
    arm.projected_state_bytes = handles
        .iter()
        .map(|h| {
            let o = h.lock().unwrap_or_else(PoisonError::into_inner);
            ids.iter().map(|id| o.bytes_of(*id)).sum::<usize>()
        })
        .sum();
    arm.svds = svds();
    Ok(arm)
}

impl Scenario for GaloreScenario {
    fn name(&self) -> &'static str {
        "galore"
    }

    fn description(&self) -> &'static str {
        "pretrain cpu-small on the Rust docs with AdamW, GaLore r=d/4 and GaLore 8-bit: perplexity, optimizer bytes"
    }

    fn cases(&self, _options: &Options) -> usize {
        0
    }

    fn run(&self, ctx: &mut Context) -> Result<ScenarioReport> {
        let mut cfg = TrainConfig::preset("cpu-small")?;
        let n = steps(&ctx.options);
        cfg.run.steps = n;
        cfg.run.eval_every = (n / 5).max(1);
        cfg.optim.warmup_steps = (n / 15).max(1);
        cfg.optim.weight_decay = 0.0;
        cfg.run.threads = Some(ctx.options.threads);
        // Checked here: a CUDA device without the `cuda` feature is a clear error, not a failure inside the trainer.
        cfg.run.device = crate::bench_device()?.to_string();
        cfg.run.out_dir = crate::target_dir().join("effllm-report").join("galore-run");
        ctx.status("galore: loading the corpus");
        let mut data = crate::training_corpus(&cfg, ctx, "galore")?;
        let unigram = data.unigram_nats();
        let rank = cfg.model.d_model / 4;
        let projected = galore::is_llama_projection;
        let adamw = run_arm(ctx, "AdamW", cfg.clone(), ADAMW_LR, &mut data, projected, |c, wd, _| {
            let o = &c.optim;
            Ok(AdamW::new(effllm_optim::AdamWConfig {
                lr: o.lr,
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: wd,
                amsgrad: false,
            })?)
        })?;
        let galore_f32 =
            run_arm(ctx, "GaLore-AdamW r=64", cfg.clone(), GALORE_LR, &mut data, projected, |c, wd, g| {
                galore_over(Adam::new(inner_adam(c, wd)).map_err(galore_err)?, c, g)
            })?;
        let galore_8bit =
            run_arm(ctx, "GaLore 8-bit r=64", cfg.clone(), GALORE_LR, &mut data, projected, |c, wd, g| {
                galore_over(Adam8bit::new(inner_adam(c, wd)).map_err(galore_err)?, c, g)
            })?;
        ctx.status("galore: timing one basis refresh of every projected matrix");
        let refresh_ms = time_refresh(&adamw.projected_shapes, galore_params(&cfg), 5)?;
        let arms = [adamw, galore_f32, galore_8bit];
        Ok(report(&arms, n, rank, unigram, data.vocab(), refresh_ms, &cfg))
    }
}

fn report(
    arms: &[Arm; 3],
    n: usize,
    rank: usize,
    unigram: f64,
    vocab: usize,
    refresh_ms: f64,
    cfg: &TrainConfig,
) -> ScenarioReport {
    let base = &arms[0];
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut quality = Table::new(
        format!("Validation after {n} steps (cpu-small, f32, 8 × 128 tokens per step, 64 validation sequences)"),
        &["optimizer", "lr (peak)", "val loss", "val perplexity", "ppl ÷ AdamW", "SVD bases computed"],
    );
    for a in arms {
        quality.row(vec![
            a.name.into(),
            format!("{:e}", a.lr),
            num(a.final_loss()),
            num(a.final_loss().exp()),
            num((a.final_loss() - base.final_loss()).exp()),
            a.svds.to_string(),
        ]);
    }
    let mut memory = Table::new(
        "Memory (MiB; optimizer state as held: f32 moments, 8-bit codes + f32 block scales, f32 bases)",
        &[
            "optimizer",
            "parameters",
            "gradients",
            "optimizer state",
            "saved vs AdamW",
            "state of the projected matrices",
            "saved vs AdamW (projected)",
        ],
    );
    for a in arms {
        memory.row(vec![
            a.name.into(),
            num(mib(a.params_bytes)),
            num(mib(a.grad_bytes)),
            num(mib(a.state_bytes)),
            pct(1.0 - a.state_bytes as f64 / base.state_bytes as f64),
            num(mib(a.projected_state_bytes)),
            pct(1.0 - a.projected_state_bytes as f64 / base.projected_state_bytes as f64),
        ]);
    }
    let mut time = Table::new(
        "Step time (ms; wall clock of the whole step: forward, backward, clipping, update)",
        &[
            "optimizer",
            "mean step (steps 2..)",
            "first step",
            "update: first step",
            "update: refresh steps after the first",
            "update: other steps",
        ],
    );
    for a in arms {
        let all: Vec<f64> = a.step_ms.iter().skip(1).copied().collect();
        let mean_step = if all.is_empty() { f64::NAN } else { all.iter().sum::<f64>() / all.len() as f64 };
        let (refresh_update, refresh_n) = a.mean_after_first(&a.update_ms, true);
        let (other_update, other_n) = a.mean_after_first(&a.update_ms, false);
        time.row(vec![
            a.name.into(),
            num(mean_step),
            num(a.step_ms.first().copied().unwrap_or(f64::NAN)),
            num(a.update_ms.first().copied().unwrap_or(f64::NAN)),
            if refresh_n == 0 {
                "— (none: T = 200)".into()
            } else {
                format!("{} ({refresh_n})", num(refresh_update))
            },
            format!("{} ({other_n})", num(other_update)),
        ]);
    }
    let mut refresh = Table::new(
        "SVD refresh cost: bases of all projected matrices at once (measured alone, median of 5)",
        &["matrices", "refresh (ms)", "amortised over T (ms/step)", "÷ AdamW mean step"],
    );
    let adamw_step = {
        let v: Vec<f64> = base.step_ms.iter().skip(1).copied().collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    refresh.row(vec![
        base.projected_shapes.len().to_string(),
        num(refresh_ms),
        num(refresh_ms / GAP as f64),
        format!("{:.3}%", 100.0 * refresh_ms / GAP as f64 / adamw_step),
    ]);
    let mut curves = Table::new(
        "Validation loss along training (nats per token)",
        &["step", arms[0].name, arms[1].name, arms[2].name],
    );
    for (i, (s, _)) in base.val.iter().enumerate() {
        curves.row(
            std::iter::once(format!("{s}"))
                .chain(arms.iter().map(|a| a.val.get(i).map_or("—".into(), |v| num(v.1))))
                .collect(),
        );
    }
    let mut series = Vec::new();
    for a in arms {
        series.push(Series { name: format!("{} train (interval mean)", a.name), points: a.train.clone() });
    }
    for a in arms {
        series.push(Series { name: format!("{} validation", a.name), points: a.val.clone() });
    }
    let saved = |a: &Arm, projected: bool| {
        if projected {
            1.0 - a.projected_state_bytes as f64 / base.projected_state_bytes as f64
        } else {
            1.0 - a.state_bytes as f64 / base.state_bytes as f64
        }
    };
    let mut targets = Vec::new();
    for a in &arms[1..] {
        targets.push(Target {
            what: format!("{}: optimizer-state bytes saved vs AdamW, whole model", a.name),
            ratio: saved(a, false),
            goal: 0.60,
        });
        targets.push(Target {
            what: format!("{}: optimizer-state bytes saved vs AdamW, projected matrices", a.name),
            ratio: saved(a, true),
            goal: 0.60,
        });
        targets.push(Target {
            what: format!("{}: validation perplexity within 5% of AdamW (1.05·ppl_AdamW ÷ ppl)", a.name),
            ratio: 1.05 * (base.final_loss() - a.final_loss()).exp(),
            goal: 1.0,
        });
    }
    let embedding = cfg.model.d_model * vocab;
    ScenarioReport {
        title: "GaLore (galore) vs AdamW: cpu-small pretraining on the Rust docs".into(),
        notes: vec![
            format!(
                "{n} steps per run, same seed, data order, warmup ({}) + cosine to 0.1×, clipping at {}, weight decay 0 \
                 (the paper's). AdamW: lr {ADAMW_LR:e} (the preset's). GaLore: rank {rank} = d/4 (std), T = {GAP}, \
                 α = {SCALE}, lr {GALORE_LR:e} (the paper's small-model lr, larger than AdamW's as in its C4 runs; \
                 α·η = {:e} on the projected matrices), on the attention and FFN matrices only; the tied \
                 embedding/LM head ({embedding} values, most of the model) and the norm gains take the inner \
                 optimizer's plain path. Inner Adam = the AdamW run's semantics (PyTorch ε placement, β₂ = {}). \
                 8-bit: block-wise dynamic-map moments (block 256; tensors below 4096 values stay f32), the \
                 embedding's moments included. Learning rates not tuned on this corpus.",
                cfg.optim.warmup_steps,
                cfg.optim.clip_norm,
                GALORE_LR * SCALE,
                cfg.optim.beta2
            ),
            format!(
                "Unigram baseline {unigram:.3} nats. Refresh steps are the steps whose update computed SVD bases \
                 (steps 1, {}, …); with T = {GAP} a run shorter than {} steps has only the first, whose update also \
                 allocates the optimizer state (compare with AdamW's first update).",
                GAP + 1,
                GAP + 2
            ),
            "The GPU step-time comparison with galore-torch (same shapes, rank, T, α) runs on the GPU machine: \
             `cargo run --release -p galore --features cuda --example step_speed -- --device cuda:0` and \
             `scripts/bench/galore_torch_step.py`; figures in docs/galore.md."
                .into(),
        ],
        tables: vec![quality, memory, time, refresh, curves],
        plots: vec![PlotSpec {
            file_stem: "galore".into(),
            title: "GaLore vs AdamW: cpu-small, Rust docs".into(),
            x_label: "optimizer step (1024 tokens each)".into(),
            y_label: "cross-entropy (nats per token)".into(),
            x: XAxis::Linear,
            series,
            hlines: vec![HLine { name: "unigram baseline".into(), y: unigram }],
        }],
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(shape: &[usize], stream: u64) -> Tensor {
        Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(3, stream), 0, 0.0, 1.0)
            .unwrap()
            .requires_grad()
    }

    /// Through the shared handle the trainer's clone steps the optimizer and the scenario's clone reads the
    /// per-parameter bytes: a right-projected 16×8 target holds `2·16·r` moment and `r·8` basis values, a plain
    /// vector two full moments, and their sum is `state_bytes`; AdamW holds two full moments per parameter.
    #[test]
    fn shared_handle_reads_per_parameter_state() {
        let (mut w, mut b) = (leaf(&[16, 8], 1), leaf(&[8], 2));
        let (gw, gb) = (leaf(&[16, 8], 3).detach(), leaf(&[8], 4).detach());
        let r = 3;
        let mut galore = GaLore::new(Adam::new(AdamConfig::default()).unwrap());
        let params =
            GaLoreParams { rank: r, update_proj_gap: 2, scale: 0.25, proj_type: ProjType::Std, matrix_shape: None };
        galore.add_target(&w, params).unwrap();
        let handle = Arc::new(Mutex::new(galore));
        let mut boxed: Box<dyn Optimizer + Send> = Box::new(Shared(Arc::clone(&handle)));
        for _ in 0..3 {
            boxed.step_param(&mut w, &gw).unwrap();
            boxed.step_param(&mut b, &gb).unwrap();
        }
        {
            // The scenario's handle (released before the trainer's clone locks again).
            let g = handle.lock().unwrap();
            assert_eq!(g.svds(), 2, "refreshes at steps 0 and 2");
            assert_eq!(g.bytes_of(w.id().unwrap()), 4 * (2 * 16 * r + r * 8));
            assert_eq!(g.bytes_of(b.id().unwrap()), 4 * 2 * 8);
            assert_eq!(g.bytes_of(leaf(&[2, 2], 5).id().unwrap()), 0);
        }
        assert_eq!(boxed.state_bytes(), 4 * (2 * 16 * r + r * 8) + 4 * 2 * 8);
        assert_eq!(boxed.name(), "GaLore-AdamW");

        let mut adamw = AdamW::new(effllm_optim::AdamWConfig::default()).unwrap();
        adamw.step_param(&mut w, &gw).unwrap();
        assert_eq!(adamw.bytes_of(w.id().unwrap()), 4 * 2 * 16 * 8);
        assert_eq!(adamw.svds(), 0);
    }

    /// The refresh timer runs one exact SVD per shape and returns a positive time.
    #[test]
    fn refresh_timer_runs_every_shape() {
        let params =
            GaLoreParams { rank: 2, update_proj_gap: 200, scale: 0.25, proj_type: ProjType::Std, matrix_shape: None };
        let ms = time_refresh(&[vec![6, 4], vec![4, 6]], params, 3).unwrap();
        assert!(ms.is_finite() && ms > 0.0);
        assert!(time_refresh(&[vec![6, 4, 2]], params, 1).is_err(), "a 3-D shape is a typed error");
    }
}
