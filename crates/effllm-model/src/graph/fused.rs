//! The fused decode step of [`super::GraphDecoder`]: five kernels per layer instead of about fifteen.
//!
//! Each kernel of the ordinary step does little work (a 576-wide GEMV moves about a megabyte), so the step is bound
//! by the number of kernels it runs, replayed graph or not. The fused step folds the small ops into the GEMVs:
//!
//! | kernel | computes |
//! | --- | --- |
//! | `rms_qkv` | `x = rms_norm(h) ⊙ g` (every block recomputes it into shared memory), `[q; k; v] = W_qkv x`, RoPE on `q` and `k`, `k` and `v` into the cache slot |
//! | `attention_fused` | split-K decode attention over chunks of 64 slots; the last block of each head to finish combines the chunks |
//! | `gemv_add` (`W_o`) | `h += W_o · attn` |
//! | `rms_swiglu` | `z = silu(W_gate x) ⊙ (W_up x)` with `x = rms_norm(h) ⊙ g` |
//! | `gemv_add` (`W_down`) | `h += W_down · z` |
//!
//! Before the layers `embed` reads the input token from device memory and writes its embedding row into `h`; after
//! them `rms_head` computes `logits = W_head · (rms_norm(h) ⊙ g)` and their argmax (an atomic maximum over one
//! 64-bit key per block: value, then the smaller index), and `finish` stores that argmax as the next input token
//! and advances the position. A greedy decode therefore replays the graph back to back with no host round trip. Every GEMV runs one warp per output row (or
//! per pair of rows) over the row's weights in their storage format — f32, bf16, f16 (16-byte loads) or ggml blocks
//! (Q4_0, Q4_1, Q8_0; four lanes per block) — against f32 activations, with f32 accumulation. The numerics are
//! those of the ordinary step for f32 and quantized weights (with f32 activations); for bf16/f16 weights the fused
//! step keeps the activations in f32 where the ordinary step rounds each GEMV's input and output to the weight's
//! 16-bit type (cuBLAS multiplies 16-bit matrices), so it is the more precise of the two.

use effllm_tensor::cuda::{Arg, CustomKernel, KERNEL_PRELUDE, LaunchDims, Param};
use effllm_tensor::quant::{ActivationQuant, QWeight, QuantType};
use effllm_tensor::{DType, Device, RopeStyle, Tensor};

use crate::error::Result;
use crate::llama::LlamaModel;
use crate::{CausalLm, Embedding, Linear, LlamaConfig};

/// Cache slots per block of `attention_fused` (`ACHUNK` in the source): twice the unfused kernel's chunk, so the
/// decoder's partial-result buffers are large enough.
const CHUNK: usize = 2 * super::ATTENTION_CHUNK;
/// Warps per block of the GEMV kernels (`FUSED_WARPS`).
const WARPS: usize = 8;
/// Most blocks of one GEMV launch; the warps loop over the remaining rows.
const MAX_BLOCKS: usize = 1024;
/// Dynamic shared memory of a GEMV block holds its input vector: at most this many f32 values.
const MAX_INPUT: usize = 12 * 1024;

const SOURCE: &str = r#"
#define ACHUNK 128

// The step's kernels after the first are launched so that they may start while the previous one runs
// (programmatic dependent launch, Hopper). Each lets the next kernel start at once, prefetches its weights, and
// waits for the previous kernel before it reads the residual stream, the cache, the position or any other buffer a
// kernel writes.

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

// Lane partials of R rows · x (x in shared memory). Dense rows take 16-byte loads when every row is 16-byte aligned.
template <int F, int R> __device__ __forceinline__ void dot_dense(const u8* const* rows, const float* xs, int k,
                                                                  int lane, float* a) {
    constexpr int per = F == 0 ? 4 : 8;  // elements per 16-byte load
    bool vec = (k % per) == 0;
    #pragma unroll
    for (int r = 0; r < R; ++r) { a[r] = 0.f; vec = vec && (((size_t)rows[r]) & 15) == 0; }
    if (vec) {
        const float4* x = (const float4*)xs;
        #pragma unroll 2
        for (int c = lane; c < k / per; c += 32) {
            uint4 w[R];
            #pragma unroll
            for (int r = 0; r < R; ++r) w[r] = ((const uint4*)rows[r])[c];
            if (F == 0) {
                float4 v = x[c];
                #pragma unroll
                for (int r = 0; r < R; ++r)
                    a[r] += __uint_as_float(w[r].x) * v.x + __uint_as_float(w[r].y) * v.y +
                            __uint_as_float(w[r].z) * v.z + __uint_as_float(w[r].w) * v.w;
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

// Lane partials of R rows of ggml blocks · x: four lanes per 32-weight block, eight consecutive blocks per warp step
// (as the tensor crate's qgemv), each lane 8 weights of each row.
template <int R> __device__ __forceinline__ void dot_blocks(const u8* const* rows, const float* xs, int k, int lane,
                                                            int ty, float* a) {
    int nb = k >> 5, q4 = lane & 3, bsz = block_bytes(ty);
    int o0 = ty == 2 ? 8 * q4 : 4 * q4, o1 = ty == 2 ? 8 * q4 + 4 : 16 + 4 * q4;
    #pragma unroll
    for (int r = 0; r < R; ++r) a[r] = 0.f;
    #pragma unroll 2
    for (int b = lane >> 2; b < nb; b += 8) {
        const float* xb = xs + b * 32;
        float xa[8], sx = 0.f;
        #pragma unroll
        for (int j = 0; j < 4; ++j) { xa[j] = xb[o0 + j]; xa[4 + j] = xb[o1 + j]; sx += xa[j] + xa[4 + j]; }
        #pragma unroll
        for (int r = 0; r < R; ++r) {
            const u8* blk = rows[r] + (i64)b * bsz;
            float d = ld_half(blk), s = 0.f;
            if (ty == 2) {
                const signed char* q = (const signed char*)(blk + 2 + 8 * q4);
                #pragma unroll
                for (int j = 0; j < 4; ++j) s += (float)q[j] * xa[j] + (float)q[4 + j] * xa[4 + j];
                a[r] += d * s;
            } else {
                const u8* qs = blk + (ty == 1 ? 4 : 2) + 4 * q4;
                #pragma unroll
                for (int j = 0; j < 4; ++j) s += (float)(qs[j] & 15) * xa[j] + (float)(qs[j] >> 4) * xa[4 + j];
                a[r] += ty == 1 ? d * s + ld_half(blk + 2) * sx : d * (s - 8.f * sx);
            }
        }
    }
}

// The warp's full dot products of rows r[0..R) with x (every lane gets them).
template <int F, int R> __device__ __forceinline__ void rows_dot(const void* w, const i64* r, int k, const float* xs,
                                                                 int lane, int ty, float* out) {
    const u8* rows[R];
    #pragma unroll
    for (int i = 0; i < R; ++i) rows[i] = row_ptr<F>(w, r[i], k, ty);
    if (F == 3) dot_blocks<R>(rows, xs, k, lane, ty, out);
    else dot_dense<F, R>(rows, xs, k, lane, out);
    #pragma unroll
    for (int i = 0; i < R; ++i) out[i] = warp_sum(out[i]);
}

extern __shared__ float4 fused_xs4[];

// xs = rms_norm(h) ⊙ g in shared memory (every thread of the block takes part): h and g are read in one pass.
__device__ __forceinline__ float* load_rms(const float* h, const float* g, float eps, int k) {
    __shared__ float red[32];
    float* xs = (float*)fused_xs4;
    float s = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) { float v = h[j]; xs[j] = v * g[j]; s += v * v; }
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
    for (int j = threadIdx.x; j < k; j += blockDim.x) xs[j] = x[j];
    __syncthreads();
    return xs;
}

#define WARP_LOOP(i, total) \
    for (int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < (total); i += gridDim.x * (blockDim.x >> 5))

// An orderable key for the argmax: larger value first, then smaller index (the first of equal maxima).
__device__ __forceinline__ unsigned long long argmax_key(float v, int r) {
    u32 b = __float_as_uint(v);
    u32 ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)ord << 32) | (unsigned long long)(0xffffffffu - (u32)r);
}

// hidden = embedding row token[0] (dense rows or ggml blocks), history[pos] = token[0], best = 0.
template <int F> __device__ void embed_body(const void* e, const u32* token, const u32* pos, float* hidden,
                                            u32* history, u32* best, int d, int cap, int ty) {
    effllm_allow_next_kernel();
    effllm_wait_for_previous_kernel();
    u32 t = token[0];
    const u8* row = row_ptr<F>(e, t, d, ty);
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < d; j += gridDim.x * blockDim.x) {
        float v;
        if (F == 0) v = ((const float*)row)[j];
        else if (F == 1) v = bf16_to_f32(((const u16*)row)[j]);
        else if (F == 2) v = f16_to_f32(((const u16*)row)[j]);
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
        u32 p = pos[0];
        if (p < (u32)cap) history[p] = t;
        best[0] = 0u;
        best[1] = 0u;
    }
}

// logits[r] = W[r] · (rms_norm(h) ⊙ g) for the LM head, and best = max over rows of argmax_key(logit, r) (NaN never
// wins): one atomicMax per block.
template <int F> __device__ void rms_head_body(const void* w, const float* h, const float* g, float* y, u32* best,
                                               int rows, int k, float eps, int ty) {
    __shared__ unsigned long long block_best[32];
    effllm_allow_next_kernel();
    int lane = threadIdx.x & 31;
    WARP_LOOP(r, rows) prefetch_row<F>(w, r, k, ty, lane);
    effllm_wait_for_previous_kernel();
    float* xs = load_rms(h, g, eps, k);
    unsigned long long mine = 0ull;
    WARP_LOOP(r, rows) {
        i64 rr = r;
        float a;
        rows_dot<F, 1>(w, &rr, k, xs, lane, ty, &a);
        if (lane == 0) {
            y[r] = a;
            if (a == a) { unsigned long long key = argmax_key(a, r); mine = key > mine ? key : mine; }
        }
    }
    if (lane == 0) block_best[threadIdx.x >> 5] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < (int)(blockDim.x >> 5); ++i) mine = block_best[i] > mine ? block_best[i] : mine;
        if (mine) atomicMax((unsigned long long*)best, mine);
    }
}

// [q; k; v] = [W_q; W_k; W_v] · (rms_norm(h) ⊙ g), RoPE on q and k at position pos[0], k and v stored in cache slot
// pos[0]. A warp computes the two rows of one pair of head dimensions: the rotation pair (2i, 2i+1) (interleaved) or
// (i, i + rot/2) (NeoX) for rotated dimensions, consecutive dimensions otherwise.
template <int F> __device__ void rms_qkv_body(const void* w, const float* h, const float* g, const u32* pos,
                                              float* qout, float* kc, float* vc, int hq, int hkv, int hd, int rot,
                                              int neox, double base, int cap, int k, float eps, int ty) {
    effllm_allow_next_kernel();
    int lane = threadIdx.x & 31;
    int per_head = hd >> 1, half = rot >> 1, total = (hq + 2 * hkv) * per_head;
    WARP_LOOP(p, total) {
        int head = p / per_head, i = p - head * per_head;
        bool qk = head < hq + hkv, rotate = qk && i < half;
        int da = rotate ? (neox ? i : 2 * i) : qk ? rot + 2 * (i - half) : 2 * i;
        int db = rotate ? (neox ? i + half : 2 * i + 1) : da + 1;
        prefetch_row<F>(w, (i64)head * hd + da, k, ty, lane);
        prefetch_row<F>(w, (i64)head * hd + db, k, ty, lane);
    }
    effllm_wait_for_previous_kernel();
    float* xs = load_rms(h, g, eps, k);
    u32 slot = pos[0];
    WARP_LOOP(p, total) {
        int head = p / per_head, i = p - head * per_head;
        bool qk = head < hq + hkv, rotate = qk && i < half;
        int da = rotate ? (neox ? i : 2 * i) : qk ? rot + 2 * (i - half) : 2 * i;
        int db = rotate ? (neox ? i + half : 2 * i + 1) : da + 1;
        float c = 1.f, s = 0.f;
        if (rotate) {
            // As the tensor crate's rope kernel: θ_i = base^(−2i/rot) and the angle in f64.
            double theta = pow(base, -2.0 * (double)i / (double)rot);
            double sn, cs;
            sincos((double)slot * theta, &sn, &cs);
            c = (float)cs;
            s = (float)sn;
        }
        i64 r[2] = {(i64)head * hd + da, (i64)head * hd + db};
        float ab[2];
        rows_dot<F, 2>(w, r, k, xs, lane, ty, ab);
        if (lane == 0) {
            float a = ab[0], b = ab[1];
            if (rotate) {
                float ya = a * c - b * s, yb = a * s + b * c;
                a = ya;
                b = yb;
            }
            if (head < hq) {
                qout[(i64)head * hd + da] = a;
                qout[(i64)head * hd + db] = b;
            } else if (slot < (u32)cap) {
                int kvh = qk ? head - hq : head - hq - hkv;
                float* dst = (qk ? kc : vc) + ((i64)kvh * cap + slot) * hd;
                dst[da] = a;
                dst[db] = b;
            }
        }
    }
}

// z_i = silu(gate_i) · up_i with [gate; up] = [W_gate; W_up] · (rms_norm(h) ⊙ g): one warp per i, both rows.
template <int F> __device__ void rms_swiglu_body(const void* w, const float* h, const float* g, float* z, int dff,
                                                 int k, float eps, int ty) {
    effllm_allow_next_kernel();
    int lane = threadIdx.x & 31;
    WARP_LOOP(i, dff) {
        prefetch_row<F>(w, i, k, ty, lane);
        prefetch_row<F>(w, (i64)dff + i, k, ty, lane);
    }
    effllm_wait_for_previous_kernel();
    float* xs = load_rms(h, g, eps, k);
    WARP_LOOP(i, dff) {
        i64 r[2] = {i, (i64)dff + i};
        float gu[2];
        rows_dot<F, 2>(w, r, k, xs, lane, ty, gu);
        if (lane == 0) {
            float gt = gu[0];
            float sg = gt >= 0.f ? 1.f / (1.f + expf(-gt)) : expf(gt) / (1.f + expf(gt));
            z[i] = gt * sg * gu[1];
        }
    }
}

// h[r] += W[r] · x: the output projection and the down projection with their residual adds.
template <int F> __device__ void gemv_add_body(const void* w, const float* x, float* h, int rows, int k, int ty) {
    effllm_allow_next_kernel();
    int lane = threadIdx.x & 31;
    WARP_LOOP(r, rows) prefetch_row<F>(w, r, k, ty, lane);
    effllm_wait_for_previous_kernel();
    float* xs = load_vec(x, k);
    WARP_LOOP(r, rows) {
        i64 rr = r;
        float before = lane == 0 ? h[r] : 0.f, a;  // loaded now, not after the dot product
        rows_dot<F, 1>(w, &rr, k, xs, lane, ty, &a);
        if (lane == 0) h[r] = before + a;
    }
}

#define FUSED_ENTRIES(SFX, F, WT)                                                                                      \
    extern "C" __global__ void embed_##SFX(const WT* e, const u32* token, const u32* pos, float* hidden, u32* history,  \
                                           u32* best, int d, int cap, int ty) {                                        \
        embed_body<F>(e, token, pos, hidden, history, best, d, cap, ty);                                               \
    }                                                                                                                  \
    extern "C" __global__ void rms_head_##SFX(const WT* w, const float* h, const float* g, float* y, u32* best,         \
                                              int rows, int k, float eps, int ty) {                                    \
        rms_head_body<F>(w, h, g, y, best, rows, k, eps, ty);                                                          \
    }                                                                                                                  \
    extern "C" __global__ void rms_qkv_##SFX(const WT* w, const float* h, const float* g, const u32* pos, float* qout, \
                                             float* kc, float* vc, int hq, int hkv, int hd, int rot, int neox,         \
                                             double base, int cap, int k, float eps, int ty) {                         \
        rms_qkv_body<F>(w, h, g, pos, qout, kc, vc, hq, hkv, hd, rot, neox, base, cap, k, eps, ty);                    \
    }                                                                                                                  \
    extern "C" __global__ void rms_swiglu_##SFX(const WT* w, const float* h, const float* g, float* z, int dff, int k, \
                                                float eps, int ty) {                                                   \
        rms_swiglu_body<F>(w, h, g, z, dff, k, eps, ty);                                                               \
    }                                                                                                                  \
    extern "C" __global__ void gemv_add_##SFX(const WT* w, const float* x, float* h, int rows, int k, int ty) {        \
        gemv_add_body<F>(w, x, h, rows, k, ty);                                                                        \
    }

FUSED_ENTRIES(f32, 0, float)
FUSED_ENTRIES(bf16, 1, u16)
FUSED_ENTRIES(f16, 2, u16)
FUSED_ENTRIES(q, 3, u8)

// The step's last node: the argmax of the logits becomes the next input token (0 if every logit was NaN), and the
// position advances.
extern "C" __global__ void finish(const u32* best, u32* token, u32* pos) {
    effllm_wait_for_previous_kernel();
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long key = ((unsigned long long)best[1] << 32) | best[0];
        token[0] = key ? 0xffffffffu - (u32)(key & 0xffffffffull) : 0u;
        pos[0] += 1;
    }
}

// Decode attention of one query token over cache slots 0..=pos[0], split-K with the combine in the same launch:
// block (h, c) (256 threads) scores the live slots of chunk c (2 threads per slot, hd/2 dimensions each), takes the
// chunk's max m, Σ e^(s−m) and Σ e^(s−m)·v (16-byte loads of v: hd/4 threads per slot row, 256/(hd/4) slot groups).
// With one live chunk the block writes the normalised output itself; otherwise it stores its partials and the last
// block of head h to finish (a counter per head, reset by that block) rescales the chunks to their common max. Needs
// hd to be a multiple of 16 dividing 256.
extern "C" __global__ void attention_fused(const float* q, const float* kc, const float* vc, const u32* pos,
                                           float* pm, float* pl, float* pacc, u32* counter, float* out, int hq,
                                           int hkv, int hd, int cap, int nchunks, float scale) {
    __shared__ float p[ACHUNK];
    __shared__ float4 part[256];
    __shared__ float stat[2];
    __shared__ int is_last;
    effllm_allow_next_kernel();
    effllm_wait_for_previous_kernel();
    int h = blockIdx.x, c = blockIdx.y, t = threadIdx.x;
    int n = (int)pos[0] + 1;
    if (n > cap) n = cap;
    int j0 = c * ACHUNK;
    if (j0 >= n) return;
    int cnt = n - j0 < ACHUNK ? n - j0 : ACHUNK;
    int used = (n + ACHUNK - 1) / ACHUNK;
    int kvh = h / (hq / hkv);
    const float* qh = q + (i64)h * hd;
    const float* K = kc + (i64)kvh * cap * hd;
    const float* V = vc + (i64)kvh * cap * hd;
    {
        int i = t >> 1, sub = t & 1, w4 = hd >> 3;
        float a = 0.f;
        if (i < cnt) {
            const float4* kr = (const float4*)(K + (i64)(j0 + i) * hd) + sub * w4;
            const float4* qv = (const float4*)qh + sub * w4;
            #pragma unroll 4
            for (int u = 0; u < w4; ++u) {
                float4 kk = kr[u], qq = qv[u];
                a += kk.x * qq.x + kk.y * qq.y + kk.z * qq.z + kk.w * qq.w;
            }
        }
        a += __shfl_xor_sync(0xffffffffu, a, 1);
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
    int d4n = hd >> 2, groups = blockDim.x / d4n, d4 = t % d4n, g = t / d4n;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (g < groups) {
        #pragma unroll 8
        for (int i = g; i < cnt; i += groups) {
            float4 v = ((const float4*)(V + (i64)(j0 + i) * hd))[d4];
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
        return;
    }
    i64 pi = (i64)h * nchunks + c;
    if (t < d4n) ((float4*)(pacc + pi * hd))[t] = s;
    if (t == 0) { pm[pi] = stat[0]; pl[pi] = stat[1]; }
    __threadfence();
    __syncthreads();
    if (t == 0) is_last = atomicAdd(counter + h, 1u) == (u32)(used - 1);
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (t < hd) {
        const float* m = pm + (i64)h * nchunks;
        const float* l = pl + (i64)h * nchunks;
        float mx = __int_as_float(0xff800000);
        for (int cc = 0; cc < used; ++cc) mx = fmaxf(mx, __ldcg(m + cc));
        float total = 0.f, a = 0.f;
        #pragma unroll 4
        for (int cc = 0; cc < used; ++cc) {
            float e = expf(__ldcg(m + cc) - mx);
            total += e * __ldcg(l + cc);
            a += e * __ldcg(pacc + ((i64)h * nchunks + cc) * hd + t);
        }
        out[(i64)h * hd + t] = a / total;
    }
    if (t == 0) counter[h] = 0;
}
"#;

fn source() -> &'static str {
    static FULL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{KERNEL_PRELUDE}{SOURCE}"));
    &FULL
}

const KEY: &str = "effllm-model::graph_decode_fused_v3";

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
        Some(Matrix { data: q.device_blocks()?.clone(), format: Format::Blocks, ty })
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
                    In(DType::U32),
                    Out(DType::F32),
                    Out(DType::F32),
                    Out(DType::F32),
                    I32,
                    I32,
                    I32,
                    I32,
                    I32,
                    F64,
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
        }))
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
        let FusedStep { embedding, layers, norm, lm_head, token, history, best, query, ffn, counter } = self;
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
                    Arg::In(&*b.position),
                    Arg::Out(query),
                    Arg::Out(&mut b.keys[li]),
                    Arg::Out(&mut b.values[li]),
                    Arg::I32(hq as i32),
                    Arg::I32(hkv as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(cfg.rope.rotary_dims as i32),
                    Arg::I32(neox),
                    Arg::F64(cfg.rope.base),
                    Arg::I32(cap as i32),
                    Arg::I32(d as i32),
                    Arg::F32(eps),
                    Arg::I32(l.qkv.ty),
                ],
                1,
            )?;
            k.attention.launch_overlapping(
                device,
                LaunchDims { grid: (hq as u32, chunks as u32, 1), block: (256, 1, 1), shared_mem_bytes: 0 },
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
