//! The FFN forms GRIFFIN prunes ([`FfnForm`]), the [`GatedFfn`] trait a model's MLP implements, and [`Ffn`], a
//! stand-alone FFN of any supported form over effllm [`Linear`] weights.

use effllm_model::{Linear, LlamaFfn};
use effllm_tensor::{DType, Tensor};

use crate::config::PrunedStorage;
use crate::error::{GriffinError, Result};
use crate::pruned::PrunedFfn;
use crate::select::ExpertSet;

/// The activation of an FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `x·σ(x)` (SwiGLU: Llama, Mistral, SmolLM).
    Silu,
    /// GELU, tanh approximation (GEGLU: Gemma).
    Gelu,
    /// GELU, exact erf form.
    GeluErf,
    /// `max(x, 0)` (ReLU-GLU: ReluLlama; plain ReLU FF: OPT).
    Relu,
}

impl Act {
    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Act::Silu => x.silu()?,
            Act::Gelu => x.gelu()?,
            Act::GeluErf => x.gelu_erf()?,
            Act::Relu => x.relu()?,
        })
    }
}

/// The shape of an FFN block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnForm {
    /// `W_down (act(W_gate x) ⊙ W_up x)`.
    Glu {
        /// The gate's activation.
        act: Act,
    },
    /// `W_2 act(W_1 x + b_1) + b_2` (OPT).
    Plain {
        /// The activation.
        act: Act,
        /// Whether `b_1` and `b_2` exist.
        bias: bool,
    },
}

/// What GRIFFIN needs from a model's FFN: its intermediate `Z` (the statistic's input), the down projection, and a
/// pruned copy on a set of neurons. Implemented for effllm-model's [`LlamaFfn`] (SwiGLU) and for [`Ffn`] (any
/// [`FfnForm`]).
pub trait GatedFfn {
    /// Residual width `d`.
    fn d_model(&self) -> usize;
    /// Intermediate width `d_ff`.
    fn d_ff(&self) -> usize;
    /// The form.
    fn form(&self) -> FfnForm;
    /// `Z` = `[T, d] → [T, d_ff]`, the tensor fed into the down projection.
    fn intermediate(&self, x: &Tensor) -> Result<Tensor>;
    /// `[T, d_ff] → [T, d]` (adds `b_2` for the plain form).
    fn down(&self, z: &Tensor) -> Result<Tensor>;
    /// The whole block.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down(&self.intermediate(x)?)
    }
    /// The block restricted to the neurons `e`.
    fn gather(&self, e: &ExpertSet, storage: PrunedStorage) -> Result<PrunedFfn>;
    /// The magnitude baseline's per-neuron score: `‖W_gate[j,:]‖·‖W_up[j,:]‖` (GLU) or `‖W_1[j,:]‖` (plain), each
    /// norm in f64 rounded to f32 and the product taken in f32.
    fn weight_row_norms(&self) -> Result<Vec<f32>>;
}

/// A feed-forward block of any [`FfnForm`] over [`Linear`] weights (dense or block-quantized; `[out, in]`).
#[derive(Clone, Debug)]
pub struct Ffn {
    pub(crate) form: FfnForm,
    pub(crate) gate: Option<Linear>,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) b1: Option<Tensor>,
    pub(crate) b2: Option<Tensor>,
}

fn shape_err(op: &'static str, expected: Vec<usize>, found: Vec<usize>) -> GriffinError {
    GriffinError::ShapeMismatch { op, expected, found }
}

fn dims(l: &Linear) -> Vec<usize> {
    vec![l.out_features(), l.in_features()]
}

impl Ffn {
    /// A gated FFN `W_down (act(W_gate x) ⊙ W_up x)`: gate and up `[d_ff, d]`, down `[d, d_ff]`.
    pub fn glu(gate: Linear, up: Linear, down: Linear, act: Act) -> Result<Ffn> {
        Ffn::from_parts(FfnForm::Glu { act }, Some(gate), up, down, None, None)
    }

    /// A plain FFN `W_2 act(W_1 x + b_1) + b_2` (OPT): `W_1` `[d_ff, d]`, `W_2` `[d, d_ff]`, biases `[d_ff]`, `[d]`.
    pub fn plain(w1: Linear, b1: Option<Tensor>, w2: Linear, b2: Option<Tensor>, act: Act) -> Result<Ffn> {
        let bias = b1.is_some() || b2.is_some();
        Ffn::from_parts(FfnForm::Plain { act, bias }, None, w1, w2, b1, b2)
    }

    /// An FFN from parts, checked: a [`FfnForm::Glu`] without a gate is [`GriffinError::NotGated`]; a plain form
    /// with a gate, or any shape that does not fit, is an error.
    pub fn from_parts(
        form: FfnForm,
        gate: Option<Linear>,
        up: Linear,
        down: Linear,
        b1: Option<Tensor>,
        b2: Option<Tensor>,
    ) -> Result<Ffn> {
        let (d_ff, d) = (up.out_features(), up.in_features());
        match (form, &gate) {
            (FfnForm::Glu { .. }, None) => {
                return Err(GriffinError::NotGated { msg: "a GLU form was declared but no W_gate was given".into() });
            }
            (FfnForm::Glu { .. }, Some(g)) => {
                if dims(g) != [d_ff, d] {
                    return Err(shape_err("Ffn (W_gate)", vec![d_ff, d], dims(g)));
                }
                if b1.is_some() || b2.is_some() {
                    return Err(crate::error::invalid("Ffn", "biases belong to the plain form"));
                }
            }
            (FfnForm::Plain { .. }, Some(_)) => {
                return Err(crate::error::invalid("Ffn", "a plain (non-gated) FFN has no W_gate"));
            }
            (FfnForm::Plain { .. }, None) => {}
        }
        if dims(&down) != [d, d_ff] {
            return Err(shape_err("Ffn (W_down)", vec![d, d_ff], dims(&down)));
        }
        if let Some(b) = &b1
            && b.shape() != [d_ff]
        {
            return Err(shape_err("Ffn (b_1)", vec![d_ff], b.shape().to_vec()));
        }
        if let Some(b) = &b2
            && b.shape() != [d]
        {
            return Err(shape_err("Ffn (b_2)", vec![d], b.shape().to_vec()));
        }
        Ok(Ffn { form, gate, up, down, b1, b2 })
    }

    /// The SwiGLU FFN of a Llama layer (weights shared, not copied).
    pub fn from_llama(f: &LlamaFfn) -> Result<Ffn> {
        Ffn::glu(f.gate.clone(), f.up.clone(), f.down.clone(), Act::Silu)
    }

    /// `W_gate` (GLU) or `None` (plain).
    pub fn gate(&self) -> Option<&Linear> {
        self.gate.as_ref()
    }
    /// `W_up` (GLU) or `W_1` (plain).
    pub fn up(&self) -> &Linear {
        &self.up
    }
    /// `W_down` (GLU) or `W_2` (plain).
    pub fn down_weight(&self) -> &Linear {
        &self.down
    }
    /// `b_1`.
    pub fn b1(&self) -> Option<&Tensor> {
        self.b1.as_ref()
    }
    /// `b_2`.
    pub fn b2(&self) -> Option<&Tensor> {
        self.b2.as_ref()
    }

    pub(crate) fn check_input(&self, x: &Tensor, op: &'static str) -> Result<()> {
        let d = self.up.in_features();
        if x.rank() != 2 || x.shape()[1] != d {
            return Err(shape_err(op, vec![x.shape().first().copied().unwrap_or(0), d], x.shape().to_vec()));
        }
        Ok(())
    }
}

/// `Z` from (possibly gathered) weights: the shared code of the dense and the pruned FFN.
pub(crate) fn intermediate_of(
    form: FfnForm,
    gate: Option<&Linear>,
    up: &Linear,
    b1: Option<&Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    match (form, gate) {
        // The same two calls as `LlamaFfn::intermediate`, so a Llama FFN run through `Ffn` is bitwise the model's.
        (FfnForm::Glu { act: Act::Silu }, Some(g)) => {
            let mut v = Linear::forward_many(&[g, up], x)?;
            let u = v.pop().ok_or_else(|| crate::error::invalid("FFN", "missing up output"))?;
            let g = v.pop().ok_or_else(|| crate::error::invalid("FFN", "missing gate output"))?;
            Ok(g.swiglu(&u)?)
        }
        (FfnForm::Glu { act }, Some(g)) => {
            let mut v = Linear::forward_many(&[g, up], x)?;
            let u = v.pop().ok_or_else(|| crate::error::invalid("FFN", "missing up output"))?;
            let g = v.pop().ok_or_else(|| crate::error::invalid("FFN", "missing gate output"))?;
            Ok(act.apply(&g)?.mul(&u)?)
        }
        (FfnForm::Glu { .. }, None) => Err(GriffinError::NotGated { msg: "no W_gate".into() }),
        (FfnForm::Plain { act, .. }, _) => {
            let h = up.forward(x)?;
            let h = match b1 {
                Some(b) => h.add(&b.to_dtype(h.dtype())?)?,
                None => h,
            };
            act.apply(&h)
        }
    }
}

pub(crate) fn add_bias(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    Ok(match b {
        Some(b) => y.add(&b.to_dtype(y.dtype())?)?,
        None => y,
    })
}

/// Per-row ℓ2 norms of a weight, each in f64 rounded to f32.
fn row_norms(l: &Linear) -> Result<Vec<f32>> {
    let w = l.to_dense_f32()?.to_dtype(DType::F32)?.to_vec::<f32>()?;
    let cols = l.in_features().max(1);
    Ok(w.chunks_exact(cols)
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32)
        .collect())
}

impl GatedFfn for Ffn {
    fn d_model(&self) -> usize {
        self.up.in_features()
    }

    fn d_ff(&self) -> usize {
        self.up.out_features()
    }

    fn form(&self) -> FfnForm {
        self.form
    }

    fn intermediate(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x, "Ffn::intermediate")?;
        intermediate_of(self.form, self.gate.as_ref(), &self.up, self.b1.as_ref(), x)
    }

    fn down(&self, z: &Tensor) -> Result<Tensor> {
        if z.rank() != 2 || z.shape()[1] != self.d_ff() {
            return Err(shape_err(
                "Ffn::down",
                vec![z.shape().first().copied().unwrap_or(0), self.d_ff()],
                z.shape().to_vec(),
            ));
        }
        add_bias(self.down.forward(z)?, self.b2.as_ref())
    }

    fn gather(&self, e: &ExpertSet, storage: PrunedStorage) -> Result<PrunedFfn> {
        PrunedFfn::gather(self, e, storage)
    }

    fn weight_row_norms(&self) -> Result<Vec<f32>> {
        let up = row_norms(&self.up)?;
        match &self.gate {
            Some(g) => Ok(row_norms(g)?.iter().zip(&up).map(|(a, b)| a * b).collect()),
            None => Ok(up),
        }
    }
}

impl GatedFfn for LlamaFfn {
    fn d_model(&self) -> usize {
        self.up.in_features()
    }

    fn d_ff(&self) -> usize {
        LlamaFfn::d_ff(self)
    }

    fn form(&self) -> FfnForm {
        FfnForm::Glu { act: Act::Silu }
    }

    fn intermediate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(LlamaFfn::intermediate(self, x)?)
    }

    fn down(&self, z: &Tensor) -> Result<Tensor> {
        Ok(LlamaFfn::down(self, z)?)
    }

    fn gather(&self, e: &ExpertSet, storage: PrunedStorage) -> Result<PrunedFfn> {
        PrunedFfn::gather(&Ffn::from_llama(self)?, e, storage)
    }

    fn weight_row_norms(&self) -> Result<Vec<f32>> {
        Ffn::from_llama(self)?.weight_row_norms()
    }
}
