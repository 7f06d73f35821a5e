//! The GaLore optimizer: projection around an inner optimizer, per parameter.

use std::collections::HashMap;

use effllm_optim::{OptimError, Optimizer, ParamState};
use effllm_tensor::{DType, Tensor, TensorId, no_grad};

use crate::basis::{BasisSource, ExactSvd, ParamKey};
use crate::inner::{InnerOptimizer, WeightDecay};
use crate::projector::{Basis, GaLoreParams, GaLoreProjector};
use crate::{GaLoreError, Result};

/// Options of the [`GaLore`] wrapper that are not per parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaLoreOptions {
    /// At every basis refresh after the first, carry the first moment into the new basis
    /// ([`Basis::transfer`], FLoRA style). The second moment is left as it is (it has no exact linear
    /// re-projection). Off by default: the reference keeps both moments untouched (issue jiaweizzhao/GaLore#54).
    pub reproject_first_moment: bool,
    /// Reject a rank above `min(m, n)` with [`GaLoreError::RankTooLarge`] instead of capping it.
    pub strict_rank: bool,
}

/// A rank request that was capped at `min(m, n)` (recorded by [`GaLore::add_target`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankNotice {
    /// The parameter.
    pub param: TensorId,
    /// The rank asked for.
    pub requested: usize,
    /// The rank used, `min(requested, m, n)`.
    pub effective: usize,
    /// Rows of the projected matrix.
    pub m: usize,
    /// Columns of the projected matrix.
    pub n: usize,
}

#[derive(Clone, Debug)]
struct Target {
    index: usize,
    params: GaLoreParams,
}

#[derive(Clone, Debug)]
struct Slot<S> {
    step: u64,
    projector: Option<GaLoreProjector>,
    inner: Option<S>,
}

/// GaLore around an inner optimizer `I` ([`Adam`](crate::Adam), [`Adam8bit`](crate::Adam8bit),
/// [`Sgd`](crate::Sgd)). Parameters registered with [`add_target`](Self::add_target) are updated through their
/// projector; all others get `I` unchanged. State is kept per parameter [`TensorId`], in the low-rank shape for
/// targets. Implements effllm-optim's per-parameter [`Optimizer`], so it can be stepped over a whole set or from
/// the gradient-ready callback ([`backward_layerwise`](crate::backward_layerwise)).
#[derive(Debug)]
pub struct GaLore<I: InnerOptimizer> {
    inner: I,
    options: GaLoreOptions,
    source: Box<dyn BasisSource>,
    targets: HashMap<TensorId, Target>,
    slots: HashMap<TensorId, Slot<I::State>>,
    notices: Vec<RankNotice>,
}

const STEP: &str = "step";
const K_RANK: &str = "galore.rank";
const K_SIDE: &str = "galore.side";
const K_M: &str = "galore.m";
const K_N: &str = "galore.n";
const K_GAP: &str = "galore.update_proj_gap";
const K_SCALE: &str = "galore.scale";
const K_SVD: &str = "galore.svd_count";
const K_BASIS: &str = "galore.basis";
const K_BASIS_L: &str = "galore.basis_left";
const K_BASIS_R: &str = "galore.basis_right";

fn param_id(param: &Tensor) -> Result<TensorId> {
    match param.id() {
        Some(id) if param.is_leaf() => Ok(id),
        _ => Err(GaLoreError::Optim(OptimError::NotAParameter { optimizer: "GaLore" })),
    }
}

impl<I: InnerOptimizer> GaLore<I> {
    /// GaLore around `inner` with exact SVD bases, default options and no targets yet.
    pub fn new(inner: I) -> GaLore<I> {
        GaLore {
            inner,
            options: GaLoreOptions::default(),
            source: Box::new(ExactSvd),
            targets: HashMap::new(),
            slots: HashMap::new(),
            notices: Vec::new(),
        }
    }

    /// Sets the options (before the first step).
    pub fn with_options(mut self, options: GaLoreOptions) -> GaLore<I> {
        self.options = options;
        self
    }

    /// Sets where bases come from ([`ExactSvd`] by default; [`RandomizedSvd`](crate::RandomizedSvd),
    /// [`Replay`](crate::Replay)).
    pub fn with_basis_source(mut self, source: impl BasisSource + 'static) -> GaLore<I> {
        self.source = Box::new(source);
        self
    }

    /// The basis source.
    pub fn basis_source_mut(&mut self) -> &mut dyn BasisSource {
        self.source.as_mut()
    }

    /// Gives parameter `param` (a requires-grad leaf) GaLore settings. Checks them (rank and gap ≥ 1, finite scale,
    /// a 2-D parameter or a declared matrix view); a rank above `min(m, n)` is capped and recorded in
    /// [`rank_notices`](Self::rank_notices), or rejected with [`GaLoreOptions::strict_rank`]. Settings of a
    /// parameter that already has optimizer state cannot change ([`GaLoreError::BadState`]).
    pub fn add_target(&mut self, param: &Tensor, params: GaLoreParams) -> Result<()> {
        let id = param_id(param)?;
        let proj = GaLoreProjector::new(params, param.shape())?;
        let (m, n) = proj.matrix();
        if self.slots.contains_key(&id) {
            return Err(GaLoreError::BadState(format!("parameter {id} already has optimizer state")));
        }
        if proj.rank() < params.rank && self.options.strict_rank {
            return Err(GaLoreError::RankTooLarge { requested: params.rank, max: m.min(n), m, n });
        }
        self.notices.retain(|r| r.param != id);
        if proj.rank() < params.rank {
            self.notices.push(RankNotice { param: id, requested: params.rank, effective: proj.rank(), m, n });
        }
        let index = self.targets.get(&id).map_or(self.targets.len(), |t| t.index);
        self.targets.insert(id, Target { index, params });
        Ok(())
    }

    /// Registers every parameter of `named` for which `select(name, tensor)` holds (in order) with `params`;
    /// returns how many. [`is_llama_projection`](crate::is_llama_projection) selects effllm-model's attention and
    /// FFN weights (galore-torch's `"attn"`/`"mlp"` targets).
    pub fn add_targets(
        &mut self,
        named: &[(String, Tensor)],
        select: impl Fn(&str, &Tensor) -> bool,
        params: GaLoreParams,
    ) -> Result<usize> {
        let mut count = 0;
        for (name, t) in named {
            if select(name, t) {
                self.add_target(t, params)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether `id` has GaLore settings.
    pub fn is_target(&self, id: TensorId) -> bool {
        self.targets.contains_key(&id)
    }

    /// Ranks that were capped at `min(m, n)`.
    pub fn rank_notices(&self) -> &[RankNotice] {
        &self.notices
    }

    /// The projector of parameter `id` (created at its first step).
    pub fn projector(&self, id: TensorId) -> Option<&GaLoreProjector> {
        self.slots.get(&id)?.projector.as_ref()
    }

    /// The inner optimizer's state of parameter `id` (low-rank for targets).
    pub fn inner_state(&self, id: TensorId) -> Option<&I::State> {
        self.slots.get(&id)?.inner.as_ref()
    }

    /// Steps taken for parameter `id`.
    pub fn steps(&self, id: TensorId) -> u64 {
        self.slots.get(&id).map_or(0, |s| s.step)
    }

    /// Bases computed so far, over all parameters.
    pub fn svd_count(&self) -> u64 {
        self.slots.values().filter_map(|s| s.projector.as_ref()).map(GaLoreProjector::svd_count).sum()
    }

    /// The inner optimizer.
    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// The inner optimizer, mutably (hyperparameters other than the learning rate).
    pub fn inner_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Bytes of the inner optimizers' state (moments), over all parameters.
    pub fn moment_bytes(&self) -> usize {
        self.slots.values().filter_map(|s| s.inner.as_ref()).map(|s| self.inner.state_bytes(s)).sum()
    }

    /// Bytes of the projection bases, over all parameters.
    pub fn basis_bytes(&self) -> usize {
        self.slots.values().filter_map(|s| s.projector.as_ref()).map(GaLoreProjector::basis_bytes).sum()
    }

    /// One update of `param` from `grad` (GaLore's errors; [`Optimizer::step_param`] converts them):
    ///
    /// ```text
    /// t0 = steps so far;  G ← G + λp first if the decay is coupled (SGD)
    /// target:  refresh P if no basis or t0 mod T = 0;  R = project(G);  (N, η_t) = inner(R, t0 + 1);  U = α·back(N)
    /// other:   (N, η_t) = inner(G, t0 + 1);  U = N
    /// p ← p (1 − ηλ) [torch decay];  p ← p − η_t U;  p ← p − ηλ p [HF decay]
    /// ```
    pub fn update(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<()> {
        let id = param_id(param)?;
        if grad.shape() != param.shape() {
            return Err(GaLoreError::Optim(OptimError::GradientMismatch {
                optimizer: "GaLore",
                id,
                param: param.shape().to_vec(),
                grad: grad.shape().to_vec(),
            }));
        }
        let p = param.detach().to_dtype(DType::F32)?;
        let g = grad.detach().to_dtype(DType::F32)?.to_device(&param.device())?;
        let decay = self.inner.weight_decay();
        let lr = self.inner.learning_rate();
        let reproject = self.options.reproject_first_moment;
        let p = no_grad(|| -> Result<Tensor> {
            let g = match decay {
                WeightDecay::CoupledL2(wd) => g.add(&p.affine(wd, 0.0)?)?,
                _ => g,
            };
            let slot = self.slots.entry(id).or_insert(Slot { step: 0, projector: None, inner: None });
            let t0 = slot.step;
            let (update, eta) = match self.targets.get(&id) {
                Some(target) => {
                    let proj = match &mut slot.projector {
                        Some(proj) => proj,
                        None => slot.projector.insert(GaLoreProjector::new(target.params, param.shape())?),
                    };
                    if proj.needs_refresh(t0) {
                        let key = ParamKey { id: Some(id), index: target.index };
                        let old = proj.refresh(&g, key, t0, self.source.as_mut())?;
                        if let (true, Some(old), Some(state), Some(new)) =
                            (reproject, old, slot.inner.as_mut(), proj.basis())
                        {
                            self.inner.map_first_moment(state, &mut |m| new.transfer(&old, m))?;
                        }
                    }
                    let r = proj.project_current(&g)?;
                    let state = match &mut slot.inner {
                        Some(s) => s,
                        None => slot.inner.insert(self.inner.init_state(r.shape(), &r.device())?),
                    };
                    let (n, eta) = self.inner.direction(state, &r, t0 + 1)?;
                    (proj.project_back(&n)?.reshape(p.shape())?, eta)
                }
                None => {
                    let state = match &mut slot.inner {
                        Some(s) => s,
                        None => slot.inner.insert(self.inner.init_state(g.shape(), &g.device())?),
                    };
                    self.inner.direction(state, &g, t0 + 1)?
                }
            };
            slot.step = t0 + 1;
            let p = match decay {
                WeightDecay::DecoupledBefore(wd) => p.affine(1.0 - lr * wd, 0.0)?,
                _ => p,
            };
            let p = p.sub(&update.affine(eta, 0.0)?)?;
            Ok(match decay {
                WeightDecay::DecoupledAfter(wd) => p.add(&p.affine(-lr * wd, 0.0)?)?,
                _ => p,
            })
        })?;
        param.replace_data(&p.to_dtype(param.dtype())?.contiguous()?)?;
        Ok(())
    }

    fn export(&self, id: TensorId) -> Option<ParamState> {
        let slot = self.slots.get(&id)?;
        let state = slot.inner.as_ref()?;
        let mut out = ParamState::default();
        out.scalars.insert(STEP.into(), slot.step as f64);
        self.inner.export_state(state, &mut out);
        if let Some(proj) = &slot.projector {
            let (m, n) = proj.matrix();
            out.scalars.insert(K_RANK.into(), proj.rank() as f64);
            out.scalars.insert(K_SIDE.into(), proj.side().code());
            out.scalars.insert(K_M.into(), m as f64);
            out.scalars.insert(K_N.into(), n as f64);
            out.scalars.insert(K_GAP.into(), proj.params().update_proj_gap as f64);
            out.scalars.insert(K_SCALE.into(), proj.params().scale);
            out.scalars.insert(K_SVD.into(), proj.svd_count() as f64);
            match proj.basis() {
                Some(Basis::Left(p) | Basis::Right(p)) => {
                    out.tensors.insert(K_BASIS.into(), p.clone());
                }
                Some(Basis::Both { left, right }) => {
                    out.tensors.insert(K_BASIS_L.into(), left.clone());
                    out.tensors.insert(K_BASIS_R.into(), right.clone());
                }
                None => {}
            }
        }
        Some(out)
    }

    fn import(&mut self, param: &Tensor, state: ParamState) -> Result<()> {
        let id = param_id(param)?;
        let name = self.inner.galore_name();
        let int = |key: &str| -> Result<u64> {
            let v = state.scalar(name, key)?;
            if !(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)) {
                return Err(GaLoreError::BadState(format!("`{key}` = {v} is not a non-negative integer")));
            }
            Ok(v as u64)
        };
        let step = int(STEP)?;
        let has_projector = state.scalars.keys().chain(state.tensors.keys()).any(|k| k.starts_with("galore."));
        let (projector, inner) = match self.targets.get(&id) {
            Some(target) => {
                if !has_projector {
                    return Err(GaLoreError::BadState(format!(
                        "parameter {id} has GaLore settings but the checkpoint has no projector state"
                    )));
                }
                let mut proj = GaLoreProjector::new(target.params, param.shape())?;
                let (m, n) = proj.matrix();
                let expect = [
                    (K_RANK, proj.rank() as f64),
                    (K_SIDE, proj.side().code()),
                    (K_M, m as f64),
                    (K_N, n as f64),
                    (K_GAP, target.params.update_proj_gap as f64),
                    (K_SCALE, target.params.scale),
                ];
                for (key, want) in expect {
                    let got = state.scalar(name, key)?;
                    if got != want {
                        return Err(GaLoreError::BadState(format!(
                            "`{key}` is {got} in the checkpoint but {want} for this parameter and configuration"
                        )));
                    }
                }
                let device = param.device();
                let get = |key: &str| -> Result<Tensor> { Ok(state.tensor(name, key)?.to_device(&device)?) };
                let basis = match proj.side() {
                    crate::Side::Left => Basis::Left(get(K_BASIS)?),
                    crate::Side::Right => Basis::Right(get(K_BASIS)?),
                    crate::Side::Both => Basis::Both { left: get(K_BASIS_L)?, right: get(K_BASIS_R)? },
                };
                proj.set_basis(basis).map_err(|e| GaLoreError::BadState(e.to_string()))?;
                proj.set_svd_count(int(K_SVD)?);
                let inner = self.inner.import_state(&state, &proj.low_rank_shape(), &device)?;
                (Some(proj), inner)
            }
            None => {
                if has_projector {
                    return Err(GaLoreError::BadState(format!(
                        "the checkpoint has projector state for parameter {id}, which has no GaLore settings"
                    )));
                }
                (None, self.inner.import_state(&state, param.shape(), &param.device())?)
            }
        };
        self.slots.insert(id, Slot { step, projector, inner: Some(inner) });
        Ok(())
    }
}

impl<I: InnerOptimizer> Optimizer for GaLore<I> {
    fn step_param(&mut self, param: &mut Tensor, grad: &Tensor) -> effllm_optim::Result<()> {
        Ok(self.update(param, grad)?)
    }

    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.inner.set_learning_rate(lr);
    }

    /// Moments plus projection bases ([`moment_bytes`](GaLore::moment_bytes) + [`basis_bytes`](GaLore::basis_bytes)).
    fn state_bytes(&self) -> usize {
        self.moment_bytes() + self.basis_bytes()
    }

    fn forget(&mut self, id: TensorId) -> bool {
        self.slots.remove(&id).is_some()
    }

    fn name(&self) -> &'static str {
        self.inner.galore_name()
    }

    /// `step`, the inner optimizer's tensors (low-rank for targets) and, for targets, the projector:
    /// `galore.{rank, side, m, n, update_proj_gap, scale, svd_count}` scalars and `galore.basis` (or
    /// `galore.basis_left` / `galore.basis_right` for `full`) tensors. Plain tensors and scalars only.
    fn export_state(&self, id: TensorId) -> Option<ParamState> {
        self.export(id)
    }

    /// Checks the projector state against the parameter's settings (rank, side, shape, gap, scale, basis shapes)
    /// and the moments against the low-rank shape: any mismatch is [`OptimError::BadState`].
    fn import_state(&mut self, param: &Tensor, state: ParamState) -> effllm_optim::Result<()> {
        Ok(self.import(param, state)?)
    }
}

/// effllm-model's attention and FFN projection weights (`layers.{i}.{wq,wk,wv,wo}`, `layers.{i}.ffn.{gate,up,down}`):
/// the parameters galore-torch's scripts give GaLore settings (their `"attn"`/`"mlp"` modules); embeddings, norms
/// and the LM head stay plain.
pub fn is_llama_projection(name: &str, t: &Tensor) -> bool {
    name.starts_with("layers.") && !name.ends_with("_norm") && t.rank() == 2
}
