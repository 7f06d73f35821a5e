//! Losses.

use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Mean cross-entropy of `self` = logits `[.., V]` against u32 `targets` of shape `self.shape()[..-1]`:
    /// `(1/N) Σᵢ (logsumexp(xᵢ) − xᵢ[tᵢ])` over the `N` rows, a scalar (rank-0) tensor.
    ///
    /// Fused for training: the log-sum-exp is computed stably around each row's maximum, and the backward is the
    /// closed form `(softmax(xᵢ) − onehot(tᵢ)) / N` without materialising log-probabilities.
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        self.check_float(OP)?;
        targets.check_index_dtype(OP)?;
        self.check_same_device(OP, targets)?;
        let Some((&v, lead)) = self.shape().split_last() else {
            return Err(Error::BadShape { op: OP, shape: vec![], msg: "logits need rank >= 1".into() });
        };
        if targets.shape() != lead {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: targets.shape().to_vec() });
        }
        let rows: usize = lead.iter().product();
        if rows == 0 || v == 0 {
            return Err(Error::BadShape { op: OP, shape: self.shape().to_vec(), msg: "no rows or no classes".into() });
        }
        let t = targets.to_vec::<u32>()?;
        if let Some(&bad) = t.iter().find(|&&i| i as usize >= v) {
            return Err(Error::IndexOutOfBounds { op: OP, index: bad as usize, size: v });
        }
        if self.device().is_cpu() && self.dtype() == DType::F32 {
            return self.cross_entropy_cpu_f32(t, rows, v);
        }
        // The other paths pick the target logits by flat u32 index.
        if rows.checked_mul(v).is_none_or(|n| n > u32::MAX as usize) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("{rows} x {v} logits exceed u32 indexing") });
        }
        let flat: Vec<u32> = t.iter().enumerate().map(|(i, &c)| (i * v) as u32 + c).collect();
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() && self.dtype() == DType::F32 {
            return self.cross_entropy_cuda_f32(&t, &flat, rows, v);
        }
        let ids = Tensor::from_vec(flat, &[rows], &crate::Device::Cpu)?.to_device(&self.device())?;
        crate::autograd::op(
            OP,
            &[self],
            || {
                let x = self.reshape(&[rows, v])?;
                let lse = x.logsumexp(1, false)?;
                let picked = x.reshape(&[rows * v])?.index_select(0, &ids)?;
                // Accumulated in f64 on the CPU (`mean`), so long sequences do not lose the small terms.
                let wide = if self.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
                lse.to_dtype(wide)?.sub(&picked.to_dtype(wide)?)?.mean(0, false)?.to_dtype(self.dtype())
            },
            |_| crate::autograd::rules::cross_entropy(self, &ids, rows),
        )
    }

    /// The CPU f32 path: one pass per row for the log-sum-exp (kept for the backward), one fused pass per row
    /// for `(exp(x − lse) − onehot) · g / N` — instead of the composed ops' several full-size temporaries, which
    /// dominate a training step when the vocabulary is large (`[1024, 49152]` logits are 200 MB).
    fn cross_entropy_cpu_f32(&self, targets: Vec<u32>, rows: usize, v: usize) -> Result<Tensor> {
        use rayon::prelude::*;
        let x = self.data::<f32>("cross_entropy")?;
        let lse: Vec<f32> = crate::threads::install(|| {
            x.par_chunks(v)
                .map(|r| {
                    let m = crate::cpu::vexp::row_max(r);
                    if m == f32::NEG_INFINITY {
                        return m;
                    }
                    m + crate::cpu::vexp::sum_exp(r, m).ln() as f32
                })
                .collect()
        });
        // Accumulated in f64, as the composed path's `mean` does.
        let total: f64 = lse
            .iter()
            .zip(&targets)
            .enumerate()
            .map(|(i, (&l, &c))| f64::from(l) - f64::from(x[i * v + c as usize]))
            .sum();
        let loss = Tensor::from_vec(vec![(total / rows as f64) as f32], &[], &crate::Device::Cpu)?;
        let shape = self.shape().to_vec();
        crate::autograd::op(
            "cross_entropy",
            &[self],
            || Ok(loss),
            |_| {
                let x = self.detach();
                crate::autograd::rules::rule_pub(move |g, _| {
                    let scale = g.to_dtype(DType::F32)?.to_vec::<f32>()?.first().copied().unwrap_or(0.0) / rows as f32;
                    let xd = x.data::<f32>("cross_entropy")?;
                    let mut out = vec![0f32; rows * v];
                    crate::threads::install(|| {
                        out.par_chunks_mut(v).zip(xd.par_chunks(v)).enumerate().for_each(|(i, (o, r))| {
                            crate::cpu::vexp::exp_scaled(o, r, lse[i], scale);
                            o[targets[i] as usize] -= scale;
                        })
                    });
                    Ok(vec![Some(Tensor::from_vec(out, &shape, &crate::Device::Cpu)?)])
                })
            },
        )
    }

    /// The CUDA f32 path: a log-sum-exp kernel (kept for the backward), the picked logits by `index_select`, and
    /// the closed-form gradient in one kernel — no host round trip of the `[rows, V]` gradient.
    #[cfg(feature = "cuda")]
    fn cross_entropy_cuda_f32(&self, targets: &[u32], flat: &[u32], rows: usize, v: usize) -> Result<Tensor> {
        let dev = self.device();
        let x = self.detach().reshape(&[rows, v])?.contiguous()?;
        let lse = crate::cuda::ops::ce_lse(&x, rows, v)?;
        let ids = Tensor::from_slice(flat, &[rows], &crate::Device::Cpu)?.to_device(&dev)?;
        let picked = x.reshape(&[rows * v])?.index_select(0, &ids)?;
        let loss = lse.sub(&picked)?.mean(0, false)?;
        let t = Tensor::from_slice(targets, &[rows], &crate::Device::Cpu)?.to_device(&dev)?;
        let shape = self.shape().to_vec();
        crate::autograd::op(
            "cross_entropy",
            &[self],
            || Ok(loss),
            |_| {
                crate::autograd::rules::rule_pub(move |g, _| {
                    let d = crate::cuda::ops::ce_grad(&x, &lse, &t, g, rows, v)?;
                    Ok(vec![Some(d.reshape(&shape)?)])
                })
            },
        )
    }
}
