//! [`ForwardHooks`]: observation and override points inside a forward pass.

use effllm_tensor::Tensor;

use crate::error::Result;
use crate::llama::LlamaFfn;

/// Callbacks a forward pass makes at fixed points of every layer it runs. Every method has a no-op default.
///
/// Hooks are `Send` because a forward pass runs on effllm's worker pool (one hand-off per forward instead of one
/// per op).
///
/// Shapes use `T` for the batch's new tokens: `query` gets the post-RoPE queries `[1, n_head, T, head_dim]`
/// (`[n_seq, n_head, len, head_dim]` for a [`BatchMask::Sequences`](crate::BatchMask) batch; TriForce's retrieval), `ffn_input` the normalised FFN input `[T, d]` (NEST's keys), `ffn_intermediate` the
/// gated activations `silu(x W_gateᵀ) ⊙ (x W_upᵀ)` = `[T, d_ff]` (GRIFFIN's statistic), `layer_output` the
/// residual stream after the layer `[T, d]` (early exit, hidden-state capture).
pub trait ForwardHooks: Send {
    /// Post-RoPE queries of `layer`.
    fn query(&mut self, _layer: usize, _q: &Tensor) -> Result<()> {
        Ok(())
    }
    /// The normalised FFN input of `layer`.
    fn ffn_input(&mut self, _layer: usize, _x: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Replaces the FFN of `layer`: return `Some(output [T, d])` to use instead of the dense FFN (GRIFFIN's
    /// pruned experts), `None` to run the model's FFN.
    fn ffn_override(&mut self, _layer: usize, _ffn: &LlamaFfn, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The FFN's gated intermediate activations of `layer` (not called when `ffn_override` answered).
    fn ffn_intermediate(&mut self, _layer: usize, _z: &Tensor) -> Result<()> {
        Ok(())
    }
    /// The residual stream after `layer`.
    fn layer_output(&mut self, _layer: usize, _h: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl ForwardHooks for NoHooks {}

/// Records the residual stream after chosen layers (all rows of the batch).
#[derive(Clone, Debug, Default)]
pub struct CaptureHidden {
    /// Layers to record.
    pub layers: Vec<usize>,
    /// `(layer, hidden [T, d])` in the order the layers ran.
    pub captured: Vec<(usize, Tensor)>,
}

impl ForwardHooks for CaptureHidden {
    fn layer_output(&mut self, layer: usize, h: &Tensor) -> Result<()> {
        if self.layers.contains(&layer) {
            self.captured.push((layer, h.clone()));
        }
        Ok(())
    }
}
