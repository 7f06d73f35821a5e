//! SGD with momentum, PyTorch semantics.

use std::collections::HashMap;

use effllm_tensor::{Tensor, TensorId, no_grad};

use crate::{Optimizer, ParamState, Result, bytes, check, param_id, prepare, write_back};

/// Hyperparameters of [`Sgd`] (defaults are PyTorch's, with a learning rate of 1e-3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate `γ`.
    pub lr: f64,
    /// Momentum `μ` (0 = plain SGD).
    pub momentum: f64,
    /// Dampening `τ` of the momentum update.
    pub dampening: f64,
    /// L2 weight decay `λ`, added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs `μ > 0` and `τ = 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

/// `torch.optim.SGD`. Per parameter, with gradient `g`:
///
/// ```text
/// g ← g + λθ
/// b ← g on the first step, else μb + (1 − τ)g          (when μ ≠ 0)
/// g ← g + μb if Nesterov else b                        (when μ ≠ 0)
/// θ ← θ − γg
/// ```
#[derive(Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    momentum: HashMap<TensorId, Tensor>,
}

impl Sgd {
    /// An optimizer with `cfg`, after checking its domain (PyTorch's checks, plus finiteness).
    pub fn new(cfg: SgdConfig) -> Result<Sgd> {
        const O: &str = "SGD";
        check(O, "lr", cfg.lr, cfg.lr >= 0.0 && cfg.lr.is_finite(), "a finite value >= 0")?;
        check(O, "momentum", cfg.momentum, cfg.momentum >= 0.0 && cfg.momentum.is_finite(), "a finite value >= 0")?;
        check(O, "dampening", cfg.dampening, cfg.dampening.is_finite(), "a finite value")?;
        let wd = cfg.weight_decay;
        check(O, "weight_decay", wd, wd >= 0.0 && wd.is_finite(), "a finite value >= 0")?;
        if cfg.nesterov {
            check(O, "momentum", cfg.momentum, cfg.momentum > 0.0, "> 0 with Nesterov")?;
            check(O, "dampening", cfg.dampening, cfg.dampening == 0.0, "0 with Nesterov")?;
        }
        Ok(Sgd { cfg, momentum: HashMap::new() })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Optimizer for Sgd {
    fn step_param(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<()> {
        let (id, p, g) = prepare("SGD", param, grad)?;
        let c = self.cfg;
        let p = no_grad(|| -> Result<Tensor> {
            let g = if c.weight_decay != 0.0 { g.add(&p.affine(c.weight_decay, 0.0)?)? } else { g };
            let g = if c.momentum != 0.0 {
                let buf = match self.momentum.remove(&id) {
                    None => g.contiguous()?,
                    Some(b) => b.affine(c.momentum, 0.0)?.add(&g.affine(1.0 - c.dampening, 0.0)?)?,
                };
                let step = if c.nesterov { g.add(&buf.affine(c.momentum, 0.0)?)? } else { buf.clone() };
                self.momentum.insert(id, buf);
                step
            } else {
                g
            };
            Ok(p.sub(&g.affine(c.lr, 0.0)?)?)
        })?;
        write_back(param, &p)
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn state_bytes(&self) -> usize {
        self.momentum.values().map(bytes).sum()
    }

    fn forget(&mut self, id: TensorId) -> bool {
        self.momentum.remove(&id).is_some()
    }

    fn name(&self) -> &'static str {
        "SGD"
    }

    fn export_state(&self, id: TensorId) -> Option<ParamState> {
        let buf = self.momentum.get(&id)?;
        let mut out = ParamState::default();
        out.tensors.insert("momentum_buffer".into(), buf.clone());
        Some(out)
    }

    fn import_state(&mut self, param: &Tensor, state: ParamState) -> Result<()> {
        const O: &str = "SGD";
        let id = param_id(O, param)?;
        let buf = state.tensor_like(O, "momentum_buffer", param.shape(), &param.device())?;
        self.momentum.insert(id, buf);
        Ok(())
    }
}
