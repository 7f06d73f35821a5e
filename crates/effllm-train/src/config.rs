//! [`TrainConfig`]: everything a training run needs, as a JSON file, with built-in presets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The architecture a [`ModelShape`] describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// [`effllm_model::LlamaModel`] (the default: configs without `architecture` are Llamas).
    #[default]
    Llama,
    /// [`megalodon::Megalodon`], with the dimensions of [`ModelShape::megalodon`].
    Megalodon,
}

impl Architecture {
    /// `llama` / `megalodon`, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Megalodon => "megalodon",
        }
    }

    /// The trainer features this architecture supports (a config asking for another is a
    /// [`TrainError::Config`]).
    pub fn features(self) -> crate::model::Features {
        match self {
            Architecture::Llama => crate::model::Features { bf16: true, activation_checkpointing: true },
            // Megalodon's FFT convolution, CEMA power sums and timestep norm are f32/f64 custom ops, and its layers
            // carry per-call state through `forward`; neither bf16 compute copies nor per-layer recomputation are
            // wired up for it.
            Architecture::Megalodon => crate::model::Features { bf16: false, activation_checkpointing: false },
        }
    }
}

/// The dimensions of a Megalodon that [`ModelShape`]'s shared fields do not cover (the reference's `ModelConf`
/// names; see [`megalodon::MegalodonConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MegalodonShape {
    /// Shared query/key width `Z` (all heads together; a multiple of `n_head`, `Z / n_head` even).
    pub z_dim: usize,
    /// Value width `E` (all heads together; a multiple of `n_head`).
    pub value_dim: usize,
    /// CEMA expansion `N` per channel (16 in the reference).
    pub cema_ndim: usize,
    /// Timestep-norm groups `G` (`d_model` must be a multiple).
    pub norm_num_groups: usize,
    /// Attention chunk length `C`: attention sees only earlier tokens of its chunk; CEMA and the timestep norm
    /// carry information across chunks.
    pub chunk_size: usize,
    /// `silu(fc1 u) ⊙ fc3 u` in the FFN instead of `silu(fc1 u)`.
    #[serde(default)]
    pub swiglu: bool,
    /// A learnable per-feature scale on the FFN output.
    #[serde(default)]
    pub rescale_nffn: bool,
    /// Multiply the embeddings by `√d_model`.
    #[serde(default)]
    pub scale_emb: bool,
}

/// The shape of the model to train from scratch (the vocabulary comes from the tokenizer): a Llama by default, a
/// Megalodon with `"architecture": "megalodon"` and a [`megalodon`](ModelShape::megalodon) section.
///
/// For Megalodon the shared fields mean: `n_layer` blocks, `d_model` = `D`, `n_head` attention heads (`n_head_kv`
/// must equal it: Megalodon shares one key per head), `d_ff` = the normalized FFN's hidden width, `rope_base`,
/// `tied_embeddings` = `share_emb`; `init_std` is unused (Megalodon has the reference's own initialisation, a
/// truncated normal of std `1/√D` for the embedding and per-module rules for the rest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Which model: `llama` (default) or `megalodon`.
    #[serde(default)]
    pub architecture: Architecture,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Residual width `d`.
    pub d_model: usize,
    /// Query heads (`d_model` must be a multiple).
    pub n_head: usize,
    /// Key/value heads (`n_head` must be a multiple).
    pub n_head_kv: usize,
    /// FFN intermediate width.
    pub d_ff: usize,
    /// RoPE base.
    pub rope_base: f64,
    /// Whether the LM head is the embedding.
    pub tied_embeddings: bool,
    /// Standard deviation of the normal initialisation of every matrix (the output projections `wo` and
    /// `ffn.down` use `init_std / √(2·n_layer)`, GPT-2's residual scaling); norm gains start at 1.
    pub init_std: f64,
    /// Megalodon's own dimensions: required with `"architecture": "megalodon"`, an error otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub megalodon: Option<MegalodonShape>,
}

/// Where the tokens come from and how they are batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// Tokens per training sequence (inputs; each packed row holds `seq_len + 1` tokens for the shifted targets).
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation): a step sees
    /// `batch_size · grad_accum · seq_len` tokens.
    pub grad_accum: usize,
    /// Validation sequences scored at each evaluation (at most the validation split's).
    pub eval_sequences: usize,
    /// The Rust documentation directory (default: `$(rustc --print sysroot)/share/doc/rust/html`).
    #[serde(default)]
    pub docs_dir: Option<PathBuf>,
}

/// AdamW and its schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSettings {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decoupled weight decay (applied to matrices; norm gains are not decayed).
    pub weight_decay: f64,
    /// AdamW `β₁`.
    pub beta1: f64,
    /// AdamW `β₂`.
    pub beta2: f64,
    /// AdamW `ε`.
    pub eps: f64,
    /// Global gradient-norm clip (`0` disables clipping).
    pub clip_norm: f64,
}

/// Numeric precision of the forward and backward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Mixed: matrices cast to bf16 for the GEMMs (f32 accumulation), norms, softmax, loss and residual stream in
    /// f32; master weights, gradients and optimizer state in f32.
    Bf16,
}

/// How the run is driven.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Optimizer steps.
    pub steps: usize,
    /// Evaluate every this many steps (and after the last).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (and after the last); `0`: only after the last.
    pub checkpoint_every: usize,
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
    /// Compute precision.
    pub precision: Precision,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// CPU worker threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Recompute each layer's activations in the backward pass instead of keeping them.
    pub activation_checkpointing: bool,
    /// Directory of the checkpoint and the metrics log.
    pub out_dir: PathBuf,
}

/// A whole training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The architecture.
    pub model: ModelShape,
    /// The data.
    pub data: DataSettings,
    /// The optimizer.
    pub optim: OptimSettings,
    /// The run.
    pub run: RunSettings,
}

/// The built-in presets: `(name, what it is)`.
pub const PRESETS: &[(&str, &str)] = &[
    ("cpu-small", "4 layers, d = 256 (≈ 16.0 M parameters with the tied 49152-token embedding); 2 CPU cores, minutes"),
    (
        "cpu-small-megalodon",
        "Megalodon with cpu-small's parameter count (≈ 16.0 M): 4 layers, d = 256, Z = 128, E = 512, FFN 672, \
         chunk 64, 2 heads; f32",
    ),
    ("gpu-medium", "8 layers, d = 512 (≈ 52.4 M parameters); one GPU, bf16 mixed precision"),
    (
        "gpu-medium-megalodon",
        "Megalodon with gpu-medium's parameter count (≈ 52.5 M): 8 layers, d = 512, Z = 256, E = 1024, FFN 1376, \
         chunk 128; one GPU, f32",
    ),
    ("tiny", "2 layers, d = 64: smoke tests"),
];

impl TrainConfig {
    /// A built-in preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<TrainConfig> {
        let cfg = match name {
            "cpu-small" => TrainConfig {
                model: ModelShape {
                    architecture: Architecture::Llama,
                    n_layer: 4,
                    d_model: 256,
                    n_head: 4,
                    n_head_kv: 4,
                    d_ff: 768,
                    rope_base: 10_000.0,
                    tied_embeddings: true,
                    init_std: 0.02,
                    megalodon: None,
                },
                data: DataSettings { seq_len: 128, batch_size: 8, grad_accum: 1, eval_sequences: 64, docs_dir: None },
                optim: OptimSettings {
                    lr: 2e-3,
                    min_lr: 2e-4,
                    warmup_steps: 20,
                    weight_decay: 0.1,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    clip_norm: 1.0,
                },
                run: RunSettings {
                    steps: 300,
                    eval_every: 50,
                    checkpoint_every: 100,
                    seed: 0,
                    precision: Precision::F32,
                    device: "cpu".into(),
                    threads: None,
                    activation_checkpointing: false,
                    out_dir: PathBuf::from("runs/cpu-small"),
                },
            },
            "gpu-medium" => TrainConfig {
                model: ModelShape {
                    architecture: Architecture::Llama,
                    n_layer: 8,
                    d_model: 512,
                    n_head: 8,
                    n_head_kv: 8,
                    d_ff: 1536,
                    rope_base: 10_000.0,
                    tied_embeddings: true,
                    init_std: 0.02,
                    megalodon: None,
                },
                data: DataSettings { seq_len: 256, batch_size: 32, grad_accum: 1, eval_sequences: 256, docs_dir: None },
                optim: OptimSettings {
                    lr: 1e-3,
                    min_lr: 1e-4,
                    warmup_steps: 100,
                    weight_decay: 0.1,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    clip_norm: 1.0,
                },
                run: RunSettings {
                    steps: 2000,
                    eval_every: 200,
                    checkpoint_every: 500,
                    seed: 0,
                    precision: Precision::Bf16,
                    device: "cuda:0".into(),
                    threads: None,
                    activation_checkpointing: false,
                    out_dir: PathBuf::from("runs/gpu-medium"),
                },
            },
            // Equal parameter count with the Llama preset: same d, vocabulary, tied embedding and layer count; the
            // FFN width is what absorbs Megalodon's larger attention block (E = 2d values, CEMA, two output
            // projections), chosen so the totals agree within 0.1 %.
            "cpu-small-megalodon" => {
                let mut c = TrainConfig::preset("cpu-small")?;
                c.model.architecture = Architecture::Megalodon;
                (c.model.n_head, c.model.n_head_kv, c.model.d_ff) = (2, 2, 672);
                c.model.megalodon = Some(MegalodonShape {
                    z_dim: 128,
                    value_dim: 512,
                    cema_ndim: 16,
                    norm_num_groups: 32,
                    chunk_size: 64,
                    swiglu: false,
                    rescale_nffn: false,
                    scale_emb: false,
                });
                c.run.out_dir = PathBuf::from("runs/cpu-small-megalodon");
                c
            }
            "gpu-medium-megalodon" => {
                let mut c = TrainConfig::preset("gpu-medium")?;
                c.model.architecture = Architecture::Megalodon;
                (c.model.n_head, c.model.n_head_kv, c.model.d_ff) = (4, 4, 1376);
                c.model.megalodon = Some(MegalodonShape {
                    z_dim: 256,
                    value_dim: 1024,
                    cema_ndim: 16,
                    norm_num_groups: 32,
                    chunk_size: 128,
                    swiglu: false,
                    rescale_nffn: false,
                    scale_emb: false,
                });
                c.run.precision = Precision::F32;
                c.run.out_dir = PathBuf::from("runs/gpu-medium-megalodon");
                c
            }
            "tiny" => {
                let mut c = TrainConfig::preset("cpu-small")?;
                c.model = ModelShape { n_layer: 2, d_model: 64, n_head: 4, n_head_kv: 2, d_ff: 128, ..c.model };
                c.data = DataSettings { seq_len: 32, batch_size: 4, eval_sequences: 8, ..c.data };
                c.run = RunSettings { steps: 20, eval_every: 10, checkpoint_every: 10, ..c.run };
                c.optim.warmup_steps = 4;
                c.run.out_dir = PathBuf::from("runs/tiny");
                c
            }
            other => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                return Err(TrainError::Config(format!("unknown preset `{other}` (known: {})", names.join(", "))));
            }
        };
        Ok(cfg)
    }

    /// Parses a JSON config: either a whole [`TrainConfig`], or `{"preset": "<name>", ...}` whose other sections
    /// override the preset's field by field (e.g. `{"preset": "cpu-small", "run": {"steps": 50}}`). Unknown keys
    /// are errors.
    pub fn from_json(text: &str) -> Result<TrainConfig> {
        let mut v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| TrainError::Config(format!("not valid JSON: {e}")))?;
        if let Some(name) = v.get("preset").cloned() {
            let name = name.as_str().ok_or_else(|| TrainError::Config("`preset` must be a string".into()))?;
            let mut base = serde_json::to_value(TrainConfig::preset(name)?)
                .map_err(|e| TrainError::Config(format!("preset `{name}`: {e}")))?;
            if let Some(obj) = v.as_object_mut() {
                obj.remove("preset");
            }
            merge(&mut base, &v);
            v = base;
        }
        let cfg: TrainConfig = serde_json::from_value(v).map_err(|e| TrainError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Io { path: path.to_path_buf(), msg: format!("cannot read the config: {e}") })?;
        TrainConfig::from_json(&text)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Checks every field's domain and the shapes' compatibility; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let bad = |field: &str, msg: String| Err(TrainError::Config(format!("{field}: {msg}")));
        for (field, v) in [
            ("model.n_layer", m.n_layer),
            ("model.d_model", m.d_model),
            ("model.n_head", m.n_head),
            ("model.n_head_kv", m.n_head_kv),
            ("model.d_ff", m.d_ff),
            ("data.seq_len", self.data.seq_len),
            ("data.batch_size", self.data.batch_size),
            ("data.grad_accum", self.data.grad_accum),
            ("data.eval_sequences", self.data.eval_sequences),
            ("run.steps", self.run.steps),
            ("run.eval_every", self.run.eval_every),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
            if v > 1 << 24 {
                return bad(field, format!("{v} is implausibly large (at most 2^24)"));
            }
        }
        match (m.architecture, &m.megalodon) {
            (Architecture::Llama, Some(_)) => {
                return bad("model.megalodon", "given, but model.architecture is `llama`".into());
            }
            (Architecture::Megalodon, None) => {
                return bad("model.megalodon", "model.architecture `megalodon` needs this section".into());
            }
            (Architecture::Llama, None) => {
                if !m.d_model.is_multiple_of(m.n_head) {
                    return bad("model.d_model", format!("{} is not a multiple of n_head = {}", m.d_model, m.n_head));
                }
                if !m.n_head.is_multiple_of(m.n_head_kv) {
                    return bad(
                        "model.n_head",
                        format!("{} is not a multiple of n_head_kv = {}", m.n_head, m.n_head_kv),
                    );
                }
                let head_dim = m.d_model / m.n_head;
                if !head_dim.is_multiple_of(2) {
                    return bad("model.d_model", format!("head size {head_dim} must be even for RoPE"));
                }
            }
            (Architecture::Megalodon, Some(_)) => {
                if m.n_head_kv != m.n_head {
                    return bad(
                        "model.n_head_kv",
                        format!("{} must equal n_head = {} for megalodon (one key per head)", m.n_head_kv, m.n_head),
                    );
                }
                // The vocabulary comes from the tokenizer later; any positive size checks the other dimensions.
                if let Some(mc) = self.megalodon_config(1) {
                    mc.validate().map_err(|e| TrainError::Config(format!("model.megalodon: {e}")))?;
                }
            }
        }
        let features = m.architecture.features();
        if self.run.precision == Precision::Bf16 && !features.bf16 {
            return bad(
                "run.precision",
                format!("bf16 mixed precision is not supported for {} (use f32)", m.architecture.name()),
            );
        }
        if self.run.activation_checkpointing && !features.activation_checkpointing {
            return bad(
                "run.activation_checkpointing",
                format!("activation checkpointing is not supported for {}", m.architecture.name()),
            );
        }
        if !(m.rope_base.is_finite() && m.rope_base > 1.0) {
            return bad("model.rope_base", format!("{} must be finite and > 1", m.rope_base));
        }
        if !(m.init_std.is_finite() && m.init_std > 0.0) {
            return bad("model.init_std", format!("{} must be finite and > 0", m.init_std));
        }
        let o = &self.optim;
        for (field, v) in [("optim.lr", o.lr), ("optim.min_lr", o.min_lr)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("{v} must be finite and >= 0"));
            }
        }
        if o.min_lr > o.lr {
            return bad("optim.min_lr", format!("{} exceeds lr = {}", o.min_lr, o.lr));
        }
        if o.warmup_steps >= self.run.steps {
            return bad(
                "optim.warmup_steps",
                format!("{} must be below run.steps = {}", o.warmup_steps, self.run.steps),
            );
        }
        for (field, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, format!("{v} must be in [0, 1)"));
            }
        }
        for (field, v) in
            [("optim.eps", o.eps), ("optim.weight_decay", o.weight_decay), ("optim.clip_norm", o.clip_norm)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("{v} must be finite and >= 0"));
            }
        }
        if self.run.threads == Some(0) {
            return bad("run.threads", "must be at least 1".into());
        }
        effllm_tensor::Device::parse(&self.run.device).map_err(|e| TrainError::Config(format!("run.device: {e}")))?;
        Ok(())
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.data.seq_len * self.data.batch_size * self.data.grad_accum
    }

    /// The [`MegalodonConfig`](megalodon::MegalodonConfig) of this shape with `vocab` tokens (`None` for a Llama):
    /// the shared fields mapped as [`ModelShape`] describes, ε = 1e-5, dropout-free, any call length accepted.
    pub fn megalodon_config(&self, vocab: usize) -> Option<megalodon::MegalodonConfig> {
        let m = &self.model;
        let g = m.megalodon.as_ref().filter(|_| m.architecture == Architecture::Megalodon)?;
        Some(megalodon::MegalodonConfig {
            num_layers: m.n_layer,
            model_dim: m.d_model,
            z_dim: g.z_dim,
            value_dim: g.value_dim,
            num_heads: m.n_head,
            ffn_hidden_dim: m.d_ff,
            vocab_size: vocab,
            cema_ndim: g.cema_ndim,
            chunk_size: g.chunk_size,
            norm_num_groups: g.norm_num_groups,
            norm_eps: 1e-5,
            rope_base: m.rope_base,
            swiglu: g.swiglu,
            rescale_nffn: g.rescale_nffn,
            scale_emb: g.scale_emb,
            share_emb: m.tied_embeddings,
            strict_reference_shapes: false,
        })
    }

    /// The [`LlamaConfig`](effllm_model::LlamaConfig) of this shape with `vocab` tokens (NeoX RoPE over the whole
    /// head, RMSNorm ε = 1e-5, context = `seq_len`).
    pub fn llama_config(&self, vocab: usize) -> effllm_model::LlamaConfig {
        let m = &self.model;
        let head_dim = m.d_model / m.n_head;
        effllm_model::LlamaConfig {
            n_layer: m.n_layer,
            d_model: m.d_model,
            n_head: m.n_head,
            n_head_kv: m.n_head_kv,
            head_dim,
            d_ff: m.d_ff,
            vocab,
            context: self.data.seq_len,
            rms_eps: 1e-5,
            rope: effllm_tensor::RopeConfig {
                style: effllm_tensor::RopeStyle::NeoX,
                base: m.rope_base,
                rotary_dims: head_dim,
            },
            tied_embeddings: m.tied_embeddings,
        }
    }
}

/// Overwrites `base`'s fields with `over`'s, recursing into objects.
fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}
