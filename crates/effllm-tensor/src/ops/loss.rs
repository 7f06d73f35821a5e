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
        let flat: Vec<u32> = t.iter().enumerate().map(|(i, &c)| (i * v) as u32 + c).collect();
        if rows.checked_mul(v).is_none_or(|n| n > u32::MAX as usize) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("{rows} x {v} logits exceed u32 indexing") });
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
}
