//! # effllm-tensor
//!
//! The tensor crate under every effllm technique: an n-dimensional [`Tensor`] with a [`DType`] and a [`Device`],
//! the ops that more than one efficient-LLM technique needs, the ggml quantized block formats with fused
//! dequantize-and-multiply kernels, a counter-based random generator, and a naive f64 [`reference`](mod@reference) of every op
//! that the property tests hold the fast code to.
//!
//! ## Design
//!
//! - **Storage + layout.** A tensor is an `Arc` of storage plus a [`Layout`] (shape, strides, offset). Views —
//!   [`Tensor::transpose`], [`Tensor::permute`], [`Tensor::narrow`], [`Tensor::slice`], [`Tensor::broadcast_as`] —
//!   only change the layout. Ops return new tensors; nothing mutates shared data.
//! - **Backends behind one API.** Storage is an enum with a CPU variant and a CUDA variant. In a build without
//!   CUDA the CUDA variant is uninhabited and [`Device::Cuda`] returns [`Error::NotCompiledWithCuda`], so user
//!   code never needs a `cfg`.
//! - **CPU backend.** GEMM and decompositions through [faer](https://docs.rs/faer); an in-house parallel GEMV for
//!   decode (`m ≤ 8` rows of activations; GEMM libraries run `m = 1` on one thread); fused quantized GEMV/GEMM in
//!   [`quant`]; SIMD chosen at run time (`is_x86_feature_detected!`), never at compile time, with the scalar code
//!   kept as the oracle. f16/bf16 are computed in f32 and rounded once.
//! - **Threads.** All parallel work runs on effllm's own rayon pool, sized by [`threads::set_num_threads`] or the
//!   `EFFLLM_NUM_THREADS` variable. Reductions run in a fixed order, so results do not depend on the thread count.
//! - **Autograd.** A tensor marked [`Tensor::requires_grad`] makes every op it flows into record a graph node;
//!   [`Tensor::backward`] / [`Gradients::accumulate_with`] run the reverse sweep (gradient-ready callback,
//!   accumulation), [`no_grad`] and [`checkpoint`] control recording. Untracked tensors carry no node and pay one
//!   `None` check per op. See [`autograd`].
//! - **Errors.** Every op validates shapes, dtypes and devices and returns a typed [`Error`] naming the op and the
//!   operands. No user-reachable path panics.
//!
//! ## Math of the less obvious ops
//!
//! - Softmax along a dimension: `softmax(x)ᵢ = exp(xᵢ − m) / Σⱼ exp(xⱼ − m)` with `m = maxⱼ xⱼ`; log-softmax is
//!   `xᵢ − m − ln Σⱼ exp(xⱼ − m)`.
//! - RMSNorm: `y = x / √(mean(x²) + ε) ⊙ w`; LayerNorm: `y = (x − μ) / √(σ² + ε) ⊙ w + b` (biased σ²).
//! - SwiGLU: `silu(g) ⊙ u` with `silu(x) = x·σ(x)`; GELU in the tanh form `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`
//!   or exact `½x(1 + erf(x/√2))`.
//! - RoPE ([`RopeConfig`]): with `θᵢ = base^(−2i/R)`, the pair `(a, b)` at position `p` becomes
//!   `(a cos pθᵢ − b sin pθᵢ, a sin pθᵢ + b cos pθᵢ)`. [`RopeStyle::Interleaved`] pairs `(x₂ᵢ, x₂ᵢ₊₁)` (GGUF
//!   Llama weights), [`RopeStyle::NeoX`] pairs `(xᵢ, xᵢ₊R/2)` (HF weights).
//! - Attention: `O = softmax(Q Kᵀ · s + M) V` per head, query head `h` reading KV head `h / (H_q / H_kv)`
//!   (grouped-query attention); `M` is 0 where allowed and −∞ elsewhere ([`AttentionMask`]).
//! - Quantized dot products ([`quant`]): for a 32-weight block with scale `d` (and minimum `m` for Q4_1) and
//!   activation block sum `S = Σⱼ xⱼ`: Q8_0 `d Σ qⱼxⱼ`, Q4_0 `d(Σ qⱼxⱼ − 8S)`, Q4_1 `d Σ qⱼxⱼ + mS`.
//!
//! ## Example
//!
//! ```
//! use effllm_tensor::{Device, DType, Tensor, RopeConfig, RopeStyle, AttentionMask};
//! use effllm_tensor::rng::CounterRng;
//!
//! # fn main() -> effllm_tensor::Result<()> {
//! let dev = Device::Cpu;
//! let rng = CounterRng::new(7, 0);
//! // One decode step of a tiny grouped-query attention layer: 4 query heads over 2 KV heads.
//! let x = Tensor::randn(&[1, 16], DType::F32, &dev, &rng, 0, 0.0, 1.0)?;
//! let w_q = Tensor::randn(&[4 * 8, 16], DType::F32, &dev, &rng, 1000, 0.0, 0.25)?;
//! let q = x.linear(&w_q)?.reshape(&[1, 1, 4, 8])?.transpose(1, 2)?; // [batch, heads, seq, head_dim]
//! let pos = Tensor::from_vec(vec![5u32], &[1], &dev)?;
//! let q = q.rope(&pos, &RopeConfig { style: RopeStyle::Interleaved, base: 10_000.0, rotary_dims: 8 })?;
//! let k = Tensor::randn(&[1, 2, 6, 8], DType::F32, &dev, &rng, 2000, 0.0, 1.0)?;
//! let v = Tensor::randn(&[1, 2, 6, 8], DType::F32, &dev, &rng, 3000, 0.0, 1.0)?;
//! let o = q.attention(&k, &v, &AttentionMask::Causal, None)?;
//! assert_eq!(o.shape(), &[1, 4, 1, 8]);
//!
//! // Shape errors are values, not panics.
//! let err = x.matmul(&w_q).unwrap_err();
//! assert!(err.to_string().contains("matmul"));
//! # Ok(()) }
//! ```
//!
//! CUDA in a build without the `cuda` feature:
//!
//! ```
//! use effllm_tensor::{Device, Error, Tensor};
//! let err = Tensor::from_vec(vec![1f32, 2.0], &[2], &Device::Cuda(0)).unwrap_err();
//! assert!(matches!(err, Error::NotCompiledWithCuda { .. }));
//! ```

#![deny(missing_docs)]

pub mod autograd;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod layout;
pub mod memory;
pub mod offload;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod rng;
mod tensor;
pub mod threads;

pub use autograd::{Gradients, TensorId, checkpoint, no_grad};
pub use device::Device;
pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use layout::Layout;
pub use ops::elementwise::{BinaryOp, UnaryOp};
pub use ops::matmul::SKINNY_MAX_ROWS;
pub use ops::nn::{AttentionMask, RopeConfig, RopeStyle};
pub use ops::reduce::ReduceOp;
pub use tensor::Tensor;

/// Re-export of the `half` crate's types used by [`DType::F16`] and [`DType::BF16`].
pub use half::{bf16, f16};
