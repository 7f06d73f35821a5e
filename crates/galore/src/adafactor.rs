//! Adafactor (galore-torch's `GaLoreAdafactor`, a copy of HF `transformers.Adafactor` with the projection hooks),
//! with the settings galore-torch's `torchrun_main.py` uses: fixed learning rate (`relative_step = False`,
//! `scale_parameter = False`, `warmup_init = False`).

use effllm_optim::ParamState;
use effllm_tensor::{DType, Device, Tensor};

use crate::inner::{InnerOptimizer, WeightDecay, bytes, check};
use crate::{GaLoreError, Result};

/// Hyperparameters of [`Adafactor`] (defaults: galore-torch's `torchrun_main.py`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorConfig {
    /// Learning rate `η` (fixed: no relative step, no parameter scaling).
    pub lr: f64,
    /// First-moment decay `β₁`, or `None` for no first moment (default `None`).
    pub beta1: Option<f64>,
    /// `ε₁`, added to `g²` (default 1e-30).
    pub eps: f64,
    /// Update RMS clipping threshold `d` (default 1.0).
    pub clip_threshold: f64,
    /// `c` of the second-moment decay `β₂ₜ = 1 − t^c` (default −0.8).
    pub decay_rate: f64,
    /// Decoupled weight decay `λ`, applied before the update as `p ← p − ηλ p` (default 0).
    pub weight_decay: f64,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig { lr: 1e-3, beta1: None, eps: 1e-30, clip_threshold: 1.0, decay_rate: -0.8, weight_decay: 0.0 }
    }
}

/// Adafactor's second moment: factored into row and column means for matrices, full for vectors.
#[derive(Clone, Debug)]
pub enum SecondMoment {
    /// Row means `[m]` and column means `[n]` of the decayed `g² + ε₁`.
    Factored {
        /// `exp_avg_sq_row`.
        row: Tensor,
        /// `exp_avg_sq_col`.
        col: Tensor,
    },
    /// The full decayed `g² + ε₁` (1-D tensors).
    Full(Tensor),
}

/// The state of [`Adafactor`].
#[derive(Clone, Debug)]
pub struct AdafactorState {
    /// The second moment.
    pub second: SecondMoment,
    /// The first moment (of the lr-scaled update), when `β₁` is set.
    pub exp_avg: Option<Tensor>,
}

/// Adafactor. Per step `t` with gradient `g` (after projection, so the factored moment is of `R`: the reference's
/// "double approximation"):
///
/// ```text
/// β₂ₜ = 1 − t^c;  u = g² + ε₁
/// matrices: r ← β₂ₜ r + (1 − β₂ₜ) mean_cols(u);  c ← β₂ₜ c + (1 − β₂ₜ) mean_rows(u);  v̂ = (r cᵀ) / mean(r)
/// vectors:  v ← β₂ₜ v + (1 − β₂ₜ) u;  v̂ = v
/// U = g / √v̂;  U ← U / max(1, RMS(U) / d);  U ← η U;  with β₁: M ← β₁ M + (1 − β₁) U, U = M
/// p ← p − ηλ p;  p ← p − α back(U)
/// ```
#[derive(Clone, Debug)]
pub struct Adafactor {
    cfg: AdafactorConfig,
}

impl Adafactor {
    /// An optimizer with `cfg` after checking its domain.
    pub fn new(cfg: AdafactorConfig) -> Result<Adafactor> {
        const O: &str = "Adafactor";
        check(O, "lr", cfg.lr, cfg.lr >= 0.0 && cfg.lr.is_finite(), "a finite value >= 0")?;
        if let Some(b1) = cfg.beta1 {
            check(O, "beta1", b1, (0.0..1.0).contains(&b1), "in [0, 1)")?;
        }
        check(O, "eps", cfg.eps, cfg.eps >= 0.0 && cfg.eps.is_finite(), "a finite value >= 0")?;
        let d = cfg.clip_threshold;
        check(O, "clip_threshold", d, d > 0.0 && d.is_finite(), "a finite value > 0")?;
        check(O, "decay_rate", cfg.decay_rate, cfg.decay_rate < 0.0, "< 0")?;
        let wd = cfg.weight_decay;
        check(O, "weight_decay", wd, wd >= 0.0 && wd.is_finite(), "a finite value >= 0")?;
        Ok(Adafactor { cfg })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdafactorConfig {
        &self.cfg
    }
}

/// `√(mean(t²))`.
fn rms(t: &Tensor) -> Result<f64> {
    let sum_sq = t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((sum_sq / t.elem_count() as f64).sqrt())
}

impl InnerOptimizer for Adafactor {
    type State = AdafactorState;

    fn name(&self) -> &'static str {
        "Adafactor"
    }

    fn galore_name(&self) -> &'static str {
        "GaLore-Adafactor"
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn weight_decay(&self) -> WeightDecay {
        if self.cfg.weight_decay == 0.0 {
            WeightDecay::None
        } else {
            WeightDecay::DecoupledBefore(self.cfg.weight_decay)
        }
    }

    fn init_state(&self, shape: &[usize], device: &Device) -> Result<AdafactorState> {
        let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, device);
        let second = match *shape {
            [m, n] => SecondMoment::Factored { row: zeros(&[m])?, col: zeros(&[n])? },
            [_] => SecondMoment::Full(zeros(shape)?),
            _ => {
                return Err(GaLoreError::NotAMatrix {
                    shape: shape.to_vec(),
                    msg: "Adafactor takes 1-D or 2-D tensors".into(),
                });
            }
        };
        let exp_avg = match self.cfg.beta1 {
            Some(_) => Some(zeros(shape)?),
            None => None,
        };
        Ok(AdafactorState { second, exp_avg })
    }

    fn direction(&self, state: &mut AdafactorState, grad: &Tensor, t: u64) -> Result<(Tensor, f64)> {
        let c = self.cfg;
        let beta2t = 1.0 - (t as f64).powf(c.decay_rate);
        let u = grad.sqr()?.affine(1.0, c.eps)?;
        let update = match &mut state.second {
            SecondMoment::Factored { row, col } => {
                *row = row.affine(beta2t, 0.0)?.add(&u.mean(1, false)?.affine(1.0 - beta2t, 0.0)?)?;
                *col = col.affine(beta2t, 0.0)?.add(&u.mean(0, false)?.affine(1.0 - beta2t, 0.0)?)?;
                let row_mean = row.mean(0, true)?;
                let r_factor = row.div(&row_mean)?.sqrt()?.recip()?.unsqueeze(1)?;
                let c_factor = col.sqrt()?.recip()?.unsqueeze(0)?;
                r_factor.mul(&c_factor)?.mul(grad)?
            }
            SecondMoment::Full(v) => {
                *v = v.affine(beta2t, 0.0)?.add(&u.affine(1.0 - beta2t, 0.0)?)?;
                v.sqrt()?.recip()?.mul(grad)?
            }
        };
        let clip = (rms(&update)? / c.clip_threshold).max(1.0);
        let update = if clip > 1.0 { update.affine(1.0 / clip, 0.0)? } else { update };
        let update = update.affine(c.lr, 0.0)?;
        let update = match (&mut state.exp_avg, c.beta1) {
            (Some(m), Some(b1)) => {
                *m = m.affine(b1, 0.0)?.add(&update.affine(1.0 - b1, 0.0)?)?;
                m.clone()
            }
            _ => update,
        };
        // The learning rate is already inside the update: the wrapper subtracts it as is.
        Ok((update, 1.0))
    }

    fn map_first_moment(&self, state: &mut AdafactorState, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        if let Some(m) = &state.exp_avg {
            state.exp_avg = Some(f(m)?.contiguous()?);
        }
        Ok(())
    }

    fn first_moment(&self, state: &AdafactorState) -> Result<Option<Tensor>> {
        Ok(state.exp_avg.clone())
    }

    fn state_bytes(&self, state: &AdafactorState) -> usize {
        let second = match &state.second {
            SecondMoment::Factored { row, col } => bytes(row) + bytes(col),
            SecondMoment::Full(v) => bytes(v),
        };
        second + state.exp_avg.as_ref().map_or(0, bytes)
    }

    fn export_state(&self, state: &AdafactorState, out: &mut ParamState) {
        match &state.second {
            SecondMoment::Factored { row, col } => {
                out.tensors.insert("exp_avg_sq_row".into(), row.clone());
                out.tensors.insert("exp_avg_sq_col".into(), col.clone());
            }
            SecondMoment::Full(v) => {
                out.tensors.insert("exp_avg_sq".into(), v.clone());
            }
        }
        if let Some(m) = &state.exp_avg {
            out.tensors.insert("exp_avg".into(), m.clone());
        }
    }

    fn import_state(&self, state: &ParamState, shape: &[usize], device: &Device) -> Result<AdafactorState> {
        const O: &str = "GaLore-Adafactor";
        let second = match *shape {
            [m, n] => SecondMoment::Factored {
                row: state.tensor_like(O, "exp_avg_sq_row", &[m], device)?,
                col: state.tensor_like(O, "exp_avg_sq_col", &[n], device)?,
            },
            _ => SecondMoment::Full(state.tensor_like(O, "exp_avg_sq", shape, device)?),
        };
        let exp_avg = match self.cfg.beta1 {
            Some(_) => Some(state.tensor_like(O, "exp_avg", shape, device)?),
            None if state.tensors.contains_key("exp_avg") => {
                return Err(GaLoreError::BadState("a first moment in the checkpoint but beta1 is None".into()));
            }
            None => None,
        };
        Ok(AdafactorState { second, exp_avg })
    }
}
