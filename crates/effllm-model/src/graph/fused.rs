//! The fused decode step of [`super::GraphDecoder`]: five kernels per layer instead of about fifteen.
//!
//! Each kernel of the ordinary step does little work (a 576-wide GEMV moves about a megabyte), so the step is bound
//! by the number of kernels it runs, replayed graph or not. The fused step folds the small ops into the GEMVs:
//!
//! | kernel | computes |
//! | --- | --- |
//! | `rms_qkv` | `x = rms_norm(h) ⊙ g` (every block recomputes it into shared memory), `[q; k; v] = W_qkv x`, RoPE on `q` and `k` (cos/sin from a table built once), `k` and `v` into the cache slot |
//! | `attention_fused` | split-K decode attention over chunks of 128 slots; one live chunk writes its output directly, otherwise the last block of each head to finish combines the chunks |
//! | `gemv_add` (`W_o`) | `h += W_o · attn` |
//! | `rms_swiglu` | `z = silu(W_gate x) ⊙ (W_up x)` with `x = rms_norm(h) ⊙ g` |
//! | `gemv_add` (`W_down`) | `h += W_down · z` |
//!
//! Before the layers `embed` reads the input token from device memory and writes its embedding row into `h`; after
//! them `rms_head` computes `logits = W_head · (rms_norm(h) ⊙ g)` and their argmax (an atomic maximum over one
//! 64-bit key per block: value, then the smaller index), and `finish` stores that argmax as the next input token
//! and advances the position. A greedy decode therefore replays the graph back to back with no host round trip.
//!
//! Every GEMV runs one warp per output row (or per pair of rows) over the row's weights in their storage format —
//! f32, bf16, f16 (16-byte loads) or ggml blocks (Q4_0, Q4_1, Q8_0; four lanes per block) — against f32
//! activations, with f32 accumulation. The numerics are those of the ordinary step for f32 and quantized weights
//! (with f32 activations); for bf16/f16 weights the fused step keeps the activations in f32 where the ordinary step
//! rounds each GEMV's input and output to the weight's 16-bit type (cuBLAS multiplies 16-bit matrices), so it is the
//! more precise of the two.
//!
//! The kernels after `embed` are programmatic dependent launches
//! ([`CustomKernel::launch_overlapping`]): each prefetches its weight rows into L2 before it waits for the previous
//! kernel. The same phases also run as one persistent cooperative kernel (`decode_step`, grid-wide barriers between
//! the phases, [`CustomKernel::launch_cooperative`]), which gives the same bits; it is slower on an H200 and off by
//! default (`GraphDecoder::set_persistent`).

use effllm_tensor::cuda::{Arg, CustomKernel, KERNEL_PRELUDE, LaunchDims, Param};
use effllm_tensor::quant::{ActivationQuant, QWeight, QuantType};
use effllm_tensor::{DType, Device, RopeStyle, Tensor};

use crate::error::Result;
use crate::llama::LlamaModel;
use crate::{CausalLm, Embedding, Linear, LlamaConfig};

/// Cache slots per block of `attention_fused` (`ACHUNK` in the source): twice the unfused kernel's chunk, so the
/// decoder's partial-result buffers are large enough.
const CHUNK: usize = 2 * super::ATTENTION_CHUNK;
/// Warps per block of the GEMV kernels: 16, as the persistent kernel's blocks of 512 threads, so that the block-wide
/// reductions (the RMSNorm's sum of squares, the attention's) run in the same order and both ways of running the step
/// give the same bits.
const WARPS: usize = 16;
/// Most blocks of one GEMV launch; the warps loop over the remaining rows.
const MAX_BLOCKS: usize = 1024;
/// Dynamic shared memory of a GEMV block holds its input vector: at most this many f32 values.
const MAX_INPUT: usize = 12 * 1024;

const SOURCE: &str = r#"
#define ACHUNK 128
// Chunks whose partial results the combining block of `attention_item` loads at once.
#define CMERGE 8

// Two ways to run the step. (1) One kernel per phase (`rms_qkv_*`, `attention_fused`, `gemv_add_*`,
// `rms_swiglu_*`, `gemv_add_*`, then `rms_head_*` and `finish`), recorded in a CUDA graph; the kernels after the first
// are launched so that they may start while the previous one runs (programmatic dependent launch, Hopper): each lets
// the next kernel start at once, prefetches its weights, and waits for the previous kernel before it reads the
// residual stream, the cache, the position or any other buffer a kernel writes. (2) One persistent cooperative
// kernel for the whole step (`decode_step`), its blocks separated by grid-wide barriers where (1) has kernel
// boundaries. Both run the same phase functions below, so they compute the same thing bit for bit.
//
// Activations written during the step are read with __ldcg (through L2, never a stale L1 line): in the persistent
// kernel other blocks wrote them in an earlier phase of the same launch.

__device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float ld_half(const u8* p) { return f16_to_f32((u16)p[0] | ((u16)p[1] << 8)); }

__device__ __forceinline__ int block_bytes(int ty) { return ty == 0 ? 18 : ty == 1 ? 20 : 34; }

// Formats (the kernel name's suffix): 0 f32, 1 bf16, 2 f16, 3 ggml blocks of type ty (0 Q4_0, 1 Q4_1, 2 Q8_0).
template <int F> __device__ __forceinline__ i64 row_bytes(int k, int ty) {
    return F == 0 ? (i64)k * 4 : F == 3 ? (i64)(k >> 5) * block_bytes(ty) : (i64)k * 2;
}

template <int F> __device__ __forceinline__ const u8* row_ptr(const void* w, i64 r, int k, int ty) {
    return (const u8*)w + r * row_bytes<F>(k, ty);
}

// Asks the L2 for a row's bytes (one 128-byte line per lane and step) before the block's prologue, so that the
// weight loads after it do not wait for DRAM: the weights do not depend on the previous kernel's output.
template <int F> __device__ __forceinline__ void prefetch_row(const void* w, i64 r, int k, int ty, int lane) {
    const u8* p = row_ptr<F>(w, r, k, ty);
    i64 n = row_bytes<F>(k, ty);
    for (i64 o = (i64)lane * 128; o < n; o += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
}

template <bool BF> __device__ __forceinline__ float widen(u32 v, bool high) {
    u16 h = high ? (u16)(v >> 16) : (u16)(v & 0xffffu);
    return BF ? bf16_to_f32(h) : f16_to_f32(h);
}

// Up to PRELOAD 16-byte chunks per lane of a warp's first rows are loaded into registers before a kernel waits for
// the previous one (the weights do not depend on it), so that after the wait only the activations are on the
// critical path (an L2 prefetch still costs an L2 round trip after the wait). PRELOAD / R chunks per row: all of a
// 576-wide bf16 row pair (QKV, gate/up: 3 chunks each) and of a 1536-wide bf16 row (W_down: 6).
#define PRELOAD 6

__device__ __forceinline__ bool dense_vec(const u8* const* rows, int R, int k, int per) {
    bool vec = (k % per) == 0;
    for (int r = 0; r < R; ++r) vec = vec && (((size_t)rows[r]) & 15) == 0;
    return vec;
}

template <int F, int R> __device__ __forceinline__ void dense_chunk(const uint4* w, const float4* x, int c, float* a) {
    if (F == 0) {
        float4 v = x[c];
        #pragma unroll
        for (int r = 0; r < R; ++r)
            a[r] += __uint_as_float(w[r].x) * v.x + __uint_as_float(w[r].y) * v.y + __uint_as_float(w[r].z) * v.z +
                    __uint_as_float(w[r].w) * v.w;
    } else {
        float4 u = x[2 * c], v = x[2 * c + 1];
        #pragma unroll
        for (int r = 0; r < R; ++r)
            a[r] += widen<F == 1>(w[r].x, false) * u.x + widen<F == 1>(w[r].x, true) * u.y +
                    widen<F == 1>(w[r].y, false) * u.z + widen<F == 1>(w[r].y, true) * u.w +
                    widen<F == 1>(w[r].z, false) * v.x + widen<F == 1>(w[r].z, true) * v.y +
                    widen<F == 1>(w[r].w, false) * v.z + widen<F == 1>(w[r].w, true) * v.w;
    }
}

// Loads the chunks that dot_dense takes from `pre` (chunk t of row r at pre[r·(PRELOAD/R) + t]).
template <int F, int R> __device__ __forceinline__ void preload_dense(const u8* const* rows, int k, int lane,
                                                                      uint4* pre) {
    constexpr int per = F == 0 ? 4 : 8, P = PRELOAD / R;
    if (!dense_vec(rows, R, k, per)) return;
    #pragma unroll
    for (int t = 0; t < P; ++t) {
        int c = lane + 32 * t;
        #pragma unroll
        for (int r = 0; r < R; ++r) if (c < k / per) pre[r * P + t] = ((const uint4*)rows[r])[c];
    }
}

// Lane partials of R rows · x (x in shared memory). Dense rows take 16-byte loads when every row is 16-byte aligned;
// with `pre` the first PRELOAD / R chunks of each row come from registers (preload_dense). Either way the chunks are
// added in the same order, so the result does not depend on where they came from.
template <int F, int R> __device__ __forceinline__ void dot_dense(const u8* const* rows, const float* xs, int k,
                                                                  int lane, float* a, const uint4* pre) {
    constexpr int per = F == 0 ? 4 : 8;  // elements per 16-byte load
    #pragma unroll
    for (int r = 0; r < R; ++r) a[r] = 0.f;
    if (dense_vec(rows, R, k, per)) {
        const float4* x = (const float4*)xs;
        int c = lane;
        if (pre) {
            constexpr int P = PRELOAD / R;
            #pragma unroll
            for (int t = 0; t < P; ++t, c += 32) {
                if (c < k / per) {
                    uint4 w[R];
                    #pragma unroll
                    for (int r = 0; r < R; ++r) w[r] = pre[r * P + t];
                    dense_chunk<F, R>(w, x, c, a);
                }
            }
        }
        #pragma unroll 2
        for (; c < k / per; c += 32) {
            uint4 w[R];
            #pragma unroll
            for (int r = 0; r < R; ++r) w[r] = ((const uint4*)rows[r])[c];
            dense_chunk<F, R>(w, x, c, a);
        }
    } else {
        for (int j = lane; j < k; j += 32) {
            #pragma unroll
            for (int r = 0; r < R; ++r) {
                float wv = F == 0 ? ((const float*)rows[r])[j]
                                  : widen<F == 1>((u32)((const u16*)rows[r])[j], false);
                a[r] += wv * xs[j];
            }
        }
    }
}

// Byte k of `w` as the float 2^23 + byte, minus `bias`: an exact int→float for bytes without the (quarter-rate)
// conversion unit.
__device__ __forceinline__ float byte_float(u32 w, u32 k, float bias) {
    return __int_as_float(__byte_perm(w, 0x4B000000u, 0x7440u + k)) - bias;
}
__device__ __forceinline__ float dot4_bytes(u32 w, const float* x, float bias) {
    return byte_float(w, 0, bias) * x[0] + byte_float(w, 1, bias) * x[1] + byte_float(w, 2, bias) * x[2] +
           byte_float(w, 3, bias) * x[3];
}
__device__ __forceinline__ u32 ld_u16_pair(const u8* p) { return (u32)((const u16*)p)[0] | ((u32)((const u16*)p)[1] << 16); }

// A lane's words of block b of a row: the header (d, and m for Q4_1) and its 4 (Q4) or 8 (Q8_0) quant bytes.
__device__ __forceinline__ void block_words(const u8* row, int b, int ty, int q4, u32* out) {
    const u8* blk = row + (i64)b * block_bytes(ty);
    if (ty == 1) {
        out[0] = *(const u32*)blk;
        out[1] = ((const u32*)(blk + 4))[q4];
    } else if (ty == 0) {
        out[0] = *(const u16*)blk;
        out[1] = ld_u16_pair(blk + 2 + 4 * q4);
    } else {
        out[0] = *(const u16*)blk;
        out[1] = ld_u16_pair(blk + 2 + 8 * q4);
        out[2] = ld_u16_pair(blk + 6 + 8 * q4);
    }
}

// One warp step of dot_blocks: the lane's 8 weights of block b of each row (words in wd[r·3..]) against x.
template <int R> __device__ __forceinline__ void block_step(const u32* wd, const float* xs, int b, int ty, int o0,
                                                            int o1, float* a) {
    const float* xb = xs + b * 32;
    float xa[8], sx = 0.f;
    #pragma unroll
    for (int j = 0; j < 4; ++j) { xa[j] = xb[o0 + j]; xa[4 + j] = xb[o1 + j]; sx += xa[j] + xa[4 + j]; }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
        u32 head = wd[3 * r], w0 = wd[3 * r + 1], w1 = wd[3 * r + 2];
        float d = f16_to_f32((u16)(head & 0xffffu)), s;
        if (ty == 2) {
            s = dot4_bytes(w0 ^ 0x80808080u, xa, 8388736.f) + dot4_bytes(w1 ^ 0x80808080u, xa + 4, 8388736.f);
            a[r] += d * s;
        } else {
            float bias = ty == 1 ? 8388608.f : 8388616.f;
            s = dot4_bytes(w0 & 0x0F0F0F0Fu, xa, bias) + dot4_bytes((w0 >> 4) & 0x0F0F0F0Fu, xa + 4, bias);
            a[r] += ty == 1 ? d * s + f16_to_f32((u16)(head >> 16)) * sx : d * s;
        }
    }
}

// Block rows keep their words of the first PRELOAD_STEPS / R warp steps in `pre` (read as 3 u32 per row and step).
#define PRELOAD_STEPS 8
template <int R> __device__ __forceinline__ void preload_blocks(const u8* const* rows, int k, int lane, int ty,
                                                                uint4* pre) {
    constexpr int S = PRELOAD_STEPS / R;
    u32* p = (u32*)pre;
    int nb = k >> 5, q4 = lane & 3;
    #pragma unroll
    for (int t = 0; t < S; ++t) {
        int b = (lane >> 2) + 8 * t;
        #pragma unroll
        for (int r = 0; r < R; ++r) if (b < nb) block_words(rows[r], b, ty, q4, p + (t * R + r) * 3);
    }
}

// Lane partials of R rows of ggml blocks · x: four lanes per 32-weight block, eight consecutive blocks per warp step,
// each lane 8 weights of each row, read as 4-byte words (Q4_1's 20-byte blocks keep 4-byte alignment; Q4_0 and
// Q8_0 as 2-byte halves) and turned into floats by the 2^23 mantissa trick. With `pre` the first steps' words come
// from registers (preload_blocks); the steps are added in the same order either way.
template <int R> __device__ __forceinline__ void dot_blocks(const u8* const* rows, const float* xs, int k, int lane,
                                                            int ty, float* a, const uint4* pre) {
    int nb = k >> 5, q4 = lane & 3;
    int o0 = ty == 2 ? 8 * q4 : 4 * q4, o1 = ty == 2 ? 8 * q4 + 4 : 16 + 4 * q4;
    #pragma unroll
    for (int r = 0; r < R; ++r) a[r] = 0.f;
    int b = lane >> 2;
    if (pre) {
        constexpr int S = PRELOAD_STEPS / R;
        const u32* p = (const u32*)pre;
        #pragma unroll
        for (int t = 0; t < S; ++t, b += 8)
            if (b < nb) block_step<R>(p + t * R * 3, xs, b, ty, o0, o1, a);
    }
    #pragma unroll 2
    for (; b < nb; b += 8) {
        u32 wd[3 * R];
        #pragma unroll
        for (int r = 0; r < R; ++r) block_words(rows[r], b, ty, q4, wd + 3 * r);
        block_step<R>(wd, xs, b, ty, o0, o1, a);
    }
}

// The warp's full dot products of rows r[0..R) with x (every lane gets them).
template <int F, int R> __device__ __forceinline__ void rows_dot(const void* w, const i64* r, int k, const float* xs,
                                                                 int lane, int ty, float* out, const uint4* pre) {
    const u8* rows[R];
    #pragma unroll
    for (int i = 0; i < R; ++i) rows[i] = row_ptr<F>(w, r[i], k, ty);
    if (F == 3) dot_blocks<R>(rows, xs, k, lane, ty, out, pre);
    else dot_dense<F, R>(rows, xs, k, lane, out, pre);
    #pragma unroll
    for (int i = 0; i < R; ++i) out[i] = warp_sum(out[i]);
}


extern __shared__ float4 fused_xs4[];

// Runtime format dispatch (fmtty = format | ty << 8; warp-uniform, folded away where the format is a constant).
template <int R> __device__ __forceinline__ void rows_dot_any(const void* w, int fmtty, const i64* r, int k,
                                                              const float* xs, int lane, float* out,
                                                              const uint4* pre = nullptr) {
    int ty = fmtty >> 8;
    switch (fmtty & 0xff) {
        case 0: rows_dot<0, R>(w, r, k, xs, lane, ty, out, pre); break;
        case 1: rows_dot<1, R>(w, r, k, xs, lane, ty, out, pre); break;
        case 2: rows_dot<2, R>(w, r, k, xs, lane, ty, out, pre); break;
        default: rows_dot<3, R>(w, r, k, xs, lane, ty, out, pre); break;
    }
}

// The first chunks (dense formats) or warp steps (block formats) of rows r[0..R) into `pre`.
template <int F, int R> __device__ __forceinline__ void preload_rows(const void* w, const i64* r, int k, int lane,
                                                                     int ty, uint4* pre) {
    const u8* rows[R];
    #pragma unroll
    for (int i = 0; i < R; ++i) rows[i] = row_ptr<F>(w, r[i], k, ty);
    if (F == 3) preload_blocks<R>(rows, k, lane, ty, pre);
    else preload_dense<F, R>(rows, k, lane, pre);
}
template <int R> __device__ __forceinline__ void preload_any(const void* w, int fmtty, const i64* r, int k, int lane,
                                                             uint4* pre) {
    int ty = fmtty >> 8;
    switch (fmtty & 0xff) {
        case 0: preload_rows<0, R>(w, r, k, lane, ty, pre); break;
        case 1: preload_rows<1, R>(w, r, k, lane, ty, pre); break;
        case 2: preload_rows<2, R>(w, r, k, lane, ty, pre); break;
        default: preload_rows<3, R>(w, r, k, lane, ty, pre); break;
    }
}

__device__ __forceinline__ void prefetch_any(const void* w, int fmtty, i64 r, int k, int lane) {
    int ty = fmtty >> 8;
    switch (fmtty & 0xff) {
        case 0: prefetch_row<0>(w, r, k, ty, lane); break;
        case 1: prefetch_row<1>(w, r, k, ty, lane); break;
        case 2: prefetch_row<2>(w, r, k, ty, lane); break;
        default: prefetch_row<3>(w, r, k, ty, lane); break;
    }
}

// Input vectors of up to VEC_PER_THREAD · blockDim values are read with every thread's loads issued before any is
// used: one memory round trip instead of one per `blockDim` values (the loops these replace stored each value
// before loading the next, so a 1,536-wide input took three dependent round trips). Longer inputs take the loop.
#define VEC_PER_THREAD 4

// This thread's values of the RMSNorm weight g (indices threadIdx.x + u·blockDim), loaded before the kernel waits
// for the previous one: g is a weight, never written by the step.
__device__ __forceinline__ void preload_norm(const float* g, int k, float* gpre) {
    #pragma unroll
    for (int u = 0; u < VEC_PER_THREAD; ++u) {
        int j = threadIdx.x + u * blockDim.x;
        gpre[u] = j < k ? g[j] : 0.f;
    }
}

// This thread's values of an input vector of k ≤ VEC_PER_THREAD · blockDim values (indices threadIdx.x + u·blockDim,
// zeros past k), every load issued before any is used.
__device__ __forceinline__ void load_strided(const float* src, int k, float* v) {
    #pragma unroll
    for (int u = 0; u < VEC_PER_THREAD; ++u) {
        int j = threadIdx.x + u * blockDim.x;
        v[u] = j < k ? __ldcg(src + j) : 0.f;
    }
}

// xs = rms_norm(h) ⊙ g in shared memory (every thread of the block takes part): h and g are read in one pass. With
// `gpre` (preload_norm's registers) g is not read again. The sum of squares is accumulated in the same order either
// way (each thread's values in increasing index, then the block reduction).
__device__ __forceinline__ float* load_rms(const float* h, const float* g, float eps, int k, const float* gpre) {
    __shared__ float red[32];
    float* xs = (float*)fused_xs4;
    float s = 0.f;
    if (k <= VEC_PER_THREAD * (int)blockDim.x) {
        float v[VEC_PER_THREAD];
        load_strided(h, k, v);
        #pragma unroll
        for (int u = 0; u < VEC_PER_THREAD; ++u) {
            int j = threadIdx.x + u * blockDim.x;
            if (j < k) {
                xs[j] = v[u] * (gpre ? gpre[u] : g[j]);
                s += v[u] * v[u];
            }
        }
    } else {
        for (int j = threadIdx.x; j < k; j += blockDim.x) { float v = __ldcg(h + j); xs[j] = v * g[j]; s += v * v; }
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
        t = warp_sum(t);
        if (threadIdx.x == 0) red[0] = t;
    }
    __syncthreads();
    float inv = 1.f / sqrtf(red[0] / (float)k + eps);
    for (int j = threadIdx.x; j < k; j += blockDim.x) xs[j] *= inv;
    __syncthreads();
    return xs;
}

__device__ __forceinline__ float* load_vec(const float* x, int k) {
    float* xs = (float*)fused_xs4;
    if (k <= VEC_PER_THREAD * (int)blockDim.x) {
        float v[VEC_PER_THREAD];
        load_strided(x, k, v);
        #pragma unroll
        for (int u = 0; u < VEC_PER_THREAD; ++u) {
            int j = threadIdx.x + u * blockDim.x;
            if (j < k) xs[j] = v[u];
        }
    } else {
        for (int j = threadIdx.x; j < k; j += blockDim.x) xs[j] = __ldcg(x + j);
    }
    __syncthreads();
    return xs;
}

#define WARP_LOOP(i, total) \
    for (int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < (total); i += gridDim.x * (blockDim.x >> 5))

// The warp's items of WARP_LOOP, the first one with the chunks preloaded in `pre` (when given: the one-kernel-per-
// phase entries) and the others without.
template <typename Item> __device__ __forceinline__ void warp_items(int total, const uint4* pre, Item item) {
    int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), stride = gridDim.x * (blockDim.x >> 5);
    if (pre) {
        if (i < total) item(i, pre);
        i += stride;
    }
    for (; i < total; i += stride) item(i, (const uint4*)nullptr);
}

// Before the wait, over the same items as warp_items: the R rows (`rows_of(i, r)`) of the warp's first item into
// `pre` (when given), the other items' rows into L2.
template <int R, typename Rows> __device__ __forceinline__ void warp_prefetch(const void* w, int fmtty, int k,
                                                                             int total, uint4* pre, Rows rows_of) {
    int lane = threadIdx.x & 31;
    bool first = pre != nullptr;
    WARP_LOOP(i, total) {
        i64 r[R];
        rows_of(i, r);
        if (first) {
            preload_any<R>(w, fmtty, r, k, lane, pre);
            first = false;
        } else {
            #pragma unroll
            for (int j = 0; j < R; ++j) prefetch_any(w, fmtty, r[j], k, lane);
        }
    }
}

// An orderable key for the argmax: larger value first, then smaller index (the first of equal maxima).
__device__ __forceinline__ unsigned long long argmax_key(float v, int r) {
    u32 b = __float_as_uint(v);
    u32 ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)ord << 32) | (unsigned long long)(0xffffffffu - (u32)r);
}

// The dimensions of pair p of the stacked [q; k; v] rows: the rotation pair (2i, 2i+1) (interleaved) or
// (i, i + rot/2) (NeoX) for rotated dimensions of q and k, consecutive dimensions otherwise.
struct QkvPair { int head, i, da, db; bool qk, rotate; };
__device__ __forceinline__ QkvPair qkv_pair(int p, int hq, int hkv, int hd, int rot, int neox) {
    QkvPair q;
    int per_head = hd >> 1, half = rot >> 1;
    q.head = p / per_head;
    q.i = p - q.head * per_head;
    q.qk = q.head < hq + hkv;
    q.rotate = q.qk && q.i < half;
    q.da = q.rotate ? (neox ? q.i : 2 * q.i) : q.qk ? rot + 2 * (q.i - half) : 2 * q.i;
    q.db = q.rotate ? (neox ? q.i + half : 2 * q.i + 1) : q.da + 1;
    return q;
}

// ---- phases (every thread of the block calls them) ----

// hidden = embedding row token[0]; history[pos] = token[0]; best = 0.
__device__ __forceinline__ void embed_phase(const void* e, int fmtty, u32 t, u32 slot, float* hidden, u32* history,
                                            u32* best, int d, int cap) {
    int fmt = fmtty & 0xff, ty = fmtty >> 8;
    const u8* row = (const u8*)e + (i64)t * (fmt == 0 ? (i64)d * 4 : fmt == 3 ? (i64)(d >> 5) * block_bytes(ty) : (i64)d * 2);
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < d; j += gridDim.x * blockDim.x) {
        float v;
        if (fmt == 0) v = ((const float*)row)[j];
        else if (fmt == 1) v = bf16_to_f32(((const u16*)row)[j]);
        else if (fmt == 2) v = f16_to_f32(((const u16*)row)[j]);
        else {
            const u8* blk = row + (i64)(j >> 5) * block_bytes(ty);
            int i = j & 31;
            if (ty == 2) v = ld_half(blk) * (float)((const signed char*)(blk + 2))[i];
            else {
                u8 q = blk[(ty == 1 ? 4 : 2) + (i & 15)];
                float n = (float)(i < 16 ? q & 15 : q >> 4);
                v = ty == 1 ? ld_half(blk) * n + ld_half(blk + 2) : ld_half(blk) * (n - 8.f);
            }
        }
        hidden[j] = v;
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        if (slot < (u32)cap) history[slot] = t;
        best[0] = 0u;
        best[1] = 0u;
    }
}

// The two stacked W_qkv rows of pair p (a rotation pair of q or k, or two columns of v).
__device__ __forceinline__ void qkv_rows(int p, int hq, int hkv, int hd, int rot, int neox, i64* r) {
    QkvPair q = qkv_pair(p, hq, hkv, hd, rot, neox);
    r[0] = (i64)q.head * hd + q.da;
    r[1] = (i64)q.head * hd + q.db;
}

__device__ __forceinline__ void qkv_prefetch(const void* w, int fmtty, int hq, int hkv, int hd, int rot, int neox,
                                             int k, uint4* pre) {
    warp_prefetch<2>(w, fmtty, k, (hq + 2 * hkv) * (hd >> 1), pre,
                     [&](int p, i64* r) { qkv_rows(p, hq, hkv, hd, rot, neox, r); });
}

// [q; k; v] = W_qkv · (rms_norm(h) ⊙ g), RoPE (cos/sin of position `slot` from the table) on q and k, k and v
// stored in cache slot `slot`.
__device__ __forceinline__ void qkv_phase(const void* w, int fmtty, const float* h, const float* g,
                                          const float* rope, u32 slot, float* qout, float* kc, float* vc, int hq,
                                          int hkv, int hd, int rot, int neox, int cap, int k, float eps,
                                          const uint4* pre, const float* gpre) {
    int lane = threadIdx.x & 31, half = rot >> 1;
    float* xs = load_rms(h, g, eps, k, gpre);
    warp_items((hq + 2 * hkv) * (hd >> 1), pre, [&](int p, const uint4* pre_item) {
        QkvPair q = qkv_pair(p, hq, hkv, hd, rot, neox);
        float c = 1.f, s = 0.f;
        if (q.rotate && slot < (u32)cap) {
            c = rope[((i64)slot * half + q.i) * 2];
            s = rope[((i64)slot * half + q.i) * 2 + 1];
        }
        i64 r[2];
        qkv_rows(p, hq, hkv, hd, rot, neox, r);
        float ab[2];
        rows_dot_any<2>(w, fmtty, r, k, xs, lane, ab, pre_item);
        if (lane == 0) {
            float a = ab[0], b = ab[1];
            if (q.rotate) {
                float ya = a * c - b * s, yb = a * s + b * c;
                a = ya;
                b = yb;
            }
            if (q.head < hq) {
                qout[(i64)q.head * hd + q.da] = a;
                qout[(i64)q.head * hd + q.db] = b;
            } else if (slot < (u32)cap) {
                int kvh = q.qk ? q.head - hq : q.head - hq - hkv;
                float* dst = (q.qk ? kc : vc) + ((i64)kvh * cap + slot) * hd;
                dst[q.da] = a;
                dst[q.db] = b;
            }
        }
    });
}

__device__ __forceinline__ void swiglu_prefetch(const void* w, int fmtty, int dff, int k, uint4* pre) {
    warp_prefetch<2>(w, fmtty, k, dff, pre, [&](int i, i64* r) {
        r[0] = i;
        r[1] = (i64)dff + i;
    });
}

// z_i = silu(gate_i) · up_i with [gate; up] = [W_gate; W_up] · (rms_norm(h) ⊙ g).
__device__ __forceinline__ void swiglu_phase(const void* w, int fmtty, const float* h, const float* g, float* z,
                                             int dff, int k, float eps, const uint4* pre, const float* gpre) {
    int lane = threadIdx.x & 31;
    float* xs = load_rms(h, g, eps, k, gpre);
    warp_items(dff, pre, [&](int i, const uint4* pre_item) {
        i64 r[2] = {i, (i64)dff + i};
        float gu[2];
        rows_dot_any<2>(w, fmtty, r, k, xs, lane, gu, pre_item);
        if (lane == 0) {
            float gt = gu[0];
            float sg = gt >= 0.f ? 1.f / (1.f + expf(-gt)) : expf(gt) / (1.f + expf(gt));
            z[i] = gt * sg * gu[1];
        }
    });
}

__device__ __forceinline__ void rows_prefetch(const void* w, int fmtty, int rows, int k, uint4* pre) {
    warp_prefetch<1>(w, fmtty, k, rows, pre, [](int i, i64* r) { r[0] = i; });
}

// h[r] += W[r] · x.
__device__ __forceinline__ void gemv_add_phase(const void* w, int fmtty, const float* x, float* h, int rows, int k,
                                               const uint4* pre) {
    int lane = threadIdx.x & 31;
    // h of the warp's first row is loaded with the input (the same round trip), the others' before their dot
    // products.
    int first = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    float first_before = lane == 0 && first < rows ? __ldcg(h + first) : 0.f;
    float* xs = load_vec(x, k);
    warp_items(rows, pre, [&](int r, const uint4* pre_item) {
        i64 rr = r;
        float before = lane == 0 ? (r == first ? first_before : __ldcg(h + r)) : 0.f, a;
        rows_dot_any<1>(w, fmtty, &rr, k, xs, lane, &a, pre_item);
        if (lane == 0) h[r] = before + a;
    });
}

// logits[r] = W[r] · (rms_norm(h) ⊙ g) and best = max over rows of argmax_key(logit, r) (NaN never wins): one
// atomicMax per block.
__device__ __forceinline__ void head_phase(const void* w, int fmtty, const float* h, const float* g, float* y,
                                           u32* best, int rows, int k, float eps, const uint4* pre,
                                           const float* gpre) {
    __shared__ unsigned long long block_best[32];
    int lane = threadIdx.x & 31;
    float* xs = load_rms(h, g, eps, k, gpre);
    unsigned long long mine = 0ull;
    warp_items(rows, pre, [&](int r, const uint4* pre_item) {
        i64 rr = r;
        float a;
        rows_dot_any<1>(w, fmtty, &rr, k, xs, lane, &a, pre_item);
        if (lane == 0) {
            y[r] = a;
            if (a == a) { unsigned long long key = argmax_key(a, r); mine = key > mine ? key : mine; }
        }
    });
    if (lane == 0) block_best[threadIdx.x >> 5] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < (int)(blockDim.x >> 5); ++i) mine = block_best[i] > mine ? block_best[i] : mine;
        if (mine) atomicMax((unsigned long long*)best, mine);
    }
}

// Decode attention of query head h over the live slots of chunk c (n live slots in all), with blockDim.x (256 or
// 512) threads: blockDim/ACHUNK threads per slot score it (hd divided among them), the chunk's max m, Σ e^(s−m) and
// Σ e^(s−m)·v follow (16-byte loads of v: hd/4 threads per slot row, blockDim/(hd/4) slot groups). With one live
// chunk the block writes the normalised output itself; otherwise it stores its partials and the last block of head
// h to finish (a counter per head, reset by that block) rescales the chunks to their common max. Needs hd to be a
// multiple of 16 dividing 256.
// With `pre` (the one-kernel-per-phase entry), the rows that attention_preload loaded before the kernel waited come
// from registers: every slot but `cur`, the one the previous kernel wrote. They are added in the same order either
// way, so the result does not depend on where they came from.
#define VPRE 4
#define KPRE 4
struct AttnPre { float4 v[VPRE]; float4 k[KPRE]; };

// Where this thread's rows of chunk c of query head h lie (attention_item and attention_preload read the same ones):
// the chunk's first slot j0 and live slots cnt, the KV head's key and value rows, the value-row layout (hd/4 threads
// per slot row, 16 bytes at d4, slot groups g of `groups`) and the score layout (tps threads per slot i, w4 float4s
// of the key row from sub·w4).
struct AttnLayout { int j0, cnt, d4n, groups, d4, g, tps, i, sub, w4; const float* K; const float* V; };
__device__ __forceinline__ AttnLayout attn_layout(const float* kc, const float* vc, int n, int h, int c, int hq,
                                                  int hkv, int hd, int cap) {
    AttnLayout L;
    int t = threadIdx.x, nt = blockDim.x, kvh = h / (hq / hkv);
    L.j0 = c * ACHUNK;
    L.cnt = n - L.j0 < ACHUNK ? n - L.j0 : ACHUNK;
    L.K = kc + (i64)kvh * cap * hd;
    L.V = vc + (i64)kvh * cap * hd;
    L.d4n = hd >> 2;
    L.groups = nt / L.d4n;
    L.d4 = t % L.d4n;
    L.g = t / L.d4n;
    L.tps = nt / ACHUNK;
    L.i = t / L.tps;
    L.sub = t % L.tps;
    L.w4 = hd / (4 * L.tps);
    return L;
}

__device__ __forceinline__ void attention_item(const float* q, const float* kc, const float* vc, int n, int h, int c,
                                               float* pm, float* pl, float* pacc, u32* counter, float* out,
                                               int hq, int hkv, int hd, int cap, int nchunks, float scale,
                                               const AttnPre* pre, int cur) {
    __shared__ float p[ACHUNK];
    __shared__ float4 part[512];
    __shared__ float stat[2];
    __shared__ int is_last;
    int t = threadIdx.x;
    AttnLayout L = attn_layout(kc, vc, n, h, c, hq, hkv, hd, cap);
    int j0 = L.j0, cnt = L.cnt;
    int used = (n + ACHUNK - 1) / ACHUNK;
    const float* qh = q + (i64)h * hd;
    const float* K = L.K;
    const float* V = L.V;
    // This thread's first value rows (slot i = g + u·groups, 16 bytes at d4), loaded now so that their memory
    // latency overlaps the scores' and the softmax instead of following them; the sum below adds them in the same
    // order as the rows it loads itself. Four cover a 128-slot chunk at head size 64 (H200: bf16 decode at context
    // 128 1,640 -> 1,745 tok/s, at 2048 1,497 -> 1,616); eight were faster at context 128 but their registers
    // leave one 512-thread block per SM, slower at long contexts.
    int d4n = L.d4n, groups = L.groups, d4 = L.d4, g = L.g;
    float4 vpre[VPRE];
    #pragma unroll
    for (int u = 0; u < VPRE; ++u) {
        int i = g + u * groups;
        if (g < groups && i < cnt)
            vpre[u] = pre && j0 + i != cur ? pre->v[u] : __ldcg((const float4*)(V + (i64)(j0 + i) * hd) + d4);
    }
    {
        int tps = L.tps, i = L.i, sub = L.sub, w4 = L.w4;
        float a = 0.f;
        if (i < cnt) {
            const float4* kr = (const float4*)(K + (i64)(j0 + i) * hd) + sub * w4;
            const float4* qv = (const float4*)qh + sub * w4;
            bool from_pre = pre && j0 + i != cur;
            #pragma unroll
            for (int u = 0; u < KPRE; ++u) {
                if (u < w4) {
                    float4 kk = from_pre ? pre->k[u] : __ldcg(kr + u), qq = __ldcg(qv + u);
                    a += kk.x * qq.x + kk.y * qq.y + kk.z * qq.z + kk.w * qq.w;
                }
            }
            #pragma unroll 4
            for (int u = KPRE; u < w4; ++u) {
                float4 kk = __ldcg(kr + u), qq = __ldcg(qv + u);
                a += kk.x * qq.x + kk.y * qq.y + kk.z * qq.z + kk.w * qq.w;
            }
        }
        for (int o = 1; o < tps; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (sub == 0) p[i] = i < cnt ? a * scale : __int_as_float(0xff800000);
    }
    __syncthreads();
    if (t < 32) {
        float m = warp_max(fmaxf(fmaxf(p[t], p[t + 32]), fmaxf(p[t + 64], p[t + 96])));
        float l = 0.f;
        #pragma unroll
        for (int u = 0; u < 4; ++u) {
            int i = t + 32 * u;
            float e = i < cnt ? expf(p[i] - m) : 0.f;
            p[i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (t == 0) { stat[0] = m; stat[1] = l; }
    }
    __syncthreads();
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (g < groups) {
        #pragma unroll
        for (int u = 0; u < VPRE; ++u) {
            int i = g + u * groups;
            if (i < cnt) {
                float e = p[i];
                acc.x += e * vpre[u].x; acc.y += e * vpre[u].y; acc.z += e * vpre[u].z; acc.w += e * vpre[u].w;
            }
        }
        #pragma unroll 4
        for (int i = g + VPRE * groups; i < cnt; i += groups) {
            float4 v = __ldcg((const float4*)(V + (i64)(j0 + i) * hd) + d4);
            float e = p[i];
            acc.x += e * v.x; acc.y += e * v.y; acc.z += e * v.z; acc.w += e * v.w;
        }
    }
    part[t] = acc;
    __syncthreads();
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    if (t < d4n) {
        for (int u = 0; u < groups; ++u) {
            float4 v = part[u * d4n + t];
            s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
        }
    }
    if (used == 1) {
        if (t < d4n) {
            float inv = 1.f / stat[1];
            ((float4*)(out + (i64)h * hd))[t] = make_float4(s.x * inv, s.y * inv, s.z * inv, s.w * inv);
        }
        __syncthreads();  // p, part and stat are reused by the block's next item
        return;
    }
    i64 pi = (i64)h * nchunks + c;
    if (t < d4n) ((float4*)(pacc + pi * hd))[t] = s;
    if (t == 0) { pm[pi] = stat[0]; pl[pi] = stat[1]; }
    __threadfence();
    __syncthreads();
    if (t == 0) is_last = atomicAdd(counter + h, 1u) == (u32)(used - 1);
    __syncthreads();
    if (is_last) {
        __threadfence();
        if (t < hd) {
            // One pass over the chunks in order, rescaling to the running maximum (online softmax), so that every
            // group of CMERGE chunks' partials is loaded in one round trip: a first pass for the maximum had a
            // dependent load per chunk (H100, bf16 SmolLM2 shape, context 2048: 1,755-1,763 -> 1,786-1,802 tok/s).
            const float* m = pm + (i64)h * nchunks;
            const float* l = pl + (i64)h * nchunks;
            const float* pa = pacc + (i64)h * nchunks * hd + t;
            float mx = __ldcg(m), total = __ldcg(l), a = __ldcg(pa);
            for (int c0 = 1; c0 < used; c0 += CMERGE) {
                float mc[CMERGE], lc[CMERGE], ac[CMERGE];
                #pragma unroll
                for (int u = 0; u < CMERGE; ++u) {
                    int cc = c0 + u;
                    if (cc < used) { mc[u] = __ldcg(m + cc); lc[u] = __ldcg(l + cc); ac[u] = __ldcg(pa + (i64)cc * hd); }
                }
                #pragma unroll
                for (int u = 0; u < CMERGE; ++u) {
                    if (c0 + u < used) {
                        if (mc[u] > mx) {
                            float r = expf(mx - mc[u]);
                            total *= r;
                            a *= r;
                            mx = mc[u];
                        }
                        float e = expf(mc[u] - mx);
                        total += e * lc[u];
                        a += e * ac[u];
                    }
                }
            }
            out[(i64)h * hd + t] = a / total;
        }
        if (t == 0) counter[h] = 0;
    }
    __syncthreads();
}

// This thread's rows of chunk c that attention_item reads first (VPRE value rows, KPRE float4s of its key row),
// except those of slot `cur`: loaded before the kernel waits for the previous one, which writes only slot `cur` of
// the cache (the earlier slots were written by earlier steps), so that the scores do not wait for memory.
__device__ __forceinline__ void attention_preload(const float* kc, const float* vc, int n, int h, int c, int hq,
                                                  int hkv, int hd, int cap, int cur, AttnPre* pre) {
    AttnLayout L = attn_layout(kc, vc, n, h, c, hq, hkv, hd, cap);
    #pragma unroll
    for (int u = 0; u < VPRE; ++u) {
        int i = L.g + u * L.groups;
        if (L.g < L.groups && i < L.cnt && L.j0 + i != cur)
            pre->v[u] = __ldcg((const float4*)(L.V + (i64)(L.j0 + i) * hd) + L.d4);
    }
    if (L.i < L.cnt && L.j0 + L.i != cur) {
        const float4* kr = (const float4*)(L.K + (i64)(L.j0 + L.i) * hd) + L.sub * L.w4;
        #pragma unroll
        for (int u = 0; u < KPRE; ++u) if (u < L.w4) pre->k[u] = __ldcg(kr + u);
    }
}

// ---- (1) one kernel per phase ----

#define FUSED_ENTRIES(SFX, F, WT)                                                                                      \
    extern "C" __global__ void embed_##SFX(const WT* e, const u32* token, const u32* pos, float* hidden, u32* history,  \
                                           u32* best, int d, int cap, int ty) {                                        \
        effllm_allow_next_kernel();                                                                                    \
        effllm_wait_for_previous_kernel();                                                                             \
        embed_phase(e, F | ty << 8, token[0], pos[0], hidden, history, best, d, cap);                                  \
    }                                                                                                                  \
    extern "C" __global__ void rms_head_##SFX(const WT* w, const float* h, const float* g, float* y, u32* best,         \
                                              int rows, int k, float eps, int ty) {                                    \
        effllm_allow_next_kernel();                                                                                    \
        uint4 pre[PRELOAD];                                                                                            \
        float gpre[VEC_PER_THREAD];                                                                                    \
        rows_prefetch(w, F | ty << 8, rows, k, pre);                                                                   \
        preload_norm(g, k, gpre);                                                                                      \
        effllm_wait_for_previous_kernel();                                                                             \
        head_phase(w, F | ty << 8, h, g, y, best, rows, k, eps, pre, gpre);                                            \
    }                                                                                                                  \
    extern "C" __global__ void rms_qkv_##SFX(const WT* w, const float* h, const float* g, const float* rope,           \
                                             const u32* pos, float* qout, float* kc, float* vc, int hq, int hkv,       \
                                             int hd, int rot, int neox, int cap, int k, float eps, int ty) {           \
        effllm_allow_next_kernel();                                                                                    \
        uint4 pre[PRELOAD];                                                                                            \
        float gpre[VEC_PER_THREAD];                                                                                    \
        qkv_prefetch(w, F | ty << 8, hq, hkv, hd, rot, neox, k, pre);                                                  \
        preload_norm(g, k, gpre);                                                                                      \
        effllm_wait_for_previous_kernel();                                                                             \
        qkv_phase(w, F | ty << 8, h, g, rope, pos[0], qout, kc, vc, hq, hkv, hd, rot, neox, cap, k, eps, pre, gpre);   \
    }                                                                                                                  \
    extern "C" __global__ void rms_swiglu_##SFX(const WT* w, const float* h, const float* g, float* z, int dff, int k, \
                                                float eps, int ty) {                                                   \
        effllm_allow_next_kernel();                                                                                    \
        uint4 pre[PRELOAD];                                                                                            \
        float gpre[VEC_PER_THREAD];                                                                                    \
        swiglu_prefetch(w, F | ty << 8, dff, k, pre);                                                                  \
        preload_norm(g, k, gpre);                                                                                      \
        effllm_wait_for_previous_kernel();                                                                             \
        swiglu_phase(w, F | ty << 8, h, g, z, dff, k, eps, pre, gpre);                                                 \
    }                                                                                                                  \
    extern "C" __global__ void gemv_add_##SFX(const WT* w, const float* x, float* h, int rows, int k, int ty) {        \
        effllm_allow_next_kernel();                                                                                    \
        uint4 pre[PRELOAD];                                                                                            \
        rows_prefetch(w, F | ty << 8, rows, k, pre);                                                                   \
        effllm_wait_for_previous_kernel();                                                                             \
        gemv_add_phase(w, F | ty << 8, x, h, rows, k, pre);                                                            \
    }

FUSED_ENTRIES(f32, 0, float)
FUSED_ENTRIES(bf16, 1, u16)
FUSED_ENTRIES(f16, 2, u16)
FUSED_ENTRIES(q, 3, u8)

// The step's last node: the argmax of the logits becomes the next input token (0 if every logit was NaN), and the
// position advances.
__device__ __forceinline__ void finish_phase(const u32* best, u32* token, u32* pos) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long key = ((unsigned long long)__ldcg(best + 1) << 32) | __ldcg(best);
        token[0] = key ? 0xffffffffu - (u32)(key & 0xffffffffull) : 0u;
        pos[0] += 1;
    }
}

extern "C" __global__ void finish(const u32* best, u32* token, u32* pos) {
    effllm_wait_for_previous_kernel();
    finish_phase(best, token, pos);
}

// One kernel for the attention of every query head: block (h, c), 512 threads (as the persistent kernel's blocks).
// The rows of the cache slots written by earlier steps are loaded before the wait (H100, bf16 SmolLM2 shape with
// random weights, device loop: 1,660 -> 1,785 tok/s at context 128, 1,498 -> 1,607 at 2048). Two blocks per SM
// (at most 64 registers, a few bytes spilled): without the bound the kernel takes 72 registers and one block per SM,
// 1,830 tok/s at 128 but 1,433 at 2048, where 9 heads × 16 chunks need more than one wave.
extern "C" __global__ void __launch_bounds__(512, 2) attention_fused(const float* q, const float* kc, const float* vc, const u32* pos,
                                           float* pm, float* pl, float* pacc, u32* counter, float* out, int hq,
                                           int hkv, int hd, int cap, int nchunks, float scale) {
    effllm_allow_next_kernel();
    // The position changes only at the step's last node, so it may be read before the wait.
    int cur = (int)pos[0], n = cur + 1 < cap ? cur + 1 : cap;
    if ((int)blockIdx.y * ACHUNK >= n) return;
    AttnPre pre;
    attention_preload(kc, vc, n, blockIdx.x, blockIdx.y, hq, hkv, hd, cap, cur, &pre);
    effllm_wait_for_previous_kernel();
    attention_item(q, kc, vc, n, blockIdx.x, blockIdx.y, pm, pl, pacc, counter, out, hq, hkv, hd, cap, nchunks,
                   scale, &pre, cur);
}

// ---- (2) the whole step as one persistent kernel ----

// A load that sees other SMs' writes (never a stale L1 line) and orders the loads after it.
__device__ __forceinline__ u32 load_acquire(const u32* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#else
    return *(const volatile u32*)p;
#endif
}

// Grid-wide barrier of a co-resident (cooperative) grid: bar[0] counts arrivals, bar[1] is the generation. A block
// reads the generation before it arrives; the last to arrive resets the count and advances the generation, which
// releases the others.
__device__ __forceinline__ void grid_barrier(u32* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32* gen = bar + 1;
        u32 g = load_acquire(gen);
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (load_acquire(gen) == g) {}
        }
        __threadfence();
    }
    __syncthreads();
}

// Entry e of the u64 table (stored as pairs of u32).
__device__ __forceinline__ u64 entry(const u32* table, int e) {
    return (u64)table[2 * e] | ((u64)table[2 * e + 1] << 32);
}
#define TABLE_STRIDE 16
#define PTR(e) ((const void*)entry(table, (e)))

// table, per layer l (16 entries from 16·l): 0 attn_norm, 1 W_qkv, 2 its format, 3 W_o, 4 its format, 5 ffn_norm,
// 6 W_gate_up, 7 its format, 8 W_down, 9 its format, 10 d_ff, 11 key cache, 12 value cache; after the layers (from
// 16·n_layer): 0 embedding, 1 its format, 2 LM head, 3 its format, 4 final norm.
extern "C" __global__ void __launch_bounds__(512) decode_step(
        const u32* table, const float* rope, float* hidden, float* qbuf, float* attn, float* ffn, float* logits,
        float* pm, float* pl, float* pacc, u32* counter, u32* token, u32* history, u32* best, u32* pos, u32* bar,
        int n_layer, int d, int hq, int hkv, int hd, int rot, int neox, int cap, int nchunks, int vocab, float eps,
        float scale) {
    u32 slot = pos[0];  // written only at the very end of the step
    int n = (int)slot + 1 < cap ? (int)slot + 1 : cap;
    int gl = TABLE_STRIDE * n_layer;
    embed_phase(PTR(gl), (int)entry(table, gl + 1), token[0], slot, hidden, history, best, d, cap);
    qkv_prefetch(PTR(1), (int)entry(table, 2), hq, hkv, hd, rot, neox, d, nullptr);
    grid_barrier(bar);
    for (int l = 0; l < n_layer; ++l) {
        int b = TABLE_STRIDE * l;
        int dff = (int)entry(table, b + 10);
        float* kc = (float*)entry(table, b + 11);
        float* vc = (float*)entry(table, b + 12);
        qkv_phase(PTR(b + 1), (int)entry(table, b + 2), hidden, (const float*)PTR(b), rope, slot, qbuf, kc, vc, hq,
                  hkv, hd, rot, neox, cap, d, eps, nullptr, nullptr);
        grid_barrier(bar);
        for (int item = blockIdx.x; item < hq * nchunks; item += gridDim.x) {
            int h = item / nchunks, c = item - h * nchunks;
            if (c * ACHUNK < n)
                attention_item(qbuf, kc, vc, n, h, c, pm, pl, pacc, counter, attn, hq, hkv, hd, cap, nchunks, scale,
                               nullptr, 0);
        }
        rows_prefetch(PTR(b + 3), (int)entry(table, b + 4), d, hq * hd, nullptr);
        grid_barrier(bar);
        gemv_add_phase(PTR(b + 3), (int)entry(table, b + 4), attn, hidden, d, hq * hd, nullptr);
        swiglu_prefetch(PTR(b + 6), (int)entry(table, b + 7), dff, d, nullptr);
        grid_barrier(bar);
        swiglu_phase(PTR(b + 6), (int)entry(table, b + 7), hidden, (const float*)PTR(b + 5), ffn, dff, d, eps, nullptr, nullptr);
        rows_prefetch(PTR(b + 8), (int)entry(table, b + 9), d, dff, nullptr);
        grid_barrier(bar);
        gemv_add_phase(PTR(b + 8), (int)entry(table, b + 9), ffn, hidden, d, dff, nullptr);
        if (l + 1 < n_layer) qkv_prefetch(PTR(b + TABLE_STRIDE + 1), (int)entry(table, b + TABLE_STRIDE + 2), hq, hkv, hd, rot, neox, d, nullptr);
        grid_barrier(bar);
    }
    head_phase(PTR(gl + 2), (int)entry(table, gl + 3), hidden, (const float*)PTR(gl + 4), logits, best, vocab, d, eps, nullptr, nullptr);
    grid_barrier(bar);
    finish_phase(best, token, pos);
}
"#;

fn source() -> &'static str {
    static FULL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{KERNEL_PRELUDE}{SOURCE}"));
    &FULL
}

const KEY: &str = "effllm-model::graph_decode_fused_v4";

/// A weight matrix as the fused kernels read it: a dense tensor or a quantized matrix's device blocks.
#[derive(Clone, Debug)]
struct Matrix {
    data: Tensor,
    format: Format,
    /// ggml type id of quantized blocks (0 Q4_0, 1 Q4_1, 2 Q8_0); unused for dense weights.
    ty: i32,
}

/// Storage formats the fused kernels read (the kernel name's suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    F32,
    Bf16,
    F16,
    Blocks,
}

const FORMATS: [Format; 4] = [Format::F32, Format::Bf16, Format::F16, Format::Blocks];

impl Format {
    fn index(self) -> usize {
        self as usize
    }

    fn suffix(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
            Format::Blocks => "q",
        }
    }

    fn dtype(self) -> DType {
        match self {
            Format::F32 => DType::F32,
            Format::Bf16 => DType::BF16,
            Format::F16 => DType::F16,
            Format::Blocks => DType::U8,
        }
    }
}

impl Matrix {
    /// `None` for what the kernels do not read: other dtypes, blocks without a device copy, or quantized weights
    /// whose ordinary path quantizes the activations too (the fused kernels would change their numerics).
    fn of(linear: &Linear) -> Option<Matrix> {
        match linear {
            Linear::Dense(w) => {
                let format = match w.dtype() {
                    DType::F32 => Format::F32,
                    DType::BF16 => Format::Bf16,
                    DType::F16 => Format::F16,
                    _ => return None,
                };
                Some(Matrix { data: w.contiguous().ok()?, format, ty: 0 })
            }
            Linear::Quant(q) if q.activation_quant() == ActivationQuant::F32 => Matrix::blocks(q),
            Linear::Quant(_) => None,
        }
    }

    fn blocks(q: &QWeight) -> Option<Matrix> {
        let ty = match q.quant_type() {
            QuantType::Q4_0 => 0,
            QuantType::Q4_1 => 1,
            QuantType::Q8_0 => 2,
        };
        let data = q.device_blocks()?;
        // The kernels read Q4_1 blocks as 4-byte words and the others as 2-byte halves (see dot_blocks): blocks
        // uploaded into a view at an odd offset take the unfused step.
        if !data.layout().offset().is_multiple_of(4) || !data.is_contiguous() {
            return None;
        }
        Some(Matrix { data: data.clone(), format: Format::Blocks, ty })
    }

    /// The token embedding as the `embed` kernel reads it: a tied model's LM head (the same rows), else the
    /// embedding's dense rows or blocks on `device` (uploaded once if they live on the host).
    fn embedding(model: &LlamaModel, lm_head: &Matrix, device: &Device) -> Result<Option<Matrix>> {
        if model.config().tied_embeddings {
            return Ok(Some(lm_head.clone()));
        }
        Ok(match model.embedding() {
            Embedding::Dense(t) => Matrix::of(&Linear::Dense(t.to_device(device)?)),
            Embedding::Quant(q) if q.device_blocks().is_some() => Matrix::blocks(q),
            Embedding::Quant(q) => Matrix::blocks(&q.to_device(device)?),
        })
    }
}

struct Kernels {
    embed: Vec<CustomKernel>,
    rms_head: Vec<CustomKernel>,
    rms_qkv: Vec<CustomKernel>,
    rms_swiglu: Vec<CustomKernel>,
    gemv_add: Vec<CustomKernel>,
    attention: CustomKernel,
    finish: CustomKernel,
    decode_step: CustomKernel,
}

fn kernels() -> &'static Kernels {
    use Param::*;
    const F: Param = In(DType::F32);
    static K: std::sync::LazyLock<Kernels> = std::sync::LazyLock::new(|| {
        let per_format = |name: &str, params: &dyn Fn(DType) -> Vec<Param>| {
            FORMATS
                .iter()
                .map(|f| CustomKernel::new(KEY, source(), &format!("{name}_{}", f.suffix()), &params(f.dtype())))
                .collect::<Vec<_>>()
        };
        const U: Param = Out(DType::U32);
        Kernels {
            embed: per_format("embed", &|w| {
                vec![In(w), In(DType::U32), In(DType::U32), Out(DType::F32), U, U, I32, I32, I32]
            }),
            rms_head: per_format("rms_head", &|w| vec![In(w), F, F, Out(DType::F32), U, I32, I32, F32, I32]),
            rms_qkv: per_format("rms_qkv", &|w| {
                vec![
                    In(w),
                    F,
                    F,
                    F,
                    In(DType::U32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    F32,
                    I32,
                ]
            }),
            rms_swiglu: per_format("rms_swiglu", &|w| vec![In(w), F, F, Out(DType::F32), I32, I32, F32, I32]),
            gemv_add: per_format("gemv_add", &|w| vec![In(w), F, Out(DType::F32), I32, I32, I32]),
            attention: CustomKernel::new(
                KEY,
                source(),
                "attention_fused",
                &[
                    F,
                    F,
                    F,
                    In(DType::U32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::U32),
                    Out(DType::F32),
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    F32,
                ],
            ),
            finish: CustomKernel::new(KEY, source(), "finish", &[In(DType::U32), U, U]),
            decode_step: CustomKernel::new(
                KEY,
                source(),
                "decode_step",
                &[
                    In(DType::U32),
                    F,
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    U,
                    U,
                    U,
                    U,
                    U,
                    U,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    F32,
                    F32,
                ],
            ),
        }
    });
    &K
}

/// One layer's weights as the fused kernels read them.
struct Layer {
    /// The layer's FFN width.
    dff: usize,
    attn_norm: Tensor,
    qkv: Matrix,
    wo: Matrix,
    ffn_norm: Tensor,
    gate_up: Matrix,
    down: Matrix,
}

/// The weights of the fused step and its scratch buffers.
pub(super) struct FusedStep {
    embedding: Matrix,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Matrix,
    /// `u32 [1]`: the token the next step reads; the step leaves its greedy choice (the logits' argmax) there.
    pub(super) token: Tensor,
    /// `u32 [max_context]`: `history[p]` is the token that the step at position `p` read.
    pub(super) history: Tensor,
    /// `u32 [2]`: the 64-bit argmax key of the step's logits (`rms_head`'s atomic maximum).
    best: Tensor,
    /// `f32 [n_head·head_dim]`: the roped query of the layer being run.
    query: Tensor,
    /// `f32 [d_ff]`: the SwiGLU output of the layer being run.
    ffn: Tensor,
    /// `u32 [n_head]`: chunks of each head finished so far in `attention_fused` (zero between launches).
    counter: Tensor,
    /// `f32 [max_context, rotary_dims / 2, 2]`: `cos` and `sin` of `p·θᵢ` for every position `p`, computed in f64
    /// once (as the tensor crate's RoPE kernel computes them) and rounded to f32.
    rope: Tensor,
    /// The persistent kernel's table of device addresses (`decode_step` in the source), built over the decoder's
    /// KV buffers; `None` until [`FusedStep::attach_cache`].
    table: Option<Tensor>,
    /// `u32 [2]`: the persistent kernel's grid barrier (arrivals, generation).
    barrier: Tensor,
    /// Whether the step runs as one persistent kernel.
    pub(super) persistent: bool,
    /// The widest GEMV input of the step (`d_model`, `n_head·head_dim` or a layer's `d_ff`): the persistent
    /// kernel's dynamic shared memory, in f32 values.
    widest_input: usize,
    /// The persistent kernel's grid: one block per multiprocessor.
    multiprocessors: usize,
}

/// `cos`/`sin` of `p·θᵢ`, `θᵢ = base^(−2i/R)`, for positions `0..max_context` and pairs `0..R/2`, interleaved.
fn rope_table(cfg: &LlamaConfig, max_context: usize) -> Vec<f32> {
    let rot = cfg.rope.rotary_dims;
    let half = rot / 2;
    let mut out = Vec::with_capacity(max_context * half.max(1) * 2);
    for p in 0..max_context {
        if half == 0 {
            out.extend([1.0, 0.0]);
        }
        for i in 0..half {
            let theta = cfg.rope.base.powf(-2.0 * i as f64 / rot as f64);
            let (s, c) = (p as f64 * theta).sin_cos();
            out.push(c as f32);
            out.push(s as f32);
        }
    }
    out
}

/// Why a model cannot take the fused step, or `None` when it can.
fn unsupported(cfg: &LlamaConfig) -> Option<String> {
    let hd = cfg.head_dim;
    if !hd.is_multiple_of(16) || !256usize.is_multiple_of(hd) {
        return Some(format!("head_dim {hd} is not a multiple of 16 dividing 256"));
    }
    if !cfg.rope.rotary_dims.is_multiple_of(2) || cfg.rope.rotary_dims > hd {
        return Some(format!("{} rotary dimensions in heads of {hd}", cfg.rope.rotary_dims));
    }
    // The FFN input width is checked per layer (pruned layers are narrower).
    let widest = cfg.d_model.max(cfg.n_head * hd);
    if widest > MAX_INPUT {
        return Some(format!("a GEMV input of {widest} values does not fit the kernels' shared memory"));
    }
    None
}

impl FusedStep {
    /// The fused step's view of `model`'s weights (the stacked Q/K/V and gate/up maps are the decoder's), or `None`
    /// when a weight's format or the model's shape is one the kernels do not handle (the decoder then runs the
    /// unfused step).
    pub(super) fn new(
        model: &LlamaModel,
        stacked: &[super::StackedMaps],
        max_context: usize,
    ) -> Result<Option<FusedStep>> {
        let cfg = model.config();
        if unsupported(cfg).is_some() {
            return Ok(None);
        }
        let gain = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
        let (d, hq, hkv, hd) = (cfg.d_model, cfg.n_head, cfg.n_head_kv, cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (layer, maps) in model.layers().iter().zip(stacked) {
            let (Some(qkv), Some(gate_up)) = (&maps.qkv, &maps.gate_up) else { return Ok(None) };
            // The FFN width is the layer's own (GRIFFIN's pruned layers are narrower than the config's d_ff).
            let dff = layer.ffn.d_ff();
            let shape = |l: &Linear| (l.out_features(), l.in_features());
            if shape(qkv) != ((hq + 2 * hkv) * hd, d)
                || shape(&layer.wo) != (d, hq * hd)
                || shape(gate_up) != (2 * dff, d)
                || shape(&layer.ffn.down) != (d, dff)
                || dff == 0
                || dff > MAX_INPUT
            {
                return Ok(None);
            }
            let (Some(qkv), Some(wo), Some(gate_up), Some(down)) =
                (Matrix::of(qkv), Matrix::of(&layer.wo), Matrix::of(gate_up), Matrix::of(&layer.ffn.down))
            else {
                return Ok(None);
            };
            layers.push(Layer {
                dff,
                attn_norm: gain(&layer.attn_norm)?,
                qkv,
                wo,
                ffn_norm: gain(&layer.ffn_norm)?,
                gate_up,
                down,
            });
        }
        if (model.lm_head_weight().out_features(), model.lm_head_weight().in_features()) != (cfg.vocab, d) {
            return Ok(None);
        }
        let Some(lm_head) = Matrix::of(model.lm_head_weight()) else { return Ok(None) };
        let widest_ffn = layers.iter().map(|l| l.dff).max().unwrap_or(1);
        let device = model.device();
        let Device::Cuda(ordinal) = device else { return Ok(None) };
        let multiprocessors = effllm_tensor::cuda::device(ordinal)?.multiprocessor_count();
        let Some(embedding) = Matrix::embedding(model, &lm_head, &device)? else { return Ok(None) };
        Ok(Some(FusedStep {
            embedding,
            token: Tensor::zeros(&[1], DType::U32, &device)?,
            history: Tensor::zeros(&[max_context], DType::U32, &device)?,
            best: Tensor::zeros(&[2], DType::U32, &device)?,
            layers,
            norm: gain(model.final_norm_weight())?,
            lm_head,
            query: Tensor::zeros(&[cfg.n_head * cfg.head_dim], DType::F32, &device)?,
            ffn: Tensor::zeros(&[widest_ffn], DType::F32, &device)?,
            counter: Tensor::zeros(&[cfg.n_head], DType::U32, &device)?,
            rope: Tensor::from_vec(
                rope_table(cfg, max_context),
                &[max_context, (cfg.rope.rotary_dims / 2).max(1), 2],
                &Device::Cpu,
            )?
            .to_device(&device)?,
            table: None,
            barrier: Tensor::zeros(&[2], DType::U32, &device)?,
            persistent: false,
            widest_input: widest_ffn.max(d).max(hq * hd),
            multiprocessors,
        }))
    }
}

/// Entries of the persistent kernel's table per layer (`TABLE_STRIDE` in the source).
const TABLE_STRIDE: usize = 16;

impl Matrix {
    /// `format | ty << 8`, as the persistent kernel's table stores it.
    fn format_code(&self) -> u64 {
        self.format.index() as u64 | (self.ty as u64) << 8
    }
}

impl FusedStep {
    /// Builds the persistent kernel's table of device addresses over the weights and the decoder's KV buffers
    /// (`keys[l]`, `values[l]`: `f32 [n_head_kv, max_context, head_dim]`, never reallocated while the decoder lives).
    pub(super) fn attach_cache(&mut self, keys: &[Tensor], values: &[Tensor]) -> Result<()> {
        use effllm_tensor::cuda::device_address as addr;
        let n_layer = self.layers.len();
        let mut table = vec![0u64; TABLE_STRIDE * (n_layer + 1)];
        for (l, layer) in self.layers.iter().enumerate() {
            let row = &mut table[TABLE_STRIDE * l..TABLE_STRIDE * (l + 1)];
            row[0] = addr(&layer.attn_norm)?;
            row[1] = addr(&layer.qkv.data)?;
            row[2] = layer.qkv.format_code();
            row[3] = addr(&layer.wo.data)?;
            row[4] = layer.wo.format_code();
            row[5] = addr(&layer.ffn_norm)?;
            row[6] = addr(&layer.gate_up.data)?;
            row[7] = layer.gate_up.format_code();
            row[8] = addr(&layer.down.data)?;
            row[9] = layer.down.format_code();
            row[10] = layer.dff as u64;
            row[11] = addr(&keys[l])?;
            row[12] = addr(&values[l])?;
        }
        let globals = &mut table[TABLE_STRIDE * n_layer..];
        globals[0] = addr(&self.embedding.data)?;
        globals[1] = self.embedding.format_code();
        globals[2] = addr(&self.lm_head.data)?;
        globals[3] = self.lm_head.format_code();
        globals[4] = addr(&self.norm)?;
        let words: Vec<u32> = table.iter().flat_map(|&e| [e as u32, (e >> 32) as u32]).collect();
        let n = words.len();
        self.table = Some(Tensor::from_vec(words, &[n], &Device::Cpu)?.to_device(&self.barrier.device())?);
        Ok(())
    }

    /// Whether the persistent kernel's shared memory fits the default 48 KiB: the widest GEMV input (dynamic) plus
    /// the static arrays (the attention's 128 scores and 512 `float4` partial sums, the reductions' scratch: about
    /// 9 KiB; 10 KiB counted).
    pub(super) fn persistent_fits(&self) -> bool {
        const STATIC_BYTES: usize = 10 * 1024;
        self.widest_input * 4 + STATIC_BYTES <= 48 * 1024
    }

    /// The whole step as one cooperative launch of `decode_step`: one block of 512 threads per multiprocessor.
    fn run_persistent(&mut self, cfg: &LlamaConfig, device: Device, b: StepBuffers<'_>) -> Result<()> {
        let (hq, hkv, hd, d) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.d_model);
        let cap = b.max_context;
        let dims = LaunchDims {
            grid: (self.multiprocessors as u32, 1, 1),
            block: (512, 1, 1),
            shared_mem_bytes: (self.widest_input * 4) as u32,
        };
        let FusedStep { table, rope, query, ffn, counter, token, history, best, barrier, .. } = self;
        let Some(table) = table.as_ref() else {
            return Err(crate::error::invalid("fused decode step", "the persistent kernel's table is not built"));
        };
        kernels().decode_step.launch_cooperative(
            device,
            dims,
            &mut [
                Arg::In(table),
                Arg::In(rope),
                Arg::Out(b.hidden),
                Arg::Out(query),
                Arg::Out(b.attention),
                Arg::Out(ffn),
                Arg::Out(b.logits),
                Arg::Out(b.partial_max),
                Arg::Out(b.partial_sum),
                Arg::Out(b.partial_values),
                Arg::Out(counter),
                Arg::Out(token),
                Arg::Out(history),
                Arg::Out(best),
                Arg::Out(b.position),
                Arg::Out(barrier),
                Arg::I32(self.layers.len() as i32),
                Arg::I32(d as i32),
                Arg::I32(hq as i32),
                Arg::I32(hkv as i32),
                Arg::I32(hd as i32),
                Arg::I32(cfg.rope.rotary_dims as i32),
                Arg::I32(i32::from(cfg.rope.style == RopeStyle::NeoX)),
                Arg::I32(cap as i32),
                Arg::I32(cap.div_ceil(CHUNK) as i32),
                Arg::I32(cfg.vocab as i32),
                Arg::F32(cfg.rms_eps as f32),
                Arg::F32((1.0 / (hd as f64).sqrt()) as f32),
            ],
            1,
        )?;
        Ok(())
    }
}

fn gemv_dims(items: usize, input: usize) -> LaunchDims {
    LaunchDims {
        grid: (items.div_ceil(WARPS).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block: ((WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: (input * 4) as u32,
    }
}

/// The buffers of the decoder that the fused step reads and writes.
pub(super) struct StepBuffers<'a> {
    /// `f32 [1, d]`: the token's embedding on entry, the residual stream while the layers run (updated in place).
    pub hidden: &'a mut Tensor,
    pub position: &'a mut Tensor,
    pub keys: &'a mut [Tensor],
    pub values: &'a mut [Tensor],
    pub attention: &'a mut Tensor,
    pub partial_max: &'a mut Tensor,
    pub partial_sum: &'a mut Tensor,
    pub partial_values: &'a mut Tensor,
    pub logits: &'a mut Tensor,
    pub max_context: usize,
}

impl FusedStep {
    /// Queues one decoding step of the token in [`FusedStep::token`]: the embedding lookup, 5 launches per layer,
    /// the head with its argmax, and the last node, which stores the argmax as the next token and advances the
    /// position.
    pub(super) fn run(&mut self, cfg: &LlamaConfig, device: Device, b: StepBuffers<'_>) -> Result<()> {
        let k = kernels();
        let (hq, hkv, hd, d) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.d_model);
        let cap = b.max_context;
        let chunks = cap.div_ceil(CHUNK);
        let eps = cfg.rms_eps as f32;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let neox = i32::from(cfg.rope.style == RopeStyle::NeoX);
        if self.persistent {
            return self.run_persistent(cfg, device, b);
        }
        let FusedStep { embedding, layers, norm, lm_head, token, history, best, query, ffn, counter, rope, .. } = self;
        k.embed[embedding.format.index()].launch(
            device,
            LaunchDims::linear(d),
            &mut [
                Arg::In(&embedding.data),
                Arg::In(token),
                Arg::In(b.position),
                Arg::Out(b.hidden),
                Arg::Out(history),
                Arg::Out(best),
                Arg::I32(d as i32),
                Arg::I32(cap as i32),
                Arg::I32(embedding.ty),
            ],
            1,
        )?;
        for (li, l) in layers.iter().enumerate() {
            let dff = l.dff;
            k.rms_qkv[l.qkv.format.index()].launch_overlapping(
                device,
                gemv_dims((hq + 2 * hkv) * hd / 2, d),
                &mut [
                    Arg::In(&l.qkv.data),
                    Arg::In(b.hidden),
                    Arg::In(&l.attn_norm),
                    Arg::In(rope),
                    Arg::In(&*b.position),
                    Arg::Out(query),
                    Arg::Out(&mut b.keys[li]),
                    Arg::Out(&mut b.values[li]),
                    Arg::I32(hq as i32),
                    Arg::I32(hkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(cfg.rope.rotary_dims as i32),
                    Arg::I32(neox),
                    Arg::I32(cap as i32),
                    Arg::I32(d as i32),
                    Arg::F32(eps),
                    Arg::I32(l.qkv.ty),
                ],
                1,
            )?;
            k.attention.launch_overlapping(
                device,
                LaunchDims {
                    grid: (hq as u32, chunks as u32, 1),
                    block: ((WARPS * 32) as u32, 1, 1),
                    shared_mem_bytes: 0,
                },
                &mut [
                    Arg::In(query),
                    Arg::In(&b.keys[li]),
                    Arg::In(&b.values[li]),
                    Arg::In(&*b.position),
                    Arg::Out(b.partial_max),
                    Arg::Out(b.partial_sum),
                    Arg::Out(b.partial_values),
                    Arg::Out(counter),
                    Arg::Out(b.attention),
                    Arg::I32(hq as i32),
                    Arg::I32(hkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(cap as i32),
                    Arg::I32(chunks as i32),
                    Arg::F32(scale),
                ],
                1,
            )?;
            k.gemv_add[l.wo.format.index()].launch_overlapping(
                device,
                gemv_dims(d, hq * hd),
                &mut [
                    Arg::In(&l.wo.data),
                    Arg::In(b.attention),
                    Arg::Out(b.hidden),
                    Arg::I32(d as i32),
                    Arg::I32((hq * hd) as i32),
                    Arg::I32(l.wo.ty),
                ],
                1,
            )?;
            k.rms_swiglu[l.gate_up.format.index()].launch_overlapping(
                device,
                gemv_dims(dff, d),
                &mut [
                    Arg::In(&l.gate_up.data),
                    Arg::In(b.hidden),
                    Arg::In(&l.ffn_norm),
                    Arg::Out(ffn),
                    Arg::I32(dff as i32),
                    Arg::I32(d as i32),
                    Arg::F32(eps),
                    Arg::I32(l.gate_up.ty),
                ],
                1,
            )?;
            k.gemv_add[l.down.format.index()].launch_overlapping(
                device,
                gemv_dims(d, dff),
                &mut [
                    Arg::In(&l.down.data),
                    Arg::In(ffn),
                    Arg::Out(b.hidden),
                    Arg::I32(d as i32),
                    Arg::I32(dff as i32),
                    Arg::I32(l.down.ty),
                ],
                1,
            )?;
        }
        k.rms_head[lm_head.format.index()].launch_overlapping(
            device,
            gemv_dims(cfg.vocab, d),
            &mut [
                Arg::In(&lm_head.data),
                Arg::In(b.hidden),
                Arg::In(norm),
                Arg::Out(b.logits),
                Arg::Out(best),
                Arg::I32(cfg.vocab as i32),
                Arg::I32(d as i32),
                Arg::F32(eps),
                Arg::I32(lm_head.ty),
            ],
            1,
        )?;
        k.finish.launch_overlapping(
            device,
            LaunchDims::linear(1),
            &mut [Arg::In(best), Arg::Out(token), Arg::Out(b.position)],
            1,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_shapes_are_supported() {
        // SmolLM2-135M's shapes.
        let mut cfg = LlamaConfig {
            n_layer: 30,
            d_model: 576,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            d_ff: 1536,
            vocab: 49152,
            context: 8192,
            rms_eps: 1e-5,
            rope: effllm_tensor::RopeConfig { style: RopeStyle::Interleaved, base: 100_000.0, rotary_dims: 64 },
            tied_embeddings: true,
        };
        assert_eq!(unsupported(&cfg), None);
        cfg.head_dim = 24;
        assert!(unsupported(&cfg).unwrap().contains("head_dim 24"));
        cfg.head_dim = 512;
        assert!(unsupported(&cfg).is_some(), "512 does not divide 256");
        cfg.head_dim = 64;
        cfg.d_model = 16 * 1024;
        assert!(unsupported(&cfg).unwrap().contains("shared memory"));
    }

    #[test]
    fn formats_name_their_kernels() {
        let names: Vec<_> = FORMATS.iter().map(|f| f.suffix()).collect();
        assert_eq!(names, ["f32", "bf16", "f16", "q"]);
        for (i, f) in FORMATS.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert!(SOURCE.contains(&format!("FUSED_ENTRIES({}, {i}, ", f.suffix())), "{f:?}");
        }
    }
}
