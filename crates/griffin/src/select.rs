//! [`select_experts`]: top-k and the reference's sampling variants over the per-neuron scores.

use std::cmp::Ordering;

use effllm_tensor::rng::CounterRng;

use crate::config::Selection;
use crate::error::{GriffinError, Result, invalid};

/// The neurons kept for one sequence and one layer ("experts"), in the order the FFN is gathered: ascending by
/// default, else the selection order (score order for top-k, draw order for sampling).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpertSet {
    /// Neuron indices, unique, each `< d_ff`.
    pub idx: Vec<u32>,
}

impl ExpertSet {
    /// A set from indices (checked: unique and `< d_ff`).
    pub fn new(idx: Vec<u32>, d_ff: usize) -> Result<ExpertSet> {
        let mut seen = vec![false; d_ff];
        for &i in &idx {
            let slot = seen
                .get_mut(i as usize)
                .ok_or_else(|| invalid("ExpertSet::new", format!("neuron {i} of an FFN of width {d_ff}")))?;
            if *slot {
                return Err(invalid("ExpertSet::new", format!("neuron {i} appears twice")));
            }
            *slot = true;
        }
        Ok(ExpertSet { idx })
    }

    /// Every neuron, in order (density 1).
    pub fn all(d_ff: usize) -> ExpertSet {
        ExpertSet { idx: (0..d_ff as u32).collect() }
    }

    /// Number of experts `k`.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// Whether `k = 0`.
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    /// Whether the set is `0, 1, ..., d_ff − 1` in that order (the pruned FFN is then the dense one).
    pub fn is_identity(&self, d_ff: usize) -> bool {
        self.idx.len() == d_ff && self.idx.iter().enumerate().all(|(i, &j)| i as u32 == j)
    }

    /// The 0/1 mask on the set, as f32 (`[d_ff]`).
    pub fn mask(&self, d_ff: usize) -> Vec<f32> {
        let mut m = vec![0f32; d_ff];
        for &i in &self.idx {
            if let Some(v) = m.get_mut(i as usize) {
                *v = 1.0;
            }
        }
        m
    }

    /// The indices sorted ascending.
    pub fn sorted(&self) -> Vec<u32> {
        let mut v = self.idx.clone();
        v.sort_unstable();
        v
    }

    /// `|A ∩ B| / |A ∪ B|` (1 for two empty sets).
    pub fn jaccard(&self, other: &ExpertSet) -> f64 {
        let a = self.sorted();
        let b = other.sorted();
        let (mut i, mut j, mut inter) = (0, 0, 0usize);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                Ordering::Less => i += 1,
                Ordering::Greater => j += 1,
                Ordering::Equal => {
                    inter += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        let union = a.len() + b.len() - inter;
        if union == 0 { 1.0 } else { inter as f64 / union as f64 }
    }
}

/// Ranking order of two scores: NaN above every number (torch's `topk` treats NaN as the largest value), then
/// larger first; ties go to the lower index.
fn rank(a: (usize, f32), b: (usize, f32)) -> Ordering {
    let key = |v: f32| if v.is_nan() { (1u8, 0f32) } else { (0u8, v) };
    let (ka, kb) = (key(a.1), key(b.1));
    kb.0.cmp(&ka.0).then(kb.1.partial_cmp(&ka.1).unwrap_or(Ordering::Equal)).then(a.0.cmp(&b.0))
}

/// The `k` best of `candidates` (index, score) in rank order.
fn top_by_score(mut candidates: Vec<(usize, f32)>, k: usize) -> Vec<usize> {
    let k = k.min(candidates.len());
    if k == 0 {
        return Vec::new();
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| rank(a, b));
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(|&a, &b| rank(a, b));
    candidates.into_iter().map(|(i, _)| i).collect()
}

/// `count` draws without replacement from `candidates` with probability ∝ `weight` (uniform when `weights` is
/// `None`), in draw order. Efraimidis–Spirakis: the `count` largest keys `ln(u_j) / w_j` are distributed as
/// successive draws; zero weights come last, in uniform random order (only when fewer than `count` are positive).
fn sample(candidates: &[usize], weights: Option<&[f32]>, count: usize, rng: &CounterRng) -> Result<Vec<usize>> {
    let mut keyed: Vec<(usize, u8, f64)> = Vec::with_capacity(candidates.len());
    for &j in candidates {
        // (0, 1]: never ln(0).
        let u = 1.0 - rng.uniform_f64_at(j as u64);
        let (tier, key) = match weights {
            None => (1, u.ln()),
            Some(w) => {
                let w = f64::from(w[j]);
                if w.is_nan() {
                    return Err(GriffinError::NanScores { op: "select_experts" });
                }
                if w > 0.0 { (1, u.ln() / w) } else { (0, u.ln()) }
            }
        };
        keyed.push((j, tier, key));
    }
    keyed.sort_unstable_by(|a, b| {
        b.1.cmp(&a.1).then(b.2.partial_cmp(&a.2).unwrap_or(Ordering::Equal)).then(a.0.cmp(&b.0))
    });
    Ok(keyed.into_iter().take(count).map(|(j, _, _)| j).collect())
}

/// Selects `k` experts from `scores_sq` (`acc_j = s_j²`, as [`NeuronStat::sumsq`](crate::NeuronStat::sumsq) gives)
/// with `sel`; random methods use stream 0 of their seed. See [`select_experts_stream`].
pub fn select_experts(scores_sq: &[f32], k: usize, sel: &Selection, sort: bool) -> Result<ExpertSet> {
    select_experts_stream(scores_sq, k, sel, sort, 0)
}

/// Selects experts from `scores_sq` (`s_j²`) with `sel`, drawing random numbers from `(seed, stream)` (GRIFFIN
/// passes the layer index as the stream).
///
/// - `TopK` and `Magnitude` (whose scores the caller computed from the weights): the `k` largest; ties go to the
///   lower index; NaN ranks above every number.
/// - `Sample`: `k` draws without replacement ∝ `s_j = √scores_sq_j`.
/// - `TopKSample`: the top `⌊k/2⌋`, then `k − ⌊k/2⌋` (`exact_k`) or `⌊k/2⌋` draws ∝ `s_j` among the rest.
/// - `Random`: `k` uniform draws without replacement.
///
/// With `sort`, the result is ascending; otherwise it is in selection order. `k > d_ff` is an error.
pub fn select_experts_stream(
    scores_sq: &[f32],
    k: usize,
    sel: &Selection,
    sort: bool,
    stream: u64,
) -> Result<ExpertSet> {
    let n = scores_sq.len();
    if k > n {
        return Err(invalid("select_experts", format!("k = {k} experts of {n} neurons")));
    }
    let all: Vec<(usize, f32)> = scores_sq.iter().copied().enumerate().collect();
    let weights = || -> Vec<f32> { scores_sq.iter().map(|v| v.sqrt()).collect() };
    let mut idx: Vec<usize> = match *sel {
        Selection::TopK | Selection::Magnitude => top_by_score(all, k),
        Selection::Sample { seed } => {
            let cand: Vec<usize> = (0..n).collect();
            sample(&cand, Some(&weights()), k, &CounterRng::new(seed, stream))?
        }
        Selection::Random { seed } => {
            let cand: Vec<usize> = (0..n).collect();
            sample(&cand, None, k, &CounterRng::new(seed, stream))?
        }
        Selection::TopKSample { seed, exact_k } => {
            let half = k / 2;
            let mut top = top_by_score(all, half);
            let mut taken = vec![false; n];
            top.iter().for_each(|&j| taken[j] = true);
            let rest: Vec<usize> = (0..n).filter(|&j| !taken[j]).collect();
            let draws = if exact_k { k - half } else { half };
            top.extend(sample(&rest, Some(&weights()), draws, &CounterRng::new(seed, stream))?);
            top
        }
    };
    if sort {
        idx.sort_unstable();
    }
    Ok(ExpertSet { idx: idx.into_iter().map(|i| i as u32).collect() })
}
