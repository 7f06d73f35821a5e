//! Model configuration, its validation and the parameter count of the reference formula.

use crate::error::{MegalodonError, Result};

/// The shape and switches of a Megalodon language model (the reference's `ModelConf`, without dropout: every
/// dropout is 0 here, as in the reference defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct MegalodonConfig {
    /// Number of blocks (moving-average gated attention + normalized FFN).
    pub num_layers: usize,
    /// Model width `D`.
    pub model_dim: usize,
    /// Shared query/key width `Z` (all heads together).
    pub z_dim: usize,
    /// Value width `E` (all heads together).
    pub value_dim: usize,
    /// Attention heads `H`; `Z` and `E` must be multiples of it.
    pub num_heads: usize,
    /// FFN hidden width `F`.
    pub ffn_hidden_dim: usize,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// CEMA expansion `N` per channel (16 in the reference).
    pub cema_ndim: usize,
    /// Attention chunk length `C`: attention sees only earlier tokens of the same chunk. A required choice (2048 in
    /// the reference registry, 4096 for the paper's 7B run).
    pub chunk_size: usize,
    /// Timestep-norm groups `G`; `D` must be a multiple of it.
    pub norm_num_groups: usize,
    /// ε of every norm (1e-5).
    pub norm_eps: f64,
    /// RoPE base (10 000).
    pub rope_base: f64,
    /// `silu(fc1 u) ⊙ fc3 u` in the FFN instead of `silu(fc1 u)`.
    pub swiglu: bool,
    /// A learnable per-feature scale α on the FFN output, initialised to `0.1 · 0.5^layer`.
    pub rescale_nffn: bool,
    /// Multiply the embeddings by `√D`.
    pub scale_emb: bool,
    /// Tie the output projection to the embedding.
    pub share_emb: bool,
    /// Reproduce the reference's length rules: a call's length `L` must satisfy `L < C` or `L mod C = 0`, and a
    /// call that continues a partly filled chunk must not cross its end. Off by default: `forward` splits at chunk
    /// boundaries itself.
    pub strict_reference_shapes: bool,
}

impl MegalodonConfig {
    /// The CPU-sized model of the spec's scaled-down replication: 4 layers, D = 128, Z = 64, E = 256, H = 1,
    /// F = 256, N = 16, G = 8, C = 128.
    pub fn tiny(vocab_size: usize) -> MegalodonConfig {
        MegalodonConfig {
            num_layers: 4,
            model_dim: 128,
            z_dim: 64,
            value_dim: 256,
            num_heads: 1,
            ffn_hidden_dim: 256,
            vocab_size,
            cema_ndim: 16,
            chunk_size: 128,
            norm_num_groups: 8,
            norm_eps: 1e-5,
            rope_base: 10_000.0,
            swiglu: false,
            rescale_nffn: false,
            scale_emb: false,
            share_emb: false,
            strict_reference_shapes: false,
        }
    }

    /// Per-head query/key width `Z / H`.
    pub fn z_head_dim(&self) -> usize {
        self.z_dim / self.num_heads.max(1)
    }

    /// Per-head value width `E / H`.
    pub fn v_head_dim(&self) -> usize {
        self.value_dim / self.num_heads.max(1)
    }

    /// Checks that the dimensions describe a model: every size positive, `Z` and `E` multiples of `H`, `D` a
    /// multiple of `G`, `Z / H` even (RoPE rotates pairs), ε and the RoPE base finite and positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(MegalodonError::Config(msg));
        for (name, v) in [
            ("num_layers", self.num_layers),
            ("model_dim", self.model_dim),
            ("z_dim", self.z_dim),
            ("value_dim", self.value_dim),
            ("num_heads", self.num_heads),
            ("ffn_hidden_dim", self.ffn_hidden_dim),
            ("vocab_size", self.vocab_size),
            ("cema_ndim", self.cema_ndim),
            ("chunk_size", self.chunk_size),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.z_dim.is_multiple_of(self.num_heads) {
            return bad(format!("z_dim {} is not a multiple of num_heads {}", self.z_dim, self.num_heads));
        }
        if !self.value_dim.is_multiple_of(self.num_heads) {
            return bad(format!("value_dim {} is not a multiple of num_heads {}", self.value_dim, self.num_heads));
        }
        if !self.model_dim.is_multiple_of(self.norm_num_groups) {
            return bad(format!(
                "model_dim {} is not a multiple of norm_num_groups {}",
                self.model_dim, self.norm_num_groups
            ));
        }
        if !self.z_head_dim().is_multiple_of(2) {
            return bad(format!("z_dim / num_heads = {} must be even for RoPE", self.z_head_dim()));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("norm_eps {} must be finite and positive", self.norm_eps));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("rope_base {} must be finite and positive", self.rope_base));
        }
        Ok(())
    }

    /// The number of trainable parameters (spec invariant 23):
    /// layer `2D + (4DN + 2D) + D + (DE + E) + (DZ + Z) + (DE + E) + (D² + D) + ED + 4Z`, FFN `2D + 2DF (+ DF if
    /// swiglu) (+ D if rescale_nffn)`, model `layers·(layer + FFN) + VD + 2D (+ VD unless share_emb)`.
    pub fn param_count(&self) -> u64 {
        let (d, n, e, z, f, v) = (
            self.model_dim as u64,
            self.cema_ndim as u64,
            self.value_dim as u64,
            self.z_dim as u64,
            self.ffn_hidden_dim as u64,
            self.vocab_size as u64,
        );
        let layer =
            2 * d + (4 * d * n + 2 * d) + d + (d * e + e) + (d * z + z) + (d * e + e) + (d * d + d) + e * d + 4 * z;
        let ffn = 2 * d + 2 * d * f + if self.swiglu { d * f } else { 0 } + if self.rescale_nffn { d } else { 0 };
        self.num_layers as u64 * (layer + ffn) + v * d + 2 * d + if self.share_emb { 0 } else { v * d }
    }
}
