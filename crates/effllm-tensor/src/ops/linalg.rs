//! Thin SVD and QR through faer.

use faer::{Mat, MatRef};

use crate::cpu::Real;
use crate::tensor::{Work, host_round_trip};
use crate::{DType, Error, Result, Tensor};

fn to_tensor<R: Real>(m: MatRef<'_, R>, dtype: DType) -> Result<Tensor> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            v.push(m[(i, j)]);
        }
    }
    Tensor::from_vec(v, &[r, c], &crate::Device::Cpu)?.to_dtype(dtype)
}

fn check_matrix(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    t.check_float(op)?;
    match *t.shape() {
        [m, n] if m > 0 && n > 0 => Ok((m, n)),
        _ => Err(Error::BadShape { op, shape: t.shape().to_vec(), msg: "expected a non-empty 2-D matrix".into() }),
    }
}

fn check_finite<R: Real>(op: &'static str, d: &[R]) -> Result<()> {
    if d.iter().any(|v| !v.is_finite()) {
        return Err(Error::Linalg { op, msg: "input contains NaN or infinity".into() });
    }
    Ok(())
}

macro_rules! with_mat {
    ($t:expr, $op:expr, $m:expr, $n:expr, |$a:ident| $body:expr) => {
        match $t.work($op)? {
            Work::F32(d) => {
                check_finite($op, &d)?;
                let $a = MatRef::<f32>::from_row_major_slice(&d, $m, $n);
                $body
            }
            Work::F64(d) => {
                check_finite($op, &d)?;
                let $a = MatRef::<f64>::from_row_major_slice(&d, $m, $n);
                $body
            }
        }
    };
}

impl Tensor {
    /// Thin singular value decomposition `A = U diag(S) Vᵀ` of a 2-D `[m, n]` matrix, `r = min(m, n)`:
    /// returns `U` `[m, r]`, `S` `[r]` (non-increasing, non-negative) and `V` `[n, r]`, in `self`'s dtype (f16/bf16
    /// computed in f32). Singular vectors are unique only up to sign (and rotation within repeated values).
    pub fn thin_svd(&self) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "thin_svd";
        crate::autograd::not_differentiable(OP, &[self])?;
        let (m, n) = check_matrix(OP, self)?;
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            let dev = self.device();
            let (u, s, v) = self.to_device(&crate::Device::Cpu)?.thin_svd()?;
            return Ok((u.to_device(&dev)?, s.to_device(&dev)?, v.to_device(&dev)?));
        }
        let dtype = self.dtype();
        crate::threads::install(|| {
            with_mat!(self, OP, m, n, |a| {
                let svd = a.thin_svd().map_err(|e| Error::Linalg { op: OP, msg: format!("{e:?}") })?;
                let s: Vec<_> = (0..m.min(n)).map(|i| svd.S().column_vector()[i]).collect();
                let len = s.len();
                Ok((
                    to_tensor(svd.U(), dtype)?,
                    Tensor::from_vec(s, &[len], &crate::Device::Cpu)?.to_dtype(dtype)?,
                    to_tensor(svd.V(), dtype)?,
                ))
            })
        })
    }

    /// Singular values of a 2-D matrix, non-increasing.
    pub fn singular_values(&self) -> Result<Tensor> {
        const OP: &str = "singular_values";
        crate::autograd::not_differentiable(OP, &[self])?;
        let (m, n) = check_matrix(OP, self)?;
        host_round_trip!(this = self => this.singular_values());
        let dtype = self.dtype();
        crate::threads::install(|| {
            with_mat!(self, OP, m, n, |a| {
                let s = a.singular_values().map_err(|e| Error::Linalg { op: OP, msg: format!("{e:?}") })?;
                let len = s.len();
                Tensor::from_vec(s, &[len], &crate::Device::Cpu)?.to_dtype(dtype)
            })
        })
    }

    /// Thin QR decomposition `A = Q R` of a 2-D `[m, n]` matrix, `r = min(m, n)`: `Q` `[m, r]` with orthonormal
    /// columns and `R` `[r, n]` upper triangular (exact zeros below the diagonal).
    pub fn qr(&self) -> Result<(Tensor, Tensor)> {
        const OP: &str = "qr";
        crate::autograd::not_differentiable(OP, &[self])?;
        let (m, n) = check_matrix(OP, self)?;
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            let dev = self.device();
            let (q, r) = self.to_device(&crate::Device::Cpu)?.qr()?;
            return Ok((q.to_device(&dev)?, r.to_device(&dev)?));
        }
        let dtype = self.dtype();
        crate::threads::install(|| {
            with_mat!(self, OP, m, n, |a| {
                let qr = a.qr();
                let q: Mat<_> = qr.compute_thin_Q();
                let r = qr.thin_R();
                Ok((to_tensor(q.as_ref(), dtype)?, to_tensor(r, dtype)?))
            })
        })
    }
}
