//! AdamW with PyTorch semantics.

use std::collections::HashMap;

use effllm_tensor::{Tensor, TensorId, no_grad};

use crate::{Optimizer, ParamState, Result, bytes, check, param_id, prepare, step_scalar, write_back};

/// Hyperparameters of [`AdamW`] (defaults are PyTorch's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate `γ` (default 1e-3).
    pub lr: f64,
    /// `β₁`, the first-moment decay (default 0.9).
    pub beta1: f64,
    /// `β₂`, the second-moment decay (default 0.999).
    pub beta2: f64,
    /// `ε`, added to the bias-corrected square root of the second moment (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay `λ`: the parameter is multiplied by `1 − γλ` before the update (default 1e-2).
    pub weight_decay: f64,
    /// AMSGrad: divide by the running maximum of the second moment (default off).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, amsgrad: false }
    }
}

#[derive(Debug)]
struct State {
    step: u64,
    m: Tensor,
    v: Tensor,
    v_max: Option<Tensor>,
}

/// `torch.optim.AdamW` (single-tensor algorithm). Per parameter, at step `t` with gradient `g`:
///
/// ```text
/// θ ← θ · (1 − γλ)
/// m ← m + (1 − β₁)(g − m)
/// v ← β₂ v + (1 − β₂) g²
/// v̂ ← max(v̂, v) if AMSGrad else v
/// θ ← θ − (γ / (1 − β₁ᵗ)) · m / (√v̂ / √(1 − β₂ᵗ) + ε)
/// ```
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    state: HashMap<TensorId, State>,
}

impl AdamW {
    /// An optimizer with `cfg`, after checking its domain (`γ ≥ 0`, `0 ≤ β < 1`, `ε ≥ 0`, `λ ≥ 0`).
    pub fn new(cfg: AdamWConfig) -> Result<AdamW> {
        const O: &str = "AdamW";
        check(O, "lr", cfg.lr, cfg.lr >= 0.0 && cfg.lr.is_finite(), "a finite value >= 0")?;
        check(O, "beta1", cfg.beta1, (0.0..1.0).contains(&cfg.beta1), "in [0, 1)")?;
        check(O, "beta2", cfg.beta2, (0.0..1.0).contains(&cfg.beta2), "in [0, 1)")?;
        check(O, "eps", cfg.eps, cfg.eps >= 0.0 && cfg.eps.is_finite(), "a finite value >= 0")?;
        let wd = cfg.weight_decay;
        check(O, "weight_decay", wd, wd >= 0.0 && wd.is_finite(), "a finite value >= 0")?;
        Ok(AdamW { cfg, state: HashMap::new() })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken for parameter `id` (0 if never updated).
    pub fn steps(&self, id: TensorId) -> u64 {
        self.state.get(&id).map_or(0, |s| s.step)
    }
}

/// The same update in one pass over contiguous f32 CPU buffers (parameter copied once, moments updated in place
/// when not shared): the composed tensor ops allocate a full-size temporary per op, which made the update of a
/// 16M-parameter model cost as much as its forward pass on 2 cores. Same formula, same f32 operation order up to
/// the fused scalar constants (tested against the reference and PyTorch like the composed path). `None` when the
/// tensors are not contiguous f32 on the CPU.
fn fused_cpu_step(c: &AdamWConfig, st: &mut State, p: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
    let f32 = effllm_tensor::DType::F32;
    let all = [p, g, &st.m, &st.v];
    if !all.iter().all(|t| t.device().is_cpu() && t.dtype() == f32 && t.is_contiguous()) {
        return Ok(None);
    }
    if st.v_max.as_ref().is_some_and(|t| !t.is_contiguous()) {
        return Ok(None);
    }
    let gv = g.as_ndarray::<f32>()?;
    let Some(gs) = gv.as_slice() else { return Ok(None) };
    let mut p = p.detach();
    let mut pv = p.as_ndarray_mut::<f32>()?;
    let mut mv = st.m.as_ndarray_mut::<f32>()?;
    let mut vv = st.v.as_ndarray_mut::<f32>()?;
    let mut vmax = st.v_max.as_mut().map(|t| t.as_ndarray_mut::<f32>()).transpose()?;
    let (Some(ps), Some(ms), Some(vs)) = (pv.as_slice_mut(), mv.as_slice_mut(), vv.as_slice_mut()) else {
        return Ok(None);
    };
    let mut vms = match vmax.as_mut() {
        Some(v) => match v.as_slice_mut() {
            Some(s) => Some(s),
            None => return Ok(None),
        },
        None => None,
    };
    let t = st.step as i32;
    let decay = (1.0 - c.lr * c.weight_decay) as f32;
    let b2 = c.beta2 as f32;
    let (one_m_b1, one_m_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
    let step_size = (c.lr / (1.0 - c.beta1.powi(t))) as f32;
    let inv_bc2_sqrt = (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32;
    let eps = c.eps as f32;
    let decays = c.weight_decay != 0.0;
    for i in 0..ps.len() {
        let gi = gs[i];
        let pi = if decays { ps[i] * decay } else { ps[i] };
        let mi = ms[i] + (gi - ms[i]) * one_m_b1;
        let vi = vs[i] * b2 + (gi * gi) * one_m_b2;
        ms[i] = mi;
        vs[i] = vi;
        let second = match vms.as_deref_mut() {
            Some(vm) => {
                vm[i] = vm[i].max(vi);
                vm[i]
            }
            None => vi,
        };
        let denom = second.sqrt() * inv_bc2_sqrt + eps;
        ps[i] = pi - (mi / denom) * step_size;
    }
    drop((pv, mv, vv, vmax));
    Ok(Some(p))
}

impl AdamW {
    /// One update with the gradient scaled by `grad_scale` (inside the fused CUDA kernel; by a scaled copy on the
    /// other paths).
    fn update(&mut self, param: &mut Tensor, grad: &Tensor, grad_scale: f64) -> Result<()> {
        let (id, p, g) = prepare("AdamW", param, grad)?;
        let c = self.cfg;
        let p = no_grad(|| -> Result<Tensor> {
            let st = match self.state.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    // Separate buffers: the fused CUDA step updates the moments in place.
                    let z = || Tensor::zeros(p.shape(), p.dtype(), &p.device());
                    e.insert(State { step: 0, m: z()?, v: z()?, v_max: if c.amsgrad { Some(z()?) } else { None } })
                }
            };
            st.step += 1;
            let t = st.step as i32;
            #[cfg(feature = "cuda")]
            if let Some(p) = cuda::fused_step(&c, st, &p, &g, grad_scale)? {
                return Ok(p);
            }
            let g = if grad_scale == 1.0 { g } else { g.affine(grad_scale, 0.0)? };
            if let Some(p) = fused_cpu_step(&c, st, &p, &g)? {
                return Ok(p);
            }
            let p = if c.weight_decay != 0.0 { p.affine(1.0 - c.lr * c.weight_decay, 0.0)? } else { p };
            st.m = st.m.add(&g.sub(&st.m)?.affine(1.0 - c.beta1, 0.0)?)?;
            st.v = st.v.affine(c.beta2, 0.0)?.add(&g.mul(&g)?.affine(1.0 - c.beta2, 0.0)?)?;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
            let second = match &mut st.v_max {
                Some(vm) => {
                    *vm = vm.maximum(&st.v)?;
                    vm.clone()
                }
                None => st.v.clone(),
            };
            let denom = second.sqrt()?.affine(1.0 / bc2_sqrt, c.eps)?;
            Ok(p.sub(&st.m.div(&denom)?.affine(c.lr / bc1, 0.0)?)?)
        })?;
        write_back(param, &p)
    }
}

impl Optimizer for AdamW {
    fn step_param(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<()> {
        self.update(param, grad, 1.0)
    }

    fn step_param_scaled(&mut self, param: &mut Tensor, grad: &Tensor, grad_scale: f64) -> Result<()> {
        self.update(param, grad, grad_scale)
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn state_bytes(&self) -> usize {
        self.state.values().map(|s| bytes(&s.m) + bytes(&s.v) + s.v_max.as_ref().map_or(0, bytes)).sum()
    }

    fn forget(&mut self, id: TensorId) -> bool {
        self.state.remove(&id).is_some()
    }

    fn name(&self) -> &'static str {
        "AdamW"
    }

    fn export_state(&self, id: TensorId) -> Option<ParamState> {
        let st = self.state.get(&id)?;
        let mut out = ParamState::default();
        out.scalars.insert("step".into(), st.step as f64);
        out.tensors.insert("exp_avg".into(), st.m.clone());
        out.tensors.insert("exp_avg_sq".into(), st.v.clone());
        if let Some(vm) = &st.v_max {
            out.tensors.insert("max_exp_avg_sq".into(), vm.clone());
        }
        Some(out)
    }

    fn import_state(&mut self, param: &Tensor, state: ParamState) -> Result<()> {
        const O: &str = "AdamW";
        let id = param_id(O, param)?;
        let (shape, dev) = (param.shape(), param.device());
        let step = step_scalar(O, &state)?;
        let m = state.tensor_like(O, "exp_avg", shape, &dev)?;
        let v = state.tensor_like(O, "exp_avg_sq", shape, &dev)?;
        let v_max = match (self.cfg.amsgrad, state.tensors.contains_key("max_exp_avg_sq")) {
            (true, _) => Some(state.tensor_like(O, "max_exp_avg_sq", shape, &dev)?),
            (false, false) => None,
            (false, true) => {
                return Err(crate::OptimError::BadState {
                    optimizer: O,
                    msg: "the state is AMSGrad's (`max_exp_avg_sq`) but the optimizer is not".into(),
                });
            }
        };
        self.state.insert(id, State { step, m, v, v_max });
        Ok(())
    }
}

/// The fused update on CUDA: one kernel per parameter instead of a dozen elementwise launches and temporaries.
#[cfg(feature = "cuda")]
mod cuda {
    use effllm_tensor::cuda::{Arg, CustomKernel, LaunchDims, Param};
    use effllm_tensor::{DType, Device, Tensor};

    use super::{AdamWConfig, State};
    use crate::Result;

    /// The same f32 operation order as `fused_cpu_step`.
    const SOURCE: &str = r#"
extern "C" __global__ void adamw_step_f32(const float* p, const float* g, float* m, float* v,
        float* p_out, unsigned long long n, float grad_scale, float decay, int decays, float one_m_b1,
        float b2, float one_m_b2, float inv_bc2_sqrt, float eps, float step_size) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
            i += (unsigned long long)gridDim.x * blockDim.x) {
        float gi = g[i] * grad_scale, mp = m[i];
        float pi = decays ? p[i] * decay : p[i];
        float mi = mp + (gi - mp) * one_m_b1;
        float vi = v[i] * b2 + (gi * gi) * one_m_b2;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_bc2_sqrt + eps;
        p_out[i] = pi - (mi / denom) * step_size;
    }
}
"#;

    /// Built once per process (the source is compiled once per device by the kernel cache).
    static KERNEL: std::sync::LazyLock<CustomKernel> = std::sync::LazyLock::new(|| {
        CustomKernel::new(
            "effllm-optim::adamw_v3",
            SOURCE,
            "adamw_step_f32",
            &[
                Param::In(DType::F32),
                Param::In(DType::F32),
                Param::Out(DType::F32),
                Param::Out(DType::F32),
                Param::Out(DType::F32),
                Param::U64,
                Param::F32,
                Param::F32,
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

    /// `None` unless every tensor is f32 on one CUDA device and AMSGrad is off (the composed path handles the rest).
    pub(super) fn fused_step(
        c: &AdamWConfig,
        st: &mut State,
        p: &Tensor,
        g: &Tensor,
        grad_scale: f64,
    ) -> Result<Option<Tensor>> {
        let dev = p.device();
        let on_gpu = matches!(dev, Device::Cuda(_));
        if !on_gpu || c.amsgrad || [p, g, &st.m, &st.v].iter().any(|t| t.dtype() != DType::F32 || t.device() != dev) {
            return Ok(None);
        }
        let n = p.elem_count();
        let (pc, gc) = (p.contiguous()?, g.contiguous()?);
        // The moments are the optimizer's own: updated in place (copied first only if a caller still holds them).
        for t in [&mut st.m, &mut st.v] {
            if !t.is_contiguous() {
                *t = t.contiguous()?;
            }
            t.make_exclusive()?;
        }
        let mut p_out = Tensor::zeros(p.shape(), DType::F32, &dev)?;
        let t = st.step as i32;
        let mut args = [
            Arg::In(&pc),
            Arg::In(&gc),
            Arg::Out(&mut st.m),
            Arg::Out(&mut st.v),
            Arg::Out(&mut p_out),
            Arg::U64(n as u64),
            Arg::F32(grad_scale as f32),
            Arg::F32((1.0 - c.lr * c.weight_decay) as f32),
            Arg::I32(i32::from(c.weight_decay != 0.0)),
            Arg::F32((1.0 - c.beta1) as f32),
            Arg::F32(c.beta2 as f32),
            Arg::F32((1.0 - c.beta2) as f32),
            Arg::F32((1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32),
            Arg::F32(c.eps as f32),
            Arg::F32((c.lr / (1.0 - c.beta1.powi(t))) as f32),
        ];
        KERNEL.launch(dev, LaunchDims::linear(n), &mut args, n)?;
        Ok(Some(p_out))
    }
}
