//! Inner optimizers: what runs on the (low-rank) gradient between projection and back-projection.

use effllm_optim::{OptimError, ParamState, SgdConfig};
use effllm_tensor::{Device, Tensor};

use crate::{GaLoreError, Result};

/// Where decoupled weight decay is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecayMode {
    /// galore-torch / HF `transformers.AdamW`: after the update, on the updated weight, with the plain learning
    /// rate: `p ← p − η_t N′; p ← p − ηλ p`.
    #[default]
    HfAfterUpdate,
    /// `torch.optim.AdamW`: before the update: `p ← p (1 − ηλ); p ← p − η_t N′`.
    TorchBeforeUpdate,
}

/// Where `ε` enters Adam's denominator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EpsMode {
    /// galore-torch / HF: `N = m / (√v + ε)` with both bias corrections folded into the step size
    /// `η_t = η √(1 − β₂ᵗ) / (1 − β₁ᵗ)`.
    #[default]
    Hf,
    /// `torch.optim.AdamW`: `N = m / (√v / √(1 − β₂ᵗ) + ε)`, `η_t = η / (1 − β₁ᵗ)`.
    Torch,
}

/// How the wrapper applies an inner optimizer's weight decay (always in the full parameter space).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightDecay {
    /// No decay.
    None,
    /// L2 decay added to the full gradient before projection: `G ← G + λ p` (SGD).
    CoupledL2(f64),
    /// Decoupled, before the update: `p ← p (1 − ηλ)`.
    DecoupledBefore(f64),
    /// Decoupled, after the update: `p ← p − ηλ p`.
    DecoupledAfter(f64),
}

/// An optimizer that runs on the projected gradient `R` and returns an update direction in the same (low-rank)
/// shape. The [`GaLore`](crate::GaLore) wrapper projects, calls [`direction`](Self::direction), back-projects,
/// scales by `α`, applies `p ← p − η_t · α · back(N)` and the weight decay ([`weight_decay`](Self::weight_decay)) in
/// the full space. Parameters without GaLore settings skip the projection and get exactly this optimizer.
pub trait InnerOptimizer: std::fmt::Debug {
    /// Per-parameter state (moments), in `R`'s shape.
    type State: std::fmt::Debug + Clone;

    /// The algorithm's name (`"AdamW"`, `"AdamW8bit"`, `"SGD"`).
    fn name(&self) -> &'static str;

    /// The name of GaLore around it (`"GaLore-AdamW"`, ...), stored in checkpoints.
    fn galore_name(&self) -> &'static str;

    /// The learning rate `η`.
    fn learning_rate(&self) -> f64;

    /// Sets `η`.
    fn set_learning_rate(&mut self, lr: f64);

    /// The weight decay and where the wrapper applies it.
    fn weight_decay(&self) -> WeightDecay;

    /// Fresh state for a gradient of `shape` on `device`.
    fn init_state(&self, shape: &[usize], device: &Device) -> Result<Self::State>;

    /// Updates `state` with the f32 gradient `grad` at step `t` (1 for the first update) and returns the direction
    /// `N` (`grad`'s shape) and the step size `η_t`: the wrapper subtracts `η_t · N` (after back-projection).
    fn direction(&self, state: &mut Self::State, grad: &Tensor, t: u64) -> Result<(Tensor, f64)>;

    /// Replaces the first moment `M` (momentum buffer) by `f(M)`, leaving the rest as it is (moment re-projection
    /// after a basis change). `f` may change the shape only when the basis changes shape, which it never does.
    fn map_first_moment(&self, state: &mut Self::State, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()>;

    /// The first moment as an f32 tensor (`None` if the algorithm keeps none yet).
    fn first_moment(&self, state: &Self::State) -> Result<Option<Tensor>>;

    /// Bytes held by `state`.
    fn state_bytes(&self, state: &Self::State) -> usize;

    /// Writes `state` into a checkpoint entry.
    fn export_state(&self, state: &Self::State, out: &mut ParamState);

    /// Reads a state for a gradient of `shape` on `device` back from a checkpoint entry.
    fn import_state(&self, state: &ParamState, shape: &[usize], device: &Device) -> Result<Self::State>;
}

pub(crate) fn check(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(GaLoreError::Optim(OptimError::InvalidHyperparameter { optimizer, name, value, expected }))
    }
}

pub(crate) fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Hyperparameters of [`Adam`] (and of [`Adam8bit`](crate::Adam8bit)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate `η`.
    pub lr: f64,
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay `λ`.
    pub weight_decay: f64,
    /// Bias correction (galore-torch's `correct_bias`; off = BERT's Adam).
    pub correct_bias: bool,
    /// Where the decay is applied.
    pub decay: DecayMode,
    /// Where `ε` is added.
    pub eps_mode: EpsMode,
}

impl Default for AdamConfig {
    /// galore-torch's `GaLoreAdamW` defaults: η 1e-3, β (0.9, 0.999), ε 1e-6, λ 0, bias correction, HF decay and ε.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            correct_bias: true,
            decay: DecayMode::HfAfterUpdate,
            eps_mode: EpsMode::Hf,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults and semantics: η 1e-3, β (0.9, 0.999), ε 1e-8, λ 1e-2, decay before the
    /// update, ε after the bias-corrected square root.
    pub fn torch() -> AdamConfig {
        AdamConfig {
            eps: 1e-8,
            weight_decay: 1e-2,
            decay: DecayMode::TorchBeforeUpdate,
            eps_mode: EpsMode::Torch,
            ..Self::default()
        }
    }

    /// galore-torch's `GaLoreAdamW8bit` defaults: ε 1e-8, λ 1e-2, otherwise as [`Default`].
    pub fn galore_8bit() -> AdamConfig {
        AdamConfig { eps: 1e-8, weight_decay: 1e-2, ..Self::default() }
    }

    pub(crate) fn validate(&self, optimizer: &'static str) -> Result<()> {
        let c = self;
        check(optimizer, "lr", c.lr, c.lr >= 0.0 && c.lr.is_finite(), "a finite value >= 0")?;
        check(optimizer, "beta1", c.beta1, (0.0..1.0).contains(&c.beta1), "in [0, 1)")?;
        check(optimizer, "beta2", c.beta2, (0.0..1.0).contains(&c.beta2), "in [0, 1)")?;
        check(optimizer, "eps", c.eps, c.eps >= 0.0 && c.eps.is_finite(), "a finite value >= 0")?;
        let wd = c.weight_decay;
        check(optimizer, "weight_decay", wd, wd >= 0.0 && wd.is_finite(), "a finite value >= 0")
    }

    pub(crate) fn decay(&self) -> WeightDecay {
        let wd = self.weight_decay;
        if wd == 0.0 {
            return WeightDecay::None;
        }
        match self.decay {
            DecayMode::HfAfterUpdate => WeightDecay::DecoupledAfter(wd),
            DecayMode::TorchBeforeUpdate => WeightDecay::DecoupledBefore(wd),
        }
    }

    /// `(1 − β₁ᵗ, √(1 − β₂ᵗ))`, or ones without bias correction.
    pub(crate) fn corrections(&self, t: u64) -> (f64, f64) {
        if self.correct_bias {
            let t = t.min(i32::MAX as u64) as i32;
            (1.0 - self.beta1.powi(t), (1.0 - self.beta2.powi(t)).sqrt())
        } else {
            (1.0, 1.0)
        }
    }

    /// `(N, η_t)` from updated moments, with this config's ε placement.
    pub(crate) fn normalized(&self, m: &Tensor, v: &Tensor, t: u64) -> Result<(Tensor, f64)> {
        let (bc1, bc2_sqrt) = self.corrections(t);
        Ok(match self.eps_mode {
            EpsMode::Hf => (m.div(&v.sqrt()?.affine(1.0, self.eps)?)?, self.lr * bc2_sqrt / bc1),
            EpsMode::Torch => (m.div(&v.sqrt()?.affine(1.0 / bc2_sqrt, self.eps)?)?, self.lr / bc1),
        })
    }

    /// The moment updates `(m, v)` with this config's arithmetic (HF: `β m + (1 − β) g`; torch: `m + (1 − β)(g − m)`).
    pub(crate) fn moments(&self, m: &Tensor, v: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b1, b2) = (self.beta1, self.beta2);
        let m = match self.eps_mode {
            EpsMode::Hf => m.affine(b1, 0.0)?.add(&g.affine(1.0 - b1, 0.0)?)?,
            EpsMode::Torch => m.add(&g.sub(m)?.affine(1.0 - b1, 0.0)?)?,
        };
        let v = v.affine(b2, 0.0)?.add(&g.mul(g)?.affine(1.0 - b2, 0.0)?)?;
        Ok((m, v))
    }
}

/// Adam's two moments in f32.
#[derive(Clone, Debug)]
pub struct AdamState {
    /// First moment `M`.
    pub exp_avg: Tensor,
    /// Second moment `V`.
    pub exp_avg_sq: Tensor,
}

/// Adam with decoupled weight decay: galore-torch's `GaLoreAdamW` (= HF `transformers.AdamW`) by default,
/// `torch.optim.AdamW` with [`AdamConfig::torch`]. Per step with gradient `g`:
///
/// ```text
/// M ← β₁ M + (1 − β₁) g          V ← β₂ V + (1 − β₂) g²
/// HF:    N = M / (√V + ε),               η_t = η √(1 − β₂ᵗ) / (1 − β₁ᵗ)
/// torch: N = M / (√V / √(1 − β₂ᵗ) + ε),  η_t = η / (1 − β₁ᵗ)
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    cfg: AdamConfig,
}

impl Adam {
    /// An optimizer with `cfg` after checking its domain (`η ≥ 0`, `0 ≤ β < 1`, `ε ≥ 0`, `λ ≥ 0`).
    pub fn new(cfg: AdamConfig) -> Result<Adam> {
        cfg.validate("AdamW")?;
        Ok(Adam { cfg })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }
}

impl InnerOptimizer for Adam {
    type State = AdamState;

    fn name(&self) -> &'static str {
        "AdamW"
    }

    fn galore_name(&self) -> &'static str {
        "GaLore-AdamW"
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn weight_decay(&self) -> WeightDecay {
        self.cfg.decay()
    }

    fn init_state(&self, shape: &[usize], device: &Device) -> Result<AdamState> {
        let z = Tensor::zeros(shape, effllm_tensor::DType::F32, device)?;
        Ok(AdamState { exp_avg: z.clone(), exp_avg_sq: z })
    }

    fn direction(&self, state: &mut AdamState, grad: &Tensor, t: u64) -> Result<(Tensor, f64)> {
        #[cfg(feature = "cuda")]
        if let Some(out) = cuda_adam::direction(&self.cfg, state, grad, t)? {
            return Ok(out);
        }
        let (m, v) = self.cfg.moments(&state.exp_avg, &state.exp_avg_sq, grad)?;
        state.exp_avg = m;
        state.exp_avg_sq = v;
        self.cfg.normalized(&state.exp_avg, &state.exp_avg_sq, t)
    }

    fn map_first_moment(&self, state: &mut AdamState, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        state.exp_avg = f(&state.exp_avg)?.contiguous()?;
        Ok(())
    }

    fn first_moment(&self, state: &AdamState) -> Result<Option<Tensor>> {
        Ok(Some(state.exp_avg.clone()))
    }

    fn state_bytes(&self, state: &AdamState) -> usize {
        bytes(&state.exp_avg) + bytes(&state.exp_avg_sq)
    }

    fn export_state(&self, state: &AdamState, out: &mut ParamState) {
        out.tensors.insert("exp_avg".into(), state.exp_avg.clone());
        out.tensors.insert("exp_avg_sq".into(), state.exp_avg_sq.clone());
    }

    fn import_state(&self, state: &ParamState, shape: &[usize], device: &Device) -> Result<AdamState> {
        const O: &str = "GaLore-AdamW";
        Ok(AdamState {
            exp_avg: state.tensor_like(O, "exp_avg", shape, device)?,
            exp_avg_sq: state.tensor_like(O, "exp_avg_sq", shape, device)?,
        })
    }
}

/// SGD's momentum buffer (`None` until the first step with momentum, or always without momentum).
#[derive(Clone, Debug)]
pub struct SgdState {
    /// The momentum buffer `b`.
    pub momentum_buffer: Option<Tensor>,
}

/// `torch.optim.SGD` (effllm-optim's [`SgdConfig`]): L2 decay added to the full gradient before projection,
/// momentum `b ← μ b + (1 − τ) g` (the first step copies `g`), Nesterov `g + μ b`. GaLore around SGD is linear, so
/// with a full-rank orthogonal basis it is exactly SGD.
#[derive(Clone, Debug)]
pub struct Sgd {
    cfg: SgdConfig,
}

impl Sgd {
    /// An optimizer with `cfg` after PyTorch's checks (and finiteness).
    pub fn new(cfg: SgdConfig) -> Result<Sgd> {
        effllm_optim::Sgd::new(cfg)?;
        Ok(Sgd { cfg })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl InnerOptimizer for Sgd {
    type State = SgdState;

    fn name(&self) -> &'static str {
        "SGD"
    }

    fn galore_name(&self) -> &'static str {
        "GaLore-SGD"
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn weight_decay(&self) -> WeightDecay {
        if self.cfg.weight_decay == 0.0 { WeightDecay::None } else { WeightDecay::CoupledL2(self.cfg.weight_decay) }
    }

    fn init_state(&self, _shape: &[usize], _device: &Device) -> Result<SgdState> {
        Ok(SgdState { momentum_buffer: None })
    }

    fn direction(&self, state: &mut SgdState, grad: &Tensor, _t: u64) -> Result<(Tensor, f64)> {
        let c = self.cfg;
        if c.momentum == 0.0 {
            return Ok((grad.clone(), c.lr));
        }
        let buf = match state.momentum_buffer.take() {
            None => grad.contiguous()?,
            Some(b) => b.affine(c.momentum, 0.0)?.add(&grad.affine(1.0 - c.dampening, 0.0)?)?,
        };
        let step = if c.nesterov { grad.add(&buf.affine(c.momentum, 0.0)?)? } else { buf.clone() };
        state.momentum_buffer = Some(buf);
        Ok((step, c.lr))
    }

    fn map_first_moment(&self, state: &mut SgdState, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        if let Some(b) = &state.momentum_buffer {
            state.momentum_buffer = Some(f(b)?.contiguous()?);
        }
        Ok(())
    }

    fn first_moment(&self, state: &SgdState) -> Result<Option<Tensor>> {
        Ok(state.momentum_buffer.clone())
    }

    fn state_bytes(&self, state: &SgdState) -> usize {
        state.momentum_buffer.as_ref().map_or(0, bytes)
    }

    fn export_state(&self, state: &SgdState, out: &mut ParamState) {
        if let Some(b) = &state.momentum_buffer {
            out.tensors.insert("momentum_buffer".into(), b.clone());
        }
    }

    fn import_state(&self, state: &ParamState, shape: &[usize], device: &Device) -> Result<SgdState> {
        let momentum_buffer = match state.tensors.contains_key("momentum_buffer") {
            true => Some(state.tensor_like("GaLore-SGD", "momentum_buffer", shape, device)?),
            false => None,
        };
        Ok(SgdState { momentum_buffer })
    }
}

/// The Adam direction on CUDA in one kernel (moments and `N`), instead of about ten elementwise launches and
/// temporaries per parameter: same formulas and f32 operation order as [`AdamConfig::moments`] and
/// [`AdamConfig::normalized`] (agreement to rounding is tested in `tests/cuda.rs`).
#[cfg(feature = "cuda")]
mod cuda_adam {
    use effllm_tensor::cuda::{Arg, CustomKernel, LaunchDims, Param};
    use effllm_tensor::{DType, Device, Tensor};

    use super::{AdamConfig, AdamState, EpsMode};
    use crate::Result;

    const SOURCE: &str = r#"
extern "C" __global__ void galore_adam_direction(const float* g, const float* m, const float* v, float* m_out,
        float* v_out, float* n_out, unsigned long long n, int hf, float b1, float one_m_b1, float b2, float one_m_b2,
        float inv_bc2_sqrt, float eps) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
            i += (unsigned long long)gridDim.x * blockDim.x) {
        float gi = g[i], mp = m[i];
        float mi = hf ? mp * b1 + gi * one_m_b1 : mp + (gi - mp) * one_m_b1;
        float vi = v[i] * b2 + (gi * gi) * one_m_b2;
        m_out[i] = mi;
        v_out[i] = vi;
        n_out[i] = hf ? mi / (sqrtf(vi) + eps) : mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    }
}
"#;

    /// Built once per process (the source is compiled once per device by the kernel cache).
    static KERNEL: std::sync::LazyLock<CustomKernel> = std::sync::LazyLock::new(|| {
        CustomKernel::new(
            "galore::adam_direction_v1",
            SOURCE,
            "galore_adam_direction",
            &[
                Param::In(DType::F32),
                Param::In(DType::F32),
                Param::In(DType::F32),
                Param::Out(DType::F32),
                Param::Out(DType::F32),
                Param::Out(DType::F32),
                Param::U64,
                Param::I32,
                Param::F32,
                Param::F32,
                Param::F32,
                Param::F32,
                Param::F32,
                Param::F32,
            ],
        )
    });

    /// `None` unless the gradient and both moments are f32 on one CUDA device (the composed ops handle the rest).
    pub(super) fn direction(
        cfg: &AdamConfig,
        state: &mut AdamState,
        grad: &Tensor,
        t: u64,
    ) -> Result<Option<(Tensor, f64)>> {
        let dev = grad.device();
        let all = [grad, &state.exp_avg, &state.exp_avg_sq];
        if !matches!(dev, Device::Cuda(_))
            || all.iter().any(|x| x.dtype() != DType::F32 || x.device() != dev || x.shape() != grad.shape())
        {
            return Ok(None);
        }
        let (g, m, v) = (grad.contiguous()?, state.exp_avg.contiguous()?, state.exp_avg_sq.contiguous()?);
        let n = g.elem_count();
        let mut m_out = Tensor::zeros(g.shape(), DType::F32, &dev)?;
        let mut v_out = Tensor::zeros(g.shape(), DType::F32, &dev)?;
        let mut n_out = Tensor::zeros(g.shape(), DType::F32, &dev)?;
        let (bc1, bc2_sqrt) = cfg.corrections(t);
        let hf = cfg.eps_mode == EpsMode::Hf;
        let mut args = [
            Arg::In(&g),
            Arg::In(&m),
            Arg::In(&v),
            Arg::Out(&mut m_out),
            Arg::Out(&mut v_out),
            Arg::Out(&mut n_out),
            Arg::U64(n as u64),
            Arg::I32(i32::from(hf)),
            Arg::F32(cfg.beta1 as f32),
            Arg::F32((1.0 - cfg.beta1) as f32),
            Arg::F32(cfg.beta2 as f32),
            Arg::F32((1.0 - cfg.beta2) as f32),
            Arg::F32((1.0 / bc2_sqrt) as f32),
            Arg::F32(cfg.eps as f32),
        ];
        KERNEL.launch(dev, LaunchDims::linear(n), &mut args, n)?;
        state.exp_avg = m_out;
        state.exp_avg_sq = v_out;
        let step = if hf { cfg.lr * bc2_sqrt / bc1 } else { cfg.lr / bc1 };
        Ok(Some((n_out, step)))
    }
}
