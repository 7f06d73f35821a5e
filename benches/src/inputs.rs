//! Shapes and random inputs shared by the criterion benches and `bench-all` (never zeros: every input is drawn
//! from a seeded normal distribution with effllm's counter-based generator).

use effllm_tensor::quant::{QMatrix, QuantType};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};

/// Seed of every benchmark input.
pub const SEED: u64 = 0x00EF_F11A;

/// Square f32 GEMM sizes.
pub const GEMM_SIZES: [usize; 6] = [64, 128, 256, 512, 1024, 2048];
/// Extra GEMM sizes of `bench-all --full`.
pub const GEMM_SIZES_FULL: [usize; 1] = [4096];

/// A decode GEMV `y = W x` with `W` of `n_out × k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvShape {
    /// Which SmolLM2 layer has this shape.
    pub name: &'static str,
    /// Rows of W (outputs).
    pub n_out: usize,
    /// Columns of W (inputs).
    pub k: usize,
}

impl GemvShape {
    /// "576x576".
    pub fn label(&self) -> String {
        format!("{}x{}", self.n_out, self.k)
    }

    /// Weights of W.
    pub fn weights(&self) -> usize {
        self.n_out * self.k
    }
}

/// SmolLM2-135M's decode GEMV shapes (`n_out × k`).
pub const SMOLLM2_GEMV: [GemvShape; 4] = [
    GemvShape { name: "q/o", n_out: 576, k: 576 },
    GemvShape { name: "gate/up", n_out: 1536, k: 576 },
    GemvShape { name: "down", n_out: 576, k: 1536 },
    GemvShape { name: "lm_head", n_out: 49152, k: 576 },
];

/// Softmax inputs (softmax over the last dimension): a vocabulary row, a batch of vocabulary rows, and
/// attention scores of 8 heads × 1024 queries × 1024 keys.
pub const SOFTMAX_SHAPES: [&[usize]; 3] = [&[1, 49152], &[32, 49152], &[8, 1024, 1024]];

/// RMSNorm width (SmolLM2's hidden size).
pub const RMS_DIM: usize = 576;
/// RMSNorm row counts (1 = decode; many rows = prefill).
pub const RMS_ROWS: [usize; 3] = [1, 4096, 16384];

/// Query heads of the decode-attention benchmark (SmolLM2: 9).
pub const ATTN_HEADS_Q: usize = 9;
/// KV heads (SmolLM2: 3).
pub const ATTN_HEADS_KV: usize = 3;
/// Head size (SmolLM2: 64).
pub const ATTN_HEAD_DIM: usize = 64;
/// Cached keys of the decode-attention benchmark.
pub const ATTN_KV_LENS: [usize; 2] = [1024, 8192];
/// Extra cached-key counts of `bench-all --full`.
pub const ATTN_KV_LENS_FULL: [usize; 1] = [32768];

/// The generator of benchmark stream `stream`.
pub fn rng(stream: u64) -> CounterRng {
    CounterRng::new(SEED, stream)
}

/// A standard-normal f32 tensor (scaled by `std`) of `shape` on the CPU, from stream `stream`.
pub fn randn(shape: &[usize], stream: u64, std: f64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &rng(stream), 0, 0.0, std).expect("randn on the CPU cannot fail")
}

/// `n` standard-normal f32 values (scaled by `std`) from stream `stream`.
pub fn randn_vec(n: usize, stream: u64, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    rng(stream).fill_normal_f32(0, &mut v);
    if std != 1.0 {
        v.iter_mut().for_each(|x| *x *= std);
    }
    v
}

/// A pair of square `n × n` GEMM operands.
pub fn gemm_operands(n: usize) -> (Tensor, Tensor) {
    (randn(&[n, n], 1, 1.0), randn(&[n, n], 2, 1.0))
}

/// Row-major f32 weights of a GEMV shape (std `1/√k`, like a trained layer).
pub fn gemv_weights(s: &GemvShape) -> Vec<f32> {
    randn_vec(s.weights(), 10, 1.0 / (s.k as f32).sqrt())
}

/// The activation vector of a GEMV shape.
pub fn gemv_x(s: &GemvShape) -> Vec<f32> {
    randn_vec(s.k, 11, 1.0)
}

/// The weights of a GEMV shape quantized to `ty`.
pub fn gemv_qweights(s: &GemvShape, ty: QuantType, w: &[f32]) -> QMatrix {
    QMatrix::quantize(ty, s.n_out, s.k, w).expect("SmolLM2 shapes are multiples of 32")
}

/// Copies of a quantized matrix with distinct storage (so a rotation over them streams from DRAM).
pub fn qmatrix_copies(q: &QMatrix, copies: usize) -> Vec<QMatrix> {
    (0..copies)
        .map(|_| {
            QMatrix::from_bytes(q.quant_type(), q.n_rows(), q.n_cols(), q.as_bytes().to_vec())
                .expect("same shape as the original")
        })
        .collect()
}

/// Number of copies of a `bytes`-sized operand needed for a rotation to cover at least `total` bytes (≥ 1).
pub fn copies_for(bytes: usize, total: usize) -> usize {
    total.div_ceil(bytes.max(1)).max(1)
}

/// Queries `[1, heads_q, 1, d]`, keys and values `[1, heads_kv, kv_len, d]` of one decode step.
pub fn attention_inputs(kv_len: usize) -> (Tensor, Tensor, Tensor) {
    let q = randn(&[1, ATTN_HEADS_Q, 1, ATTN_HEAD_DIM], 20, 1.0);
    let k = randn(&[1, ATTN_HEADS_KV, kv_len, ATTN_HEAD_DIM], 21, 1.0);
    let v = randn(&[1, ATTN_HEADS_KV, kv_len, ATTN_HEAD_DIM], 22, 1.0);
    (q, k, v)
}

/// RMSNorm input `[rows, RMS_DIM]` and weight `[RMS_DIM]` (around 1).
pub fn rms_inputs(rows: usize) -> (Tensor, Tensor) {
    let x = randn(&[rows, RMS_DIM], 30, 1.0);
    let w = Tensor::randn(&[RMS_DIM], DType::F32, &Device::Cpu, &rng(31), 0, 1.0, 0.1).expect("randn on the CPU");
    (x, w)
}

/// Softmax input of `shape` (logit-like spread).
pub fn softmax_input(shape: &[usize]) -> Tensor {
    randn(shape, 40, 4.0)
}
