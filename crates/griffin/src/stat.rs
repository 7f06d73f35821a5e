//! [`NeuronStat`]: the streaming, chunk-invariant GRIFFIN statistic.

use effllm_tensor::{DType, Tensor};

use crate::config::ZeroRowPolicy;
use crate::error::{GriffinError, Result};

/// Per neuron `j`, `acc_j = Σ_s (Z[s,j] / ‖Z[s,:]‖₂)²` over the prompt rows seen so far (the square of the paper's
/// `s_j`), kept in f32 whatever the model's dtype, plus the number of rows counted.
///
/// Rows are added in the order they arrive, one at a time, so a prompt fed in chunks gives bitwise the same `acc`
/// as the whole prompt at once. Each row's norm is computed in f64; each `(z_j / r)²` is rounded to f32 before it is
/// added.
#[derive(Clone, Debug, PartialEq)]
pub struct NeuronStat {
    sumsq: Vec<f32>,
    rows: usize,
}

impl NeuronStat {
    /// An empty statistic for `d_ff` neurons.
    pub fn new(d_ff: usize) -> Self {
        NeuronStat { sumsq: vec![0.0; d_ff], rows: 0 }
    }

    /// Number of neurons.
    pub fn d_ff(&self) -> usize {
        self.sumsq.len()
    }

    /// Rows counted so far (zero rows skipped under [`ZeroRowPolicy::Skip`] are not counted).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `acc_j = s_j²`: rank by these (the square root is monotonic).
    pub fn sumsq(&self) -> &[f32] {
        &self.sumsq
    }

    /// `s_j = √acc_j`, for reporting.
    pub fn scores(&self) -> Vec<f32> {
        self.sumsq.iter().map(|v| v.sqrt()).collect()
    }

    /// Forgets every row.
    pub fn reset(&mut self) {
        self.sumsq.iter_mut().for_each(|v| *v = 0.0);
        self.rows = 0;
    }

    /// Adds another statistic of the same width (e.g. two halves of a prompt kept apart).
    pub fn merge(&mut self, other: &NeuronStat) -> Result<()> {
        if other.d_ff() != self.d_ff() {
            return Err(GriffinError::ShapeMismatch {
                op: "NeuronStat::merge",
                expected: vec![self.d_ff()],
                found: vec![other.d_ff()],
            });
        }
        self.sumsq.iter_mut().zip(&other.sumsq).for_each(|(a, b)| *a += b);
        self.rows += other.rows;
        Ok(())
    }

    /// Adds the rows of `z` = `[T, d_ff]` (any float dtype, any device) whose `valid` flag is true (all rows when
    /// `None`; padding rows are excluded this way).
    pub fn update(&mut self, z: &Tensor, valid: Option<&[bool]>, policy: ZeroRowPolicy) -> Result<()> {
        let shape = z.shape();
        if shape.len() != 2 || shape[1] != self.d_ff() {
            return Err(GriffinError::ShapeMismatch {
                op: "NeuronStat::update",
                expected: vec![shape.first().copied().unwrap_or(0), self.d_ff()],
                found: shape.to_vec(),
            });
        }
        let data = z.to_dtype(DType::F32)?.contiguous()?.to_vec::<f32>()?;
        self.update_rows(&data, shape[0], valid, policy)
    }

    /// [`NeuronStat::update`] on a row-major `[t, d_ff]` slice.
    pub fn update_rows(&mut self, z: &[f32], t: usize, valid: Option<&[bool]>, policy: ZeroRowPolicy) -> Result<()> {
        let n = self.d_ff();
        if z.len() != t * n {
            return Err(GriffinError::ShapeMismatch {
                op: "NeuronStat::update",
                expected: vec![t, n],
                found: vec![z.len()],
            });
        }
        if let Some(v) = valid
            && v.len() != t
        {
            return Err(GriffinError::ShapeMismatch {
                op: "NeuronStat::update (valid rows)",
                expected: vec![t],
                found: vec![v.len()],
            });
        }
        for (s, row) in z.chunks_exact(n.max(1)).enumerate().take(t) {
            if valid.is_some_and(|v| !v[s]) {
                continue;
            }
            let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            if norm == 0.0 && policy == ZeroRowPolicy::Skip {
                continue;
            }
            let inv = 1.0 / norm;
            for (a, &x) in self.sumsq.iter_mut().zip(row) {
                let q = f64::from(x) * inv;
                *a += (q * q) as f32;
            }
            self.rows += 1;
        }
        Ok(())
    }
}
