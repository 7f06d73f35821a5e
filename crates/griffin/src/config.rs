//! [`GriffinConfig`] and its switches: density (global or per layer), selection method, zero-row policy, statistic
//! scope, storage of the pruned weights, and the short-prompt fallback.

use crate::error::{GriffinError, Result};

/// How the experts are chosen from the per-neuron scores (`utils.select_neurons` of the reference, plus the static
/// magnitude baseline). Every random method takes a seed; layer `ℓ` draws from stream `ℓ` of that seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Selection {
    /// The `k` largest scores (GRIFFIN; the default). Ties go to the lower index.
    #[default]
    TopK,
    /// `k` draws without replacement with probability ∝ `s_j` (not `s_j²`).
    Sample {
        /// Seed of the draws.
        seed: u64,
    },
    /// The top `⌊k/2⌋`, then draws ∝ `s_j` among the rest: `k − ⌊k/2⌋` draws (`exact_k`, the project's fix) or
    /// `⌊k/2⌋` draws (the reference, which keeps `k − 1` neurons for odd `k`).
    TopKSample {
        /// Seed of the draws.
        seed: u64,
        /// Keep exactly `k` neurons (true) or the reference's `2⌊k/2⌋` (false).
        exact_k: bool,
    },
    /// `k` uniform draws without replacement (ignores the prompt).
    Random {
        /// Seed of the draws.
        seed: u64,
    },
    /// The static baseline: top-`k` of `‖W_gate[j]‖·‖W_up[j]‖` (GLU) or `‖W_1[j]‖` (plain FF), chosen once from the
    /// weights; the prompt is ignored. Density 0 is rejected (the reference asserts `density > 0`).
    Magnitude,
}

/// What an all-zero activation row does to the statistic (`Z[s,:] / ‖Z[s,:]‖` is `0/0` there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZeroRowPolicy {
    /// Skip the row (the project's default): it adds nothing and is not counted.
    #[default]
    Skip,
    /// Divide anyway, as the reference does (no epsilon): every score becomes NaN.
    Nan,
}

/// Which prompt rows the statistic covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatScope {
    /// Accumulate over every prefill chunk; freeze the experts at `finalize`; multi-token passes afterwards
    /// (verification, teacher forcing) use the pruned FFN and never re-select (the default).
    #[default]
    WholePrompt,
    /// The reference: every multi-token forward is a prompt that re-selects the experts from that chunk alone.
    LastMultiTokenChunk,
}

/// How a pruned FFN holds its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrunedStorage {
    /// Compact gathered copies: rows `E` of gate/up (quantized rows stay quantized), columns `E` of down (quantized
    /// down in the packed exact form of [`PackedDown`](crate::PackedDown)). Fastest decode; `3·k·d` weights per
    /// sequence and layer. The default.
    #[default]
    Copy,
    /// Share the dense weights and apply the 0/1 mask on `E` to the intermediate: no per-sequence copy (batched
    /// serving), the dense decode cost.
    Gather,
}

/// What `finalize` does when the prompt is shorter than [`GriffinConfig::min_prompt_tokens`] (GLASS's observation
/// that single-prompt statistics fail on short prompts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShortPromptFallback {
    /// Decode with the dense FFN.
    #[default]
    Dense,
    /// Decode with the magnitude baseline's experts.
    Magnitude,
}

/// Every knob of GRIFFIN. `GriffinConfig::default()` is the paper's setting: density 0.5 in every layer, top-k,
/// with the project's fixes (zero rows skipped, whole-prompt statistic, indices sorted ascending).
#[derive(Clone, Debug, PartialEq)]
pub struct GriffinConfig {
    /// Fraction of the FFN neurons kept, `k = ⌊d_ff · density⌋` (the reference's `k_factor`). In `[0, 1]`; 0 makes
    /// the decode FFN output zero (plus `b_2`), as in the reference.
    pub density: f64,
    /// A density per layer (the reference's `k_schedule`), overriding `density`.
    pub per_layer: Option<Vec<f64>>,
    /// Selection method.
    pub selection: Selection,
    /// All-zero rows.
    pub zero_row: ZeroRowPolicy,
    /// Statistic scope.
    pub scope: StatScope,
    /// Sort each expert set ascending (true: density 1 is bitwise the dense FFN) or keep the selection order.
    pub sort_indices: bool,
    /// Storage of the pruned weights.
    pub storage: PrunedStorage,
    /// Prompts shorter than this fall back to [`GriffinConfig::short_prompt`] (0 = never).
    pub min_prompt_tokens: usize,
    /// The fallback for short prompts.
    pub short_prompt: ShortPromptFallback,
}

impl Default for GriffinConfig {
    fn default() -> Self {
        GriffinConfig {
            density: 0.5,
            per_layer: None,
            selection: Selection::TopK,
            zero_row: ZeroRowPolicy::Skip,
            scope: StatScope::WholePrompt,
            sort_indices: true,
            storage: PrunedStorage::Copy,
            min_prompt_tokens: 0,
            short_prompt: ShortPromptFallback::Dense,
        }
    }
}

/// `k = ⌊d_ff · density⌋`, computed in f64 as the reference does (`int(d_ff * k_factor)`).
pub fn k_for_density(d_ff: usize, density: f64) -> usize {
    ((d_ff as f64 * density).floor() as usize).min(d_ff)
}

fn check_density(what: String, v: f64, magnitude: bool) -> Result<()> {
    let ok = v.is_finite() && v <= 1.0 && if magnitude { v > 0.0 } else { v >= 0.0 };
    if ok {
        Ok(())
    } else {
        Err(GriffinError::InvalidDensity {
            what,
            value: v,
            allowed: if magnitude { "(0, 1] (the magnitude baseline needs density > 0)" } else { "[0, 1]" },
        })
    }
}

impl GriffinConfig {
    /// The default configuration at another density.
    pub fn with_density(density: f64) -> Self {
        GriffinConfig { density, ..Default::default() }
    }

    /// Checks every density (and, with `n_layers`, the schedule's length).
    pub fn validate(&self, n_layers: Option<usize>) -> Result<()> {
        let mag = self.selection == Selection::Magnitude;
        check_density("density".into(), self.density, mag)?;
        if let Some(s) = &self.per_layer {
            if let Some(n) = n_layers
                && s.len() != n
            {
                return Err(GriffinError::ScheduleLength { found: s.len(), layers: n });
            }
            for (i, &v) in s.iter().enumerate() {
                check_density(format!("layer {i}"), v, mag)?;
            }
        }
        Ok(())
    }

    /// The density of `layer`.
    pub fn density_for(&self, layer: usize) -> f64 {
        self.per_layer.as_ref().and_then(|s| s.get(layer).copied()).unwrap_or(self.density)
    }

    /// `k` of `layer` for an FFN of width `d_ff`.
    pub fn k_for(&self, layer: usize, d_ff: usize) -> usize {
        k_for_density(d_ff, self.density_for(layer))
    }
}
