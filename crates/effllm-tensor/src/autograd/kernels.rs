//! Elementwise derivative kernels for the non-smooth and erf-based functions (|x|, ReLU, GELU, clamp,
//! maximum/minimum), where a composition of existing ops would be awkward or lose accuracy. CPU kernels here; CUDA
//! tensors run the same expressions as NVRTC kernels (`cuda::kernels::GRAD`): bitwise the CPU's results for |x|,
//! ReLU, clamp and maximum/minimum, within a few ulps (the device's `exp`/`erfc`) for the two GELUs.

use crate::cpu::Real;
use crate::cpu::kernels::PAR_MIN_ELEMS;
use crate::cpu::sigmoid_portable;
use crate::tensor::{Work, WorkOut, on_cuda};
use crate::{Error, Result, Tensor, UnaryOp};

fn zip_map<R: Real>(x: &[R], g: &[R], f: impl Fn(R, R) -> R + Sync) -> Vec<R> {
    if x.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        return crate::threads::install(|| {
            x.par_iter().zip(g.par_iter()).with_min_len(4096).map(|(&a, &b)| f(a, b)).collect()
        });
    }
    x.iter().zip(g).map(|(&a, &b)| f(a, b)).collect()
}

/// `f'(x)` of a unary op at `x`.
fn deriv<R: Real>(op: UnaryOp, x: R) -> R {
    let c = |v: f64| R::from(v).unwrap_or_else(R::nan);
    match op {
        UnaryOp::Abs => {
            if x > R::zero() {
                R::one()
            } else if x < R::zero() {
                -R::one()
            } else {
                x * R::zero()
            }
        }
        UnaryOp::Relu => {
            if x > R::zero() {
                R::one()
            } else {
                x * R::zero()
            }
        }
        UnaryOp::Gelu => {
            // y = x·σ(2z), z = √(2/π)(x + k x³): y' = s + x·s(1 − s)·2√(2/π)(1 + 3k x²) with s = σ(2z).
            let k = c(0.044715);
            let a = (c(2.0) / R::PI()).sqrt();
            let z = a * (x + k * x * x * x);
            let s = sigmoid_portable(z + z);
            s + x * s * (R::one() - s) * c(2.0) * a * (R::one() + c(3.0) * k * x * x)
        }
        UnaryOp::GeluErf => {
            // Φ(x) + x φ(x).
            let phi_cdf = c(0.5) * (-x * R::FRAC_1_SQRT_2()).erfc();
            let pdf = (-(x * x) * c(0.5)).exp() / (c(2.0) * R::PI()).sqrt();
            phi_cdf + x * pdf
        }
        // The other ops' rules are compositions of tensor ops (see `rules::unary`).
        _ => R::nan(),
    }
}

/// `g · f'(x)` elementwise for `op` in {Abs, Relu, Gelu, GeluErf}.
pub(crate) fn unary_grad(op: UnaryOp, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.cuda_storage().is_some() {
        use crate::cuda::ops as k;
        let id = match op {
            UnaryOp::Abs => k::GRAD_ABS,
            UnaryOp::Relu => k::GRAD_RELU,
            UnaryOp::Gelu => k::GRAD_GELU,
            UnaryOp::GeluErf => k::GRAD_GELU_ERF,
            _ => {
                return Err(Error::InvalidArgument { op: "backward", msg: format!("no derivative kernel for {op:?}") });
            }
        };
        check_pair(x, g)?;
        return k::grad_zip(x, g, id, 0.0, 0.0);
    }
    zip_kernel(x, g, |a: f64, b| b * deriv(op, a), |a: f32, b| b * deriv(op, a))
}

/// `g` where `lo ≤ x ≤ hi`, 0 elsewhere (PyTorch's clamp backward, boundaries included).
pub(crate) fn clamp_grad(x: &Tensor, g: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    on_cuda!(x, check_pair(x, g).and_then(|()| crate::cuda::ops::grad_zip(x, g, crate::cuda::ops::GRAD_CLAMP, lo, hi)));
    let (lo32, hi32) = (lo as f32, hi as f32);
    zip_kernel(
        x,
        g,
        move |a: f64, b| if a >= lo && a <= hi { b } else { 0.0 },
        move |a: f32, b| if a >= lo32 && a <= hi32 { b } else { 0.0 },
    )
}

/// The checks of [`zip_kernel`] for the CUDA path: one device, one shape, float dtypes of one work precision.
#[cfg(feature = "cuda")]
fn check_pair(x: &Tensor, g: &Tensor) -> Result<()> {
    const OP: &str = "backward";
    x.check_same_device(OP, g)?;
    if x.shape() != g.shape() {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: g.shape().to_vec() });
    }
    x.check_float(OP)?;
    g.check_float(OP)?;
    if (x.dtype() == crate::DType::F64) != (g.dtype() == crate::DType::F64) {
        return Err(Error::DTypeMismatch { op: OP, lhs: x.dtype(), rhs: g.dtype() });
    }
    Ok(())
}

fn zip_kernel(
    x: &Tensor,
    g: &Tensor,
    f64_fn: impl Fn(f64, f64) -> f64 + Sync,
    f32_fn: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    const OP: &str = "backward";
    if x.shape() != g.shape() {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: g.shape().to_vec() });
    }
    let out = match (x.work(OP)?, g.work(OP)?) {
        (Work::F32(a), Work::F32(b)) => WorkOut::F32(zip_map(&a, &b, f32_fn)),
        (Work::F64(a), Work::F64(b)) => WorkOut::F64(zip_map(&a, &b, f64_fn)),
        _ => return Err(Error::DTypeMismatch { op: OP, lhs: x.dtype(), rhs: g.dtype() }),
    };
    Ok(out.into_tensor(x.shape(), x.dtype()))
}

/// The share of the gradient of `maximum(a, b)` (or `minimum`) that goes to `a`, over the broadcast shape: 1 where
/// `a` wins, 0 where `b` wins, ½ on ties (PyTorch's rule).
pub(crate) fn extremum_weight(a: &Tensor, b: &Tensor, shape: &[usize], max: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if a.cuda_storage().is_some() {
        use crate::cuda::ops as k;
        let (a, b) = (a.broadcast_as(shape)?, b.broadcast_as(shape)?);
        check_pair(&a, &b)?;
        return k::grad_zip(&a, &b, if max { k::GRAD_MAX_WEIGHT } else { k::GRAD_MIN_WEIGHT }, 0.0, 0.0);
    }
    let a = a.broadcast_as(shape)?.contiguous()?;
    let b = b.broadcast_as(shape)?.contiguous()?;
    fn w<R: Real>(x: R, y: R, max: bool) -> R {
        let wins = if max { x > y } else { x < y };
        if wins {
            R::one()
        } else if x == y {
            R::from(0.5).unwrap_or_else(R::nan)
        } else {
            R::zero()
        }
    }
    zip_kernel(&a, &b, move |x: f64, y| w(x, y, max), move |x: f32, y| w(x, y, max))
}
