//! Timestep normalisation: group-wise mean and variance accumulated over time (including the within-group
//! variance of every step), with a streaming state, as a differentiable op.
//!
//! Forward (per batch row `b`, group `g`, unmasked step `t`, each step of weight 1): the step's population moments
//! `μ_t = mean_i x_{t,i}`, `v_t = mean_i (x_{t,i} − μ_t)²` are merged into the running `(m₀, m₁, m₂)` by Chan's
//! combine: `m₀' = m₀ + 1`, `c₂ = 1/m₀'`, `c₁ = 1 − c₂`, `Δ = μ_t − m₁`, `m₁' = c₁m₁ + c₂μ_t`,
//! `m₂' = c₁m₂ + c₂v_t + c₁c₂Δ²`; then `y_{t,i} = (x_{t,i} − m₁')/√(m₂' + ε) · (1 + w_i) + b_i`.
//!
//! Backward, from the closed form: with prior `(c₀, μ₀, v₀)`, `A_t = c₀ + #steps ≤ t`, `a_s = mean_i x_{s,i}`,
//! `e_s = mean_i x_{s,i}²`: `m_t = (c₀μ₀ + Σ_{s≤t} a_s)/A_t` and `m₂_t = (c₀(v₀ + μ₀²) + Σ_{s≤t} e_s)/A_t − m_t²`.
//! With `r_t = (m₂_t + ε)^{-1/2}` and `ĝ = g ⊙ (1 + w)`: `∂x_{t,i} ∋ ĝ_{t,i} r_t`, `∂m_t = −r_t Σ_i ĝ_{t,i}`,
//! `∂m₂_t = −½ r_t³ Σ_i ĝ_{t,i}(x_{t,i} − m_t)`; the sums `C₁_t = A_t m_t` and `C₂_t = A_t(m₂_t + m_t²)` get
//! `∂C₁_t = (∂m_t − 2m_t ∂m₂_t)/A_t`, `∂C₂_t = ∂m₂_t/A_t`; a reverse cumulative sum over `t` gives `∂a_s`, `∂e_s`,
//! hence `∂x_{s,i} ∋ (∂a_s + 2x_{s,i} ∂e_s)/|g|`, and `∂μ₀ = c₀ΣₜC₁' + 2c₀μ₀ΣₜC₂'`, `∂v₀ = c₀ΣₜC₂'`.

use effllm_tensor::autograd::{CustomBackward, custom_op};
use effllm_tensor::{DType, Device, Tensor};

use crate::conv::to_tensor_error;
use crate::error::{MegalodonError, Result};

/// The streaming statistics of one timestep norm: per batch row the number of steps merged so far, and per group
/// the running mean and population variance. A fresh state is count 0, mean 0, var 1 (the reference's prior, which
/// count 0 makes irrelevant). The incoming mean and variance may be tracked (they get gradients); the returned ones
/// are untracked values.
#[derive(Clone, Debug)]
pub struct TsnState {
    count: Vec<u64>,
    mean: Tensor,
    var: Tensor,
}

impl TsnState {
    /// A state from its parts: `count` `[B]`, `mean` and `var` `[B, G]`.
    pub fn new(count: Vec<u64>, mean: Tensor, var: Tensor) -> Result<TsnState> {
        if mean.rank() != 2 || mean.shape() != var.shape() || mean.shape()[0] != count.len() {
            return Err(MegalodonError::Shape {
                op: "TsnState::new",
                expected: format!("mean and var [{}, G] (var is {:?})", count.len(), var.shape()),
                found: mean.shape().to_vec(),
            });
        }
        Ok(TsnState { count, mean, var })
    }

    /// Steps seen per batch row.
    pub fn count(&self) -> &[u64] {
        &self.count
    }

    /// Running group means `[B, G]`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// Running group population variances `[B, G]`.
    pub fn var(&self) -> &Tensor {
        &self.var
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.count.len()
    }
}

/// A timestep norm over `D` features in `G` groups, with the affine `(1 + w)`, `b` (both stored as zeros at
/// initialisation, as in the reference).
#[derive(Clone, Debug)]
pub struct TimestepNorm {
    groups: usize,
    eps: f64,
    weight: Tensor,
    bias: Tensor,
}

/// The raw forward on host data: `(y, count, mean, var)` after the call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_host(
    x: &[f64],
    (b, l, d, groups): (usize, usize, usize, usize),
    w: &[f64],
    bias: &[f64],
    eps: f64,
    count: &[u64],
    mean: &[f64],
    var: &[f64],
    mask: Option<&[bool]>,
) -> (Vec<f64>, Vec<u64>, Vec<f64>, Vec<f64>) {
    let gs = d / groups;
    let (mut y, mut count, mut m1, mut m2) = (vec![0.0; b * l * d], count.to_vec(), mean.to_vec(), var.to_vec());
    for bi in 0..b {
        for t in 0..l {
            if mask.is_some_and(|m| m[bi * l + t]) {
                continue;
            }
            let m0 = count[bi] as f64 + 1.0;
            let (c2, c1) = (1.0 / m0, 1.0 - 1.0 / m0);
            for g in 0..groups {
                let row = &x[(bi * l + t) * d + g * gs..(bi * l + t) * d + (g + 1) * gs];
                let mu = row.iter().sum::<f64>() / gs as f64;
                let v = row.iter().map(|z| (z - mu) * (z - mu)).sum::<f64>() / gs as f64;
                let s = bi * groups + g;
                let delta = mu - m1[s];
                m1[s] = c1 * m1[s] + c2 * mu;
                m2[s] = c1 * m2[s] + c2 * v + (c1 * delta) * (c2 * delta);
                let r = 1.0 / (m2[s] + eps).sqrt();
                for (k, &z) in row.iter().enumerate() {
                    let i = g * gs + k;
                    y[(bi * l + t) * d + i] = (z - m1[s]) * r * (1.0 + w[i]) + bias[i];
                }
            }
            count[bi] += 1;
        }
    }
    (y, count, m1, m2)
}

/// Gradients `(dx, dw, db, dmean₀, dvar₀)` of the forward on host data (the rule in the module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_host(
    x: &[f64],
    g_out: &[f64],
    (b, l, d, groups): (usize, usize, usize, usize),
    w: &[f64],
    eps: f64,
    count: &[u64],
    mean: &[f64],
    var: &[f64],
    mask: Option<&[bool]>,
) -> [Vec<f64>; 5] {
    let gs = d / groups;
    let (mut dx, mut dw, mut db) = (vec![0.0; b * l * d], vec![0.0; d], vec![0.0; d]);
    let (mut dmean, mut dvar) = (vec![0.0; b * groups], vec![0.0; b * groups]);
    let masked = |bi: usize, t: usize| mask.is_some_and(|m| m[bi * l + t]);
    for (bi, &c) in count.iter().enumerate().take(b) {
        let c0 = c as f64;
        for g in 0..groups {
            let s = bi * groups + g;
            let (mu0, v0) = (mean[s], var[s]);
            let (mut c1, mut c2, mut a) = (c0 * mu0, c0 * (v0 + mu0 * mu0), c0);
            let (mut dc1, mut dc2) = (vec![0.0; l], vec![0.0; l]);
            for t in 0..l {
                if masked(bi, t) {
                    continue;
                }
                let base = (bi * l + t) * d + g * gs;
                let row = &x[base..base + gs];
                a += 1.0;
                c1 += row.iter().sum::<f64>() / gs as f64;
                c2 += row.iter().map(|z| z * z).sum::<f64>() / gs as f64;
                let m = c1 / a;
                let m2 = (c2 / a - m * m).max(0.0);
                let r = 1.0 / (m2 + eps).sqrt();
                let (mut sum_g, mut sum_gx) = (0.0, 0.0);
                for (k, &z) in row.iter().enumerate() {
                    let i = g * gs + k;
                    let gy = g_out[base + k];
                    dw[i] += gy * (z - m) * r;
                    db[i] += gy;
                    let gh = gy * (1.0 + w[i]);
                    dx[base + k] += gh * r;
                    sum_g += gh;
                    sum_gx += gh * (z - m);
                }
                let dm = -r * sum_g;
                let dm2 = -0.5 * r * r * r * sum_gx;
                dc1[t] = (dm - 2.0 * m * dm2) / a;
                dc2[t] = dm2 / a;
            }
            let (mut acc1, mut acc2) = (0.0, 0.0);
            for t in (0..l).rev() {
                if masked(bi, t) {
                    continue;
                }
                acc1 += dc1[t];
                acc2 += dc2[t];
                let base = (bi * l + t) * d + g * gs;
                for k in 0..gs {
                    dx[base + k] += (acc1 + 2.0 * x[base + k] * acc2) / gs as f64;
                }
            }
            dmean[s] = c0 * acc1 + 2.0 * c0 * mu0 * acc2;
            dvar[s] = c0 * acc2;
        }
    }
    [dx, dw, db, dmean, dvar]
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.contiguous()?.to_vec_f64()?)
}

fn tensor(v: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

impl TimestepNorm {
    /// A norm over `dim` features in `groups` groups with weight and bias zero (identity affine), `eps` as given.
    pub fn new(dim: usize, groups: usize, eps: f64, dtype: DType, device: &Device) -> Result<TimestepNorm> {
        TimestepNorm::from_tensors(
            groups,
            eps,
            Tensor::zeros(&[dim], dtype, device)?,
            Tensor::zeros(&[dim], dtype, device)?,
        )
    }

    /// A norm from its weight and bias `[D]` (applied as `(1 + w)` and `b`).
    pub fn from_tensors(groups: usize, eps: f64, weight: Tensor, bias: Tensor) -> Result<TimestepNorm> {
        let [d] = *weight.shape() else {
            return Err(MegalodonError::Shape {
                op: "TimestepNorm",
                expected: "weight = [D]".into(),
                found: weight.shape().to_vec(),
            });
        };
        if bias.shape() != [d] {
            return Err(MegalodonError::Shape {
                op: "TimestepNorm",
                expected: format!("bias = [{d}]"),
                found: bias.shape().to_vec(),
            });
        }
        if groups == 0 || !d.is_multiple_of(groups) {
            return Err(MegalodonError::Config(format!(
                "timestep norm: {d} features do not split into {groups} groups"
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(MegalodonError::Config(format!("timestep norm: eps {eps} must be finite and positive")));
        }
        if !weight.dtype().is_float() || weight.dtype() != bias.dtype() || weight.device() != bias.device() {
            return Err(MegalodonError::InvalidArgument {
                op: "TimestepNorm",
                msg: "weight and bias must share one float dtype and device".into(),
            });
        }
        Ok(TimestepNorm { groups, eps, weight, bias })
    }

    /// Features `D`.
    pub fn dim(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Groups `G`.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// `[weight, bias]`.
    pub fn parameters(&self) -> [&Tensor; 2] {
        [&self.weight, &self.bias]
    }

    /// The same norm with weight and bias passed through `f`.
    pub fn map_parameters(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<TimestepNorm> {
        TimestepNorm::from_tensors(self.groups, self.eps, f(&self.weight)?, f(&self.bias)?)
    }

    /// A fresh state for `batch` rows: count 0, mean 0, var 1.
    pub fn init_state(&self, batch: usize) -> Result<TsnState> {
        let (dt, dev) = (self.weight.dtype(), self.weight.device());
        Ok(TsnState {
            count: vec![0; batch],
            mean: Tensor::zeros(&[batch, self.groups], dt, &dev)?,
            var: Tensor::ones(&[batch, self.groups], dt, &dev)?,
        })
    }

    /// Normalises `x` = `[B, L, D]`, continuing from `state` and advancing it.
    pub fn forward(&self, x: &Tensor, state: &mut TsnState) -> Result<Tensor> {
        self.forward_masked(x, None, state)
    }

    /// [`TimestepNorm::forward`] with a padding mask `[B·L]` (row-major `[B, L]`, true = padding): a masked step
    /// outputs 0, leaves the statistics unchanged and does not advance the count. Differentiable in `x`, the weight,
    /// the bias and the incoming state's mean and variance.
    pub fn forward_masked(&self, x: &Tensor, mask: Option<&[bool]>, state: &mut TsnState) -> Result<Tensor> {
        const OP: &str = "timestep_norm";
        let d = self.dim();
        let [b, l, xd] = *x.shape() else {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: format!("x = [B, L, {d}]"),
                found: x.shape().to_vec(),
            });
        };
        if xd != d {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: format!("x = [B, L, {d}]"),
                found: x.shape().to_vec(),
            });
        }
        if state.count.len() != b || state.mean.shape() != [b, self.groups] {
            return Err(MegalodonError::State {
                op: OP,
                msg: format!(
                    "state for batch {} with mean {:?}, input needs batch {b} and [{b}, {}]",
                    state.count.len(),
                    state.mean.shape(),
                    self.groups
                ),
            });
        }
        if let Some(m) = mask
            && m.len() != b * l
        {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: format!("mask of B·L = {} entries", b * l),
                found: vec![m.len()],
            });
        }
        if x.dtype() != self.weight.dtype() || x.device() != self.weight.device() {
            return Err(MegalodonError::InvalidArgument {
                op: OP,
                msg: format!(
                    "x is {:?} on {:?}, the norm is {:?} on {:?}",
                    x.dtype(),
                    x.device(),
                    self.weight.dtype(),
                    self.weight.device()
                ),
            });
        }
        let dims = (b, l, d, self.groups);
        let eps = self.eps;
        let mut new_state: Option<TsnState> = None;
        let count0 = state.count.clone();
        let mask_owned: Option<Vec<bool>> = mask.map(<[bool]>::to_vec);
        let (w, bias, mean0, var0) = (&self.weight, &self.bias, &state.mean, &state.var);
        let y = custom_op(
            OP,
            &[x, w, bias, mean0, var0],
            || {
                let mut run = || -> Result<Tensor> {
                    let (dt, dev) = (x.dtype(), x.device());
                    if let Device::Cuda(_) = dev
                        && dt == DType::F32
                    {
                        let (y, count, mean, var) =
                            crate::cuda::timestep_norm(x, w, bias, &count0, mean0, var0, mask, dims, eps)?;
                        new_state = Some(TsnState { count, mean, var });
                        return Ok(y);
                    }
                    let (y, count, mean, var) = forward_host(
                        &host(x)?,
                        dims,
                        &host(w)?,
                        &host(bias)?,
                        eps,
                        &count0,
                        &host(mean0)?,
                        &host(var0)?,
                        mask,
                    );
                    new_state = Some(TsnState {
                        count,
                        mean: tensor(mean, &[b, self.groups], dt, &dev)?,
                        var: tensor(var, &[b, self.groups], dt, &dev)?,
                    });
                    tensor(y, &[b, l, d], dt, &dev)
                };
                run().map_err(to_tensor_error)
            },
            |_| {
                let (x, w, mean0, var0) = (x.detach(), w.detach(), mean0.detach(), var0.detach());
                let count0 = count0.clone();
                Ok(Box::new(move |g: &Tensor, _: &[bool]| {
                    let run = || -> Result<Vec<Option<Tensor>>> {
                        let (dt, dev) = (x.dtype(), x.device());
                        if let Device::Cuda(_) = dev
                            && dt == DType::F32
                        {
                            let gs = crate::cuda::timestep_norm_grad(
                                &x,
                                g,
                                &w,
                                &count0,
                                &mean0,
                                &var0,
                                mask_owned.as_deref(),
                                dims,
                                eps,
                            )?;
                            return Ok(gs.into_iter().map(Some).collect());
                        }
                        let [dx, dw, db, dm, dv] = backward_host(
                            &host(&x)?,
                            &host(g)?,
                            dims,
                            &host(&w)?,
                            eps,
                            &count0,
                            &host(&mean0)?,
                            &host(&var0)?,
                            mask_owned.as_deref(),
                        );
                        let gshape = [dims.0, dims.3];
                        Ok(vec![
                            Some(tensor(dx, &[dims.0, dims.1, dims.2], dt, &dev)?),
                            Some(tensor(dw, &[dims.2], dt, &dev)?),
                            Some(tensor(db, &[dims.2], dt, &dev)?),
                            Some(tensor(dm, &gshape, dt, &dev)?),
                            Some(tensor(dv, &gshape, dt, &dev)?),
                        ])
                    };
                    run().map_err(to_tensor_error)
                }) as CustomBackward)
            },
        )?;
        *state = new_state
            .ok_or_else(|| MegalodonError::InvalidArgument { op: OP, msg: "forward produced no state".into() })?;
        Ok(y)
    }
}
