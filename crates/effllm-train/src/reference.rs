//! Naive f64 versions of the trainer's own arithmetic, the oracle of its tests.

use std::collections::BTreeMap;

/// Cross-entropy (nats per token) of `eval` under the add-one-smoothed unigram distribution of `train` over
/// `vocab` ids: `−(1/N) Σ_t ln((count(t) + 1) / (|train| + vocab))`.
pub fn unigram_cross_entropy(train: &[u32], eval: &[u32], vocab: usize) -> f64 {
    let mut counts: BTreeMap<u32, f64> = BTreeMap::new();
    for &t in train {
        *counts.entry(t).or_insert(0.0) += 1.0;
    }
    let denom = train.len() as f64 + vocab as f64;
    let mut total = 0.0;
    for &t in eval {
        let p = (counts.get(&t).copied().unwrap_or(0.0) + 1.0) / denom;
        total -= p.ln();
    }
    if eval.is_empty() { 0.0 } else { total / eval.len() as f64 }
}

/// Mean cross-entropy of integer targets under row-major logits `[n, vocab]`, via a max-shifted log-sum-exp.
pub fn mean_cross_entropy(logits: &[f64], vocab: usize, targets: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
    }
    total / targets.len() as f64
}

/// The gradient of a loss that is the mean over `A` micro-batches of per-micro-batch means, given each
/// micro-batch's gradient: `(1/A) Σ_a g_a` (what gradient accumulation must produce).
pub fn accumulated_gradient(per_micro_batch: &[Vec<f64>]) -> Vec<f64> {
    let a = per_micro_batch.len() as f64;
    let n = per_micro_batch.first().map_or(0, Vec::len);
    (0..n).map(|i| per_micro_batch.iter().map(|g| g[i]).sum::<f64>() / a).collect()
}
