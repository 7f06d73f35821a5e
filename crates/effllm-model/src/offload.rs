//! [`OffloadedLlama`]: a Llama whose decoder layers live in pinned host memory and stream to the GPU layer by layer
//! for every forward, overlapping the upload of layer `ℓ + 1` with the computation of layer `ℓ` (the offloaded
//! target of SpecExec: one forward over a thousand tree tokens costs about as much as over one, because the
//! weights' trip over PCIe dominates).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use effllm_tensor::offload::{CopyFence, CopyStream, PinnedTensor};
use effllm_tensor::{Device, Tensor};

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::error::{Result, invalid};
use crate::hooks::{ForwardHooks, NoHooks};
use crate::llama::{LlamaFfn, LlamaLayer, LlamaModel};
use crate::weights::Linear;
use crate::{CausalLm, LayeredLm, LogitRows};

/// One weight matrix staged in pinned memory.
#[derive(Debug)]
enum PinnedLinear {
    Dense(PinnedTensor),
    /// Quantized blocks: the host `QWeight` (shape, block type) and its bytes in pinned memory.
    Quant(effllm_tensor::quant::QWeight, PinnedTensor),
}

impl PinnedLinear {
    fn new(l: &Linear, device: Device) -> Result<PinnedLinear> {
        Ok(match l {
            Linear::Dense(w) => PinnedLinear::Dense(PinnedTensor::new(w, device)?),
            Linear::Quant(q) => {
                let host = q.to_device(&Device::Cpu)?;
                let bytes = host.matrix().as_bytes().to_vec();
                let n = bytes.len();
                let pinned = PinnedTensor::new(&Tensor::from_vec(bytes, &[n], &Device::Cpu)?, device)?;
                PinnedLinear::Quant(host, pinned)
            }
        })
    }

    fn upload(&self, copy: &CopyStream) -> Result<Linear> {
        Ok(match self {
            PinnedLinear::Dense(p) => Linear::Dense(copy.upload(p)?),
            PinnedLinear::Quant(q, p) => Linear::Quant(q.with_device_blocks(copy.upload(p)?)?),
        })
    }

    fn nbytes(&self) -> usize {
        match self {
            PinnedLinear::Dense(p) | PinnedLinear::Quant(_, p) => p.nbytes(),
        }
    }
}

/// One decoder layer staged in pinned memory.
#[derive(Debug)]
struct PinnedLayer {
    attn_norm: PinnedTensor,
    wq: PinnedLinear,
    wk: PinnedLinear,
    wv: PinnedLinear,
    wo: PinnedLinear,
    ffn_norm: PinnedTensor,
    gate: PinnedLinear,
    up: PinnedLinear,
    down: PinnedLinear,
}

impl PinnedLayer {
    fn new(l: &LlamaLayer, device: Device) -> Result<PinnedLayer> {
        Ok(PinnedLayer {
            attn_norm: PinnedTensor::new(&l.attn_norm, device)?,
            wq: PinnedLinear::new(&l.wq, device)?,
            wk: PinnedLinear::new(&l.wk, device)?,
            wv: PinnedLinear::new(&l.wv, device)?,
            wo: PinnedLinear::new(&l.wo, device)?,
            ffn_norm: PinnedTensor::new(&l.ffn_norm, device)?,
            gate: PinnedLinear::new(&l.ffn.gate, device)?,
            up: PinnedLinear::new(&l.ffn.up, device)?,
            down: PinnedLinear::new(&l.ffn.down, device)?,
        })
    }

    /// Queues the upload of every weight; returns at once (kernels that read the weights wait for the copies).
    fn upload(&self, copy: &CopyStream) -> Result<LlamaLayer> {
        Ok(LlamaLayer {
            attn_norm: copy.upload(&self.attn_norm)?,
            wq: self.wq.upload(copy)?,
            wk: self.wk.upload(copy)?,
            wv: self.wv.upload(copy)?,
            wo: self.wo.upload(copy)?,
            ffn_norm: copy.upload(&self.ffn_norm)?,
            ffn: LlamaFfn { gate: self.gate.upload(copy)?, up: self.up.upload(copy)?, down: self.down.upload(copy)? },
        })
    }

    fn nbytes(&self) -> usize {
        self.attn_norm.nbytes()
            + self.ffn_norm.nbytes()
            + [&self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down]
                .iter()
                .map(|l| l.nbytes())
                .sum::<usize>()
    }
}

/// A [`LlamaModel`] whose decoder layers stay in pinned host memory and stream to the GPU for every forward.
///
/// The embedding, final norm and LM head are resident on the GPU; each forward uploads every layer it runs on a
/// [`CopyStream`], `prefetch` layers ahead of the one computing, so the GPU holds at most `prefetch + 1` layers at
/// a time. Outputs equal those of the same model resident on the GPU bitwise (the same kernels run; only the
/// arrival of the weights changes). Implements [`CausalLm`] and [`LayeredLm`], so every technique crate can use it
/// as a target.
#[derive(Debug)]
pub struct OffloadedLlama {
    shell: LlamaModel,
    layers: Vec<PinnedLayer>,
    copy: CopyStream,
    prefetch: usize,
    uploaded: AtomicU64,
}

impl OffloadedLlama {
    /// Stages `model`'s layers (on any device) in pinned memory for `device` and moves the rest to `device`, with
    /// one layer prefetched (double buffering).
    ///
    /// # Errors
    /// A typed tensor error when `device` is not a usable CUDA device or pinned memory runs out.
    pub fn new(model: &LlamaModel, device: Device) -> Result<OffloadedLlama> {
        let copy = CopyStream::new(device)?;
        let layers = model.layers().iter().map(|l| PinnedLayer::new(l, device)).collect::<Result<Vec<_>>>()?;
        let shell = model.without_layers().to_device(&device)?;
        Ok(OffloadedLlama { shell, layers, copy, prefetch: 1, uploaded: AtomicU64::new(0) })
    }

    /// How many layers are uploaded ahead of the one computing (≥ 1; GPU memory holds `prefetch + 1` layers).
    ///
    /// # Errors
    /// [`crate::ModelError::Invalid`] for 0.
    pub fn with_prefetch(mut self, prefetch: usize) -> Result<OffloadedLlama> {
        if prefetch == 0 {
            return Err(invalid("prefetch", "at least one layer must be in flight"));
        }
        self.prefetch = prefetch;
        Ok(self)
    }

    /// The hyperparameters.
    pub fn config(&self) -> &crate::LlamaConfig {
        self.shell.config()
    }

    /// Bytes of the decoder layers, uploaded once per forward over all layers.
    pub fn layer_bytes(&self) -> usize {
        self.layers.iter().map(PinnedLayer::nbytes).sum()
    }

    /// Bytes uploaded so far by all forwards.
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// [`CausalLm::forward`] with hooks.
    ///
    /// # Errors
    /// As [`LlamaModel::forward_with_hooks`].
    pub fn forward_with_hooks(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        rows: &LogitRows,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor> {
        let h = self.embed(&batch.tokens)?;
        let h = self.run_layers(h, 0..self.layers.len(), batch, cache, hooks)?;
        let h = rows.select(&h)?;
        self.unembed(&h)
    }
}

impl CausalLm for OffloadedLlama {
    fn vocab_size(&self) -> usize {
        self.shell.vocab_size()
    }

    fn context_length(&self) -> usize {
        self.shell.context_length()
    }

    fn device(&self) -> Device {
        self.shell.device()
    }

    fn new_cache(&self) -> KvCache {
        self.shell.new_cache()
    }

    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> Result<Tensor> {
        self.forward_with_hooks(batch, cache, rows, &mut NoHooks)
    }
}

impl LayeredLm for OffloadedLlama {
    fn n_layers(&self) -> usize {
        self.layers.len()
    }

    fn d_model(&self) -> usize {
        self.shell.d_model()
    }

    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        self.shell.embed(tokens)
    }

    fn run_layers(
        &self,
        h: Tensor,
        layers: Range<usize>,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn ForwardHooks,
    ) -> Result<Tensor> {
        // `run_layers_from` checks the range before asking for any layer. Layers in flight, oldest first: the one
        // about to compute, then up to `prefetch` more, each with the fence after its uploads. `computed` keeps the
        // layers whose kernels are queued alive until the copy stream has been ordered after those kernels (an
        // uploaded buffer is freed on the copy stream, where the next upload could reuse it at once).
        let mut in_flight: std::collections::VecDeque<(usize, LlamaLayer, CopyFence)> = Default::default();
        let mut computed: Vec<LlamaLayer> = Vec::new();
        let mut next_upload = layers.start;
        let end = layers.end;
        let mut fetch = |li: usize| -> Result<Cow<'static, LlamaLayer>> {
            if !computed.is_empty() {
                self.copy.wait_for_compute()?;
                computed.clear();
            }
            while next_upload < end && next_upload <= li + self.prefetch {
                let layer = self.layers[next_upload].upload(&self.copy)?;
                in_flight.push_back((next_upload, layer, self.copy.fence()?));
                self.uploaded.fetch_add(self.layers[next_upload].nbytes() as u64, Ordering::Relaxed);
                next_upload += 1;
            }
            match in_flight.pop_front() {
                Some((l, layer, fence)) if l == li => {
                    fence.wait()?;
                    computed.push(layer.clone());
                    Ok(Cow::Owned(layer))
                }
                _ => Err(invalid("offloaded layers", format!("layer {li} was not uploaded in order"))),
            }
        };
        let out = self.shell.run_layers_from(h, layers, batch, cache, hooks, &mut fetch);
        // Whatever happened, no uploaded buffer drops before the kernels queued on it (and no upload still in
        // flight is freed under its copy: the copy stream runs in order).
        let ordered = self.copy.wait_for_compute();
        drop(computed);
        drop(in_flight);
        let out = out?;
        ordered?;
        Ok(out)
    }

    fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.shell.final_norm(h)
    }

    fn lm_head(&self, h: &Tensor) -> Result<Tensor> {
        self.shell.lm_head(h)
    }
}
