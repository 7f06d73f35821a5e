//! Naive, obviously-correct f64 versions of everything in the crate (project rule: the fast code is
//! property-tested against these). Full sorts, whole-vector softmaxes, explicit residual vectors, exact
//! enumeration; no scratch reuse, no partial selection.
//!
//! Token ids are `usize` here. Inputs are assumed valid except where a `Result` is returned.

use crate::Token;
use crate::error::Result;
use crate::params::{FilterOrder, NucleusMode, SamplingParams};

/// Softmax over entries > −∞ (−∞ → 0). All −∞ gives all zeros.
pub fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f64> = x.iter().map(|&v| if v == f64::NEG_INFINITY { 0.0 } else { (v - m).exp() }).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Normalises non-negative weights to sum 1.
pub fn normalize(w: &[f64]) -> Vec<f64> {
    let s: f64 = w.iter().sum();
    w.iter().map(|v| v / s).collect()
}

/// Index of the largest entry, lowest index on ties.
pub fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for i in 1..x.len() {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

/// CTRL repetition penalty, then frequency and presence penalties, over the penalty window.
pub fn apply_penalties(logits: &[f64], history: &[Token], params: &SamplingParams) -> Vec<f64> {
    let mut z = logits.to_vec();
    let window = match params.penalty_window {
        Some(n) => &history[history.len().saturating_sub(n)..],
        None => history,
    };
    for (token, l) in z.iter_mut().enumerate() {
        let count = window.iter().filter(|&&t| t as usize == token).count();
        if count == 0 {
            continue;
        }
        let theta = params.repetition_penalty as f64;
        *l = if *l > 0.0 { *l / theta } else { *l * theta };
        *l -= count as f64 * params.frequency_penalty as f64 + params.presence_penalty as f64;
    }
    z
}

/// Tokens in the order (logit descending, id ascending), restricted to `keep`.
pub fn descending_order(z: &[f64], keep: &[bool]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..z.len()).filter(|&i| keep[i]).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    order
}

/// top-k: keep tokens whose logit is ≥ the k-th largest kept logit.
pub fn top_k_keep(z: &[f64], keep: &[bool], k: usize) -> Vec<bool> {
    let order = descending_order(z, keep);
    if k == 0 || k >= order.len() {
        return keep.to_vec();
    }
    let kth = z[order[k - 1]];
    (0..z.len()).map(|i| keep[i] && z[i] >= kth).collect()
}

/// top-p on π (normalised over the kept tokens), in `order`.
pub fn top_p_keep(pi: &[f64], order: &[usize], keep: &[bool], top_p: f64, mode: NucleusMode) -> Vec<bool> {
    let mut out = keep.to_vec();
    let mut cum = 0.0;
    match mode {
        NucleusMode::Standard => {
            let mut reached = false;
            for &i in order {
                if reached {
                    out[i] = false;
                }
                cum += pi[i];
                if cum >= top_p {
                    reached = true;
                }
            }
        }
        NucleusMode::ReferenceInverted => {
            for (pos, &i) in order.iter().enumerate() {
                cum += pi[i];
                if cum <= 1.0 - top_p && pos + 1 < order.len() {
                    out[i] = false;
                } else {
                    break;
                }
            }
        }
    }
    out
}

/// The processed distribution, naively: penalties, then (HF order) temperature, top-k, top-p, min-p, softmax.
pub fn process(logits: &[f32], params: &SamplingParams, history: &[Token]) -> Result<Vec<f64>> {
    params.validate()?;
    crate::process::check_logits(logits)?;
    if let Some(&token) = history.iter().find(|&&t| t as usize >= logits.len()) {
        return Err(crate::SamplingError::TokenOutOfRange { what: "history", token, vocab: logits.len() });
    }
    let raw: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let z = apply_penalties(&raw, history, params);
    let n = z.len();
    if params.temperature == 0.0 {
        let mut out = vec![0.0; n];
        out[argmax(&z)] = 1.0;
        return Ok(out);
    }
    let t = params.temperature as f64;
    let t_filter = if params.order == FilterOrder::TemperatureFirst { t } else { 1.0 };
    let scaled = |keep: &[bool], t: f64| -> Vec<f64> {
        (0..n).map(|i| if keep[i] { z[i] / t } else { f64::NEG_INFINITY }).collect()
    };
    let mut keep: Vec<bool> = z.iter().map(|&v| v > f64::NEG_INFINITY).collect();
    if params.top_k > 0 {
        keep = top_k_keep(&z, &keep, params.top_k);
    }
    if params.top_p < 1.0 {
        let pi = softmax(&scaled(&keep, t_filter));
        let order = descending_order(&z, &keep);
        keep = top_p_keep(&pi, &order, &keep, params.top_p as f64, params.nucleus);
    }
    if params.min_p > 0.0 {
        let pi = softmax(&scaled(&keep, t_filter));
        let max = pi.iter().copied().fold(0.0, f64::max);
        keep = (0..n).map(|i| keep[i] && pi[i] >= params.min_p as f64 * max).collect();
    }
    Ok(softmax(&scaled(&keep, t)))
}

/// How close [`process`] comes to a decision boundary: the smallest gap between a quantity a filter compares and
/// its threshold (top-k: logit gaps to the k-th value; top-p: prefix sums to `top_p`; min-p: log-ratio to
/// `ln min_p`; greedy: gap between the two largest logits). Property tests skip inputs with a tiny margin,
/// where f32 rounding may legitimately flip a decision.
pub fn decision_margin(logits: &[f32], params: &SamplingParams, history: &[Token]) -> f64 {
    let raw: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let z = apply_penalties(&raw, history, params);
    let n = z.len();
    let scale = z.iter().filter(|v| v.is_finite()).fold(1.0f64, |a, v| a.max(v.abs()));
    let mut margin = f64::INFINITY;
    let all: Vec<bool> = z.iter().map(|&v| v > f64::NEG_INFINITY).collect();
    // Penalties are applied in f32 by the fast code: distinct logits closer than that rounding may tie there.
    let mut finite: Vec<f64> = z.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(|a, b| a.total_cmp(b));
    for w in finite.windows(2) {
        if w[1] != w[0] {
            margin = margin.min((w[1] - w[0]) / scale);
        }
    }
    if params.temperature == 0.0 {
        return margin;
    }
    let t = params.temperature as f64;
    let t_filter = if params.order == FilterOrder::TemperatureFirst { t } else { 1.0 };
    let mut keep = all.clone();
    if params.top_k > 0 {
        keep = top_k_keep(&z, &keep, params.top_k);
    }
    if params.top_p < 1.0 {
        let s: Vec<f64> = (0..n).map(|i| if keep[i] { z[i] / t_filter } else { f64::NEG_INFINITY }).collect();
        let pi = softmax(&s);
        let target = match params.nucleus {
            NucleusMode::Standard => params.top_p as f64,
            NucleusMode::ReferenceInverted => 1.0 - params.top_p as f64,
        };
        let mut cum = 0.0;
        for i in descending_order(&z, &keep) {
            cum += pi[i];
            margin = margin.min((cum - target).abs());
        }
        keep = top_p_keep(&pi, &descending_order(&z, &keep), &keep, params.top_p as f64, params.nucleus);
    }
    if params.min_p > 0.0 {
        let m = (0..n).filter(|&i| keep[i]).map(|i| z[i]).fold(f64::NEG_INFINITY, f64::max);
        let ln_min_p = (params.min_p as f64).ln();
        for i in (0..n).filter(|&i| keep[i]) {
            margin = margin.min(((z[i] - m) / t_filter - ln_min_p).abs());
        }
    }
    margin
}

/// Inverse CDF: smallest i with Σ_{j ≤ i} w_j > u · Σ w; the last positive entry if rounding leaves none.
pub fn sample_index(w: &[f64], u: f64) -> usize {
    let total: f64 = w.iter().sum();
    let mut cum = 0.0;
    for (i, &v) in w.iter().enumerate() {
        cum += v;
        if v > 0.0 && cum > u * total {
            return i;
        }
    }
    w.iter().rposition(|&v| v > 0.0).unwrap_or(0)
}

/// The residual distribution norm(max(0, p − q)) of normalised p, q; p itself if the residual is all zero.
pub fn residual(p: &[f64], q: &[f64]) -> Vec<f64> {
    let (p, q) = (normalize(p), normalize(q));
    let r: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a - b).max(0.0)).collect();
    if r.iter().sum::<f64>() > 0.0 { normalize(&r) } else { p }
}

/// Outcome of one naive rejection step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Draft token accepted.
    Accept,
    /// Draft token rejected; the residual sample.
    Reject(usize),
}

/// One rejection-sampling step: accept x iff `u_accept < min(1, p(x)/q(x))`, else `sample_index(residual, u_resample)`.
pub fn rejection_step(p: &[f64], q: &[f64], x: usize, u_accept: f64, u_resample: f64) -> Step {
    let (pn, qn) = (normalize(p), normalize(q));
    if u_accept < (pn[x] / qn[x]).min(1.0) {
        Step::Accept
    } else {
        Step::Reject(sample_index(&residual(p, q), u_resample))
    }
}

/// Naive chain verification with an explicit uniform list (same consumption as
/// [`verify_chain`](crate::verify_chain)); returns (accepted, emitted tokens).
pub fn verify_chain(draft: &[usize], q: &[Vec<f64>], p: &[Vec<f64>], uniforms: &[f64]) -> (usize, Vec<usize>) {
    let mut u = uniforms.iter().copied();
    let mut next = || u.next().unwrap_or(0.0);
    let mut out = Vec::new();
    for (i, &x) in draft.iter().enumerate() {
        let ua = next();
        let (pn, qn) = (normalize(&p[i]), normalize(&q[i]));
        if ua < (pn[x] / qn[x]).min(1.0) {
            out.push(x);
        } else {
            out.push(sample_index(&residual(&p[i], &q[i]), next()));
            return (i, out);
        }
    }
    out.push(sample_index(&p[draft.len()], next()));
    (draft.len(), out)
}

/// Closed-form law of the token emitted by one rejection step when x ~ q:
/// `q(x)·min(1, p(x)/q(x)) + (1 − Σ_y min(p(y), q(y)))·r(x)`, r the residual. Equals p (exactness identity).
pub fn rejection_output_distribution(p: &[f64], q: &[f64]) -> Vec<f64> {
    let (p, q) = (normalize(p), normalize(q));
    let beta: f64 = p.iter().zip(&q).map(|(a, b)| a.min(*b)).sum();
    let r = residual(&p, &q);
    (0..p.len()).map(|x| p[x].min(q[x]) + (1.0 - beta) * r[x]).collect()
}

/// Naive multi-round sibling rejection with explicit uniforms; returns `Ok(accepted index)` or
/// `Err(residual token)`.
pub fn siblings_step(
    p: &[f64],
    q: &[f64],
    candidates: &[usize],
    with_replacement: bool,
    uniforms: &[f64],
) -> std::result::Result<usize, usize> {
    let mut u = uniforms.iter().copied();
    let (mut pp, mut qq) = (normalize(p), normalize(q));
    for (j, &c) in candidates.iter().enumerate() {
        if u.next().unwrap_or(0.0) < (pp[c] / qq[c]).min(1.0) {
            return Ok(j);
        }
        pp = residual(&pp, &qq);
        if !with_replacement {
            qq[c] = 0.0;
            if qq.iter().sum::<f64>() > 0.0 {
                qq = normalize(&qq);
            }
        }
    }
    Err(sample_index(&pp, u.next().unwrap_or(0.0)))
}

/// Exact law of the token emitted at a node whose `m` sibling candidates are drawn from q (i.i.d. or without
/// replacement) and verified by [`siblings_step`], by enumeration of every candidate sequence. Equals p. When
/// q's support is exhausted before `m` draws (without replacement), drawing stops there.
pub fn siblings_output_distribution(p: &[f64], q: &[f64], m: usize, with_replacement: bool) -> Vec<f64> {
    fn rec(pp: &[f64], qq: &[f64], m: usize, with_replacement: bool) -> Vec<f64> {
        if m == 0 || qq.iter().sum::<f64>() <= 0.0 {
            return pp.to_vec();
        }
        let mut out = vec![0.0; pp.len()];
        let next_p = residual(pp, qq);
        for c in 0..qq.len() {
            if qq[c] == 0.0 {
                continue;
            }
            let a = (pp[c] / qq[c]).min(1.0);
            out[c] += qq[c] * a;
            let mut next_q = qq.to_vec();
            if !with_replacement {
                next_q[c] = 0.0;
                if next_q.iter().sum::<f64>() > 0.0 {
                    next_q = normalize(&next_q);
                }
            }
            let rest = rec(&next_p, &next_q, m - 1, with_replacement);
            for (o, r) in out.iter_mut().zip(rest) {
                *o += qq[c] * (1.0 - a) * r;
            }
        }
        out
    }
    rec(&normalize(p), &normalize(q), m, with_replacement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactness_identities() {
        let p = [0.5, 0.2, 0.0, 0.3];
        let q = [0.1, 0.0, 0.6, 0.3];
        for (a, b) in rejection_output_distribution(&p, &q).iter().zip(&p) {
            assert!((a - b).abs() < 1e-12);
        }
        for &m in &[1, 2, 3] {
            for &w in &[true, false] {
                let d = siblings_output_distribution(&p, &q, m, w);
                for (a, b) in d.iter().zip(&p) {
                    assert!((a - b).abs() < 1e-12, "m={m} with={w}: {d:?}");
                }
            }
        }
    }
}
