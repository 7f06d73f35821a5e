//! Wall-clock comparison of SpecExec with autoregressive decoding of the same target, in one run: what
//! `examples/offloaded.rs` prints and what `bench-all`'s `specexec` scenario reports for an offloaded target on a
//! GPU.
//!
//! Every method decodes the same prompts to the same number of new tokens (no stop tokens, so the token counts
//! match) under the same [`SamplingParams`]. Before anything is timed, [`compare_with_autoregressive`] runs every
//! method once on the first prompt for [`ComparisonConfig::warmup_tokens`] tokens, so one-time costs (NVRTC
//! compiling the CUDA kernels, cuBLAS picking algorithms, the allocator's first growth) are not charged to the
//! first method measured. The wall-clock time of a generation excludes its prefill (the target's pass over the
//! prompt, [`GenerationStats::prefill_time`](crate::GenerationStats::prefill_time)), which is the same work for
//! every method; the draft's catch-up over the prompt happens inside SpecExec's first step and is counted.

use std::time::Instant;

use effllm_model::CausalLm;
use effllm_sampling::SamplingParams;

use crate::config::SpecExecConfig;
use crate::engine::{Engine, Generation, autoregressive};
use crate::error::{Result, config};

/// What one row of a comparison measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComparedMethod {
    /// Plain autoregressive decoding of the target: one target forward per token.
    Autoregressive,
    /// SpecExec with this budget K (the other fields from [`ComparisonConfig::specexec`]).
    SpecExec {
        /// Draft nodes per step.
        budget: usize,
    },
}

impl std::fmt::Display for ComparedMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComparedMethod::Autoregressive => f.write_str("autoregressive"),
            ComparedMethod::SpecExec { budget } => write!(f, "SpecExec K={budget}"),
        }
    }
}

/// Totals of one method over all prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparisonRow {
    /// The method.
    pub method: ComparedMethod,
    /// New tokens generated, summed over prompts.
    pub tokens: usize,
    /// Target forwards after the prefill (one per token for autoregressive decoding), summed over prompts.
    pub target_steps: usize,
    /// Wall-clock seconds of the generations without their prefills.
    pub wall_s: f64,
    /// Seconds spent in target forwards after the prefill.
    pub target_s: f64,
    /// Seconds spent drafting (0 for autoregressive decoding).
    pub draft_s: f64,
}

impl ComparisonRow {
    fn new(method: ComparedMethod) -> Self {
        ComparisonRow { method, tokens: 0, target_steps: 0, wall_s: 0.0, target_s: 0.0, draft_s: 0.0 }
    }

    fn add(&mut self, g: &Generation, wall_s: f64) {
        self.tokens += g.stats.new_tokens;
        self.target_steps += g.stats.target_steps();
        self.wall_s += (wall_s - g.stats.prefill_time.as_secs_f64()).max(0.0);
        self.target_s += g.stats.target_time().as_secs_f64();
        self.draft_s += g.stats.draft_time().as_secs_f64();
    }

    /// Wall-clock tokens per second (prefill excluded); NaN if nothing was timed.
    pub fn tokens_per_second(&self) -> f64 {
        if self.wall_s > 0.0 { self.tokens as f64 / self.wall_s } else { f64::NAN }
    }

    /// Tokens per target step (1 for autoregressive decoding); NaN without steps.
    pub fn tokens_per_step(&self) -> f64 {
        if self.target_steps > 0 { self.tokens as f64 / self.target_steps as f64 } else { f64::NAN }
    }

    /// This row's tokens per second divided by `baseline`'s.
    pub fn speedup_over(&self, baseline: &ComparisonRow) -> f64 {
        self.tokens_per_second() / baseline.tokens_per_second()
    }
}

/// What [`compare_with_autoregressive`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparisonConfig {
    /// New tokens per prompt (at least 1).
    pub new_tokens: usize,
    /// SpecExec budgets K, one row each (each at least 1).
    pub budgets: Vec<usize>,
    /// SpecExec's other parameters (its `budget` is replaced by each of [`budgets`](Self::budgets)).
    pub specexec: SpecExecConfig,
    /// Tokens of the untimed warm-up run of every method on the first prompt (0: no warm-up).
    pub warmup_tokens: usize,
}

impl ComparisonConfig {
    /// `new_tokens` per prompt at `budgets`, the project's SpecExec defaults, a 2-token warm-up per method.
    pub fn new(new_tokens: usize, budgets: &[usize]) -> Self {
        ComparisonConfig {
            new_tokens,
            budgets: budgets.to_vec(),
            specexec: SpecExecConfig::default(),
            warmup_tokens: 2,
        }
    }
}

/// Autoregressive decoding of `target`, then SpecExec with `draft` at every budget of `cfg`, on every prompt
/// under `params`: one [`ComparisonRow`] per method, autoregressive first. `progress` hears a line before each
/// method starts. Fails on an empty prompt list, `new_tokens = 0`, a bad SpecExec configuration or anything
/// generation fails on.
pub fn compare_with_autoregressive<D: CausalLm, T: CausalLm>(
    draft: &D,
    target: &T,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    cfg: &ComparisonConfig,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ComparisonRow>> {
    if prompts.is_empty() {
        return Err(config("prompts", 0.0, "the comparison needs at least one prompt"));
    }
    if cfg.new_tokens == 0 {
        return Err(config("new_tokens", 0.0, "must be >= 1"));
    }
    let engines = cfg
        .budgets
        .iter()
        .map(|&budget| Engine::specexec(draft, target, SpecExecConfig { budget, ..cfg.specexec.clone() }))
        .collect::<Result<Vec<_>>>()?;
    if cfg.warmup_tokens > 0 {
        progress("warm-up (untimed)");
        autoregressive(target, &prompts[0], cfg.warmup_tokens, params)?;
        for engine in &engines {
            engine.generate(&prompts[0], cfg.warmup_tokens, params)?;
        }
    }
    let mut rows = Vec::with_capacity(engines.len() + 1);
    let mut row = ComparisonRow::new(ComparedMethod::Autoregressive);
    progress(&row.method.to_string());
    for p in prompts {
        let t = Instant::now();
        let g = autoregressive(target, p, cfg.new_tokens, params)?;
        row.add(&g, t.elapsed().as_secs_f64());
    }
    rows.push(row);
    for (engine, &budget) in engines.iter().zip(&cfg.budgets) {
        let mut row = ComparisonRow::new(ComparedMethod::SpecExec { budget });
        progress(&row.method.to_string());
        for p in prompts {
            let t = Instant::now();
            let g = engine.generate(p, cfg.new_tokens, params)?;
            row.add(&g, t.elapsed().as_secs_f64());
        }
        rows.push(row);
    }
    Ok(rows)
}
