//! [`PrunedFfn`]: an FFN restricted to one sequence's experts.

use effllm_model::Linear;
use effllm_tensor::{DType, Device, Tensor};

use crate::config::PrunedStorage;
use crate::error::{GriffinError, Result};
use crate::ffn::{Ffn, FfnForm, GatedFfn, add_bias, intermediate_of};
use crate::packed::PackedDown;
use crate::select::ExpertSet;

/// The down projection of a gathered copy.
#[derive(Clone, Debug)]
enum Down {
    /// A linear map over the experts: the dense weight itself (identity `E`) or its gathered f32 columns.
    Linear(Linear),
    /// Block-quantized columns in the exact packed form.
    Packed(PackedDown),
}

/// The gathered weights of [`PrunedStorage::Copy`].
#[derive(Clone, Debug)]
struct Gathered {
    form: FfnForm,
    gate: Option<Linear>,
    up: Linear,
    b1: Option<Tensor>,
    down: Down,
    b2: Option<Tensor>,
}

/// Dense f32 `(W_gate[E,:], W_up[E,:], W_down[:, E])`, row-major; the gate is `None` for the plain form.
pub type DenseWeights = (Option<Vec<f32>>, Vec<f32>, Vec<f32>);

#[derive(Clone, Debug)]
enum Kind {
    /// `k = 0`: the output is 0 (plus `b_2`), as the reference's `0 · x`.
    Empty { b2: Option<Tensor> },
    /// Gathered copies ([`PrunedStorage::Copy`]).
    Copy(Box<Gathered>),
    /// The dense weights and the 0/1 mask on `E` ([`PrunedStorage::Gather`]).
    Mask { ffn: Box<Ffn>, mask: Tensor },
}

/// `FF_E(x) = W_down[:, E] (act(W_gate[E,:] x) ⊙ W_up[E,:] x)` (GLU) or `W_2[:, E] act(W_1[E,:] x + b_1[E]) + b_2`
/// (plain): the FFN of one sequence after its experts `E` were chosen.
///
/// With [`PrunedStorage::Copy`] the rows of gate/up are gathered (block-quantized rows stay blocks, so the fused
/// GEMV kernels run on `k` rows instead of `d_ff`) and the columns of a Q4_0/Q4_1 down are packed exactly
/// ([`PackedDown`]); other down weights get f32 columns. When `E` is every neuron in order, the dense weights are
/// used as they are, so density 1 is bitwise the dense FFN. With [`PrunedStorage::Gather`] nothing is copied: the
/// intermediate of the dense FFN is multiplied by the mask on `E` (invariant 6's mask form).
#[derive(Clone, Debug)]
pub struct PrunedFfn {
    experts: ExpertSet,
    d_model: usize,
    d_ff: usize,
    device: Device,
    kind: Kind,
}

impl PrunedFfn {
    /// Prunes `ffn` to `e` with `storage`.
    pub fn gather(ffn: &Ffn, e: &ExpertSet, storage: PrunedStorage) -> Result<PrunedFfn> {
        let (d_model, d_ff) = (ffn.d_model(), ffn.d_ff());
        let e = ExpertSet::new(e.idx.clone(), d_ff)?;
        let device = ffn.up.device();
        let kind = if e.is_empty() {
            Kind::Empty { b2: ffn.b2.clone() }
        } else {
            match storage {
                PrunedStorage::Gather => {
                    let mask = Tensor::from_vec(e.mask(d_ff), &[d_ff], &device)?;
                    Kind::Mask { ffn: Box::new(ffn.clone()), mask }
                }
                PrunedStorage::Copy if e.is_identity(d_ff) => Kind::Copy(Box::new(Gathered {
                    form: ffn.form,
                    gate: ffn.gate.clone(),
                    up: ffn.up.clone(),
                    b1: ffn.b1.clone(),
                    down: Down::Linear(ffn.down.clone()),
                    b2: ffn.b2.clone(),
                })),
                PrunedStorage::Copy => {
                    let ids = Tensor::from_slice(&e.idx, &[e.len()], &device)?;
                    let down = match &ffn.down {
                        Linear::Quant(q) if PackedDown::supports(q.quant_type()) => {
                            match PackedDown::new(q.matrix(), &e.idx)? {
                                Some(p) => Down::Packed(p.to_device(&q.device())?),
                                None => Down::Linear(ffn.down.select_cols(&e.idx)?),
                            }
                        }
                        other => Down::Linear(other.select_cols(&e.idx)?),
                    };
                    Kind::Copy(Box::new(Gathered {
                        form: ffn.form,
                        gate: ffn.gate.as_ref().map(|g| g.select_rows(&e.idx)).transpose()?,
                        up: ffn.up.select_rows(&e.idx)?,
                        b1: ffn.b1.as_ref().map(|b| b.index_select(0, &ids)).transpose()?,
                        down,
                        b2: ffn.b2.clone(),
                    }))
                }
            }
        };
        Ok(PrunedFfn { experts: e, d_model, d_ff, device, kind })
    }

    /// The experts, in gathered order.
    pub fn experts(&self) -> &ExpertSet {
        &self.experts
    }

    /// `k`.
    pub fn k(&self) -> usize {
        self.experts.len()
    }

    /// Residual width.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Width of the dense FFN this was pruned from.
    pub fn d_ff(&self) -> usize {
        self.d_ff
    }

    /// Whether the down projection is held in the packed quantized form.
    pub fn is_packed(&self) -> bool {
        matches!(&self.kind, Kind::Copy(g) if matches!(g.down, Down::Packed(_)))
    }

    /// Bytes of weights a decode step reads: the gathered copies, or the dense weights for the mask form.
    pub fn weight_bytes(&self) -> usize {
        match &self.kind {
            Kind::Empty { .. } => 0,
            Kind::Copy(g) => {
                g.gate.as_ref().map_or(0, Linear::nbytes)
                    + g.up.nbytes()
                    + match &g.down {
                        Down::Linear(l) => l.nbytes(),
                        Down::Packed(p) => p.nbytes(),
                    }
            }
            Kind::Mask { ffn, .. } => ffn.gate.as_ref().map_or(0, Linear::nbytes) + ffn.up.nbytes() + ffn.down.nbytes(),
        }
    }

    fn check_input(&self, x: &Tensor, op: &'static str) -> Result<()> {
        if x.rank() != 2 || x.shape()[1] != self.d_model {
            return Err(GriffinError::ShapeMismatch {
                op,
                expected: vec![x.shape().first().copied().unwrap_or(0), self.d_model],
                found: x.shape().to_vec(),
            });
        }
        Ok(())
    }

    /// The pruned intermediate `z_E` = `[T, k]` (in expert order; for the mask form `[T, d_ff]` with zeros off
    /// `E`).
    pub fn intermediate(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x, "PrunedFfn::intermediate")?;
        match &self.kind {
            Kind::Empty { .. } => Ok(Tensor::zeros(&[x.shape()[0], 0], x.dtype(), &x.device())?),
            Kind::Copy(g) => intermediate_of(g.form, g.gate.as_ref(), &g.up, g.b1.as_ref(), x),
            Kind::Mask { ffn, mask } => Ok(ffn.intermediate(x)?.mul(&mask.to_dtype(x.dtype())?)?),
        }
    }

    /// `FF_E(x)`: `[T, d] → [T, d]`, every row with this sequence's experts.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x, "PrunedFfn::forward")?;
        match &self.kind {
            Kind::Empty { b2 } => {
                add_bias(Tensor::zeros(&[x.shape()[0], self.d_model], x.dtype(), &x.device())?, b2.as_ref())
            }
            Kind::Copy(g) => {
                let z = self.intermediate(x)?;
                let y = match &g.down {
                    Down::Linear(l) => l.forward(&z)?,
                    Down::Packed(p) => p.forward(&z)?.to_dtype(x.dtype())?,
                };
                add_bias(y, g.b2.as_ref())
            }
            Kind::Mask { ffn, .. } => ffn.down(&self.intermediate(x)?),
        }
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The pruned weights as dense f32 `(W_gate[E,:], W_up[E,:], W_down[:, E])` (gate `None` for the plain form),
    /// for inspection and tests; the mask form reports the rows/columns of its dense weights.
    pub fn dense_weights(&self) -> Result<DenseWeights> {
        let ids = Tensor::from_slice(&self.experts.idx, &[self.k()], &Device::Cpu)?;
        let host =
            |l: &Linear| -> Result<Tensor> { Ok(l.to_dense_f32()?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?) };
        match &self.kind {
            Kind::Empty { .. } => Ok((None, Vec::new(), Vec::new())),
            Kind::Copy(gw) => {
                let Gathered { gate, up, down, .. } = gw.as_ref();
                let g = gate.as_ref().map(|g| -> Result<Vec<f32>> { Ok(host(g)?.to_vec::<f32>()?) }).transpose()?;
                let u = host(up)?.to_vec::<f32>()?;
                let dn = match down {
                    Down::Linear(l) => host(l)?.to_vec::<f32>()?,
                    Down::Packed(p) => p.dequantize(),
                };
                Ok((g, u, dn))
            }
            Kind::Mask { ffn, .. } => {
                let rows = |l: &Linear| -> Result<Vec<f32>> { Ok(host(l)?.index_select(0, &ids)?.to_vec::<f32>()?) };
                let g = ffn.gate.as_ref().map(rows).transpose()?;
                let u = rows(&ffn.up)?;
                let dn = host(&ffn.down)?.index_select(1, &ids)?.contiguous()?.to_vec::<f32>()?;
                Ok((g, u, dn))
            }
        }
    }
}
