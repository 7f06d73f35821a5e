//! Reductions over one dimension, softmax / log-softmax and top-k.

use std::cmp::Ordering;

use crate::cpu::Real;
use crate::cpu::kernels::{dim_to_last, last_to_dim, logsumexp_row, rows_map, softmax_row};
use crate::tensor::{Work, WorkOut, on_cuda, with_work};
use crate::{Error, Result, Tensor, WithDType};

/// A reduction over one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// `Σ x` (accumulated in f64).
    Sum,
    /// `Σ x / n` (accumulated in f64).
    Mean,
    /// `max x` (NaN if any element is NaN).
    Max,
    /// `min x` (NaN if any element is NaN).
    Min,
    /// `log Σ exp x`, computed stably around the maximum.
    LogSumExp,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::LogSumExp => "logsumexp",
        }
    }

    fn apply<R: Real>(self, row: &[R]) -> R {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => {
                let s: f64 = row.iter().map(|v| WithDType::to_f64(*v)).sum();
                let s = if self == ReduceOp::Mean { s / row.len() as f64 } else { s };
                R::from(s).unwrap_or_else(R::nan)
            }
            ReduceOp::Max => row
                .iter()
                .copied()
                .fold(R::neg_infinity(), |a, b| if a.is_nan() || b.is_nan() { R::nan() } else { a.max(b) }),
            ReduceOp::Min => row
                .iter()
                .copied()
                .fold(R::infinity(), |a, b| if a.is_nan() || b.is_nan() { R::nan() } else { a.min(b) }),
            ReduceOp::LogSumExp => logsumexp_row(row),
        }
    }
}

/// Sort key of the order used by `argmax`, `argmin` and `top_k`: IEEE `totalOrder` (−NaN < −∞ < ... < +∞ < +NaN)
/// except that −0 and +0 are equal, as they compare in arithmetic.
fn order_key<R: Real>(v: R) -> f64 {
    let v = WithDType::to_f64(v);
    if v == 0.0 { 0.0 } else { v }
}

/// Descending order by [`order_key`], ties broken by the lower index.
fn cmp_desc<R: Real>(a: (usize, R), b: (usize, R)) -> Ordering {
    order_key(b.1).total_cmp(&order_key(a.1)).then(a.0.cmp(&b.0))
}

/// `(outer, n, inner)` around `dim` of a shape.
pub(crate) fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

impl Tensor {
    /// Reduces dimension `dim` with `op`; `keepdim` keeps it with size 1.
    pub fn reduce(&self, dim: usize, op: ReduceOp, keepdim: bool) -> Result<Tensor> {
        crate::autograd::op(
            op.name(),
            &[self],
            || self.reduce_fwd(dim, op, keepdim),
            |y| crate::autograd::rules::reduce(op, self, y, dim, keepdim),
        )
    }

    fn reduce_fwd(&self, dim: usize, op: ReduceOp, keepdim: bool) -> Result<Tensor> {
        let name = op.name();
        self.layout.check_dim(name, dim)?;
        let (outer, n, inner) = split_at_dim(self.shape(), dim);
        if n == 0 && op != ReduceOp::Sum {
            return Err(Error::BadShape {
                op: name,
                shape: self.shape().to_vec(),
                msg: format!("cannot reduce the empty dimension {dim}"),
            });
        }
        self.check_float(name)?;
        on_cuda!(self, {
            let kept = crate::cuda::ops::reduce(self, dim, op as i32)?;
            if keepdim { Ok(kept) } else { kept.squeeze(dim) }
        });
        let work = self.work(name)?;
        let out = with_work!(work, d => {
            let rows = dim_to_last(&d, outer, n, inner);
            if n == 0 {
                vec![Default::default(); outer * inner]
            } else {
                rows_map(&rows, n, 1, |r, o| o[0] = op.apply(r))
            }
        });
        let mut shape = self.shape().to_vec();
        if keepdim {
            shape[dim] = 1;
        } else {
            shape.remove(dim);
        }
        Ok(out.into_tensor(&shape, self.dtype()))
    }

    /// Sum over `dim`.
    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::Sum, keepdim)
    }
    /// Mean over `dim`.
    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::Mean, keepdim)
    }
    /// Maximum over `dim`.
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::Max, keepdim)
    }
    /// Minimum over `dim`.
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::Min, keepdim)
    }
    /// `log Σ exp` over `dim`.
    pub fn logsumexp(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(dim, ReduceOp::LogSumExp, keepdim)
    }

    /// `Σ x²` of each tensor (every element, any shape), squared and accumulated in f64 and returned to the host: what a global
    /// gradient norm needs. All tensors must be float and on one device. On CUDA, f32 tensors are reduced by two
    /// kernel launches for the whole set (a pointer table, per-chunk partial sums, then each tensor's partials
    /// summed in a fixed order: deterministic) and one download, instead of several launches and a temporary per
    /// tensor; elsewhere (and for other dtypes) each tensor is squared and summed on its device.
    pub fn squared_norms(tensors: &[&Tensor]) -> Result<Vec<f64>> {
        const OP: &str = "squared_norms";
        let Some(first) = tensors.first() else { return Ok(Vec::new()) };
        for t in tensors {
            t.check_float(OP)?;
            first.check_same_device(OP, t)?;
        }
        #[cfg(feature = "cuda")]
        if first.cuda_storage().is_some() && tensors.iter().all(|t| t.dtype() == crate::DType::F32) {
            return crate::cuda::ops::squared_norms_f32(tensors);
        }
        let mut out = Vec::with_capacity(tensors.len());
        for t in tensors {
            let n = t.elem_count();
            let s = if n == 0 {
                0.0
            } else {
                t.to_dtype(crate::DType::F64)?.sqr()?.reshape(&[n])?.sum(0, false)?.to_scalar::<f64>()?
            };
            out.push(s);
        }
        Ok(out)
    }

    /// Sum of all elements as a scalar tensor (accumulated in f64).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])?.sum(0, false)
    }

    /// Index of the maximum along `dim` as u32 (ties: the lowest index; NaN ordered above +∞).
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce(dim, keepdim, true)
    }

    /// Index of the minimum along `dim` as u32 (ties: the lowest index; NaN ordered above +∞).
    pub fn argmin(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce(dim, keepdim, false)
    }

    fn arg_reduce(&self, dim: usize, keepdim: bool, max: bool) -> Result<Tensor> {
        let name = if max { "argmax" } else { "argmin" };
        self.layout.check_dim(name, dim)?;
        let (outer, n, inner) = split_at_dim(self.shape(), dim);
        if n == 0 {
            return Err(Error::BadShape { op: name, shape: self.shape().to_vec(), msg: "empty dimension".into() });
        }
        self.check_float(name)?;
        on_cuda!(self, {
            let kept = crate::cuda::ops::arg_reduce(self, dim, max)?;
            if keepdim { Ok(kept) } else { kept.squeeze(dim) }
        });
        fn pick<R: Real>(r: &[R], max: bool) -> u32 {
            let key = |i: usize| order_key(r[i]);
            let mut best = 0;
            for i in 1..r.len() {
                // Strict comparison keeps the lowest index among ties.
                let o = key(i).total_cmp(&key(best));
                if (max && o == Ordering::Greater) || (!max && o == Ordering::Less) {
                    best = i;
                }
            }
            best as u32
        }
        let idx: Vec<u32> = match self.work(name)? {
            Work::F32(d) => rows_map(&dim_to_last(&d, outer, n, inner), n, 1, |r, o| o[0] = pick(r, max)),
            Work::F64(d) => rows_map(&dim_to_last(&d, outer, n, inner), n, 1, |r, o| o[0] = pick(r, max)),
        };
        let mut shape = self.shape().to_vec();
        if keepdim {
            shape[dim] = 1;
        } else {
            shape.remove(dim);
        }
        Tensor::from_vec(idx, &shape, &self.device())
    }

    /// Softmax along `dim`, computed stably (`exp(x − max) / Σ exp(x − max)`). A slice that is entirely −∞ gives
    /// zeros.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// Log-softmax along `dim`: `x − logsumexp(x)`.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    fn softmax_impl(&self, dim: usize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        crate::autograd::op(
            name,
            &[self],
            || self.softmax_fwd(dim, log),
            |y| crate::autograd::rules::softmax(y, dim, log),
        )
    }

    fn softmax_fwd(&self, dim: usize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        self.layout.check_dim(name, dim)?;
        self.check_float(name)?;
        on_cuda!(self, crate::cuda::ops::softmax(self, dim, log));
        let (outer, n, inner) = split_at_dim(self.shape(), dim);
        let work = self.work(name)?;
        let out = with_work!(work, d => {
            let rows = dim_to_last(&d, outer, n, inner);
            let res = rows_map(&rows, n, n, |r, o| {
                if log {
                    let lse = logsumexp_row(r);
                    for (o, &v) in o.iter_mut().zip(r) {
                        *o = v - lse;
                    }
                } else {
                    softmax_row(r, o)
                }
            });
            last_to_dim(&res, outer, n, inner)
        });
        Ok(out.into_tensor(self.shape(), self.dtype()))
    }

    /// The `k` largest entries along the last dimension, in descending order, with their u32 indices.
    ///
    /// Deterministic: equal values come in ascending index order, and the IEEE total order ranks NaN above +∞,
    /// so the result is a pure function of the input. On CUDA one block per row finds the same values (bit for
    /// bit) and indices with a radix select and a bitonic sort; rows longer than `u32::MAX` elements, past the
    /// kernel's 32-bit ids, are ranked on the host.
    pub fn top_k(&self, k: usize) -> Result<(Tensor, Tensor)> {
        if !crate::autograd::tracking(&[self]) {
            return self.top_k_fwd(k);
        }
        let (values, idx) = crate::autograd::no_grad(|| self.top_k_fwd(k))?;
        let values =
            crate::autograd::op("top_k", &[self], || Ok(values), |_| crate::autograd::rules::top_k(self, &idx))?;
        Ok((values, idx))
    }

    fn top_k_fwd(&self, k: usize) -> Result<(Tensor, Tensor)> {
        if self.rank() == 0 {
            return Err(Error::BadShape { op: "top_k", shape: vec![], msg: "need rank >= 1".into() });
        }
        let n = self.shape()[self.rank() - 1];
        if k > n {
            return Err(Error::InvalidArgument { op: "top_k", msg: format!("k = {k} exceeds the last dimension {n}") });
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            // The kernel's ids and counters are 32-bit; a row longer than that (16 GiB of f32) is ranked on the host.
            if n <= u32::MAX as usize {
                return crate::cuda::ops::top_k(self, k);
            }
            let dev = self.device();
            let (v, i) = self.to_device(&crate::Device::Cpu)?.top_k(k)?;
            return Ok((v.to_device(&dev)?, i.to_device(&dev)?));
        }
        fn topk_rows<R: Real>(d: &[R], n: usize, k: usize) -> (Vec<R>, Vec<u32>) {
            let rows = d.len().checked_div(n).unwrap_or(0);
            let mut vals = Vec::with_capacity(rows * k);
            let mut idx = Vec::with_capacity(rows * k);
            let mut pairs: Vec<(usize, R)> = Vec::with_capacity(n);
            for r in 0..rows {
                pairs.clear();
                pairs.extend(d[r * n..(r + 1) * n].iter().copied().enumerate());
                if k > 0 && k < n {
                    pairs.select_nth_unstable_by(k - 1, |a, b| cmp_desc(*a, *b));
                }
                pairs.truncate(k);
                pairs.sort_unstable_by(|a, b| cmp_desc(*a, *b));
                for &(i, v) in &pairs {
                    vals.push(v);
                    idx.push(i as u32);
                }
            }
            (vals, idx)
        }
        let mut shape = self.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = k;
        let (vals, idx) = match self.work("top_k")? {
            Work::F32(d) => {
                let (v, i) = topk_rows(&d, n, k);
                (WorkOut::F32(v), i)
            }
            Work::F64(d) => {
                let (v, i) = topk_rows(&d, n, k);
                (WorkOut::F64(v), i)
            }
        };
        Ok((vals.into_tensor(&shape, self.dtype()), Tensor::from_vec(idx, &shape, &self.device())?))
    }
}
