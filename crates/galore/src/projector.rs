//! The GaLore projector: which side is projected, the basis, and the refresh rule.

use effllm_tensor::{DType, Tensor};

use crate::basis::{BasisRequest, BasisSource, ParamKey};
use crate::{GaLoreError, Result};

/// How a gradient `G ∈ R^{m×n}` is projected (galore-torch's `proj_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProjType {
    /// The smaller side: right (`R = G Pᵀ`, `P = V_rᵀ`) if `m ≥ n`, else left (`R = Pᵀ G`, `P = U_r`). The
    /// reference's default.
    #[default]
    Std,
    /// The larger side: left if `m ≥ n`, else right.
    ReverseStd,
    /// Always left: `R = Pᵀ G` with `P = U_r` (`m × r`).
    Left,
    /// Always right: `R = G Pᵀ` with `P = V_rᵀ` (`r × n`).
    Right,
    /// Both sides: `R = Aᵀ G Bᵀ` with `A = U_r`, `B = V_rᵀ` (`R` is `r × r`).
    Full,
}

impl ProjType {
    /// The side this type projects a `m × n` matrix on. Decided once, from the parameter's shape, and stored: the
    /// reference re-infers it from the low-rank tensor's shape in `project_back`, which picks the wrong side for
    /// `reverse_std` when `m < n` and `r ≥ m` (square `R`).
    pub fn side(self, m: usize, n: usize) -> Side {
        match self {
            ProjType::Std if m >= n => Side::Right,
            ProjType::Std => Side::Left,
            ProjType::ReverseStd if m >= n => Side::Left,
            ProjType::ReverseStd => Side::Right,
            ProjType::Left => Side::Left,
            ProjType::Right => Side::Right,
            ProjType::Full => Side::Both,
        }
    }

    /// The type named as in galore-torch (`"std"`, `"reverse_std"`, `"left"`, `"right"`, `"full"`).
    pub fn from_name(name: &str) -> Option<ProjType> {
        Some(match name {
            "std" => ProjType::Std,
            "reverse_std" => ProjType::ReverseStd,
            "left" => ProjType::Left,
            "right" => ProjType::Right,
            "full" => ProjType::Full,
            _ => return None,
        })
    }
}

/// The side(s) a projector multiplies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// `R = Pᵀ G`, back: `P N`; `P` is `m × r`, `R` is `r × n`.
    Left,
    /// `R = G Pᵀ`, back: `N P`; `P` is `r × n`, `R` is `m × r`.
    Right,
    /// `R = Aᵀ G Bᵀ`, back: `A N B`; `A` is `m × r`, `B` is `r × n`, `R` is `r × r`.
    Both,
}

impl Side {
    /// The code stored in checkpoints (0 left, 1 right, 2 both).
    pub fn code(self) -> f64 {
        match self {
            Side::Left => 0.0,
            Side::Right => 1.0,
            Side::Both => 2.0,
        }
    }
}

/// A projection basis (f32, contiguous, on the gradient's device).
#[derive(Clone, Debug)]
pub enum Basis {
    /// `P = U_r`, `m × r`, orthonormal columns.
    Left(Tensor),
    /// `P = V_rᵀ`, `r × n`, orthonormal rows.
    Right(Tensor),
    /// `A = U_r` (`m × r`) and `B = V_rᵀ` (`r × n`).
    Both {
        /// The left factor `A`.
        left: Tensor,
        /// The right factor `B`.
        right: Tensor,
    },
}

impl Basis {
    /// The side(s) this basis projects on.
    pub fn side(&self) -> Side {
        match self {
            Basis::Left(_) => Side::Left,
            Basis::Right(_) => Side::Right,
            Basis::Both { .. } => Side::Both,
        }
    }

    /// Bytes held by the basis tensors.
    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Basis::Left(p) | Basis::Right(p) => b(p),
            Basis::Both { left, right } => b(left) + b(right),
        }
    }

    /// Checks that the basis fits a `m × n` matrix at rank `r` on `side`, and returns it as contiguous f32.
    pub(crate) fn validated(self, side: Side, m: usize, n: usize, r: usize) -> Result<Basis> {
        if self.side() != side {
            return Err(GaLoreError::BadBasis(format!("a {:?} basis for a {side:?} projector", self.side())));
        }
        let fit = |t: Tensor, shape: [usize; 2], what: &str| -> Result<Tensor> {
            if t.shape() != shape {
                return Err(GaLoreError::BadBasis(format!(
                    "{what} has shape {:?}, the {m}x{n} matrix at rank {r} needs {shape:?}",
                    t.shape()
                )));
            }
            Ok(t.detach().to_dtype(DType::F32)?.contiguous()?)
        };
        Ok(match self {
            Basis::Left(p) => Basis::Left(fit(p, [m, r], "the left basis")?),
            Basis::Right(p) => Basis::Right(fit(p, [r, n], "the right basis")?),
            Basis::Both { left, right } => Basis::Both {
                left: fit(left, [m, r], "the left factor")?,
                right: fit(right, [r, n], "the right factor")?,
            },
        })
    }
}

/// The GaLore settings of one parameter (a galore-torch parameter group's `rank`, `update_proj_gap`, `scale`,
/// `proj_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaLoreParams {
    /// Requested rank `r` (≥ 1). Capped at `min(m, n)`; the effective rank is [`GaLoreProjector::rank`].
    pub rank: usize,
    /// Refresh gap `T` (≥ 1): the basis is recomputed at per-parameter steps 0, T, 2T, ….
    pub update_proj_gap: u64,
    /// Scale `α` applied to the back-projected update.
    pub scale: f64,
    /// Projection type.
    pub proj_type: ProjType,
    /// How to view a parameter that is not 2-D as a matrix `(m, n)` (`m · n` must be its element count). `None`
    /// for 2-D parameters; a >2-D parameter without it is an error.
    pub matrix_shape: Option<(usize, usize)>,
}

impl Default for GaLoreParams {
    /// rank 128, `T` = 200, `α` = 0.25, `Std` (the HF transformers `optim_args` defaults).
    fn default() -> Self {
        GaLoreParams { rank: 128, update_proj_gap: 200, scale: 0.25, proj_type: ProjType::Std, matrix_shape: None }
    }
}

impl GaLoreParams {
    /// Checks the settings' domains.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: f64, expected| Err(GaLoreError::InvalidSetting { name, value, expected });
        if self.rank == 0 {
            return bad("rank", 0.0, ">= 1");
        }
        if self.update_proj_gap == 0 {
            return bad("update_proj_gap", 0.0, ">= 1");
        }
        if !self.scale.is_finite() {
            return bad("scale", self.scale, "a finite value");
        }
        Ok(())
    }

    /// The matrix `(m, n)` a parameter of `shape` is projected as.
    pub fn matrix_of(&self, shape: &[usize]) -> Result<(usize, usize)> {
        let numel: usize = shape.iter().product();
        match (self.matrix_shape, shape) {
            (Some((m, n)), _) if m.checked_mul(n) == Some(numel) && m > 0 && n > 0 => Ok((m, n)),
            (Some((m, n)), _) => Err(GaLoreError::NotAMatrix {
                shape: shape.to_vec(),
                msg: format!("the declared matrix view {m}x{n} does not hold its {numel} elements"),
            }),
            (None, &[m, n]) if m > 0 && n > 0 => Ok((m, n)),
            (None, &[_, _]) => Err(GaLoreError::NotAMatrix { shape: shape.to_vec(), msg: "an empty matrix".into() }),
            (None, _) => Err(GaLoreError::NotAMatrix {
                shape: shape.to_vec(),
                msg: "not 2-D; declare `matrix_shape` to project it as a matrix".into(),
            }),
        }
    }
}

/// One parameter's projector: the effective rank, the stored side, the current basis and the refresh rule.
///
/// `project(G, t)` refreshes the basis iff there is none yet or `t mod T = 0` (`t` = the parameter's step count
/// before the update, so refreshes happen at steps 0, T, 2T, …), then returns the low-rank gradient `R`;
/// `project_back(N)` returns `α · back(N)` in the full `m × n` space.
#[derive(Clone, Debug)]
pub struct GaLoreProjector {
    params: GaLoreParams,
    m: usize,
    n: usize,
    side: Side,
    rank: usize,
    basis: Option<Basis>,
    svd_count: u64,
}

impl GaLoreProjector {
    /// A projector without a basis for a parameter of `shape`, after checking `params` (rank and gap ≥ 1, finite
    /// scale) and the shape (2-D, or a declared matrix view). A rank above `min(m, n)` is capped; compare
    /// [`rank`](Self::rank) with [`requested_rank`](Self::requested_rank).
    pub fn new(params: GaLoreParams, shape: &[usize]) -> Result<GaLoreProjector> {
        params.validate()?;
        let (m, n) = params.matrix_of(shape)?;
        let rank = params.rank.min(m).min(n);
        Ok(GaLoreProjector { params, m, n, side: params.proj_type.side(m, n), rank, basis: None, svd_count: 0 })
    }

    /// The settings.
    pub fn params(&self) -> &GaLoreParams {
        &self.params
    }

    /// The matrix shape `(m, n)`.
    pub fn matrix(&self) -> (usize, usize) {
        (self.m, self.n)
    }

    /// The side(s) projected on, fixed at construction.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The effective rank `r′ = min(r, m, n)`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The rank asked for.
    pub fn requested_rank(&self) -> usize {
        self.params.rank
    }

    /// The current basis (`None` before the first projection).
    pub fn basis(&self) -> Option<&Basis> {
        self.basis.as_ref()
    }

    /// How many times the basis was computed by a [`BasisSource`] (SVDs, for the SVD sources).
    pub fn svd_count(&self) -> u64 {
        self.svd_count
    }

    /// The shape of `R`: `[r′, n]` (left), `[m, r′]` (right) or `[r′, r′]` (both).
    pub fn low_rank_shape(&self) -> [usize; 2] {
        match self.side {
            Side::Left => [self.rank, self.n],
            Side::Right => [self.m, self.rank],
            Side::Both => [self.rank, self.rank],
        }
    }

    /// Whether `project` at per-parameter step `step` recomputes the basis.
    pub fn needs_refresh(&self, step: u64) -> bool {
        self.basis.is_none() || step.is_multiple_of(self.params.update_proj_gap)
    }

    /// Installs `basis` (checked against side, shape and rank) and returns the previous one.
    pub fn set_basis(&mut self, basis: Basis) -> Result<Option<Basis>> {
        let basis = basis.validated(self.side, self.m, self.n, self.rank)?;
        Ok(self.basis.replace(basis))
    }

    /// Sets the refresh count (restoring from a checkpoint).
    pub(crate) fn set_svd_count(&mut self, count: u64) {
        self.svd_count = count;
    }

    /// `grad` as the `m × n` f32 matrix the projector works on.
    pub fn as_matrix(&self, grad: &Tensor) -> Result<Tensor> {
        Ok(grad.detach().to_dtype(DType::F32)?.contiguous()?.reshape(&[self.m, self.n])?)
    }

    /// Recomputes the basis from `grad` (the parameter's gradient, `m · n` elements) through `source` at
    /// per-parameter step `step`; returns the previous basis.
    pub fn refresh(
        &mut self,
        grad: &Tensor,
        param: ParamKey,
        step: u64,
        source: &mut dyn BasisSource,
    ) -> Result<Option<Basis>> {
        let g = self.as_matrix(grad)?;
        let request = BasisRequest { param, step, refresh: self.svd_count, rank: self.rank, side: self.side };
        let basis = source.basis(&g, &request)?;
        let old = self.set_basis(basis)?;
        self.svd_count += 1;
        Ok(old)
    }

    /// `R`, the projection of `grad` (any shape with `m · n` elements) on the current basis.
    pub fn project_current(&self, grad: &Tensor) -> Result<Tensor> {
        let basis =
            self.basis.as_ref().ok_or_else(|| GaLoreError::BadBasis("the projector has no basis yet".into()))?;
        let g = self.as_matrix(grad)?;
        Ok(match basis {
            Basis::Left(p) => p.t()?.matmul(&g)?,
            Basis::Right(p) => g.matmul(&p.t()?)?,
            Basis::Both { left, right } => left.t()?.matmul(&g)?.matmul(&right.t()?)?,
        })
    }

    /// The reference's `project(G, step)`: refreshes the basis when [`needs_refresh`](Self::needs_refresh), then
    /// projects.
    pub fn project(
        &mut self,
        grad: &Tensor,
        param: ParamKey,
        step: u64,
        source: &mut dyn BasisSource,
    ) -> Result<Tensor> {
        if self.needs_refresh(step) {
            self.refresh(grad, param, step, source)?;
        }
        self.project_current(grad)
    }

    /// `α · back(low)` as an `m × n` matrix: `α P N` (left), `α N P` (right), `α A N B` (both). The side is the stored
    /// one, never inferred from `low`'s shape.
    pub fn project_back(&self, low: &Tensor) -> Result<Tensor> {
        let basis =
            self.basis.as_ref().ok_or_else(|| GaLoreError::BadBasis("the projector has no basis yet".into()))?;
        let want = self.low_rank_shape();
        if low.shape() != want {
            return Err(GaLoreError::Tensor(effllm_tensor::Error::ShapeMismatch {
                op: "GaLoreProjector::project_back",
                lhs: low.shape().to_vec(),
                rhs: want.to_vec(),
            }));
        }
        let full = match basis {
            Basis::Left(p) => p.matmul(low)?,
            Basis::Right(p) => low.matmul(p)?,
            Basis::Both { left, right } => left.matmul(low)?.matmul(right)?,
        };
        // α = 1 leaves the product untouched, so an identity basis is bitwise the plain optimizer.
        Ok(if self.params.scale == 1.0 { full } else { full.affine(self.params.scale, 0.0)? })
    }

    /// Bytes held by the basis.
    pub fn basis_bytes(&self) -> usize {
        self.basis.as_ref().map_or(0, Basis::bytes)
    }
}

impl Basis {
    /// Carries a first moment `M` expressed in `old`'s coordinates into `self`'s (FLoRA-style re-projection):
    /// `P_newᵀ P_old M` (left), `M P_old P_newᵀ` (right), `A_newᵀ A_old M B_old B_newᵀ` (both). Exact when the new
    /// subspace contains the old one; otherwise the part of `back(M)` outside the new subspace is dropped.
    pub fn transfer(&self, old: &Basis, moment: &Tensor) -> Result<Tensor> {
        Ok(match (old, self) {
            (Basis::Left(po), Basis::Left(pn)) => pn.t()?.matmul(&po.matmul(moment)?)?,
            (Basis::Right(po), Basis::Right(pn)) => moment.matmul(po)?.matmul(&pn.t()?)?,
            (Basis::Both { left: ao, right: bo }, Basis::Both { left: an, right: bn }) => {
                an.t()?.matmul(ao)?.matmul(moment)?.matmul(&bo.matmul(&bn.t()?)?)?
            }
            (o, n) => {
                return Err(GaLoreError::BadBasis(format!(
                    "cannot carry a moment from a {:?} basis to a {:?} one",
                    o.side(),
                    n.side()
                )));
            }
        })
    }
}
