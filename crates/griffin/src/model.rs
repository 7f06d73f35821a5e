//! [`GriffinLlama`]: GRIFFIN on effllm-model's [`LlamaModel`] through [`ForwardHooks`], with one
//! [`SequenceExperts`] state per sequence.

use effllm_model::{Batch, CausalLm, ForwardHooks, KvCache, LlamaFfn, LlamaModel, LogitRows, ModelError};
use effllm_tensor::{Device, Tensor};

use crate::config::{GriffinConfig, Selection, ShortPromptFallback, StatScope};
use crate::error::{GriffinError, Result, invalid};
use crate::ffn::{Ffn, GatedFfn};
use crate::layer::mask_last_row;
use crate::pruned::PrunedFfn;
use crate::select::{ExpertSet, select_experts_stream};
use crate::stat::NeuronStat;

/// GRIFFIN's per-sequence state: the prompt statistic of every layer, then (after
/// [`GriffinLlama::finalize`]) the pruned FFN of every layer. Clone it to try several configurations on one
/// prompt (the statistic does not depend on the density or the selection).
#[derive(Clone, Debug)]
pub struct SequenceExperts {
    stats: Vec<NeuronStat>,
    /// Per layer after finalize: `Some(pruned)`, or `None` for the dense fallback of a short prompt.
    pruned: Vec<Option<PrunedFfn>>,
    finalized: bool,
    prompt_tokens: usize,
}

impl SequenceExperts {
    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.stats.len()
    }

    /// The prompt statistic of `layer`.
    pub fn stat(&self, layer: usize) -> Option<&NeuronStat> {
        self.stats.get(layer)
    }

    /// Prompt tokens run so far.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Whether the experts are frozen.
    pub fn is_finalized(&self) -> bool {
        self.finalized
    }

    /// The experts of `layer` (after finalize; `None` for a dense fallback layer).
    pub fn experts(&self, layer: usize) -> Option<&ExpertSet> {
        self.pruned.get(layer).and_then(|p| p.as_ref()).map(PrunedFfn::experts)
    }

    /// The pruned FFN of `layer` (after finalize; `None` for a dense fallback layer).
    pub fn pruned(&self, layer: usize) -> Option<&PrunedFfn> {
        self.pruned.get(layer).and_then(|p| p.as_ref())
    }

    /// Adds the statistics (and prompt-token count) of `other`, e.g. two halves of a prompt prefilled into two
    /// states. Both must be in the prompt phase.
    pub fn merge(&mut self, other: &SequenceExperts) -> Result<()> {
        if self.finalized || other.finalized {
            return Err(GriffinError::AlreadyFinalized { op: "SequenceExperts::merge" });
        }
        if other.n_layers() != self.n_layers() {
            return Err(GriffinError::ShapeMismatch {
                op: "SequenceExperts::merge",
                expected: vec![self.n_layers()],
                found: vec![other.n_layers()],
            });
        }
        for (a, b) in self.stats.iter_mut().zip(&other.stats) {
            a.merge(b)?;
        }
        self.prompt_tokens += other.prompt_tokens;
        Ok(())
    }

    fn reset(&mut self) {
        self.stats.iter_mut().for_each(NeuronStat::reset);
        self.pruned.iter_mut().for_each(|p| *p = None);
        self.finalized = false;
        self.prompt_tokens = 0;
    }
}

/// GRIFFIN on a [`LlamaModel`]: the prompt runs the dense model while [`ForwardHooks::ffn_intermediate`] feeds
/// every layer's [`NeuronStat`]; [`GriffinLlama::finalize`] selects each layer's experts and gathers the pruned
/// FFNs; afterwards every forward of the sequence (one token or many) replaces each FFN by its pruned copy through
/// [`ForwardHooks::ffn_override`]. The model is borrowed, never copied or modified.
#[derive(Debug)]
pub struct GriffinLlama<'m> {
    model: &'m LlamaModel,
    cfg: GriffinConfig,
    ffns: Vec<Ffn>,
    magnitude: Vec<Option<ExpertSet>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Rows of prompt-phase sequences run dense and feed the statistic; rows of finalized sequences run pruned.
    Normal,
    /// One sequence; rows `..prompt_rows` are prompt, the rest continuation: each layer selects from its prompt
    /// rows and runs the continuation rows pruned, in the same pass (teacher forcing).
    OnePass { prompt_rows: usize },
    /// Class mode: each layer masks the last row to experts chosen from the other rows.
    Class,
}

struct Hooks<'a, 'm> {
    g: &'a GriffinLlama<'m>,
    seqs: &'a mut [SequenceExperts],
    row_seq: &'a [Option<usize>],
    mode: Mode,
    /// Per (layer, sequence): the statistic was reset in this forward (`StatScope::LastMultiTokenChunk`).
    reset: Vec<Vec<bool>>,
    error: Option<GriffinError>,
}

fn hook_err(e: GriffinError) -> ModelError {
    ModelError::Invalid { what: "GRIFFIN hook", msg: e.to_string() }
}

impl Hooks<'_, '_> {
    fn accumulate(&mut self, layer: usize, z: &Tensor, rows: impl Fn(usize, usize) -> bool) -> Result<()> {
        let t = z.shape()[0];
        for s in 0..self.seqs.len() {
            if self.seqs[s].finalized && self.mode == Mode::Normal {
                continue;
            }
            let valid: Vec<bool> = (0..t).map(|i| self.row_seq[i] == Some(s) && rows(i, s)).collect();
            if !valid.iter().any(|&v| v) {
                continue;
            }
            if self.g.cfg.scope == StatScope::LastMultiTokenChunk && !self.reset[layer][s] {
                self.seqs[s].stats[layer].reset();
                self.reset[layer][s] = true;
            }
            self.seqs[s].stats[layer].update(z, Some(&valid), self.g.cfg.zero_row)?;
        }
        Ok(())
    }

    fn ffn(&mut self, layer: usize, ffn: &LlamaFfn, x: &Tensor) -> Result<Option<Tensor>> {
        let t = x.shape()[0];
        match self.mode {
            Mode::Class => {
                let z = ffn.intermediate(x)?;
                let mut st = NeuronStat::new(ffn.d_ff());
                let valid: Vec<bool> = (0..t).map(|i| i + 1 < t).collect();
                st.update(&z, Some(&valid), self.g.cfg.zero_row)?;
                let e = self.g.select_layer(layer, &st)?;
                Ok(Some(ffn.down(&mask_last_row(&z, &e)?)?))
            }
            Mode::OnePass { prompt_rows } => {
                let z = ffn.intermediate(x)?;
                self.accumulate(layer, &z, |i, _| i < prompt_rows)?;
                let dense = ffn.down(&z)?;
                let pruned = self.g.finalize_layer(layer, &self.seqs[0])?;
                let out = if prompt_rows == t {
                    dense
                } else {
                    let xc = x.narrow(0, prompt_rows, t - prompt_rows)?;
                    let yc = match &pruned {
                        Some(p) => p.forward(&xc)?,
                        None => ffn.forward(&xc)?,
                    };
                    Tensor::concat(&[&dense.narrow(0, 0, prompt_rows)?, &yc], 0)?
                };
                self.seqs[0].pruned[layer] = pruned;
                Ok(Some(out))
            }
            Mode::Normal => {
                let fin = |r: Option<usize>| r.is_some_and(|s| self.seqs[s].finalized);
                if !self.row_seq.iter().any(|&r| fin(r)) {
                    return Ok(None);
                }
                let any_prompt = self.row_seq.iter().any(|&r| r.is_some() && !fin(r));
                let base = if any_prompt {
                    let z = ffn.intermediate(x)?;
                    self.accumulate(layer, &z, |_, _| true)?;
                    Some(ffn.down(&z)?)
                } else {
                    None
                };
                let mut rows: Vec<Option<Tensor>> = vec![None; t];
                for s in 0..self.seqs.len() {
                    if !self.seqs[s].finalized {
                        continue;
                    }
                    let ids: Vec<u32> = (0..t).filter(|&i| self.row_seq[i] == Some(s)).map(|i| i as u32).collect();
                    if ids.is_empty() {
                        continue;
                    }
                    let xs = if ids.len() == t {
                        x.clone()
                    } else {
                        x.index_select(0, &Tensor::from_slice(&ids, &[ids.len()], &x.device())?)?
                    };
                    let ys = match &self.seqs[s].pruned[layer] {
                        Some(p) => p.forward(&xs)?,
                        None => ffn.forward(&xs)?,
                    };
                    if ids.len() == t {
                        return Ok(Some(ys));
                    }
                    for (n, &i) in ids.iter().enumerate() {
                        rows[i as usize] = Some(ys.narrow(0, n, 1)?);
                    }
                }
                let mut parts = Vec::with_capacity(t);
                for (i, r) in rows.into_iter().enumerate() {
                    parts.push(match (r, &base) {
                        (Some(r), _) => r,
                        (None, Some(b)) => b.narrow(0, i, 1)?,
                        (None, None) => Tensor::zeros(&[1, x.shape()[1]], x.dtype(), &x.device())?,
                    });
                }
                let refs: Vec<&Tensor> = parts.iter().collect();
                Ok(Some(Tensor::concat(&refs, 0)?))
            }
        }
    }
}

impl ForwardHooks for Hooks<'_, '_> {
    fn ffn_override(&mut self, layer: usize, ffn: &LlamaFfn, x: &Tensor) -> effllm_model::Result<Option<Tensor>> {
        self.ffn(layer, ffn, x).map_err(|e| {
            let m = hook_err(GriffinError::InvalidArgument { op: "ffn_override", msg: e.to_string() });
            self.error = Some(e);
            m
        })
    }

    fn ffn_intermediate(&mut self, layer: usize, z: &Tensor) -> effllm_model::Result<()> {
        self.accumulate(layer, z, |_, _| true).map_err(|e| {
            let m = hook_err(GriffinError::InvalidArgument { op: "ffn_intermediate", msg: e.to_string() });
            self.error = Some(e);
            m
        })
    }
}

impl<'m> GriffinLlama<'m> {
    /// GRIFFIN on `model` with `cfg` (validated against the model's layer count; the magnitude sets are computed
    /// here when the selection or the short-prompt fallback needs them).
    pub fn new(model: &'m LlamaModel, cfg: GriffinConfig) -> Result<Self> {
        let n = model.config().n_layer;
        cfg.validate(Some(n))?;
        let ffns = model.layers().iter().map(|l| Ffn::from_llama(&l.ffn)).collect::<Result<Vec<_>>>()?;
        let need_mag = cfg.selection == Selection::Magnitude
            || (cfg.min_prompt_tokens > 0 && cfg.short_prompt == ShortPromptFallback::Magnitude);
        let magnitude = ffns
            .iter()
            .enumerate()
            .map(|(l, f)| {
                if !need_mag {
                    return Ok(None);
                }
                let k = cfg.k_for(l, f.d_ff());
                let scores = f.weight_row_norms()?;
                Ok(Some(select_experts_stream(&scores, k, &Selection::Magnitude, cfg.sort_indices, l as u64)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GriffinLlama { model, cfg, ffns, magnitude })
    }

    /// The model.
    pub fn model(&self) -> &'m LlamaModel {
        self.model
    }

    /// The configuration.
    pub fn config(&self) -> &GriffinConfig {
        &self.cfg
    }

    /// A fresh per-sequence state (prompt phase, empty statistics).
    pub fn new_sequence(&self) -> SequenceExperts {
        SequenceExperts {
            stats: self.ffns.iter().map(|f| NeuronStat::new(f.d_ff())).collect(),
            pruned: vec![None; self.ffns.len()],
            finalized: false,
            prompt_tokens: 0,
        }
    }

    fn check_seq(&self, seq: &SequenceExperts) -> Result<()> {
        if seq.n_layers() != self.ffns.len() {
            return Err(GriffinError::ShapeMismatch {
                op: "GriffinLlama (sequence state)",
                expected: vec![self.ffns.len()],
                found: vec![seq.n_layers()],
            });
        }
        Ok(())
    }

    fn select_layer(&self, layer: usize, st: &NeuronStat) -> Result<ExpertSet> {
        let d_ff = self.ffns[layer].d_ff();
        match self.cfg.selection {
            Selection::Magnitude => {
                self.magnitude[layer].clone().ok_or_else(|| invalid("GriffinLlama", "magnitude sets missing"))
            }
            sel => select_experts_stream(
                st.sumsq(),
                self.cfg.k_for(layer, d_ff),
                &sel,
                self.cfg.sort_indices,
                layer as u64,
            ),
        }
    }

    /// The pruned FFN of `layer` for `seq`'s statistic (`None` = the dense fallback of a short prompt).
    fn finalize_layer(&self, layer: usize, seq: &SequenceExperts) -> Result<Option<PrunedFfn>> {
        let e = if seq.prompt_tokens < self.cfg.min_prompt_tokens {
            match self.cfg.short_prompt {
                ShortPromptFallback::Dense => return Ok(None),
                ShortPromptFallback::Magnitude => {
                    self.magnitude[layer].clone().ok_or_else(|| invalid("GriffinLlama", "magnitude sets missing"))?
                }
            }
        } else {
            self.select_layer(layer, &seq.stats[layer])?
        };
        Ok(Some(self.ffns[layer].gather(&e, self.cfg.storage)?))
    }

    fn run(
        &self,
        seqs: &mut [SequenceExperts],
        row_seq: &[Option<usize>],
        mode: Mode,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        if row_seq.len() != batch.len() {
            return Err(GriffinError::ShapeMismatch {
                op: "GriffinLlama (row → sequence map)",
                expected: vec![batch.len()],
                found: vec![row_seq.len()],
            });
        }
        if let Some(bad) = row_seq.iter().flatten().find(|&&s| s >= seqs.len()) {
            return Err(invalid("GriffinLlama", format!("row of sequence {bad}, only {} sequences", seqs.len())));
        }
        for s in seqs.iter() {
            self.check_seq(s)?;
        }
        let n = self.ffns.len();
        let k = seqs.len();
        let mut hooks = Hooks { g: self, seqs, row_seq, mode, reset: vec![vec![false; k]; n], error: None };
        let out = self.model.forward_with_hooks(batch, cache, rows, &mut hooks);
        match (out, hooks.error.take()) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
            (Ok(t), None) => Ok(t),
        }
    }

    /// A prompt chunk of `seq` (chunks of one prompt may come in any sizes): the dense model, rows added to the
    /// statistic. Logits are bitwise the unmodified model's.
    pub fn prefill(
        &self,
        seq: &mut SequenceExperts,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        if seq.finalized {
            return Err(GriffinError::AlreadyFinalized { op: "GriffinLlama::prefill" });
        }
        let row_seq = vec![Some(0); batch.len()];
        let out = self.run(std::slice::from_mut(seq), &row_seq, Mode::Normal, batch, cache, rows)?;
        seq.prompt_tokens += batch.len();
        Ok(out)
    }

    /// Freezes `seq`'s experts: per layer, `k = ⌊d_ff·density_ℓ⌋` experts by the configured selection (or the
    /// short-prompt fallback), gathered into pruned FFNs. Errors if no prompt token was run or if already final.
    pub fn finalize(&self, seq: &mut SequenceExperts) -> Result<()> {
        self.check_seq(seq)?;
        if seq.finalized {
            return Err(GriffinError::AlreadyFinalized { op: "GriffinLlama::finalize" });
        }
        if seq.prompt_tokens == 0 {
            return Err(GriffinError::EmptyPrompt { op: "GriffinLlama::finalize" });
        }
        let pruned = (0..self.ffns.len()).map(|l| self.finalize_layer(l, seq)).collect::<Result<Vec<_>>>()?;
        seq.pruned = pruned;
        seq.finalized = true;
        Ok(())
    }

    /// `seq`'s decoder as a plain [`LlamaModel`]: every layer's FFN restricted to its experts with
    /// [`LlamaFfn::subset`] (gate/up rows stay in their storage, down columns become dense f32; a dense-fallback
    /// layer keeps its whole FFN), everything else shared with the model. Over generated tokens its forward equals
    /// [`GriffinLlama::decode`] up to f32 summation order. On a GPU it decodes through effllm-model's
    /// [`effllm_model::GraphDecoder`], whose `load_cache` takes the dense prefill's cache. Errors before
    /// [`GriffinLlama::finalize`].
    pub fn pruned_llama(&self, seq: &SequenceExperts) -> Result<LlamaModel> {
        self.check_seq(seq)?;
        if !seq.finalized {
            return Err(GriffinError::NotFinalized { op: "GriffinLlama::pruned_llama" });
        }
        let m = self.model;
        let layers = m
            .layers()
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let mut layer = layer.clone();
                if let Some(e) = seq.experts(l) {
                    layer.ffn = layer.ffn.subset(&e.idx)?;
                }
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        // `d_ff` stays the dense width: layers may differ (per-layer densities, dense fallbacks), and the decoder
        // reads each FFN's width from its weights.
        Ok(LlamaModel::from_parts(
            m.config().clone(),
            m.embedding().clone(),
            layers,
            m.final_norm_weight().clone(),
            m.lm_head_weight().clone(),
        )?)
    }

    /// Generated tokens of `seq` (one, or several for a verification or teacher-forcing pass): every FFN is the
    /// sequence's pruned copy; nothing is re-selected. Errors before [`GriffinLlama::finalize`].
    pub fn decode(
        &self,
        seq: &mut SequenceExperts,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        if !seq.finalized {
            return Err(GriffinError::NotFinalized { op: "GriffinLlama::decode" });
        }
        let row_seq = vec![Some(0); batch.len()];
        self.run(std::slice::from_mut(seq), &row_seq, Mode::Normal, batch, cache, rows)
    }

    /// Phase by state: before finalize a prompt chunk, after it a decode step. Under
    /// [`StatScope::LastMultiTokenChunk`] (the reference) every multi-token batch is a new prompt: the statistic
    /// restarts from this batch and the experts are re-selected right after it.
    pub fn forward(
        &self,
        seq: &mut SequenceExperts,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        if self.cfg.scope == StatScope::LastMultiTokenChunk && batch.len() > 1 {
            seq.reset();
            let out = self.prefill(seq, batch, cache, rows)?;
            self.finalize(seq)?;
            return Ok(out);
        }
        if seq.finalized { self.decode(seq, batch, cache, rows) } else { self.prefill(seq, batch, cache, rows) }
    }

    /// Teacher forcing in one pass: `batch` is the prompt's last `prompt_rows` tokens (earlier chunks may have
    /// been prefilled into `seq` already) followed by a continuation. Each layer adds its prompt rows to the
    /// statistic, selects and gathers its experts, and runs the continuation rows through them, so the logits
    /// equal prefill + finalize + token-by-token decode (to f32 rounding). `seq` is final afterwards.
    pub fn teacher_forced(
        &self,
        seq: &mut SequenceExperts,
        batch: &Batch,
        prompt_rows: usize,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        if seq.finalized {
            return Err(GriffinError::AlreadyFinalized { op: "GriffinLlama::teacher_forced" });
        }
        if prompt_rows > batch.len() || seq.prompt_tokens + prompt_rows == 0 {
            return Err(invalid(
                "GriffinLlama::teacher_forced",
                format!(
                    "{prompt_rows} prompt rows in a batch of {} after {} prompt tokens",
                    batch.len(),
                    seq.prompt_tokens
                ),
            ));
        }
        let row_seq = vec![Some(0); batch.len()];
        seq.prompt_tokens += prompt_rows;
        let out = self.run(std::slice::from_mut(seq), &row_seq, Mode::OnePass { prompt_rows }, batch, cache, rows);
        match out {
            Ok(t) => {
                seq.finalized = true;
                Ok(t)
            }
            Err(e) => {
                seq.prompt_tokens -= prompt_rows;
                Err(e)
            }
        }
    }

    /// Several sequences in one forward (a packed batch; give the model a block-diagonal
    /// [`BatchMask::Explicit`](effllm_model::BatchMask) and per-sequence positions): `row_seq[i]` names the
    /// sequence of row `i` (`None` = padding, excluded from every statistic). Each sequence is in its own phase:
    /// prompt rows run dense and feed that sequence's statistic; rows of finalized sequences run that sequence's
    /// pruned FFN.
    pub fn forward_packed(
        &self,
        seqs: &mut [SequenceExperts],
        row_seq: &[Option<usize>],
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
    ) -> Result<Tensor> {
        let out = self.run(seqs, row_seq, Mode::Normal, batch, cache, rows)?;
        for (s, seq) in seqs.iter_mut().enumerate() {
            if !seq.finalized {
                seq.prompt_tokens += row_seq.iter().filter(|&&r| r == Some(s)).count();
            }
        }
        Ok(out)
    }

    /// Class mode (the reference's `mode = 'class'`): in every layer the last token's intermediate is masked to
    /// experts selected from the other tokens of this batch; everything else is dense. Needs at least 2 tokens.
    pub fn class_forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> Result<Tensor> {
        if batch.len() < 2 {
            return Err(invalid("GriffinLlama::class_forward", "class mode needs at least 2 tokens"));
        }
        let mut seq = self.new_sequence();
        let row_seq = vec![Some(0); batch.len()];
        self.run(std::slice::from_mut(&mut seq), &row_seq, Mode::Class, batch, cache, rows)
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.model.device()
    }
}
