//! Naive f64 GRIFFIN: the statistic, top-k, and the dense, masked, gathered and class-mode FFNs, written as the
//! formulas read, one row at a time. Every fast path of the crate is tested against these.

use crate::config::ZeroRowPolicy;
use crate::error::Result;
use crate::ffn::{Act, Ffn, FfnForm, GatedFfn};

/// `s_j = √(Σ_s (Z[s,j] / ‖Z[s,:]‖)²)` over the rows of `z`, and the number of rows counted. All-zero rows are
/// skipped ([`ZeroRowPolicy::Skip`]) or make every score NaN ([`ZeroRowPolicy::Nan`]).
pub fn statistic(z: &[Vec<f64>], policy: ZeroRowPolicy) -> (Vec<f64>, usize) {
    let n = z.first().map_or(0, Vec::len);
    let mut acc = vec![0f64; n];
    let mut rows = 0;
    for row in z {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            match policy {
                ZeroRowPolicy::Skip => continue,
                ZeroRowPolicy::Nan => {
                    acc.iter_mut().for_each(|a| *a = f64::NAN);
                    rows += 1;
                    continue;
                }
            }
        }
        for (a, v) in acc.iter_mut().zip(row) {
            *a += (v / norm) * (v / norm);
        }
        rows += 1;
    }
    (acc.iter().map(|a| a.sqrt()).collect(), rows)
}

/// Indices of the `k` largest scores, largest first; NaN counts as the largest; ties go to the lower index.
pub fn topk(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    let nan_first = |a: usize, b: usize| scores[b].is_nan().cmp(&scores[a].is_nan());
    idx.sort_by(|&a, &b| {
        nan_first(a, b)
            .then(key(scores[b]).partial_cmp(&key(scores[a])).unwrap_or(std::cmp::Ordering::Equal))
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// The activation in f64.
pub fn act(a: Act, x: f64) -> f64 {
    match a {
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::Gelu => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        Act::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Act::Relu => x.max(0.0),
    }
}

/// An FFN as f64 row-major weights.
#[derive(Clone, Debug)]
pub struct RefFfn {
    /// The form.
    pub form: FfnForm,
    /// `d`.
    pub d: usize,
    /// `d_ff`.
    pub d_ff: usize,
    /// `W_gate` `[d_ff][d]` (GLU).
    pub gate: Option<Vec<Vec<f64>>>,
    /// `W_up` / `W_1` `[d_ff][d]`.
    pub up: Vec<Vec<f64>>,
    /// `W_down` / `W_2` `[d][d_ff]`.
    pub down: Vec<Vec<f64>>,
    /// `b_1` `[d_ff]`.
    pub b1: Option<Vec<f64>>,
    /// `b_2` `[d]`.
    pub b2: Option<Vec<f64>>,
}

fn rows_of(l: &effllm_model::Linear) -> Result<Vec<Vec<f64>>> {
    let w = l.to_dense_f32()?.to_vec_f64()?;
    Ok(w.chunks(l.in_features().max(1)).map(<[f64]>::to_vec).collect())
}

impl RefFfn {
    /// The weights of `f`, dequantized and widened to f64.
    pub fn from_ffn(f: &Ffn) -> Result<RefFfn> {
        Ok(RefFfn {
            form: f.form(),
            d: f.d_model(),
            d_ff: f.d_ff(),
            gate: f.gate().map(rows_of).transpose()?,
            up: rows_of(f.up())?,
            down: rows_of(f.down_weight())?,
            b1: f.b1().map(|b| b.to_vec_f64()).transpose()?,
            b2: f.b2().map(|b| b.to_vec_f64()).transpose()?,
        })
    }

    fn dot(w: &[f64], x: &[f64]) -> f64 {
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    }

    /// `z` of one input row.
    pub fn intermediate(&self, x: &[f64]) -> Vec<f64> {
        (0..self.d_ff)
            .map(|j| match self.form {
                FfnForm::Glu { act: a } => {
                    let g = self.gate.as_ref().map_or(0.0, |g| Self::dot(&g[j], x));
                    act(a, g) * Self::dot(&self.up[j], x)
                }
                FfnForm::Plain { act: a, .. } => {
                    act(a, Self::dot(&self.up[j], x) + self.b1.as_ref().map_or(0.0, |b| b[j]))
                }
            })
            .collect()
    }

    /// `W_down z + b_2`.
    pub fn down(&self, z: &[f64]) -> Vec<f64> {
        (0..self.d).map(|r| Self::dot(&self.down[r], z) + self.b2.as_ref().map_or(0.0, |b| b[r])).collect()
    }

    /// The dense FFN of one row.
    pub fn dense(&self, x: &[f64]) -> Vec<f64> {
        self.down(&self.intermediate(x))
    }

    /// The mask form: `W_down (m ⊙ z) + b_2` with `m` the 0/1 mask on `experts`.
    pub fn masked(&self, x: &[f64], experts: &[usize]) -> Vec<f64> {
        let mut m = vec![0f64; self.d_ff];
        experts.iter().for_each(|&j| m[j] = 1.0);
        let z: Vec<f64> = self.intermediate(x).iter().zip(&m).map(|(a, b)| a * b).collect();
        self.down(&z)
    }

    /// The gathered form: new matrices from rows `E` of gate/up (and `b_1[E]`) and columns `E` of down, then the
    /// FFN of those (plus `b_2`, kept whole). `E` empty gives `b_2` (or 0).
    pub fn gathered(&self, x: &[f64], experts: &[usize]) -> Vec<f64> {
        let sub = RefFfn {
            form: self.form,
            d: self.d,
            d_ff: experts.len(),
            gate: self.gate.as_ref().map(|g| experts.iter().map(|&j| g[j].clone()).collect()),
            up: experts.iter().map(|&j| self.up[j].clone()).collect(),
            down: self.down.iter().map(|row| experts.iter().map(|&j| row[j]).collect()).collect(),
            b1: self.b1.as_ref().map(|b| experts.iter().map(|&j| b[j]).collect()),
            b2: self.b2.clone(),
        };
        sub.dense(x)
    }

    /// The magnitude baseline's scores `‖W_gate[j]‖·‖W_up[j]‖` (GLU) or `‖W_1[j]‖` (plain).
    pub fn magnitude_scores(&self) -> Vec<f64> {
        let norm = |r: &Vec<f64>| r.iter().map(|v| v * v).sum::<f64>().sqrt();
        (0..self.d_ff).map(|j| norm(&self.up[j]) * self.gate.as_ref().map_or(1.0, |g| norm(&g[j]))).collect()
    }

    /// Class mode on rows `xs` (`S ≥ 2`): `E` = top-`k` of the statistic of rows `0..S−2`; rows before the last
    /// are dense, the last is the mask form.
    pub fn class_mode(&self, xs: &[Vec<f64>], k: usize, policy: ZeroRowPolicy) -> Vec<Vec<f64>> {
        let s = xs.len();
        let z: Vec<Vec<f64>> = xs[..s - 1].iter().map(|x| self.intermediate(x)).collect();
        let (scores, _) = statistic(&z, policy);
        let e = topk(&scores, k);
        xs.iter().enumerate().map(|(i, x)| if i + 1 < s { self.dense(x) } else { self.masked(x, &e) }).collect()
    }
}
