//! Elementwise unary and binary ops (with numpy broadcasting), activations and `where_cond`.

use crate::cpu::kernels::{PAR_MIN_ELEMS, map};
use crate::cpu::{CpuStorage, Real, sigmoid_portable};
use crate::layout::{Layout, broadcast_shape};
use crate::tensor::{Work, WorkOut, on_cuda, with_work};
use crate::{DType, Error, Result, Tensor};

/// A unary elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `eˣ`
    Exp,
    /// `ln x`
    Ln,
    /// `√x`
    Sqrt,
    /// `x²`
    Sqr,
    /// `1/x`
    Recip,
    /// `tanh x`
    Tanh,
    /// `1 / (1 + e⁻ˣ)`
    Sigmoid,
    /// `sin x`
    Sin,
    /// `cos x`
    Cos,
    /// `max(x, 0)`
    Relu,
    /// `x·σ(x)` (a.k.a. swish)
    Silu,
    /// GELU, tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (GPT-2, `gelu_pytorch_tanh`).
    Gelu,
    /// GELU, exact: `½x(1 + erf(x/√2))`.
    GeluErf,
}

impl UnaryOp {
    /// Applies the function to one value.
    pub fn apply<R: Real>(self, x: R) -> R {
        let half = R::from(0.5).unwrap_or_else(R::zero);
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Ln => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Recip => x.recip(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid_portable(x),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            // NaN propagates (as in PyTorch).
            UnaryOp::Relu => {
                if x > R::zero() || x.is_nan() {
                    x
                } else {
                    R::zero()
                }
            }
            UnaryOp::Silu => x * sigmoid_portable(x),
            UnaryOp::Gelu => {
                // ½x(1 + tanh z) = x·σ(2z): the same function without the cancellation of 1 + tanh z for x ≪ 0.
                let c = (R::from(2.0).unwrap_or_else(R::one) / R::PI()).sqrt();
                let k = R::from(0.044715).unwrap_or_else(R::zero);
                let z = c * (x + k * x * x * x);
                x * sigmoid_portable(z + z)
            }
            // ½x(1 + erf(x/√2)) = ½x·erfc(−x/√2), which stays accurate for x ≪ 0.
            UnaryOp::GeluErf => half * x * (-x * R::FRAC_1_SQRT_2()).erfc(),
        }
    }

    /// The op's name (`"exp"`, `"gelu_erf"`, ...), as used in error messages and by `reference::unary`.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Ln => "ln",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Recip => "recip",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluErf => "gelu_erf",
        }
    }
}

/// A binary elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)` (NaN if either is NaN)
    Maximum,
    /// `min(a, b)` (NaN if either is NaN)
    Minimum,
}

impl BinaryOp {
    /// Applies the function to one pair.
    pub fn apply<R: Real>(self, a: R, b: R) -> R {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum => {
                if a.is_nan() || b.is_nan() {
                    R::nan()
                } else {
                    a.max(b)
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || b.is_nan() {
                    R::nan()
                } else {
                    a.min(b)
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

/// Walks two layouts of the same shape together, calling `f(a_start, a_stride, b_start, b_stride, len)` per
/// innermost run.
pub(crate) fn zip_runs(la: &Layout, lb: &Layout, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let shape = la.shape();
    if shape.contains(&0) {
        return;
    }
    if shape.is_empty() {
        f(la.offset(), 1, lb.offset(), 1, 1);
        return;
    }
    let rank = shape.len();
    let (sa, sb) = (la.strides(), lb.strides());
    let inner = shape[rank - 1];
    let outer = &shape[..rank - 1];
    let mut idx = vec![0usize; outer.len()];
    let (mut pa, mut pb) = (la.offset(), lb.offset());
    loop {
        f(pa, sa[rank - 1], pb, sb[rank - 1], inner);
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            pa += sa[d];
            pb += sb[d];
            if idx[d] < outer[d] {
                break;
            }
            pa -= sa[d] * idx[d];
            pb -= sb[d] * idx[d];
            idx[d] = 0;
        }
    }
}

fn binary_kernel<R: Real>(a: &[R], la: &Layout, b: &[R], lb: &Layout, op: BinaryOp) -> Vec<R> {
    let n = la.elem_count();
    if la.is_contiguous() && lb.is_contiguous() {
        let (a, b) = (&a[la.offset()..la.offset() + n], &b[lb.offset()..lb.offset() + n]);
        if n >= PAR_MIN_ELEMS {
            use rayon::prelude::*;
            return crate::threads::install(|| {
                a.par_iter().zip(b.par_iter()).with_min_len(4096).map(|(&x, &y)| op.apply(x, y)).collect()
            });
        }
        return a.iter().zip(b).map(|(&x, &y)| op.apply(x, y)).collect();
    }
    let mut out = Vec::with_capacity(n);
    zip_runs(la, lb, |pa, sa, pb, sb, len| match (sa, sb) {
        (1, 0) => {
            let y = b[pb];
            out.extend(a[pa..pa + len].iter().map(|&x| op.apply(x, y)));
        }
        (0, 1) => {
            let x = a[pa];
            out.extend(b[pb..pb + len].iter().map(|&y| op.apply(x, y)));
        }
        (1, 1) => out.extend(a[pa..pa + len].iter().zip(&b[pb..pb + len]).map(|(&x, &y)| op.apply(x, y))),
        _ => out.extend((0..len).map(|i| op.apply(a[pa + i * sa], b[pb + i * sb]))),
    });
    out
}

impl Tensor {
    /// Applies a [`UnaryOp`] elementwise (float dtypes).
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        crate::autograd::op(op.name(), &[self], || self.unary_fwd(op), |y| crate::autograd::rules::unary(op, self, y))
    }

    fn unary_fwd(&self, op: UnaryOp) -> Result<Tensor> {
        self.check_float(op.name())?;
        on_cuda!(self, crate::cuda::ops::unary(self, op as i32, 0.0, 0.0));
        let work = self.work(op.name())?;
        Ok(with_work!(work, d => map(&d, |x| op.apply(x))).into_tensor(self.shape(), self.dtype()))
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    /// `|x|`
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// `eˣ`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// `ln x`
    pub fn ln(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Ln)
    }
    /// `√x`
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `x²`
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    /// `1/x`
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    /// `tanh x`
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    /// `σ(x)`
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// `sin x`
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    /// `cos x`
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    /// `max(x, 0)`
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// `x·σ(x)`
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    /// GELU (tanh approximation).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    /// GELU (exact, with erf).
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluErf)
    }

    /// `x·mul + add` elementwise.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        crate::autograd::op("affine", &[self], || self.affine_fwd(mul, add), |_| crate::autograd::rules::affine(mul))
    }

    fn affine_fwd(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.check_float("affine")?;
        on_cuda!(self, crate::cuda::ops::unary(self, 100, mul, add));
        let work = self.work("affine")?;
        Ok(with_work!(work, d => {
            let (m, a) = (like(&d, mul), like(&d, add));
            map(&d, |x| x * m + a)
        })
        .into_tensor(self.shape(), self.dtype()))
    }

    /// `xᵖ` elementwise.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        crate::autograd::op("powf", &[self], || self.powf_fwd(p), |_| crate::autograd::rules::powf(self, p))
    }

    fn powf_fwd(&self, p: f64) -> Result<Tensor> {
        self.check_float("powf")?;
        on_cuda!(self, crate::cuda::ops::unary(self, 101, p, 0.0));
        let work = self.work("powf")?;
        Ok(with_work!(work, d => {
            let p = like(&d, p);
            map(&d, |x| x.powf(p))
        })
        .into_tensor(self.shape(), self.dtype()))
    }

    /// Clamps every element to `[lo, hi]` (NaN stays NaN).
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        crate::autograd::op(
            "clamp",
            &[self],
            || self.clamp_fwd(lo, hi),
            |_| crate::autograd::rules::clamp(self, lo, hi),
        )
    }

    fn clamp_fwd(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo > hi {
            return Err(Error::InvalidArgument { op: "clamp", msg: format!("lower bound {lo} > upper bound {hi}") });
        }
        self.check_float("clamp")?;
        on_cuda!(self, crate::cuda::ops::unary(self, 102, lo, hi));
        let work = self.work("clamp")?;
        Ok(with_work!(work, d => {
            let (lo, hi) = (like(&d, lo), like(&d, hi));
            map(&d, |x| if x.is_nan() { x } else { x.max(lo).min(hi) })
        })
        .into_tensor(self.shape(), self.dtype()))
    }

    /// Applies a [`BinaryOp`] elementwise with numpy broadcasting. Both operands must have the same dtype.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        crate::autograd::op(
            op.name(),
            &[self, rhs],
            || self.binary_fwd(rhs, op),
            |y| crate::autograd::rules::binary(op, self, rhs, y),
        )
    }

    fn binary_fwd(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        self.check_same_dtype(name, rhs)?;
        self.check_float(name)?;
        let shape = broadcast_shape(name, self.shape(), rhs.shape())?;
        let la = self.layout.broadcast_as(&shape)?;
        let lb = rhs.layout.broadcast_as(&shape)?;
        let dtype = self.dtype();
        on_cuda!(self, crate::cuda::ops::binary(self, rhs, &shape, op as i32));
        let out = match (self.cpu_storage(), rhs.cpu_storage()) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => WorkOut::F32(binary_kernel(a, &la, b, &lb, op)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => WorkOut::F64(binary_kernel(a, &la, b, &lb, op)),
            _ => {
                // Half types: widen each operand once (contiguous), then broadcast over the widened buffers.
                let (Work::F32(a), Work::F32(b)) = (self.work(name)?, rhs.work(name)?) else {
                    return Err(Error::UnsupportedDType { op: name, dtype, expected: "a float dtype" });
                };
                let la = Layout::contiguous(self.shape()).broadcast_as(&shape)?;
                let lb = Layout::contiguous(rhs.shape()).broadcast_as(&shape)?;
                WorkOut::F32(binary_kernel(&a, &la, &b, &lb, op))
            }
        };
        Ok(out.into_tensor(&shape, dtype))
    }

    /// `self + rhs` (broadcasting).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    /// `self - rhs` (broadcasting).
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    /// `self · rhs` elementwise (broadcasting).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    /// `self / rhs` elementwise (broadcasting).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    /// Elementwise maximum (broadcasting).
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }
    /// Elementwise minimum (broadcasting).
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    /// `silu(gate) · up`, the SwiGLU gate of Llama-style FFNs; `self` is the gate. Shapes must match.
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        crate::autograd::op("swiglu", &[self, up], || self.swiglu_fwd(up), |_| crate::autograd::rules::swiglu(self, up))
    }

    fn swiglu_fwd(&self, up: &Tensor) -> Result<Tensor> {
        self.check_same_dtype("swiglu", up)?;
        if self.shape() != up.shape() {
            return Err(Error::ShapeMismatch { op: "swiglu", lhs: self.shape().to_vec(), rhs: up.shape().to_vec() });
        }
        self.check_float("swiglu")?;
        on_cuda!(self, crate::cuda::ops::swiglu(self, up));
        let out = match (self.work("swiglu")?, up.work("swiglu")?) {
            (Work::F32(g), Work::F32(u)) => WorkOut::F32(swiglu_kernel(&g, &u)),
            (Work::F64(g), Work::F64(u)) => WorkOut::F64(swiglu_kernel(&g, &u)),
            _ => unreachable!("same dtype gives the same work precision"),
        };
        Ok(out.into_tensor(self.shape(), self.dtype()))
    }

    /// Picks `on_true` where `self` (a u8 mask, non-zero = true) is set and `on_false` elsewhere, broadcasting all
    /// three.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "where_cond",
            &[on_true, on_false],
            || self.where_cond_fwd(on_true, on_false),
            |_| crate::autograd::rules::where_cond(self, on_true.shape(), on_false.shape()),
        )
    }

    fn where_cond_fwd(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        if self.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType { op: "where_cond", dtype: self.dtype(), expected: "a u8 mask" });
        }
        on_true.check_same_dtype("where_cond", on_false)?;
        self.check_same_device("where_cond", on_true)?;
        self.check_same_device("where_cond", on_false)?;
        let shape = broadcast_shape("where_cond", self.shape(), on_true.shape())?;
        let shape = broadcast_shape("where_cond", &shape, on_false.shape())?;
        on_cuda!(self, crate::cuda::ops::where_cond(self, on_true, on_false, &shape));
        let m = self.broadcast_as(&shape)?.to_vec::<u8>()?;
        let t = on_true.broadcast_as(&shape)?.contiguous()?;
        let f = on_false.broadcast_as(&shape)?.contiguous()?;
        use crate::cpu::map_storage_same;
        let fs = f.cpu_storage();
        let storage = map_storage_same!(t.cpu_storage(), tv => {
            let fv = crate::WithDType::storage_slice(fs).expect("same dtype checked");
            tv.iter().zip(fv).zip(&m).map(|((&a, &b), &c)| if c != 0 { a } else { b }).collect()
        });
        Ok(Tensor::from_storage(storage, &shape))
    }
}

fn swiglu_kernel<R: Real>(g: &[R], u: &[R]) -> Vec<R> {
    let mut out = vec![R::zero(); g.len().min(u.len())];
    if out.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        const CHUNK: usize = 4096;
        crate::threads::install(|| {
            out.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| R::swiglu(a, b, o))
        });
    } else {
        R::swiglu(g, u, &mut out);
    }
    out
}

/// `v` converted to the element type of `_d` (lets macro bodies name the kernel precision).
fn like<R: Real>(_d: &[R], v: f64) -> R {
    R::from_f64(v)
}
