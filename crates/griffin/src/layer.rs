//! [`GriffinFfn`]: GRIFFIN on one FFN (one layer), the building block of [`GriffinLlama`](crate::GriffinLlama).

use effllm_tensor::Tensor;

use crate::config::{GriffinConfig, Selection, ShortPromptFallback, StatScope};
use crate::error::{GriffinError, Result, invalid};
use crate::ffn::GatedFfn;
use crate::pruned::PrunedFfn;
use crate::select::{ExpertSet, select_experts_stream};
use crate::stat::NeuronStat;

/// One FFN with GRIFFIN's phases. State lives outside (a [`NeuronStat`] during the prompt, a [`PrunedFfn`] after
/// [`GriffinFfn::finalize`]), one per sequence, so the same `GriffinFfn` serves any number of sequences.
#[derive(Clone, Debug)]
pub struct GriffinFfn<F: GatedFfn> {
    dense: F,
    cfg: GriffinConfig,
    layer: usize,
}

impl<F: GatedFfn> GriffinFfn<F> {
    /// GRIFFIN on `dense` as layer `layer` (the layer picks the density of a per-layer schedule and the random
    /// stream of sampling selections).
    pub fn new(dense: F, cfg: GriffinConfig, layer: usize) -> Result<Self> {
        cfg.validate(None)?;
        Ok(GriffinFfn { dense, cfg, layer })
    }

    /// The dense FFN.
    pub fn dense(&self) -> &F {
        &self.dense
    }

    /// The configuration.
    pub fn config(&self) -> &GriffinConfig {
        &self.cfg
    }

    /// `k` of this layer.
    pub fn k(&self) -> usize {
        self.cfg.k_for(self.layer, self.dense.d_ff())
    }

    /// An empty statistic of the right width.
    pub fn new_stat(&self) -> NeuronStat {
        NeuronStat::new(self.dense.d_ff())
    }

    /// A prompt chunk: the dense FFN's output (bitwise the unmodified block), with every row added to `st`
    /// (under [`StatScope::LastMultiTokenChunk`], `st` is reset first: the reference re-selects per chunk).
    pub fn prefill(&self, x: &Tensor, st: &mut NeuronStat) -> Result<Tensor> {
        self.prefill_rows(x, None, st)
    }

    /// [`GriffinFfn::prefill`] counting only the rows whose `valid` flag is set (padding excluded).
    pub fn prefill_rows(&self, x: &Tensor, valid: Option<&[bool]>, st: &mut NeuronStat) -> Result<Tensor> {
        let z = self.dense.intermediate(x)?;
        if self.cfg.scope == StatScope::LastMultiTokenChunk {
            st.reset();
        }
        st.update(&z, valid, self.cfg.zero_row)?;
        self.dense.down(&z)
    }

    /// The static magnitude set of this layer (top-`k` of the weight-row norms).
    pub fn magnitude_experts(&self) -> Result<ExpertSet> {
        let scores = self.dense.weight_row_norms()?;
        select_experts_stream(&scores, self.k(), &Selection::Magnitude, self.cfg.sort_indices, self.layer as u64)
    }

    /// The experts for a prompt statistic (the configured selection; the short-prompt fallback when
    /// `st.rows() < min_prompt_tokens` gives every neuron (dense) or the magnitude set).
    pub fn select(&self, st: &NeuronStat) -> Result<ExpertSet> {
        if st.d_ff() != self.dense.d_ff() {
            return Err(GriffinError::ShapeMismatch {
                op: "GriffinFfn::select",
                expected: vec![self.dense.d_ff()],
                found: vec![st.d_ff()],
            });
        }
        if st.rows() < self.cfg.min_prompt_tokens {
            return match self.cfg.short_prompt {
                ShortPromptFallback::Dense => Ok(ExpertSet::all(self.dense.d_ff())),
                ShortPromptFallback::Magnitude => self.magnitude_experts(),
            };
        }
        match self.cfg.selection {
            Selection::Magnitude => self.magnitude_experts(),
            sel => select_experts_stream(st.sumsq(), self.k(), &sel, self.cfg.sort_indices, self.layer as u64),
        }
    }

    /// Freezes the experts of one sequence: selection, then the gathered FFN.
    pub fn finalize(&self, st: &NeuronStat) -> Result<PrunedFfn> {
        let e = self.select(st)?;
        self.dense.gather(&e, self.cfg.storage)
    }

    /// A generated token (or several, e.g. a verification pass): every row through `FF_E`.
    pub fn decode(&self, x: &Tensor, pruned: &PrunedFfn) -> Result<Tensor> {
        if pruned.d_ff() != self.dense.d_ff() || pruned.d_model() != self.dense.d_model() {
            return Err(GriffinError::ShapeMismatch {
                op: "GriffinFfn::decode",
                expected: vec![self.dense.d_model(), self.dense.d_ff()],
                found: vec![pruned.d_model(), pruned.d_ff()],
            });
        }
        pruned.forward(x)
    }

    /// Class mode (lm-eval loglikelihood tasks): `E` from rows `0..S−2` of this input, then only the last row's
    /// intermediate is masked to `E`; every other row is the dense FFN, bitwise. Needs `S ≥ 2`.
    pub fn last_token_masked(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.shape().first().copied().unwrap_or(0);
        if x.rank() != 2 || s < 2 {
            return Err(invalid(
                "GriffinFfn::last_token_masked",
                format!("needs at least 2 rows, got {:?}", x.shape()),
            ));
        }
        let z = self.dense.intermediate(x)?;
        let mut st = self.new_stat();
        let mut valid = vec![true; s];
        valid[s - 1] = false;
        st.update(&z, Some(&valid), self.cfg.zero_row)?;
        let e = match self.cfg.selection {
            Selection::Magnitude => self.magnitude_experts()?,
            sel => select_experts_stream(st.sumsq(), self.k(), &sel, self.cfg.sort_indices, self.layer as u64)?,
        };
        self.dense.down(&mask_last_row(&z, &e)?)
    }
}

/// `z` with its last row multiplied by the 0/1 mask on `e`.
pub(crate) fn mask_last_row(z: &Tensor, e: &ExpertSet) -> Result<Tensor> {
    let (s, d_ff) = (z.shape()[0], z.shape()[1]);
    let mask = Tensor::from_vec(e.mask(d_ff), &[1, d_ff], &z.device())?.to_dtype(z.dtype())?;
    let last = z.narrow(0, s - 1, 1)?.mul(&mask)?;
    Ok(Tensor::concat(&[&z.narrow(0, 0, s - 1)?, &last], 0)?)
}
