//! [`GraphDecoder`]: decoding a [`LlamaModel`] on a CUDA device with the per-token step recorded once as a CUDA
//! graph and replayed for every later token (the type's docs explain how).

use effllm_tensor::cuda::{Arg, CudaGraph, CustomKernel, KERNEL_PRELUDE, LaunchDims, Param, capture_graph};
use effllm_tensor::quant::{QMatrix, QWeight};
use effllm_tensor::{DType, Device, Tensor};

use crate::error::{ModelError, Result, invalid};
use crate::llama::LlamaModel;
use crate::{Batch, CausalLm, KvCache, LayeredLm, Linear, LogitRows};

mod fused;

use fused::{FusedStep, StepBuffers};

/// Cache slots per block of `attention_split` (`CHUNK` in the kernel source).
const ATTENTION_CHUNK: usize = 64;

const SOURCE: &str = r#"
extern "C" __global__ void kv_write(const float* k, const float* v, float* kc, float* vc, const u32* pos,
                                    int hkv, int hd, int cap) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= hkv * hd) return;
    u32 slot = pos[0];
    if (slot >= (u32)cap) return;
    int h = i / hd, d = i - h * hd;
    size_t o = ((size_t)h * cap + slot) * hd + d;
    kc[o] = k[i];
    vc[o] = v[i];
}

#define CHUNK 64

// Split-K decode attention, part 1: block (h, c) handles query head h over the slots c·CHUNK .. c·CHUNK + CHUNK - 1
// that are live (slots 0..=pos): one thread per slot for the score, then the chunk's max m, Σ e^(s - m) and the
// unnormalised Σ e^(s - m) v. Chunks past the live slots return at once; the grid covers the whole capacity so that
// the launch does not depend on the position (it is replayed from a graph).
extern "C" __global__ void attention_split(const float* q, const float* kc, const float* vc, const u32* pos,
                                           float* pm, float* pl, float* pacc, int hq, int hkv, int hd, int cap,
                                           int nchunks, float scale) {
    __shared__ float p[CHUNK];
    __shared__ float red[CHUNK];
    int h = blockIdx.x, c = blockIdx.y, t = threadIdx.x;
    int n = (int)pos[0] + 1;
    if (n > cap) n = cap;
    int j0 = c * CHUNK;
    if (j0 >= n) return;
    int kvh = h / (hq / hkv);
    const float* qh = q + (size_t)h * hd;
    const float* K = kc + (size_t)kvh * cap * hd;
    const float* V = vc + (size_t)kvh * cap * hd;
    int j = j0 + t;
    float s = __int_as_float(0xff800000);  // -inf (no headers under NVRTC)
    if (j < n) {
        const float* kr = K + (size_t)j * hd;
        float a = 0.f;
        for (int d = 0; d < hd; ++d) a += qh[d] * kr[d];
        s = a * scale;
    }
    red[t] = s;
    __syncthreads();
    for (int o = CHUNK / 2; o > 0; o >>= 1) {
        if (t < o) red[t] = fmaxf(red[t], red[t + o]);
        __syncthreads();
    }
    float m = red[0];
    __syncthreads();
    float e = j < n ? expf(s - m) : 0.f;
    p[t] = e;
    red[t] = e;
    __syncthreads();
    for (int o = CHUNK / 2; o > 0; o >>= 1) {
        if (t < o) red[t] += red[t + o];
        __syncthreads();
    }
    size_t part = (size_t)h * nchunks + c;
    int cnt = n - j0 < CHUNK ? n - j0 : CHUNK;
    for (int d = t; d < hd; d += CHUNK) {
        float acc = 0.f;
        #pragma unroll 8
        for (int i = 0; i < cnt; ++i) acc += p[i] * V[(size_t)(j0 + i) * hd + d];
        pacc[part * hd + d] = acc;
    }
    if (t == 0) {
        pm[part] = m;
        pl[part] = red[0];
    }
}

// Part 2: block h rescales the live chunks' partial sums to their common max and normalises.
extern "C" __global__ void attention_combine(const float* pm, const float* pl, const float* pacc, const u32* pos,
                                             float* out, int hd, int cap, int nchunks) {
    int h = blockIdx.x;
    int n = (int)pos[0] + 1;
    if (n > cap) n = cap;
    int used = (n + CHUNK - 1) / CHUNK;
    const float* m = pm + (size_t)h * nchunks;
    const float* l = pl + (size_t)h * nchunks;
    float mx = __int_as_float(0xff800000);
    for (int c = 0; c < used; ++c) mx = fmaxf(mx, m[c]);
    float total = 0.f;
    for (int c = 0; c < used; ++c) total += expf(m[c] - mx) * l[c];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int c = 0; c < used; ++c) a += expf(m[c] - mx) * pacc[((size_t)h * nchunks + c) * hd + d];
        out[(size_t)h * hd + d] = a / total;
    }
}

extern "C" __global__ void copy_rows(const float* src, float* dst, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

extern "C" __global__ void advance(u32* pos) {
    if (blockIdx.x == 0 && threadIdx.x == 0) pos[0] += 1;
}

extern "C" __global__ void set_position(u32* pos, u32 value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) pos[0] = value;
}
"#;

fn source() -> &'static str {
    static FULL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{KERNEL_PRELUDE}{SOURCE}"));
    &FULL
}

const KEY: &str = "effllm-model::graph_decode_v3";

fn kernel(name: &str, params: &[Param]) -> CustomKernel {
    CustomKernel::new(KEY, source(), name, params)
}

/// The kernels, built once per process.
struct Kernels {
    kv_write: CustomKernel,
    attention_split: CustomKernel,
    attention_combine: CustomKernel,
    copy: CustomKernel,
    advance: CustomKernel,
    set_position: CustomKernel,
}

fn kernels() -> &'static Kernels {
    use Param::*;
    static K: std::sync::LazyLock<Kernels> = std::sync::LazyLock::new(|| Kernels {
        kv_write: kernel(
            "kv_write",
            &[In(DType::F32), In(DType::F32), Out(DType::F32), Out(DType::F32), In(DType::U32), I32, I32, I32],
        ),
        attention_split: kernel(
            "attention_split",
            &[
                In(DType::F32),
                In(DType::F32),
                In(DType::F32),
                In(DType::U32),
                Out(DType::F32),
                Out(DType::F32),
                Out(DType::F32),
                I32,
                I32,
                I32,
                I32,
                I32,
                F32,
            ],
        ),
        attention_combine: kernel(
            "attention_combine",
            &[In(DType::F32), In(DType::F32), In(DType::F32), In(DType::U32), Out(DType::F32), I32, I32, I32],
        ),
        copy: kernel("copy_rows", &[In(DType::F32), Out(DType::F32), I64]),
        advance: kernel("advance", &[Out(DType::U32)]),
        set_position: kernel("set_position", &[Out(DType::U32), U32]),
    });
    &K
}

/// Decodes one sequence of a [`LlamaModel`] on a CUDA device, one token per [`GraphDecoder::decode`], replaying a
/// recorded CUDA graph.
///
/// The ordinary forward ([`crate::CausalLm::forward`]) issues every op of every layer as its own kernel launch with
/// its own output allocation: about 25 launches per layer, 750 for SmolLM2's 30 layers, each costing several
/// microseconds of host time, so decoding one token is launch-bound (≈ 6 ms) while the GPU idles. A
/// `GraphDecoder` records the step once and replays it with one driver call. Replaying needs every launch to see
/// the same arguments, so the parts that change from token to token are read from device memory instead:
///
/// - the KV cache is one preallocated buffer per layer, `[n_head_kv, max_context, head_dim]` for keys and for
///   values, never reallocated;
/// - a one-element `u32` tensor holds the position of the token being decoded, which is also its cache slot;
///   RoPE reads it as its positions tensor, `kv_write` stores the new key and value at that slot, the split-K
///   attention (`attention_split` over chunks of 64 slots in parallel, then `attention_combine`) attends over
///   slots `0..=position`, and the last node of the graph adds one to it;
/// - the token's embedding is written into a fixed input buffer before the replay (outside the graph: the lookup
///   of a quantized embedding row runs on the host) and the logits land in a fixed output buffer.
///
/// Each layer's Q/K/V weights, and its gate/up weights, are stacked into one matrix at construction (a copy), so
/// that the step runs one GEMV for each group instead of five launches. Every other op is the model's own
/// (`rms_norm`, the quantized or dense linear maps, `rope`, `swiglu`, `add`), so the numerics are the ordinary
/// decoder's except for the attention kernel, which sums in another order (agreement to f32 round-off is tested
/// against [`crate::CausalLm::forward`]). The first decoded token runs the step eagerly (which also compiles the
/// kernels, as a capture must not); the graph is recorded at the second.
///
/// **Fused step.** Where the model's shapes and weight formats allow (head size a multiple of 16 dividing 256; every
/// matrix dense f32/bf16/f16 or Q4_0/Q4_1/Q8_0 blocks with f32 activations), the step runs five kernels per layer
/// instead (RMSNorm + Q/K/V GEMV + RoPE + cache write; attention with its combine; `W_o` GEMV + residual; RMSNorm +
/// gate/up GEMV + SwiGLU; `W_down` GEMV + residual), plus the embedding lookup before the layers and the final norm,
/// LM head and argmax after them: about 150 kernels for SmolLM2 where the step above runs about 450, launched so
/// that each may start (and prefetch its weights) while the previous one finishes. The step leaves its argmax on the
/// device as the next input, so [`GraphDecoder::greedy_continue`] decodes without a host round trip per token. It is
/// the default; [`GraphDecoder::set_fused`] switches between the two, [`GraphDecoder::set_persistent`] runs the fused
/// phases as one persistent kernel instead. For f32 and quantized weights both steps compute the same thing (to f32
/// round-off); for bf16/f16 weights the fused step keeps activations in f32 where the model's ordinary GEMVs round
/// them to the 16-bit type.
///
/// Prefill runs the ordinary batched forward and copies its cache into the decoder's buffers.
///
/// ```no_run
/// use effllm_model::{Device, GraphDecoder, LlamaModel, LoadOptions};
/// # fn main() -> Result<(), effllm_model::ModelError> {
/// let path = effllm_gguf::model_cache::smollm2_path().expect("run `cargo xtask fetch-model`");
/// let model = LlamaModel::open_gguf(&path, &LoadOptions::default())?.to_device(&Device::Cuda(0))?;
/// let mut decoder = GraphDecoder::new(&model, 512)?;
/// let tokens = decoder.generate_greedy(&[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198], 32)?;
/// assert_eq!(tokens.len(), 32);
/// # Ok(()) }
/// ```
pub struct GraphDecoder<'m> {
    model: &'m LlamaModel,
    /// Per layer: `[W_q; W_k; W_v]` and `[W_gate; W_up]` stacked into one map each (one GEMV launch instead of three
    /// and two), when the maps share a storage format.
    stacked: Vec<StackedMaps>,
    max_context: usize,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `u32 [1]`: position (= cache slot) of the token being decoded.
    position: Tensor,
    /// `f32 [1, d]`: the embedding of the token being decoded (the fused step then updates it in place as the
    /// residual stream).
    input: Tensor,
    /// `f32 [1, n_head·head_dim]`: attention output of the layer being run (reused by every layer).
    attention: Tensor,
    /// Per query head and chunk of [`ATTENTION_CHUNK`] slots: the partial max, sum and weighted values of
    /// `attention_split` (reused by every layer).
    partial_max: Tensor,
    partial_sum: Tensor,
    partial_values: Tensor,
    /// `f32 [1, vocab]`: logits of the last decoded token.
    logits: Tensor,
    graph: Option<CudaGraph>,
    use_graph: bool,
    /// The fused step's weights and buffers, when the model allows it.
    fused: Option<FusedStep>,
    use_fused: bool,
    /// Whether a step ran eagerly (every kernel of the step is then compiled and loaded, which a capture cannot do).
    stepped: bool,
    len: usize,
}

/// A layer's stacked projections (`None` where the maps are stored in different formats).
pub(crate) struct StackedMaps {
    qkv: Option<Linear>,
    gate_up: Option<Linear>,
}

/// The maps' weights stacked by rows into one map: dense weights of one dtype, or quantized blocks of one type
/// (rows of blocks are independent, so the stacked GEMV computes each row exactly as the separate ones).
fn stack_rows(maps: &[&Linear], device: Device) -> Result<Option<Linear>> {
    let cols = maps[0].in_features();
    if maps.iter().any(|m| m.in_features() != cols) {
        return Ok(None);
    }
    if let Some(dense) =
        maps.iter().map(|m| if let Linear::Dense(w) = m { Some(w) } else { None }).collect::<Option<Vec<_>>>()
    {
        if dense.iter().any(|w| w.dtype() != dense[0].dtype()) {
            return Ok(None);
        }
        return Ok(Some(Linear::Dense(Tensor::concat(&dense, 0)?)));
    }
    let Some(quant) =
        maps.iter().map(|m| if let Linear::Quant(q) = m { Some(q) } else { None }).collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let first = quant[0];
    if quant.iter().any(|q| q.quant_type() != first.quant_type() || q.activation_quant() != first.activation_quant()) {
        return Ok(None);
    }
    let rows = quant.iter().map(|q| q.n_rows()).sum();
    let bytes: Vec<u8> = quant.iter().flat_map(|q| q.matrix().as_bytes().iter().copied()).collect();
    let stacked = QMatrix::from_bytes(first.quant_type(), rows, cols, bytes)?;
    Ok(Some(Linear::Quant(QWeight::new(stacked).with_activation_quant(first.activation_quant()).to_device(&device)?)))
}

impl std::fmt::Debug for GraphDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphDecoder")
            .field("max_context", &self.max_context)
            .field("len", &self.len)
            .field("captured", &self.graph.is_some())
            .finish()
    }
}

impl<'m> GraphDecoder<'m> {
    /// A decoder for `model` (which must live on a CUDA device) holding up to `max_context` tokens (prompt and
    /// generated together; at most the model's context length). Allocates the KV buffers now
    /// (`2 · n_layer · n_head_kv · max_context · head_dim` f32 values) and a stacked copy of each layer's Q/K/V and
    /// gate/up weights (one GEMV each per token instead of five).
    pub fn new(model: &'m LlamaModel, max_context: usize) -> Result<GraphDecoder<'m>> {
        let device = model.device();
        if !matches!(device, Device::Cuda(_)) {
            return Err(invalid("graph decoder", format!("needs a model on a CUDA device, not {device}")));
        }
        let cfg = model.config();
        let limit = cfg.context;
        if max_context == 0 || max_context > limit {
            return Err(invalid(
                "graph decoder",
                format!("max_context {max_context} is not in 1..={limit} (the model's context length)"),
            ));
        }
        if cfg.head_dim == 0 || cfg.n_head_kv == 0 || !cfg.n_head.is_multiple_of(cfg.n_head_kv) {
            return Err(invalid(
                "graph decoder",
                format!(
                    "head_dim {} with {} query heads over {} KV heads is not a grouped-query layout",
                    cfg.head_dim, cfg.n_head, cfg.n_head_kv
                ),
            ));
        }
        let kv_shape = [cfg.n_head_kv, max_context, cfg.head_dim];
        let chunks = max_context.div_ceil(ATTENTION_CHUNK);
        let zeros = |shape: &[usize], dtype: DType| Tensor::zeros(shape, dtype, &device);
        let keys =
            (0..cfg.n_layer).map(|_| zeros(&kv_shape, DType::F32)).collect::<std::result::Result<Vec<_>, _>>()?;
        let values =
            (0..cfg.n_layer).map(|_| zeros(&kv_shape, DType::F32)).collect::<std::result::Result<Vec<_>, _>>()?;
        let stacked = model
            .layers()
            .iter()
            .map(|l| {
                Ok(StackedMaps {
                    qkv: stack_rows(&[&l.wq, &l.wk, &l.wv], device)?,
                    gate_up: stack_rows(&[&l.ffn.gate, &l.ffn.up], device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut fused = FusedStep::new(model, &stacked, max_context)?;
        if let Some(f) = fused.as_mut() {
            f.attach_cache(&keys, &values)?;
        }
        Ok(GraphDecoder {
            model,
            stacked,
            max_context,
            keys,
            values,
            position: zeros(&[1], DType::U32)?,
            input: zeros(&[1, cfg.d_model], DType::F32)?,
            attention: zeros(&[1, cfg.n_head * cfg.head_dim], DType::F32)?,
            partial_max: zeros(&[cfg.n_head * chunks], DType::F32)?,
            partial_sum: zeros(&[cfg.n_head * chunks], DType::F32)?,
            partial_values: zeros(&[cfg.n_head * chunks * cfg.head_dim], DType::F32)?,
            logits: zeros(&[1, cfg.vocab], DType::F32)?,
            graph: None,
            use_graph: true,
            use_fused: fused.is_some(),
            fused,
            stepped: false,
            len: 0,
        })
    }

    /// Turns graph replay off (every step then runs eagerly, launch by launch) or back on: the same kernels either
    /// way, for measuring what the graph saves and for testing that replay changes nothing.
    pub fn set_use_graph(&mut self, on: bool) {
        self.use_graph = on;
    }

    /// Chooses the fused step (five kernels per layer; the default where the model allows it) or the unfused one
    /// (the model's own ops, about fifteen kernels per layer). A recorded graph is dropped and recorded again.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when asking for the fused step on a model it does not support
    /// ([`GraphDecoder::fused_supported`]).
    pub fn set_fused(&mut self, on: bool) -> Result<()> {
        if on && self.fused.is_none() {
            return Err(invalid(
                "graph decoder",
                "the fused step needs a head size that is a multiple of 16 dividing 256 and dense f32/bf16/f16 or \
                 Q4_0/Q4_1/Q8_0 (f32-activation) weights",
            ));
        }
        if on != self.use_fused {
            self.use_fused = on;
            self.graph = None;
            self.stepped = false;
        }
        Ok(())
    }

    /// Whether the step runs fused.
    pub fn is_fused(&self) -> bool {
        self.use_fused
    }

    /// Runs the fused step as one persistent kernel (a cooperative launch of one block per multiprocessor, the
    /// phases separated by grid-wide barriers instead of kernel boundaries) instead of one kernel per phase in a
    /// CUDA graph. Both compute the same logits bit for bit. Turning it on also turns the fused step on.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when the model does not support the fused step, or its widest GEMV input does not
    /// fit the persistent kernel's shared memory.
    pub fn set_persistent(&mut self, on: bool) -> Result<()> {
        if on {
            if let Some(f) = &self.fused
                && !f.persistent_fits()
            {
                return Err(invalid(
                    "graph decoder",
                    "the persistent kernel's shared memory (the widest GEMV input plus the attention's arrays) \
                     exceeds 48 KiB for this model",
                ));
            }
            self.set_fused(true)?;
        }
        if let Some(f) = self.fused.as_mut()
            && f.persistent != on
        {
            f.persistent = on;
            self.graph = None;
            self.stepped = false;
        }
        Ok(())
    }

    /// Whether the step runs as one persistent kernel.
    pub fn is_persistent(&self) -> bool {
        self.use_fused && self.fused.as_ref().is_some_and(|f| f.persistent)
    }

    /// Whether the model allows the fused step.
    pub fn fused_supported(&self) -> bool {
        self.fused.is_some()
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens the cache holds.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Whether the step graph has been recorded.
    pub fn is_captured(&self) -> bool {
        self.graph.is_some()
    }

    /// Starts a new sequence: runs `prompt` through the model's ordinary forward, keeps its keys and values, and
    /// returns the logits of its last token. The prompt must leave room for at least one decoded token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        if prompt.is_empty() || prompt.len() >= self.max_context {
            return Err(invalid(
                "graph decoder prefill",
                format!(
                    "a prompt of {} tokens: need 1..{} (max_context leaves room for one more)",
                    prompt.len(),
                    self.max_context
                ),
            ));
        }
        let model = self.model;
        let mut cache = model.new_cache();
        let logits = model.forward(&Batch::causal(prompt, 0), &mut cache, &LogitRows::Last)?;
        self.load_cache(&cache)?;
        Ok(logits.to_vec::<f32>()?)
    }

    /// Starts a new sequence from a cache filled elsewhere (e.g. a prefill through another model with the same
    /// attention weights, as GRIFFIN's dense prefill before decoding with pruned FFNs): copies its keys and values.
    /// The cache must hold a plain sequence — slot `i` at position `i` in every head — and leave room for one token.
    pub fn load_cache(&mut self, cache: &KvCache) -> Result<()> {
        let model = self.model;
        let cfg = model.config();
        let n = cache.len();
        if cache.n_layers() != cfg.n_layer || n == 0 || n >= self.max_context {
            return Err(invalid(
                "graph decoder cache",
                format!(
                    "{} layers and {n} slots: need {} layers and 1..{} slots",
                    cache.n_layers(),
                    cfg.n_layer,
                    self.max_context
                ),
            ));
        }
        for li in 0..cfg.n_layer {
            let layer = cache.layer(li)?;
            if layer.n_heads() != cfg.n_head_kv || layer.len() != n {
                return Err(invalid(
                    "graph decoder cache",
                    format!("layer {li} has {} heads and {} slots", layer.n_heads(), layer.len()),
                ));
            }
            if let Some(h) =
                (0..layer.n_heads()).find(|&h| layer.positions(h).iter().enumerate().any(|(i, &p)| p as usize != i))
            {
                return Err(invalid(
                    "graph decoder cache",
                    format!("layer {li} head {h} does not hold positions 0..{n} in order"),
                ));
            }
            let (ks, vs): (Vec<Tensor>, Vec<Tensor>) = (0..cfg.n_head_kv)
                .map(|h| Ok((layer.keys(h)?.unsqueeze(0)?, layer.values(h)?.unsqueeze(0)?)))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            let k = Tensor::concat(&ks.iter().collect::<Vec<_>>(), 0)?.to_device(&model.device())?;
            let v = Tensor::concat(&vs.iter().collect::<Vec<_>>(), 0)?.to_device(&model.device())?;
            self.keys[li].slice_assign(1, 0, &k)?;
            self.values[li].slice_assign(1, 0, &v)?;
        }
        kernels().set_position.launch(
            model.device(),
            LaunchDims::linear(1),
            &mut [Arg::Out(&mut self.position), Arg::U32(n as u32)],
            1,
        )?;
        self.len = n;
        Ok(())
    }

    /// Appends `token` (at position [`GraphDecoder::len`]) and returns the logits of the next token.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>> {
        self.decode_on_device(token)?;
        Ok(self.logits.to_vec::<f32>()?)
    }

    /// [`GraphDecoder::decode`] without reading the logits back: they stay on the device in
    /// [`GraphDecoder::logits`] (e.g. for an argmax there).
    pub fn decode_on_device(&mut self, token: u32) -> Result<()> {
        let model = self.model;
        if self.len == 0 {
            return Err(invalid("graph decoder", "decode before prefill"));
        }
        if self.len >= self.max_context {
            return Err(ModelError::ContextOverflow { cached: self.len, new: 1, context: self.max_context });
        }
        let device = model.device();
        let vocab = model.config().vocab;
        if token as usize >= vocab {
            return Err(ModelError::BadToken { id: token, index: 0, vocab });
        }
        match self.fused.as_mut() {
            // The fused step looks the token up itself, from device memory.
            Some(fused) if self.use_fused => kernels().set_position.launch(
                device,
                LaunchDims::linear(1),
                &mut [Arg::Out(&mut fused.token), Arg::U32(token)],
                1,
            )?,
            _ => {
                let embedded = model.embed(&[token])?.contiguous()?;
                let n = embedded.elem_count();
                // A checked copy, not `slice_assign`: that would silently copy-on-write a shared buffer, and the
                // graph reads this one.
                kernels().copy.launch(
                    device,
                    LaunchDims::linear(n),
                    &mut [Arg::In(&embedded), Arg::Out(&mut self.input), Arg::I64(n as i64)],
                    n,
                )?;
            }
        }
        self.run_step()
    }

    /// Runs the step once: eagerly at the first token (or with graphs off), recording the graph at the second,
    /// replaying it after that.
    fn run_step(&mut self) -> Result<()> {
        let device = self.model.device();
        if self.is_persistent() {
            // One launch per step already: nothing for a graph to save.
            self.step()?;
            self.len += 1;
            return Ok(());
        }
        match &self.graph {
            Some(graph) if self.use_graph => graph.launch()?,
            None if self.use_graph && self.stepped => {
                let (graph, ()) = capture_graph(device, || self.step().map_err(tensor_error))?;
                graph.launch()?;
                self.graph = Some(graph);
            }
            _ => self.step()?,
        }
        self.len += 1;
        Ok(())
    }

    /// Decodes `token` and returns the greedy choice for the next one: the argmax of the new logits (the lowest id
    /// among equal maxima; NaN never wins), as `effllm-sampling` chooses at temperature 0. The fused step computes it
    /// on the device, so only one `u32` is read back instead of the logits; the unfused step reads the logits and
    /// takes the argmax on the host. The logits stay available in [`GraphDecoder::logits`].
    pub fn decode_greedy(&mut self, token: u32) -> Result<u32> {
        self.decode_on_device(token)?;
        match &self.fused {
            Some(fused) if self.use_fused => Ok(fused.token.to_vec::<u32>()?[0]),
            _ => Ok(argmax(&self.logits.to_vec::<f32>()?)),
        }
    }

    /// The logits of the last decoded token, `f32 [1, vocab]` on the device (overwritten by the next decode).
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Greedy decoding: prefills `prompt`, then appends the argmax token `n` times; returns the `n` tokens.
    pub fn generate_greedy(&mut self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        let logits = self.prefill(prompt)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let first = argmax(&logits);
        let mut out = Vec::with_capacity(n);
        out.push(first);
        out.extend(self.greedy_continue(first, n - 1)?);
        Ok(out)
    }

    /// Decodes `token`, then each greedy choice in turn: `n` steps, returning the `n` argmax tokens (the last one not
    /// yet decoded). With the fused step the choices never leave the device: each step's last node feeds its argmax
    /// to the next (ties go to the smaller id, NaN never wins, as on the host), the graph is replayed `n` times back
    /// to back, and the tokens are read once at the end. The unfused step reads each step's logits back and takes
    /// the argmax on the host.
    ///
    /// # Errors
    /// Before prefill, when `n` more tokens do not fit `max_context`, or for a token outside the vocabulary.
    pub fn greedy_continue(&mut self, token: u32, n: usize) -> Result<Vec<u32>> {
        if self.len + n > self.max_context {
            return Err(ModelError::ContextOverflow { cached: self.len, new: n, context: self.max_context });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        if !self.use_fused {
            let mut out = Vec::with_capacity(n);
            let mut next = token;
            for _ in 0..n {
                next = self.decode_greedy(next)?;
                out.push(next);
            }
            return Ok(out);
        }
        let start = self.len;
        self.decode_on_device(token)?;
        for _ in 1..n {
            self.run_step()?;
        }
        let Some(fused) = &self.fused else { unreachable!("use_fused implies the fused step") };
        // history[p] is the token read at position p: the choices of the first n - 1 steps, then the last choice.
        let history = fused.history.to_vec::<u32>()?;
        let mut out = history[start + 1..start + n].to_vec();
        out.push(fused.token.to_vec::<u32>()?[0]);
        Ok(out)
    }

    /// One decoding step on the device: reads `input` and `position`, writes the caches, `logits` and
    /// `position + 1`. Only device work with fixed arguments, so that it can be recorded.
    fn step(&mut self) -> Result<()> {
        let model = self.model;
        let cfg = model.config();
        let device = model.device();
        let k = kernels();
        let (hq, hkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
        let cap = self.max_context;
        if self.use_fused
            && let Some(fused) = self.fused.as_mut()
        {
            fused.run(
                cfg,
                device,
                StepBuffers {
                    hidden: &mut self.input,
                    position: &mut self.position,
                    keys: &mut self.keys,
                    values: &mut self.values,
                    attention: &mut self.attention,
                    partial_max: &mut self.partial_max,
                    partial_sum: &mut self.partial_sum,
                    partial_values: &mut self.partial_values,
                    logits: &mut self.logits,
                    max_context: cap,
                },
            )?;
            self.stepped = true;
            return Ok(());
        }
        // The same for every layer: the attention's chunk count (its grid) and scale.
        let chunks = cap.div_ceil(ATTENTION_CHUNK);
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let mut h = self.input.clone();
        for (li, layer) in model.layers().iter().enumerate() {
            let x = h.rms_norm(&layer.attn_norm, cfg.rms_eps)?;
            let (q, kk, v) = match &self.stacked[li].qkv {
                Some(w) => {
                    // One GEMV, then contiguous 1-D slices of its row (views, no copies).
                    let y = w.forward(&x)?.reshape(&[(hq + 2 * hkv) * hd])?;
                    (y.narrow(0, 0, hq * hd)?, y.narrow(0, hq * hd, hkv * hd)?, y.narrow(0, (hq + hkv) * hd, hkv * hd)?)
                }
                None => {
                    let [q, kk, v] =
                        <[Tensor; 3]>::try_from(crate::Linear::forward_many(&[&layer.wq, &layer.wk, &layer.wv], &x)?)
                            .map_err(|_| invalid("attention", "expected three projections"))?;
                    (q, kk, v)
                }
            };
            let q = q.reshape(&[1, hq, 1, hd])?.rope(&self.position, &cfg.rope)?;
            let kk = kk.reshape(&[1, hkv, 1, hd])?.rope(&self.position, &cfg.rope)?;
            let v = v.contiguous()?;
            k.kv_write.launch(
                device,
                LaunchDims::linear(hkv * hd),
                &mut [
                    Arg::In(&kk),
                    Arg::In(&v),
                    Arg::Out(&mut self.keys[li]),
                    Arg::Out(&mut self.values[li]),
                    Arg::In(&self.position),
                    Arg::I32(hkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(cap as i32),
                ],
                1,
            )?;
            k.attention_split.launch(
                device,
                LaunchDims {
                    grid: (hq as u32, chunks as u32, 1),
                    block: (ATTENTION_CHUNK as u32, 1, 1),
                    shared_mem_bytes: 0,
                },
                &mut [
                    Arg::In(&q),
                    Arg::In(&self.keys[li]),
                    Arg::In(&self.values[li]),
                    Arg::In(&self.position),
                    Arg::Out(&mut self.partial_max),
                    Arg::Out(&mut self.partial_sum),
                    Arg::Out(&mut self.partial_values),
                    Arg::I32(hq as i32),
                    Arg::I32(hkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(cap as i32),
                    Arg::I32(chunks as i32),
                    Arg::F32(scale),
                ],
                1,
            )?;
            k.attention_combine.launch(
                device,
                LaunchDims { grid: (hq as u32, 1, 1), block: (64, 1, 1), shared_mem_bytes: 0 },
                &mut [
                    Arg::In(&self.partial_max),
                    Arg::In(&self.partial_sum),
                    Arg::In(&self.partial_values),
                    Arg::In(&self.position),
                    Arg::Out(&mut self.attention),
                    Arg::I32(hd as i32),
                    Arg::I32(cap as i32),
                    Arg::I32(chunks as i32),
                ],
                1,
            )?;
            h = h.add(&layer.wo.forward(&self.attention)?)?;
            let x = h.rms_norm(&layer.ffn_norm, cfg.rms_eps)?;
            let z = match &self.stacked[li].gate_up {
                Some(w) => {
                    let dff = w.out_features() / 2;
                    let y = w.forward(&x)?.reshape(&[2 * dff])?;
                    y.narrow(0, 0, dff)?.reshape(&[1, dff])?.swiglu(&y.narrow(0, dff, dff)?.reshape(&[1, dff])?)?
                }
                None => layer.ffn.intermediate(&x)?,
            };
            h = h.add(&layer.ffn.down(&z)?)?;
        }
        let logits = model.lm_head(&model.final_norm(&h)?)?.contiguous()?;
        let n = logits.elem_count();
        k.copy.launch(
            device,
            LaunchDims::linear(n),
            &mut [Arg::In(&logits), Arg::Out(&mut self.logits), Arg::I64(n as i64)],
            n,
        )?;
        k.advance.launch(device, LaunchDims::linear(1), &mut [Arg::Out(&mut self.position)], 1)?;
        self.stepped = true;
        Ok(())
    }
}

fn tensor_error(e: ModelError) -> effllm_tensor::Error {
    match e {
        ModelError::Tensor(t) => t,
        other => effllm_tensor::Error::InvalidArgument { op: "graph decoder step", msg: other.to_string() },
    }
}

/// Index of the largest logit (the first of equal maxima); NaN never wins.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use effllm_tensor::quant::{QMatrix, QWeight, QuantType};
    use effllm_tensor::rng::CounterRng;
    use effllm_tensor::{DType, Device, Tensor};

    use super::stack_rows;
    use crate::Linear;

    fn dense(rows: usize, cols: usize, stream: u64) -> Tensor {
        Tensor::randn(&[rows, cols], DType::F32, &Device::Cpu, &CounterRng::new(3, stream), 0, 0.0, 1.0).unwrap()
    }

    fn quant(rows: usize, cols: usize, stream: u64) -> Linear {
        let w = dense(rows, cols, stream).to_vec::<f32>().unwrap();
        Linear::Quant(QWeight::new(QMatrix::quantize(QuantType::Q4_1, rows, cols, &w).unwrap()))
    }

    fn separate(maps: &[&Linear], x: &Tensor) -> Vec<f32> {
        maps.iter().flat_map(|m| m.forward(x).unwrap().to_vec::<f32>().unwrap()).collect()
    }

    /// Stacked Q/K/V-like maps compute what the separate maps compute: bitwise for quantized blocks (rows are
    /// independent), to f32 round-off for dense weights.
    #[test]
    fn stacked_maps_equal_the_separate_maps() {
        let x = dense(1, 64, 99);
        let q = [quant(96, 64, 1), quant(32, 64, 2), quant(32, 64, 3)];
        let refs: Vec<&Linear> = q.iter().collect();
        let stacked = stack_rows(&refs, Device::Cpu).unwrap().expect("one quant type");
        assert_eq!(stacked.forward(&x).unwrap().to_vec::<f32>().unwrap(), separate(&refs, &x));
        let d = [Linear::Dense(dense(96, 64, 4)), Linear::Dense(dense(32, 64, 5))];
        let refs: Vec<&Linear> = d.iter().collect();
        let stacked = stack_rows(&refs, Device::Cpu).unwrap().expect("one dtype");
        let (got, want) = (stacked.forward(&x).unwrap().to_vec::<f32>().unwrap(), separate(&refs, &x));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max abs difference {err}");
    }

    /// Maps that do not share a storage format or an input width are left separate.
    #[test]
    fn mixed_maps_are_not_stacked() {
        let a = quant(32, 64, 1);
        let b = Linear::Dense(dense(32, 64, 2));
        assert!(stack_rows(&[&a, &b], Device::Cpu).unwrap().is_none(), "blocks and dense");
        let c = Linear::Dense(dense(32, 64, 3).to_dtype(DType::BF16).unwrap());
        assert!(stack_rows(&[&b, &c], Device::Cpu).unwrap().is_none(), "f32 and bf16");
        let d = Linear::Dense(dense(32, 96, 4));
        assert!(stack_rows(&[&b, &d], Device::Cpu).unwrap().is_none(), "different input widths");
        let e = Linear::Quant(QWeight::new(
            QMatrix::quantize(QuantType::Q8_0, 32, 64, &dense(32, 64, 5).to_vec::<f32>().unwrap()).unwrap(),
        ));
        assert!(stack_rows(&[&a, &e], Device::Cpu).unwrap().is_none(), "Q4_1 and Q8_0");
    }
}
