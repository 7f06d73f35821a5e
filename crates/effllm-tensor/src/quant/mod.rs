//! ggml legacy block quantisation (Q4_0, Q4_1, Q8_0) and fused quantized matrix-vector kernels.
//!
//! # Block layouts
//!
//! Every format cuts a row into blocks of [`QuantType::BLOCK_ELEMS`] = 32 consecutive elements. A block is stored
//! as little-endian bytes, with no padding and no alignment requirement on the byte slice (blocks are decoded
//! byte by byte, so a slice straight out of an mmap at any offset works):
//!
//! | type | bytes | fields, in order | element `j` of the block (`j` in `0..32`) |
//! |---|---|---|---|
//! | Q4_0 | 18 | `d: f16`, `qs: [u8; 16]` | `d·(q_j − 8)` |
//! | Q4_1 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` | `d·q_j + m` |
//! | Q8_0 | 34 | `d: f16`, `qs: [i8; 32]` | `d·qs[j]` |
//! | Q8_1 | 36 | `d: f16`, `s: f16`, `qs: [i8; 32]` | `d·qs[j]`, with `s = d·Σ qs` (activations only, never in files) |
//!
//! For the 4-bit formats, `q_j = qs[j] & 0xF` for `j < 16` and `q_j = qs[j − 16] >> 4` for `j ≥ 16`: **the low
//! nibbles hold elements 0..15 and the high nibbles hold elements 16..31** (not interleaved pairs).
//!
//! [`dequantize_row`] applies these formulas literally, in f32, as a multiply followed by an add (never a fused
//! multiply-add), so it is bit-exact with PyPI `gguf.quants.dequantize` and ggml's C reference.
//! [`quantize_row`] is ggml's reference quantiser:
//!
//! * Q4_0: `M` = the element of largest magnitude (sign kept, first one on ties), `d = M / −8`,
//!   `q = min(15, trunc(x/d + 8.5))`;
//! * Q4_1: `d = (max − min) / 15`, `m = min`, `q = min(15, trunc((x − min)/d + 0.5))`;
//! * Q8_0: `d = max|x| / 127`, `q = round_half_away(x/d)`;
//!
//! where `1/d` is computed once in f32 (and taken as 0 when `d = 0`), and `d` (and `m`) are stored as f16 after
//! the `q` have been computed with the unrounded f32 value.
//!
//! # Fused dequantise-dot identities
//!
//! [`QMatrix::gemv`] never materialises f32 weights. With `x_b` the 32 activations that meet block `b` of a row
//! and `S_b = Σ_j x_b[j]` (computed once per activation vector), a block contributes
//!
//! ```text
//! Q8_0:  Σ_j d·q_j·x_j        = d · Σ_j q_j x_j
//! Q4_0:  Σ_j d·(q_j − 8)·x_j  = d · (Σ_j q_j x_j − 8·S_b)
//! Q4_1:  Σ_j (d·q_j + m)·x_j  = d · Σ_j q_j x_j + m·S_b
//! ```
//!
//! so the inner loop is one small-integer-times-f32 dot product per block, and the row result is
//! `y_r = Σ_b contribution_b`. The kernels evaluate the Q4_0 form with the offset applied to the integer quant,
//! `d · Σ_j (q_j − 8) x_j` (exact small integers in f32, one extra integer subtract), which avoids the
//! cancellation between `Σ_j q_j x_j` and `8·S_b` when most `q_j` are near 8. For Q8_0 and Q4_0 the fused result
//! therefore differs from an exact (f64) evaluation of `Σ_j w_j x_j` by a few f32 ulps of `Σ_j |w_j x_j|` (the
//! same products, summed in another order); for Q4_1 the bound is a few ulps of `Σ_j (|d·q_j| + |m|)·|x_j|`.
//!
//! With [`ActivationQuant::Q8`] the activations are themselves quantised per 32-block, as llama.cpp does, to
//! Q8_1 (for Q4_1 weights) or Q8_0 (for Q4_0 and Q8_0 weights): `d_y = max|x|/127`, `q_y = round(x/d_y)`,
//! `s_y = d_y·Σ q_y`. Then, with the exact integer `sumi = Σ_j q_x,j · q_y,j`:
//!
//! ```text
//! Q4_1 × Q8_1:  d_x·d_y·sumi + m_x·s_y
//! Q4_0 × Q8_0:  d_x·d_y·Σ_j (q_x,j − 8)·q_y,j
//! Q8_0 × Q8_0:  d_x·d_y·sumi
//! ```
//!
//! which is faster (integer SIMD) but adds the activation-quantisation error (about 1% relative).
//!
//! # Kernels
//!
//! Every hand-written SIMD kernel is selected at run time (`is_x86_feature_detected!("avx2")`, `"fma"`,
//! `"f16c"`, and `"avx512f"` for the Q4_1 kernels with f32 activations), once per machine; there is no
//! compile-time gating and no per-call choice (`EFFLLM_QGEMV_AVX512=0` keeps an AVX-512 machine on the AVX2
//! kernels). The portable scalar kernels are the test oracle and can be forced
//! with [`KernelPath::Scalar`]. Output rows are split into chunks that run in parallel on the crate's thread pool
//! ([`crate::threads`]); each output is reduced by one thread in a fixed order, so results are bitwise independent
//! of the thread count, and the skinny kernel of [`QMatrix::matmul_t`] (m ≤ 8) equals m separate GEMVs bitwise.
//!
//! # Example
//!
//! ```
//! use effllm_tensor::quant::{QMatrix, QuantType};
//!
//! let (n_rows, n_cols) = (4, 64);
//! let w: Vec<f32> = (0..n_rows * n_cols).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q = QMatrix::quantize(QuantType::Q4_1, n_rows, n_cols, &w)?;
//! assert_eq!(q.nbytes(), n_rows * (n_cols / 32) * 20);
//!
//! let x: Vec<f32> = (0..n_cols).map(|j| 1.0 - j as f32 / 32.0).collect();
//! let mut y = vec![0.0f32; n_rows];
//! q.gemv(&x, &mut y)?;
//!
//! // Same result as dequantising first, up to the order of summation.
//! let wq = q.dequantize();
//! for r in 0..n_rows {
//!     let row = &wq[r * n_cols..(r + 1) * n_cols];
//!     let expect: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
//!     assert!((y[r] - expect).abs() <= 1e-4 * (1.0 + expect.abs()));
//! }
//! # Ok::<(), effllm_tensor::Error>(())
//! ```

mod blocks;
mod fuzz;
mod kernels;
mod matrix;
pub mod reference;
mod split;
pub mod tiles;
mod weight;

pub use blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, dequantize_row, quantize_row};
#[doc(hidden)]
pub use fuzz::fuzz_dequantize;
pub use matrix::QMatrix;
pub use weight::{BlockLayout, QWeight};

/// A ggml block-quantised weight format.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 4-bit, one f16 scale per 32 weights: `w = d·(q − 8)`; 18 bytes per block.
    Q4_0,
    /// 4-bit, f16 scale and minimum per 32 weights: `w = d·q + m`; 20 bytes per block.
    Q4_1,
    /// 8-bit, one f16 scale per 32 weights: `w = d·q`; 34 bytes per block.
    Q8_0,
}

impl QuantType {
    /// Elements per block (ggml's `QK`), the same for every legacy format.
    pub const BLOCK_ELEMS: usize = 32;

    /// All supported formats.
    pub const ALL: [QuantType; 3] = [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0];

    /// Bytes of one block: 18, 20 or 34.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q8_0 => 34,
        }
    }

    /// Storage cost per weight in bytes (0.5625, 0.625, 1.0625).
    pub fn bytes_per_weight(self) -> f64 {
        self.block_bytes() as f64 / Self::BLOCK_ELEMS as f64
    }

    /// The ggml name ("Q4_0", "Q4_1", "Q8_0").
    pub const fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q8_0 => "Q8_0",
        }
    }

    /// The `ggml_type` id used in GGUF tensor infos (2, 3, 8).
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 8,
        }
    }

    /// The format of a `ggml_type` id, or `None` for ids this module does not handle.
    pub const fn from_ggml_type_id(id: u32) -> Option<QuantType> {
        match id {
            2 => Some(QuantType::Q4_0),
            3 => Some(QuantType::Q4_1),
            8 => Some(QuantType::Q8_0),
            _ => None,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation of the fused kernels to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The fastest kernel the CPU supports (AVX2 + FMA + F16C when detected at run time, else scalar).
    #[default]
    Auto,
    /// The portable scalar kernel (the test oracle), whatever the CPU.
    Scalar,
}

impl KernelPath {
    /// Whether this choice runs the AVX2 kernels on this machine.
    pub fn uses_avx2(self) -> bool {
        matches!(self, KernelPath::Auto) && kernels::avx2_available()
    }

    /// The kernels this choice runs on this machine (detected once).
    pub(crate) fn isa(self) -> kernels::Isa {
        match self {
            KernelPath::Auto => kernels::Isa::detect(),
            KernelPath::Scalar => kernels::Isa::Scalar,
        }
    }
}

/// How the fused kernels treat the activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ActivationQuant {
    /// Keep activations in f32 (exact products up to f32 summation; the default).
    #[default]
    F32,
    /// Quantise activations per 32-block to Q8_1 (Q4_1 weights) or Q8_0 (Q4_0, Q8_0 weights) and use integer dot
    /// products, reproducing llama.cpp's CPU numerics.
    Q8,
}
