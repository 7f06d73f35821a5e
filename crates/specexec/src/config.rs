//! Configurations of SpecExec and of the two baselines.

use effllm_sampling::{Replacement, TreeSampling};

use crate::error::{Result, config};

/// How the frontier nodes expanded by one draft forward are chosen when more than `expand_batch` are eligible
/// (`specexec.md` §4 D5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FrontierPick {
    /// The best `expand_batch` eligible nodes by score (the reference's `pick_best=True`, used for llama drafts;
    /// this crate's default since the model traits accept arbitrary KV slots).
    #[default]
    TopScore,
    /// The first `expand_batch` eligible nodes in creation order (the reference's fallback for non-llama drafts,
    /// which need contiguous cache positions). Parity switch only.
    FirstBySlot,
}

/// Parameters of SpecExec (`specexec.md` §2.8, §3).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecExecConfig {
    /// K: the largest number of draft nodes (root excluded); the target validates K + 1 tokens per step.
    pub budget: usize,
    /// D: the deepest node (the root has depth 0), so at most D + 1 tokens are emitted per target step.
    pub max_depth: usize,
    /// B: frontier nodes expanded per draft forward (the draft's batch size).
    pub expand_batch: usize,
    /// k: children per expanded node (the top-k draft tokens).
    pub max_branch: usize,
    /// Per-level decay: every child's score gets `ln(depth_decay)`; in (0, 1]. The reference default 0.95 makes
    /// scores strictly decrease along every path.
    pub depth_decay: f64,
    /// Temperature of the draft distribution used for scoring (the reference scores with T = 1 whatever the
    /// sampling temperature, §4 D3). Any value keeps SpecExec exact: the tree is deterministic.
    pub draft_temperature: f32,
    /// Drop candidates whose score is below this (the reference accepts and ignores `min_log_prob`, §4 D4).
    pub min_log_prob: Option<f64>,
    /// Frontier selection (§4 D5).
    pub frontier: FrontierPick,
    /// Cap on draft forwards per tree. `None` (default) grows until the tree is exactly the top-K set by score
    /// (every node whose children could still enter the top K has been expanded); `Some(D)` is the reference's
    /// `for it in 1..=max_beam_len` loop, which may stop earlier with a tree that is still ancestor-closed but
    /// not always the exact top-K set.
    pub max_draft_forwards: Option<usize>,
    /// When the target samples are drawn during validation (§2.9, §4 D2): `Lazy` (default) draws one uniform per
    /// emitted token, which makes the output equal to autoregressive sampling token for token.
    pub tree_sampling: TreeSampling,
}

impl Default for SpecExecConfig {
    /// The project defaults of `specexec.md` §3 with K = 256: D = 32, B = 128, k = 32, decay 0.95, draft T = 1.
    fn default() -> Self {
        SpecExecConfig {
            budget: 256,
            max_depth: 32,
            expand_batch: 128,
            max_branch: 32,
            depth_decay: 0.95,
            draft_temperature: 1.0,
            min_log_prob: None,
            frontier: FrontierPick::TopScore,
            max_draft_forwards: None,
            tree_sampling: TreeSampling::Lazy,
        }
    }
}

impl SpecExecConfig {
    /// The defaults with budget `k`.
    pub fn with_budget(budget: usize) -> Self {
        SpecExecConfig { budget, ..Default::default() }
    }

    /// Checks every field's domain ([`SpecError::InvalidConfig`](crate::SpecError::InvalidConfig) naming the
    /// first bad one).
    pub fn validate(&self) -> Result<()> {
        if self.budget == 0 {
            return Err(config("budget", 0.0, "must be >= 1 (a tree needs at least one draft node)"));
        }
        if self.max_depth == 0 {
            return Err(config("max_depth", 0.0, "must be >= 1"));
        }
        if self.expand_batch == 0 {
            return Err(config("expand_batch", 0.0, "must be >= 1"));
        }
        if self.max_branch == 0 {
            return Err(config("max_branch", 0.0, "must be >= 1"));
        }
        let d = self.depth_decay;
        if !d.is_finite() || d <= 0.0 || d > 1.0 {
            return Err(config("depth_decay", d, "must lie in (0, 1]"));
        }
        let t = self.draft_temperature;
        if !t.is_finite() || t <= 0.0 {
            return Err(config("draft_temperature", t as f64, "must be finite and > 0 (the tree is scored by it)"));
        }
        if let Some(m) = self.min_log_prob
            && m.is_nan()
        {
            return Err(config("min_log_prob", m, "must not be NaN"));
        }
        if self.max_draft_forwards == Some(0) {
            return Err(config("max_draft_forwards", 0.0, "must be >= 1 when set"));
        }
        Ok(())
    }
}

/// Parameters of classic chain speculative decoding (Leviathan et al. 2023; Chen et al. 2023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainConfig {
    /// γ: draft tokens per target step (at most γ + 1 tokens are emitted per step).
    pub draft_len: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig { draft_len: 4 }
    }
}

impl ChainConfig {
    /// Checks the domain.
    pub fn validate(&self) -> Result<()> {
        if self.draft_len == 0 {
            return Err(config("draft_len", 0.0, "must be >= 1"));
        }
        Ok(())
    }
}

/// Parameters of SpecInfer-style sampled trees (`specexec.md` §2.4, §2.12): level `l` of the tree gives every
/// node of level `l − 1` `widths[l − 1]` children, drawn from that node's processed draft distribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecInferConfig {
    /// Children per node, level by level (the tree's depth is `widths.len()`).
    pub widths: Vec<usize>,
    /// How siblings are drawn (the SpecExec repo's baseline draws without replacement by default).
    pub replacement: Replacement,
}

impl Default for SpecInferConfig {
    /// Four children at the first level, two at the next two, one after: 4 + 8 + 16 + 16 = 44 nodes.
    fn default() -> Self {
        SpecInferConfig { widths: vec![4, 2, 2, 1], replacement: Replacement::Without }
    }
}

impl SpecInferConfig {
    /// Number of draft nodes of a full tree (root excluded).
    pub fn tree_size(&self) -> usize {
        let mut level = 1usize;
        let mut total = 0usize;
        for &w in &self.widths {
            level = level.saturating_mul(w);
            total = total.saturating_add(level);
        }
        total
    }

    /// Checks the domain.
    pub fn validate(&self) -> Result<()> {
        if self.widths.is_empty() {
            return Err(config("widths", 0.0, "needs at least one level"));
        }
        if let Some(&w) = self.widths.iter().find(|&&w| w == 0) {
            return Err(config("widths", w as f64, "every level needs >= 1 child per node"));
        }
        Ok(())
    }
}
