//! Where bases come from: exact SVD (the reference), randomized SVD (GaLore 2), or replayed / injected bases.

use std::collections::HashMap;

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Tensor, TensorId};

use crate::projector::{Basis, Side};
use crate::{GaLoreError, Result};

/// Which parameter a basis is for: its graph id (when it is a parameter) and its registration index in the
/// optimizer (stable across processes, used to derive random streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamKey {
    /// The parameter's id, `None` for a projector used on its own.
    pub id: Option<TensorId>,
    /// The parameter's registration index (order of [`GaLore::add_target`](crate::GaLore::add_target)).
    pub index: usize,
}

impl ParamKey {
    /// The key of a projector used without an optimizer (index 0, no id).
    pub fn standalone() -> ParamKey {
        ParamKey { id: None, index: 0 }
    }
}

/// One basis computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasisRequest {
    /// The parameter.
    pub param: ParamKey,
    /// Its step count before the update (0, T, 2T, … for scheduled refreshes).
    pub step: u64,
    /// How many bases this projector computed before (0 for the first).
    pub refresh: u64,
    /// The effective rank `r′`.
    pub rank: usize,
    /// The side(s) to return.
    pub side: Side,
}

/// Computes a projection basis of rank `request.rank` on `request.side` from a gradient matrix (`m × n`, f32).
pub trait BasisSource: std::fmt::Debug + Send {
    /// The basis: `U_r` (left, `m × r`), `V_rᵀ` (right, `r × n`) or both.
    fn basis(&mut self, grad: &Tensor, request: &BasisRequest) -> Result<Basis>;
}

fn select(u: &Tensor, v: &Tensor, r: usize, side: Side) -> Result<Basis> {
    let left = || -> Result<Tensor> { Ok(u.narrow(1, 0, r)?.contiguous()?) };
    let right = || -> Result<Tensor> { Ok(v.narrow(1, 0, r)?.t()?.contiguous()?) };
    Ok(match side {
        Side::Left => Basis::Left(left()?),
        Side::Right => Basis::Right(right()?),
        Side::Both => Basis::Both { left: left()?, right: right()? },
    })
}

/// The reference's basis: the thin SVD `G = U diag(s) Vᵀ` in f32 (faer, through effllm-tensor's
/// [`Tensor::thin_svd`]; a CUDA gradient is copied to the host for it), truncated to the first `r` singular
/// vectors. Singular vectors are unique up to sign; this source keeps faer's signs (the reference keeps LAPACK's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactSvd;

impl BasisSource for ExactSvd {
    fn basis(&mut self, grad: &Tensor, request: &BasisRequest) -> Result<Basis> {
        let g = grad.detach().to_dtype(DType::F32)?;
        let (u, _s, v) = g.thin_svd()?;
        select(&u, &v, request.rank, request.side)
    }
}

/// Randomized SVD (Halko, Martinsson and Tropp; the GaLore 2 choice): a Gaussian sketch `Y = G Ω` with
/// `k = r + oversample` columns, `power_iters` subspace iterations `Q ← qr(G qr(Gᵀ Q))`, then the exact SVD of the
/// small `k × n` matrix `Qᵀ G`. The sketch of a parameter's `i`-th refresh is a pure function of
/// `(seed, parameter index, i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomizedSvd {
    /// Extra sketch columns beyond `r` (default 8).
    pub oversample: usize,
    /// Subspace (power) iterations (default 2).
    pub power_iters: usize,
    /// Seed of the Gaussian sketches.
    pub seed: u64,
}

impl Default for RandomizedSvd {
    fn default() -> Self {
        RandomizedSvd { oversample: 8, power_iters: 2, seed: 0 }
    }
}

impl BasisSource for RandomizedSvd {
    fn basis(&mut self, grad: &Tensor, request: &BasisRequest) -> Result<Basis> {
        let g = grad.detach().to_dtype(DType::F32)?;
        let (m, n) = match *g.shape() {
            [m, n] => (m, n),
            _ => return Err(GaLoreError::NotAMatrix { shape: g.shape().to_vec(), msg: "randomized SVD".into() }),
        };
        let k = (request.rank + self.oversample).min(m).min(n);
        let rng = CounterRng::new(self.seed, request.param.index as u64);
        let omega = Tensor::randn(&[n, k], DType::F32, &g.device(), &rng, request.refresh * (n * k) as u64, 0.0, 1.0)?;
        let gt = g.t()?;
        let mut q = g.matmul(&omega)?.qr()?.0;
        for _ in 0..self.power_iters {
            let z = gt.matmul(&q)?.qr()?.0;
            q = g.matmul(&z)?.qr()?.0;
        }
        let b = q.t()?.matmul(&g)?; // k × n
        let (ub, _s, v) = b.thin_svd()?;
        let u = q.matmul(&ub)?;
        select(&u, &v, request.rank, request.side)
    }
}

/// Bases given in advance, per parameter: a list replayed in refresh order (golden tests replaying another
/// implementation's bases), or one fixed basis returned at every refresh (an injected basis, e.g. the identity).
#[derive(Clone, Debug, Default)]
pub struct Replay {
    lists: HashMap<TensorId, Vec<Basis>>,
    fixed: HashMap<TensorId, Basis>,
}

impl Replay {
    /// An empty source.
    pub fn new() -> Replay {
        Replay::default()
    }

    /// Appends `basis` as the next refresh's basis of parameter `id`.
    pub fn push(&mut self, id: TensorId, basis: Basis) -> &mut Replay {
        self.lists.entry(id).or_default().push(basis);
        self
    }

    /// Returns `basis` at every refresh of parameter `id`.
    pub fn fixed(&mut self, id: TensorId, basis: Basis) -> &mut Replay {
        self.fixed.insert(id, basis);
        self
    }
}

impl BasisSource for Replay {
    fn basis(&mut self, _grad: &Tensor, request: &BasisRequest) -> Result<Basis> {
        let id = request.param.id.ok_or_else(|| GaLoreError::BadBasis("replay needs a parameter id".into()))?;
        if let Some(b) = self.fixed.get(&id) {
            return Ok(b.clone());
        }
        self.lists
            .get(&id)
            .and_then(|l| l.get(request.refresh as usize))
            .cloned()
            .ok_or(GaLoreError::ReplayExhausted { param: id, refresh: request.refresh })
    }
}

impl<S: BasisSource + ?Sized> BasisSource for Box<S> {
    fn basis(&mut self, grad: &Tensor, request: &BasisRequest) -> Result<Basis> {
        (**self).basis(grad, request)
    }
}
