//! # effllm-optim
//!
//! Optimizers for training models written in `effllm-tensor` ops, with PyTorch's semantics so that recipes and
//! hyperparameters carry over:
//!
//! - [`AdamW`]: `torch.optim.AdamW` (decoupled weight decay applied to the parameter before the moment update, bias
//!   correction, `ε` added after the bias-corrected square root, optional AMSGrad).
//! - [`Sgd`]: `torch.optim.SGD` (weight decay added to the gradient, momentum with dampening, Nesterov; the first
//!   step copies the gradient into the momentum buffer).
//!
//! Both implement one [`Optimizer`] trait that updates **one parameter at a time** ([`Optimizer::step_param`]),
//! so it can be driven from the gradient-ready callback of
//! [`Gradients::accumulate_with`](effllm_tensor::Gradients::accumulate_with) (GaLore's layer-wise mode), or over a
//! whole parameter set ([`Optimizer::step`]). State is kept per parameter [`TensorId`] in f32 on the parameter's
//! device; the math is written in tensor ops, so it runs on CUDA too. Parameters of other dtypes (bf16) are
//! updated in f32 and rounded once.
//!
//! [`schedule`] has the warmup + cosine learning-rate schedule and [`clip`] global-norm gradient clipping
//! (`torch.nn.utils.clip_grad_norm_`). [`reference`](mod@reference) holds naive f64 versions of all of it, the oracle of the tests.
//!
//! ```
//! use effllm_optim::{AdamW, AdamWConfig, Optimizer};
//! use effllm_tensor::{Device, Tensor};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut w = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], &[3], &Device::Cpu)?.requires_grad();
//! let mut opt = AdamW::new(AdamWConfig { lr: 0.1, ..AdamWConfig::default() })?;
//! for _ in 0..3 {
//!     let grads = w.sqr()?.sum_all()?.backward()?; // minimise Σ w²
//!     opt.step(std::slice::from_mut(&mut w), &grads)?;
//! }
//! let v = w.to_vec::<f32>()?;
//! assert!(v[0] < 1.0 && v[1] > -2.0 && v[2] < 3.0);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod adamw;
pub mod clip;
pub mod reference;
pub mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use effllm_tensor::{Gradients, Tensor, TensorId};

/// Everything that can go wrong in `effllm-optim`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum OptimError {
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
    /// A hyperparameter outside its domain.
    #[error("{optimizer}: invalid {name} = {value}: {expected}")]
    InvalidHyperparameter {
        /// The optimizer or function.
        optimizer: &'static str,
        /// The hyperparameter.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The domain, in words.
        expected: &'static str,
    },
    /// A parameter that is not a requires-grad leaf: the optimizer keys its state by the leaf's id.
    #[error("{optimizer}: the parameter is not a requires-grad leaf (call `Tensor::requires_grad` on it)")]
    NotAParameter {
        /// The optimizer.
        optimizer: &'static str,
    },
    /// The gradient does not match the parameter's shape or device.
    #[error("{optimizer}: gradient of shape {grad:?} for parameter {id} of shape {param:?}")]
    GradientMismatch {
        /// The optimizer.
        optimizer: &'static str,
        /// The parameter.
        id: TensorId,
        /// Its shape.
        param: Vec<usize>,
        /// The gradient's shape.
        grad: Vec<usize>,
    },
    /// Optimizer state that cannot be imported (missing entries, wrong shapes, another algorithm).
    #[error("{optimizer}: bad optimizer state: {msg}")]
    BadState {
        /// The optimizer.
        optimizer: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The global gradient norm is NaN or infinite (clipping cannot fix it).
    #[error("the global gradient norm is {0}")]
    NonFiniteNorm(f64),
}

/// `Result` with [`OptimError`].
pub type Result<T> = std::result::Result<T, OptimError>;

/// An optimizer that updates parameters one at a time.
pub trait Optimizer {
    /// Updates `param` (a requires-grad leaf; its id and graph identity are kept) from `grad`.
    fn step_param(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<()>;

    /// [`Optimizer::step_param`] with `grad · grad_scale` (global-norm clipping's factor, applied per parameter).
    /// The default scales a copy of the gradient first; an optimizer with a fused update applies the factor inside
    /// it instead (AdamW on CUDA), which saves a kernel and a gradient-sized temporary per parameter.
    fn step_param_scaled(&mut self, param: &mut Tensor, grad: &Tensor, grad_scale: f64) -> Result<()> {
        if grad_scale == 1.0 {
            return self.step_param(param, grad);
        }
        let scaled = effllm_tensor::no_grad(|| grad.affine(grad_scale, 0.0))?;
        self.step_param(param, &scaled)
    }

    /// Updates every parameter of `params` that has a gradient in `grads` (parameters without one are left alone,
    /// as PyTorch skips parameters whose `.grad` is `None`).
    fn step(&mut self, params: &mut [Tensor], grads: &Gradients) -> Result<()> {
        for p in params.iter_mut() {
            if let Some(g) = grads.get(p) {
                let g = g.clone();
                self.step_param(p, &g)?;
            }
        }
        Ok(())
    }

    /// The learning rate used by the next step.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate (a schedule calls this before each step).
    fn set_learning_rate(&mut self, lr: f64);

    /// Bytes of optimizer state held (moments, momentum buffers), for memory accounting.
    fn state_bytes(&self) -> usize;

    /// Drops the state of parameter `id` (e.g. after the parameter was replaced); returns whether it had any.
    fn forget(&mut self, id: TensorId) -> bool;

    /// A short name of the algorithm (`"AdamW"`, `"SGD"`, ...), stored in checkpoints so that resuming with
    /// another optimizer is an error instead of a silent restart of its state.
    fn name(&self) -> &'static str;

    /// The state of parameter `id` (a copy) for a checkpoint, or `None` if the parameter has none yet.
    fn export_state(&self, id: TensorId) -> Option<ParamState>;

    /// Installs `state` (from [`export_state`](Optimizer::export_state), possibly of another process) as the state
    /// of `param`, after checking that it is complete and that its tensors fit the parameter: a checkpoint of
    /// another shape, or with a moment missing, is [`OptimError::BadState`].
    fn import_state(&mut self, param: &Tensor, state: ParamState) -> Result<()>;
}

/// One parameter's optimizer state as named tensors and scalars (for checkpoints): e.g. AdamW's
/// `{"exp_avg", "exp_avg_sq"}` tensors and `{"step"}` scalar. Tensors keep the dtype and shape the optimizer
/// stores them in (GaLore's moments are low-rank).
#[derive(Clone, Debug, Default)]
pub struct ParamState {
    /// State tensors by name.
    pub tensors: std::collections::BTreeMap<String, Tensor>,
    /// State scalars by name (step counters, flags as 0/1).
    pub scalars: std::collections::BTreeMap<String, f64>,
}

impl ParamState {
    /// The tensor `name`, or [`OptimError::BadState`] naming it.
    pub fn tensor(&self, optimizer: &'static str, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| OptimError::BadState { optimizer, msg: format!("missing tensor `{name}`") })
    }

    /// The scalar `name`, or [`OptimError::BadState`] naming it.
    pub fn scalar(&self, optimizer: &'static str, name: &str) -> Result<f64> {
        self.scalars
            .get(name)
            .copied()
            .ok_or_else(|| OptimError::BadState { optimizer, msg: format!("missing scalar `{name}`") })
    }

    /// The tensor `name` as an f32 tensor of `shape` on `device`, or [`OptimError::BadState`].
    pub fn tensor_like(
        &self,
        optimizer: &'static str,
        name: &str,
        shape: &[usize],
        device: &effllm_tensor::Device,
    ) -> Result<Tensor> {
        let t = self.tensor(optimizer, name)?;
        if t.shape() != shape {
            return Err(OptimError::BadState {
                optimizer,
                msg: format!("tensor `{name}` has shape {:?}, the parameter needs {shape:?}", t.shape()),
            });
        }
        Ok(t.detach().to_dtype(effllm_tensor::DType::F32)?.to_device(device)?.contiguous()?)
    }
}

fn check(optimizer: &'static str, name: &'static str, value: f64, ok: bool, expected: &'static str) -> Result<()> {
    if ok { Ok(()) } else { Err(OptimError::InvalidHyperparameter { optimizer, name, value, expected }) }
}

/// The parameter's id and f32 views of parameter and gradient, after the checks every optimizer makes.
fn prepare(optimizer: &'static str, param: &Tensor, grad: &Tensor) -> Result<(TensorId, Tensor, Tensor)> {
    let id = param_id(optimizer, param)?;
    if grad.shape() != param.shape() {
        return Err(OptimError::GradientMismatch {
            optimizer,
            id,
            param: param.shape().to_vec(),
            grad: grad.shape().to_vec(),
        });
    }
    let f32 = effllm_tensor::DType::F32;
    let p = param.detach().to_dtype(f32)?;
    let g = grad.detach().to_dtype(f32)?.to_device(&param.device())?;
    Ok((id, p, g))
}

/// Writes the f32 result `p` back into `param` in the parameter's dtype.
fn write_back(param: &mut Tensor, p: &Tensor) -> Result<()> {
    let p = p.to_dtype(param.dtype())?.contiguous()?;
    param.replace_data(&p)?;
    Ok(())
}

/// The parameter's id if it is a requires-grad leaf.
fn param_id(optimizer: &'static str, param: &Tensor) -> Result<TensorId> {
    match param.id() {
        Some(id) if param.is_leaf() => Ok(id),
        _ => Err(OptimError::NotAParameter { optimizer }),
    }
}

/// A step counter read back from a checkpoint: a non-negative integer.
fn step_scalar(optimizer: &'static str, state: &ParamState) -> Result<u64> {
    let s = state.scalar(optimizer, "step")?;
    if !(s >= 0.0 && s.fract() == 0.0 && s < 2f64.powi(53)) {
        return Err(OptimError::BadState { optimizer, msg: format!("step = {s} is not a non-negative integer") });
    }
    Ok(s as u64)
}

fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}
