//! Per-step and per-generation statistics (`specexec.md` §2.11).

use std::time::Duration;

/// What one speculative step (one target forward) did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Draft nodes in the validated tree (root excluded; γ for a chain).
    pub tree_size: usize,
    /// Depth of the deepest draft node.
    pub tree_depth: usize,
    /// Draft tokens accepted (and emitted: a stop token cuts the accepted path).
    pub accepted: usize,
    /// Tokens emitted: accepted + 1 (the target's token), except in the last step of a generation, which may be
    /// cut to the requested length or end at a stop token that was an accepted draft token (then = accepted).
    pub emitted: usize,
    /// Draft forwards run while drafting.
    pub draft_forwards: usize,
    /// Tokens the draft processed (catch-up tokens included).
    pub draft_tokens: usize,
    /// Tokens the target processed in its one forward (tree + root).
    pub target_tokens: usize,
    /// Wall-clock time of drafting (draft forwards and tree search).
    pub draft_time: Duration,
    /// Wall-clock time of the target forward.
    pub target_time: Duration,
    /// Wall-clock time of verification and KV compaction (host side).
    pub verify_time: Duration,
}

/// Statistics of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    /// One entry per target step.
    pub steps: Vec<StepStats>,
    /// Tokens generated (after cutting to the requested length or at a stop token).
    pub new_tokens: usize,
    /// Wall-clock time of the prompt prefill (target only; the draft catches up inside its first step).
    pub prefill_time: Duration,
    /// `depth_attempts[d - 1]`: steps whose walk stood at a depth-(d − 1) node that had children in the tree.
    pub depth_attempts: Vec<usize>,
    /// `depth_accepts[d - 1]`: of those, steps that accepted a depth-d node.
    pub depth_accepts: Vec<usize>,
}

impl GenerationStats {
    /// Target forwards (steps).
    pub fn target_steps(&self) -> usize {
        self.steps.len()
    }

    /// Tokens per target step: new tokens / steps (the reference's `gen_rate`; 0 without steps).
    pub fn tokens_per_step(&self) -> f64 {
        if self.steps.is_empty() { 0.0 } else { self.new_tokens as f64 / self.steps.len() as f64 }
    }

    /// Acceptance rate at each depth: accepts / attempts (NaN where no step reached that depth).
    pub fn acceptance_by_depth(&self) -> Vec<f64> {
        self.depth_attempts
            .iter()
            .zip(&self.depth_accepts)
            .map(|(&n, &a)| if n == 0 { f64::NAN } else { a as f64 / n as f64 })
            .collect()
    }

    /// Mean validated tree size (draft nodes per step).
    pub fn mean_tree_size(&self) -> f64 {
        mean(self.steps.iter().map(|s| s.tree_size as f64))
    }

    /// Mean accepted draft tokens per step.
    pub fn mean_accepted(&self) -> f64 {
        mean(self.steps.iter().map(|s| s.accepted as f64))
    }

    /// Total drafting time.
    pub fn draft_time(&self) -> Duration {
        self.steps.iter().map(|s| s.draft_time).sum()
    }

    /// Total target-forward time.
    pub fn target_time(&self) -> Duration {
        self.steps.iter().map(|s| s.target_time).sum()
    }

    /// Total verification and compaction time.
    pub fn verify_time(&self) -> Duration {
        self.steps.iter().map(|s| s.verify_time).sum()
    }

    /// Total tokens processed by the draft.
    pub fn draft_tokens(&self) -> usize {
        self.steps.iter().map(|s| s.draft_tokens).sum()
    }

    /// Total draft forwards.
    pub fn draft_forwards(&self) -> usize {
        self.steps.iter().map(|s| s.draft_forwards).sum()
    }

    pub(crate) fn record_walk(&mut self, reached: &[bool], accepted: usize) {
        // reached[d] = whether the node at depth d on the walk had children.
        for (d, &has_children) in reached.iter().enumerate() {
            if self.depth_attempts.len() <= d {
                self.depth_attempts.push(0);
                self.depth_accepts.push(0);
            }
            if has_children {
                self.depth_attempts[d] += 1;
                if d < accepted {
                    self.depth_accepts[d] += 1;
                }
            }
        }
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}
