//! CUDA C sources of the built-in kernels, compiled at run time by NVRTC (no toolkit at build time).
//!
//! No CUDA headers are included: f16 and bf16 travel as `unsigned short` and are converted with PTX `cvt`
//! instructions, so NVRTC needs no include path.

/// Dtype ids shared by the kernels and [`dtype_id`].
pub(crate) const PRELUDE: &str = concat!(
    r#"
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define DT_F16 0
#define DT_BF16 1
#define DT_F32 2
#define DT_F64 3
#define DT_U8 4
#define DT_U32 5

struct Lay { int rank; int pad; i64 off; i64 shape[8]; i64 stride[8]; };

__device__ __forceinline__ i64 lay_offset(const Lay& l, i64 i) {
    i64 o = l.off;
    if (l.pad) {
        // Every index fits in 32 bits (set by the host): 32-bit division is several times cheaper than 64-bit.
        u32 k = (u32)i;
        for (int d = l.rank - 1; d >= 0; --d) {
            u32 s = (u32)l.shape[d];
            o += (i64)(k % s) * l.stride[d];
            k /= s;
        }
        return o;
    }
    for (int d = l.rank - 1; d >= 0; --d) {
        i64 s = l.shape[d];
        o += (i % s) * l.stride[d];
        i /= s;
    }
    return o;
}

__device__ __forceinline__ float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f32_to_f16(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ u16 f64_to_f16(double f) { u16 h; asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(f)); return h; }
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) { u16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
// f64 → bf16 correctly rounded: to f32 rounding to odd (truncate, set the last bit when inexact), then to nearest.
__device__ __forceinline__ u16 f64_to_bf16(double v) {
    float t; asm("cvt.rz.f32.f64 %0, %1;" : "=f"(t) : "d"(v));
    if ((double)t != v && v == v && t - t == 0.0f) t = __uint_as_float(__float_as_uint(t) | 1u);
    return f32_to_bf16(t);
}

__device__ __forceinline__ double load_as_f64(const void* p, int dt, i64 i) {
    switch (dt) {
        case DT_F16: return (double)f16_to_f32(((const u16*)p)[i]);
        case DT_BF16: return (double)bf16_to_f32(((const u16*)p)[i]);
        case DT_F32: return (double)((const float*)p)[i];
        case DT_F64: return ((const double*)p)[i];
        case DT_U8: return (double)((const u8*)p)[i];
        default: return (double)((const u32*)p)[i];
    }
}

__device__ __forceinline__ double sat_u(double v, double hi) {
    if (v != v || v <= 0.0) return 0.0;
    return v >= hi ? hi : v;
}
// Warp-wide sum / maximum of one value per lane (every lane gets the result; the maximum ignores NaN as `u > v`
// does): the shuffle trees of the row and block reductions.
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) { T u = __shfl_xor_sync(0xffffffffu, v, o); v = u > v ? u : v; }
    return v;
}
"#,
    overlapping_launch_functions!()
);

/// Strided copy with dtype conversion: `contiguous`, `to_dtype` and every widening of half inputs.
pub(crate) const CAST: &str = r#"
__device__ __forceinline__ void cast_one(const void* src, int sdt, i64 o, void* dst, int ddt, i64 i) {
    if (sdt == ddt) {
        switch (sdt) {
            case DT_F16: case DT_BF16: ((u16*)dst)[i] = ((const u16*)src)[o]; break;
            case DT_F32: case DT_U32: ((u32*)dst)[i] = ((const u32*)src)[o]; break;
            case DT_F64: ((u64*)dst)[i] = ((const u64*)src)[o]; break;
            default: ((u8*)dst)[i] = ((const u8*)src)[o]; break;
        }
        return;
    }
    // The mixed-precision casts of training, without the f64 detour (each is exact or rounds once, as below).
    if (sdt == DT_F32 && ddt == DT_F16) { ((u16*)dst)[i] = f32_to_f16(((const float*)src)[o]); return; }
    if (sdt == DT_F32 && ddt == DT_BF16) { ((u16*)dst)[i] = f32_to_bf16(((const float*)src)[o]); return; }
    if (sdt == DT_BF16 && ddt == DT_F32) { ((float*)dst)[i] = bf16_to_f32(((const u16*)src)[o]); return; }
    if (sdt == DT_F16 && ddt == DT_F32) { ((float*)dst)[i] = f16_to_f32(((const u16*)src)[o]); return; }
    double v = load_as_f64(src, sdt, o);
    switch (ddt) {
        case DT_F16: ((u16*)dst)[i] = f64_to_f16(v); break;
        case DT_BF16: ((u16*)dst)[i] = f64_to_bf16(v); break;
        case DT_F32: ((float*)dst)[i] = (float)v; break;
        case DT_F64: ((double*)dst)[i] = v; break;
        case DT_U8: ((u8*)dst)[i] = (u8)sat_u(v, 255.0); break;
        default: ((u32*)dst)[i] = (u32)sat_u(v, 4294967295.0); break;
    }
}
extern "C" __global__ void cast_strided(const void* src, int sdt, Lay lay, void* dst, int ddt, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        cast_one(src, sdt, lay_offset(lay, i), dst, ddt, i);
}
// A same-dtype copy of a strided view whose innermost dimension is contiguous and a multiple of 4 long, with every
// other stride and the offset multiples of 4 (a head transpose [b, s, h, d] → [b, h, s, d], a narrow along a middle
// dim): four elements per thread, one index computation and one 16-byte (4-byte elements) or 8-byte (2-byte
// elements) access each way. The host checks the layout; the buffers' bases are 256-byte aligned.
extern "C" __global__ void copy_strided_x4(const u8* src, Lay lay, u8* dst, i64 n4, int esize) {
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n4; t += (i64)gridDim.x * blockDim.x) {
        i64 o = lay_offset(lay, 4 * t);
        if (esize == 4) ((uint4*)dst)[t] = *(const uint4*)(src + 4 * o);
        else ((uint2*)dst)[t] = *(const uint2*)(src + 2 * o);
    }
}
// A contiguous source starting at element `off`: no index arithmetic.
extern "C" __global__ void cast_dense(const void* src, int sdt, i64 off, void* dst, int ddt, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        cast_one(src, sdt, off + i, dst, ddt, i);
}
// The two casts of mixed-precision training (f32 → bf16 and back), dense, four elements per thread with 16-byte f32
// and 8-byte bf16 accesses: the generic kernel's per-element dtype switch and 2-byte stores ran at a fraction of the
// copy rate. The host launches n/4 threads when both ends are aligned (else `cast_dense`). Same rounding as
// `cast_one` (`cvt.rn`; widening is exact).
// (Each also checks the alignment it relies on and falls back to element stores, four per thread.)
extern "C" __global__ void cast_f32_bf16_x4(const float4* src, uint2* dst, i64 n4) {
    bool aligned = ((((size_t)src) & 15) | (((size_t)dst) & 7)) == 0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n4; i += (i64)gridDim.x * blockDim.x) {
        if (!aligned) {
            for (int e = 0; e < 4; ++e) ((u16*)dst)[4 * i + e] = f32_to_bf16(((const float*)src)[4 * i + e]);
            continue;
        }
        float4 v = src[i];
        uint2 o;
        o.x = (u32)f32_to_bf16(v.x) | ((u32)f32_to_bf16(v.y) << 16);
        o.y = (u32)f32_to_bf16(v.z) | ((u32)f32_to_bf16(v.w) << 16);
        dst[i] = o;
    }
}
extern "C" __global__ void cast_bf16_f32_x4(const uint2* src, float4* dst, i64 n4) {
    bool aligned = ((((size_t)src) & 7) | (((size_t)dst) & 15)) == 0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n4; i += (i64)gridDim.x * blockDim.x) {
        if (!aligned) {
            for (int e = 0; e < 4; ++e) ((float*)dst)[4 * i + e] = bf16_to_f32(((const u16*)src)[4 * i + e]);
            continue;
        }
        uint2 v = src[i];
        dst[i] = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                             __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
    }
}
"#;

/// Elementwise unary ops (ids match `UNARY_IDS` in `ops.rs`), templated over float/double.
pub(crate) const UNARY: &str = r#"
template <typename T> __device__ __forceinline__ T sigm(T x) {
    if (x >= (T)0) return (T)1 / ((T)1 + exp(-x));
    T e = exp(x); return e / ((T)1 + e);
}

template <typename T> __device__ __forceinline__ T unary_apply(T x, int op, T p0, T p1) {
    switch (op) {
        case 0: return -x;
        case 1: return fabs(x);
        case 2: return exp(x);
        case 3: return log(x);
        case 4: return sqrt(x);
        case 5: return x * x;
        case 6: return (T)1 / x;
        case 7: return tanh(x);
        case 8: return sigm(x);
        case 9: return sin(x);
        case 10: return cos(x);
        case 11: return (x > (T)0 || x != x) ? x : (T)0;
        case 12: return x * sigm(x);
        case 13: { T c = sqrt((T)2 / (T)3.14159265358979323846); T z = c * (x + (T)0.044715 * x * x * x); return x * sigm(z + z); }
        case 14: return (T)0.5 * x * erfc(-x * (T)0.70710678118654752440);
        case 100: return x * p0 + p1;
        case 101: return pow(x, p0);
        case 102: return x != x ? x : fmin(fmax(x, p0), p1);
        default: return x;
    }
}

template <typename T> __device__ void unary_body(const T* x, T* y, i64 n, int op, T p0, T p1) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = unary_apply(x[i], op, p0, p1);
}
// f32: 16-byte loads and stores when both buffers are 16-byte aligned (the host launches n/4 threads then).
extern "C" __global__ void unary_f32(const float* x, float* y, i64 n, int op, float p0, float p1) {
    if (((((size_t)x) | ((size_t)y)) & 15) != 0) { unary_body(x, y, n, op, p0, p1); return; }
    i64 n4 = n / 4, stride = (i64)gridDim.x * blockDim.x, t = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (i64 i = t; i < n4; i += stride) {
        float4 v = ((const float4*)x)[i];
        v.x = unary_apply(v.x, op, p0, p1); v.y = unary_apply(v.y, op, p0, p1);
        v.z = unary_apply(v.z, op, p0, p1); v.w = unary_apply(v.w, op, p0, p1);
        ((float4*)y)[i] = v;
    }
    for (i64 i = 4 * n4 + t; i < n; i += stride) y[i] = unary_apply(x[i], op, p0, p1);
}
extern "C" __global__ void unary_f64(const double* x, double* y, i64 n, int op, double p0, double p1) { unary_body(x, y, n, op, p0, p1); }

template <typename T> __device__ void swiglu_body(const T* g, const T* u, T* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = g[i] * sigm(g[i]) * u[i];
}
// f32: four elements per thread with 16-byte accesses when all three buffers are aligned (the host launches n/4
// threads; the same expression per element as `swiglu_body`).
extern "C" __global__ void swiglu_f32(const float* g, const float* u, float* y, i64 n) {
    if (((((size_t)g) | ((size_t)u) | ((size_t)y)) & 15) != 0) { swiglu_body(g, u, y, n); return; }
    i64 n4 = n / 4, stride = (i64)gridDim.x * blockDim.x, t = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (i64 i = t; i < n4; i += stride) {
        float4 a = ((const float4*)g)[i], b = ((const float4*)u)[i], o;
        o.x = a.x * sigm(a.x) * b.x; o.y = a.y * sigm(a.y) * b.y; o.z = a.z * sigm(a.z) * b.z; o.w = a.w * sigm(a.w) * b.w;
        ((float4*)y)[i] = o;
    }
    for (i64 i = 4 * n4 + t; i < n; i += stride) y[i] = g[i] * sigm(g[i]) * u[i];
}
extern "C" __global__ void swiglu_f64(const double* g, const double* u, double* y, i64 n) { swiglu_body(g, u, y, n); }
"#;

/// Broadcasting binary ops over strided operands (ids: add, sub, mul, div, maximum, minimum).
pub(crate) const BINARY: &str = r#"
template <typename T> __device__ __forceinline__ T binop(T x, T z, int op) {
    switch (op) {
        case 0: return x + z;
        case 1: return x - z;
        case 2: return x * z;
        case 3: return x / z;
        case 4: return (x != x || z != z) ? x + z : fmax(x, z);
        default: return (x != x || z != z) ? x + z : fmin(x, z);
    }
}

template <typename T> __device__ void binary_body(const T* a, Lay la, const T* b, Lay lb, T* y, i64 n, int op) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        y[i] = binop(a[lay_offset(la, i)], b[lay_offset(lb, i)], op);
    }
}
extern "C" __global__ void binary_f32(const float* a, Lay la, const float* b, Lay lb, float* y, i64 n, int op) { binary_body(a, la, b, lb, y, n, op); }

// Both operands dense with the output's shape: no index arithmetic.
template <typename T> __device__ void binary_dense_body(const T* a, const T* b, T* y, i64 n, int op) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        y[i] = binop(a[i], b[i], op);
    }
}
// f32: 16-byte accesses when all three buffers are 16-byte aligned (the host launches n/4 threads then).
extern "C" __global__ void binary_dense_f32(const float* a, const float* b, float* y, i64 n, int op) {
    if (((((size_t)a) | ((size_t)b) | ((size_t)y)) & 15) != 0) { binary_dense_body(a, b, y, n, op); return; }
    i64 n4 = n / 4, stride = (i64)gridDim.x * blockDim.x, t = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (i64 i = t; i < n4; i += stride) {
        float4 u = ((const float4*)a)[i], v = ((const float4*)b)[i];
        ((float4*)y)[i] = make_float4(binop(u.x, v.x, op), binop(u.y, v.y, op), binop(u.z, v.z, op), binop(u.w, v.w, op));
    }
    for (i64 i = 4 * n4 + t; i < n; i += stride) y[i] = binop(a[i], b[i], op);
}
extern "C" __global__ void binary_dense_f64(const double* a, const double* b, double* y, i64 n, int op) { binary_dense_body(a, b, y, n, op); }
extern "C" __global__ void binary_f64(const double* a, Lay la, const double* b, Lay lb, double* y, i64 n, int op) { binary_body(a, la, b, lb, y, n, op); }
"#;

/// Row-wise kernels: one block per row of a contiguous `[rows, n]` buffer. Softmax, log-softmax, RMSNorm,
/// LayerNorm and the reductions (sum/mean accumulate in double, as the CPU backend does).
pub(crate) const ROWS: &str = r#"
#define BLOCK 256

template <typename T> __device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s]; __syncthreads(); }
    double r = sh[0]; __syncthreads(); return r;
}
// Max (`want_max`) or min of one value per thread, NaN-propagating.
template <typename T> __device__ double block_extreme(double v, double* sh, bool want_max) {
    sh[threadIdx.x] = v; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            double o = sh[threadIdx.x + s], m = sh[threadIdx.x];
            sh[threadIdx.x] = (m != m || o != o) ? m + o : (want_max ? fmax(m, o) : fmin(m, o));
        }
        __syncthreads();
    }
    double r = sh[0]; __syncthreads(); return r;
}
template <typename T> __device__ double block_max(double v, double* sh) { return block_extreme<T>(v, sh, true); }
template <typename T> __device__ double block_min(double v, double* sh) { return block_extreme<T>(v, sh, false); }

template <typename T> __device__ void softmax_body(const T* x, T* y, i64 n, int log_) {
    __shared__ double shm[BLOCK]; __shared__ double shs[BLOCK];
    const T* xr = x + blockIdx.x * n; T* yr = y + blockIdx.x * n;
    double m = -1.0 / 0.0, s = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        double v = (double)xr[j];
        if (v > m) { s = s * exp(m - v) + 1.0; m = v; }
        else if (v > -1.0 / 0.0) { s += exp(v - m); }
    }
    shm[threadIdx.x] = m; shs[threadIdx.x] = s; __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) {
            double m1 = shm[threadIdx.x], s1 = shs[threadIdx.x], m2 = shm[threadIdx.x + st], s2 = shs[threadIdx.x + st];
            double mm = fmax(m1, m2);
            double t = (m1 == -1.0 / 0.0 ? 0.0 : s1 * exp(m1 - mm)) + (m2 == -1.0 / 0.0 ? 0.0 : s2 * exp(m2 - mm));
            shm[threadIdx.x] = mm; shs[threadIdx.x] = t;
        }
        __syncthreads();
    }
    m = shm[0]; s = shs[0];
    if (m == -1.0 / 0.0) { for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = log_ ? (T)(-1.0/0.0) : (T)0; return; }
    T mt = (T)m;
    if (log_) { T l = mt + (T)log(s); for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - l; }
    else { T inv = (T)(1.0 / s); for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = exp(xr[j] - mt) * inv; }
}
// Whether an f32 row of n values (in at `a`, out at `b`) fits a register cache of `cache` float4s per thread: 16-byte
// aligned, a multiple of 4 long, at most blockDim·4·cache values. Such a row is read once into registers, reduced and
// written, so the kernel moves the compulsory bytes only.
__device__ __forceinline__ bool row_cacheable(const void* a, const void* b, i64 n, int cache) {
    return (n & 3) == 0 && n <= (i64)blockDim.x * 4 * cache && ((((size_t)a) | ((size_t)b)) & 15) == 0;
}
// RMSNorm's register cache: 16 float4s per thread (16384 values with 256 threads); per-thread partial sums in f32,
// the block reduction in f64 (as the general path).
#define ROW_CACHE 16
// f32 softmax / log-softmax, one block per row (512 threads for rows that fit the register cache, 1024 beyond).
// Each thread reduces its own elements to a pair (m, s) = (max, Σ e^(x−m)) and ONE block reduction of pairs gives
// the row's (M, S) — a second reduction, with its barriers, is what kept the earlier max-then-sum version at half of
// the copy bandwidth. Rows that fit the register cache (16-byte aligned, n % 4 == 0, n ≤ blockDim·4·SOFTMAX_CACHE)
// are read once and the write scales the cached e^(x−m) by e^(m−M)/S; longer rows are read twice (pairs, then the
// write). Semantics: NaN inputs give NaN outputs and are left out of (M, S); a row of −inf (and NaN) becomes zeros
// (log-softmax: −inf); a +inf anywhere makes the softmax row NaN, as on the CPU (log-softmax: x − inf).
#define SOFTMAX_CACHE 8
struct MaxSum { float m, s; };
__device__ __forceinline__ MaxSum max_sum_combine(MaxSum a, MaxSum b) {
    const float ninf = __int_as_float(0xff800000);
    float m = fmaxf(a.m, b.m);
    if (m == ninf || m == -ninf) return MaxSum{m, 0.f};
    float s = (a.m == ninf ? 0.f : a.s * expf(a.m - m)) + (b.m == ninf ? 0.f : b.s * expf(b.m - m));
    return MaxSum{m, s};
}
__device__ __forceinline__ MaxSum max_sum_shfl(MaxSum v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = max_sum_combine(v, w);
    }
    return v;
}
// Every thread gets the block's combined pair (fixed reduction tree: deterministic).
__device__ __forceinline__ MaxSum block_max_sum(MaxSum v) {
    __shared__ float pm[32], ps[32];
    v = max_sum_shfl(v);
    if ((threadIdx.x & 31) == 0) { pm[threadIdx.x >> 5] = v.m; ps[threadIdx.x >> 5] = v.s; }
    __syncthreads();
    if (threadIdx.x < 32) {
        int warps = blockDim.x >> 5;
        MaxSum w = threadIdx.x < warps ? MaxSum{pm[threadIdx.x], ps[threadIdx.x]} : MaxSum{__int_as_float(0xff800000), 0.f};
        w = max_sum_shfl(w);
        if (threadIdx.x == 0) { pm[0] = w.m; ps[0] = w.s; }
    }
    __syncthreads();
    return MaxSum{pm[0], ps[0]};
}
// Folds four values into a thread's running pair: one rescale per float4 at most.
__device__ __forceinline__ void max_sum_add4(MaxSum& p, float4 x) {
    const float ninf = __int_as_float(0xff800000);
    float m4 = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));  // NaN never wins fmaxf
    if (m4 > p.m) { p.s = p.m == ninf ? 0.f : p.s * expf(p.m - m4); p.m = m4; }
    if (p.m == ninf || p.m == -ninf) return;
    if (x.x > ninf) p.s += expf(x.x - p.m);
    if (x.y > ninf) p.s += expf(x.y - p.m);
    if (x.z > ninf) p.s += expf(x.z - p.m);
    if (x.w > ninf) p.s += expf(x.w - p.m);
}
__device__ __forceinline__ void max_sum_add1(MaxSum& p, float x) {
    const float ninf = __int_as_float(0xff800000);
    if (x > p.m) { p.s = p.m == ninf ? 0.f : p.s * expf(p.m - x); p.m = x; }
    if (p.m != ninf && p.m != -ninf && x > ninf) p.s += expf(x - p.m);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_f32(const float* x, float* y, i64 n, int log_) {
    const float* xr = x + blockIdx.x * n; float* yr = y + blockIdx.x * n;
    const float ninf = __int_as_float(0xff800000), nan = __int_as_float(0x7fffffff);
    bool cached = row_cacheable(xr, yr, n, SOFTMAX_CACHE);
    if (cached) {
        int n4 = (int)(n / 4);
        float4 v[SOFTMAX_CACHE];
        float m = ninf;
        #pragma unroll
        for (int u = 0; u < SOFTMAX_CACHE; ++u) {
            int c = threadIdx.x + u * blockDim.x;
            if (c < n4) {
                v[u] = __ldcs((const float4*)xr + c);
                m = fmaxf(m, fmaxf(fmaxf(v[u].x, v[u].y), fmaxf(v[u].z, v[u].w)));
            }
        }
        // Thread-local (m, Σ e^(x−m)); softmax keeps e^(x−m) in place (NaN stays NaN, −inf becomes 0).
        float s = 0.f;
        bool finite_m = m != ninf && m != -ninf;
        #pragma unroll
        for (int u = 0; u < SOFTMAX_CACHE; ++u) {
            int c = threadIdx.x + u * blockDim.x;
            if (c < n4) {
                float4 e;
                if (finite_m) {
                    e = make_float4(expf(v[u].x - m), expf(v[u].y - m), expf(v[u].z - m), expf(v[u].w - m));
                    if (e.x == e.x) s += e.x;
                    if (e.y == e.y) s += e.y;
                    if (e.z == e.z) s += e.z;
                    if (e.w == e.w) s += e.w;
                } else {
                    e = make_float4(v[u].x == v[u].x ? 0.f : nan, v[u].y == v[u].y ? 0.f : nan,
                                    v[u].z == v[u].z ? 0.f : nan, v[u].w == v[u].w ? 0.f : nan);
                }
                if (!log_) v[u] = e;  // log-softmax keeps x
            }
        }
        MaxSum t = block_max_sum(MaxSum{m, s});
        float scale, l;
        if (t.m == ninf) { scale = 0.f; l = -ninf; }             // zeros / −inf everywhere, NaN included
        else if (t.m == -ninf) { scale = nan; l = -ninf; }       // +inf in the row
        else { scale = finite_m ? expf(m - t.m) / t.s : 0.f; l = t.m + logf(t.s); }
        #pragma unroll
        for (int u = 0; u < SOFTMAX_CACHE; ++u) {
            int c = threadIdx.x + u * blockDim.x;
            if (c < n4) {
                float4 o = v[u];
                if (log_) {
                    if (t.m == ninf) o = make_float4(ninf, ninf, ninf, ninf);
                    else { o.x -= l; o.y -= l; o.z -= l; o.w -= l; }
                } else if (t.m == ninf) {
                    o = make_float4(0.f, 0.f, 0.f, 0.f);
                } else {
                    o.x *= scale; o.y *= scale; o.z *= scale; o.w *= scale;
                }
                __stcs((float4*)yr + c, o);
            }
        }
        return;
    }
    // Long or unaligned rows: pass 1 (pairs), pass 2 (write).
    MaxSum p{ninf, 0.f};
    bool vec = (n & 3) == 0 && ((((size_t)xr) | ((size_t)yr)) & 15) == 0;
    if (vec) {
        for (i64 c = threadIdx.x; c < n / 4; c += blockDim.x) max_sum_add4(p, ((const float4*)xr)[c]);
    } else {
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) max_sum_add1(p, xr[j]);
    }
    MaxSum t = block_max_sum(p);
    float inv = 1.f / t.s, l = t.m + logf(t.s);
    if (vec) {
        for (i64 c = threadIdx.x; c < n / 4; c += blockDim.x) {
            float4 o = __ldcs((const float4*)xr + c);
            if (t.m == ninf) o = log_ ? make_float4(ninf, ninf, ninf, ninf) : make_float4(0.f, 0.f, 0.f, 0.f);
            else if (log_) { o.x -= l; o.y -= l; o.z -= l; o.w -= l; }
            else if (t.m == -ninf) o = make_float4(nan, nan, nan, nan);
            else o = make_float4(expf(o.x - t.m) * inv, expf(o.y - t.m) * inv, expf(o.z - t.m) * inv, expf(o.w - t.m) * inv);
            __stcs((float4*)yr + c, o);
        }
    } else {
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            float v = xr[j];
            yr[j] = t.m == ninf ? (log_ ? ninf : 0.f) : log_ ? v - l : t.m == -ninf ? nan : expf(v - t.m) * inv;
        }
    }
}
extern "C" __global__ void softmax_f64(const double* x, double* y, i64 n, int log_) { softmax_body(x, y, n, log_); }

template <typename T> __device__ void rms_norm_body(const T* x, const T* w, T* y, i64 d, double eps) {
    __shared__ double sh[BLOCK];
    const T* xr = x + blockIdx.x * d; T* yr = y + blockIdx.x * d;
    double s = 0.0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { double v = (double)xr[j]; s += v * v; }
    s = block_sum<T>(s, sh);
    T inv = (T)1 / sqrt((T)(s / (double)d) + (T)eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] * inv * w[j];
}
// f32 rows that fit the register cache (see softmax_f32): x is read once.
extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, i64 d, double eps) {
    const float* xr = x + blockIdx.x * d; float* yr = y + blockIdx.x * d;
    if (!row_cacheable(xr, yr, d, ROW_CACHE) || (((size_t)w) & 15) != 0) { rms_norm_body(x, w, y, d, eps); return; }
    __shared__ double sh[BLOCK];
    int n4 = (int)(d / 4);
    float4 v[ROW_CACHE];
    float s = 0.f;
    #pragma unroll
    for (int u = 0; u < ROW_CACHE; ++u) {
        int c = threadIdx.x + u * blockDim.x;
        if (c < n4) {
            v[u] = ((const float4*)xr)[c];
            s += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
        }
    }
    double total = block_sum<float>((double)s, sh);
    float inv = 1.f / sqrtf((float)(total / (double)d) + (float)eps);
    #pragma unroll
    for (int u = 0; u < ROW_CACHE; ++u) {
        int c = threadIdx.x + u * blockDim.x;
        if (c < n4) {
            float4 g = ((const float4*)w)[c], o = v[u];
            o.x = o.x * inv * g.x; o.y = o.y * inv * g.y; o.z = o.z * inv * g.z; o.w = o.w * inv * g.w;
            ((float4*)yr)[c] = o;
        }
    }
}
extern "C" __global__ void rms_norm_f64(const double* x, const double* w, double* y, i64 d, double eps) { rms_norm_body(x, w, y, d, eps); }
// f32 rows of at most 32·4·RMS_WARP_CACHE values (1024): one warp per row, eight rows per 256-thread block. A
// block per row spent most of its time in the block reduction's barriers at model widths (512–2048); a warp
// reduces with shuffles alone. Per-lane partial sums in f32, the warp reduction in f64 (as the block kernels).
#define RMS_WARP_CACHE 8
extern "C" __global__ void rms_norm_warp_f32(const float* x, const float* w, float* y, i64 rows, i64 d, double eps) {
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    const float* xr = x + row * d; float* yr = y + row * d;
    bool vec = (d & 3) == 0 && d <= 128 * RMS_WARP_CACHE && ((((size_t)xr) | ((size_t)yr) | ((size_t)w)) & 15) == 0;
    int n4 = (int)(d >> 2);
    float4 v[RMS_WARP_CACHE];
    float s = 0.f;
    if (vec) {
        #pragma unroll
        for (int u = 0; u < RMS_WARP_CACHE; ++u) {
            int c = lane + 32 * u;
            if (c < n4) { v[u] = ((const float4*)xr)[c]; s += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w; }
        }
    } else {
        for (i64 j = lane; j < d; j += 32) { float t = xr[j]; s += t * t; }
    }
    double total = warp_sum((double)s);
    float inv = 1.f / sqrtf((float)(total / (double)d) + (float)eps);
    if (vec) {
        #pragma unroll
        for (int u = 0; u < RMS_WARP_CACHE; ++u) {
            int c = lane + 32 * u;
            if (c < n4) {
                float4 g = ((const float4*)w)[c], o = v[u];
                o.x = o.x * inv * g.x; o.y = o.y * inv * g.y; o.z = o.z * inv * g.z; o.w = o.w * inv * g.w;
                ((float4*)yr)[c] = o;
            }
        }
    } else {
        for (i64 j = lane; j < d; j += 32) yr[j] = xr[j] * inv * w[j];
    }
}

template <typename T> __device__ void layer_norm_body(const T* x, const T* w, const T* b, T* y, i64 d, double eps) {
    __shared__ double sh[BLOCK];
    const T* xr = x + blockIdx.x * d; T* yr = y + blockIdx.x * d;
    double s = 0.0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += (double)xr[j];
    double mean = block_sum<T>(s, sh) / (double)d;
    double v = 0.0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { double t = (double)xr[j] - mean; v += t * t; }
    double var = block_sum<T>(v, sh) / (double)d;
    T mt = (T)mean, inv = (T)1 / sqrt((T)var + (T)eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { T r = (xr[j] - mt) * inv * w[j]; yr[j] = b ? r + b[j] : r; }
}
extern "C" __global__ void layer_norm_f32(const float* x, const float* w, const float* b, float* y, i64 d, double eps) { layer_norm_body(x, w, b, y, d, eps); }
extern "C" __global__ void layer_norm_f64(const double* x, const double* w, const double* b, double* y, i64 d, double eps) { layer_norm_body(x, w, b, y, d, eps); }

// Reductions over the middle axis of [outer, n, inner]: one block per output element.
template <typename T> __device__ void reduce_body(const T* x, T* y, i64 n, i64 inner, int op) {
    __shared__ double sh[BLOCK];
    i64 o = blockIdx.x / inner, in = blockIdx.x % inner;
    const T* base = x + o * n * inner + in;
    double r;
    if (op == 0 || op == 1) {
        double s = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)base[j * inner];
        r = block_sum<T>(s, sh);
        if (op == 1) r /= (double)n;
    } else if (op == 2 || op == 4) {
        double m = -1.0 / 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) { double v = (double)base[j * inner]; m = (m != m || v != v) ? m + v : fmax(m, v); }
        r = block_max<T>(m, sh);
        if (op == 4 && r > -1.0 / 0.0 && r < 1.0 / 0.0) {
            T mt = (T)r; double s = 0.0;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)exp(base[j * inner] - mt);
            s = block_sum<T>(s, sh);
            r = (double)(mt + (T)log(s));
        }
    } else {
        double m = 1.0 / 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) { double v = (double)base[j * inner]; m = (m != m || v != v) ? m + v : fmin(m, v); }
        r = block_min<T>(m, sh);
    }
    if (threadIdx.x == 0) y[blockIdx.x] = (T)r;
}
// Partial sums of long rows: `parts` blocks per row, each summing one contiguous chunk into a double (a single
// block per row leaves the GPU idle when a few rows hold millions of elements, e.g. a gradient's global norm).
template <typename T> __device__ void partial_sum_body(const T* x, double* y, i64 n, i64 parts) {
    __shared__ double sh[BLOCK];
    i64 row = blockIdx.x / parts, part = blockIdx.x % parts;
    i64 chunk = (n + parts - 1) / parts;
    i64 start = part * chunk, end = start + chunk < n ? start + chunk : n;
    const T* base = x + row * n;
    double s = 0.0;
    for (i64 j = start + threadIdx.x; j < end; j += blockDim.x) s += (double)base[j];
    s = block_sum<T>(s, sh);
    if (threadIdx.x == 0) y[blockIdx.x] = s;
}
extern "C" __global__ void partial_sum_f32(const float* x, double* y, i64 n, i64 parts) { partial_sum_body(x, y, n, parts); }
extern "C" __global__ void partial_sum_f64(const double* x, double* y, i64 n, i64 parts) { partial_sum_body(x, y, n, parts); }
extern "C" __global__ void reduce_f32(const float* x, float* y, i64 n, i64 inner, int op) { reduce_body(x, y, n, inner, op); }
extern "C" __global__ void reduce_f64(const double* x, double* y, i64 n, i64 inner, int op) { reduce_body(x, y, n, inner, op); }
"#;

/// Philox4x32-10 random numbers with the exact mapping of `crate::rng` (uniforms bitwise equal to the CPU;
/// normals equal to rounding of the device's `log`/`sincos`).
pub(crate) const RNG: &str = r#"
__device__ __forceinline__ void philox(u32 c[4], u32 k0, u32 k1) {
    for (int r = 0; r < 10; ++r) {
        u64 p0 = (u64)0xD2511F53u * c[0], p1 = (u64)0xCD9E8D57u * c[2];
        u32 hi0 = (u32)(p0 >> 32), lo0 = (u32)p0, hi1 = (u32)(p1 >> 32), lo1 = (u32)p1;
        u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
}
__device__ __forceinline__ void block_words(u64 seed, u64 stream, u64 block, u32 w[4]) {
    w[0] = (u32)block; w[1] = (u32)(block >> 32); w[2] = (u32)stream; w[3] = (u32)(stream >> 32);
    philox(w, (u32)seed, (u32)(seed >> 32));
}
// kind: 0 = uniform f32, 1 = uniform f64, 2 = normal (f64, then `mean + std·z` in double, stored as f64).
extern "C" __global__ void rng_fill(void* out, i64 n, u64 seed, u64 stream, u64 offset, int kind, double mean, double std_) {
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n; t += (i64)gridDim.x * blockDim.x) {
        u64 i = offset + (u64)t; u32 w[4];
        if (kind == 0) { block_words(seed, stream, i / 4, w); ((float*)out)[t] = (float)(w[i % 4] >> 8) * (1.0f / 16777216.0f); }
        else if (kind == 1) {
            block_words(seed, stream, i / 2, w); int s = 2 * (int)(i % 2);
            u64 bits = (((u64)w[s]) << 21) ^ (((u64)w[s + 1]) >> 11);
            ((double*)out)[t] = (double)bits * (1.0 / 9007199254740992.0);
        } else {
            block_words(seed, stream, i / 4, w); int slot = (int)(i % 4);
            u32 wa = slot < 2 ? w[0] : w[2], wb = slot < 2 ? w[1] : w[3];
            double u1 = ((double)(wa >> 8) + 1.0) * (1.0 / 16777216.0), u2 = (double)(wb >> 8) * (1.0 / 16777216.0);
            double r = sqrt(-2.0 * log(u1)), s, c;
            sincos(6.283185307179586476925 * u2, &s, &c);
            ((double*)out)[t] = (slot % 2 == 0 ? r * c : r * s) * std_ + mean;
        }
    }
}
"#;

/// RoPE, attention, index selection, arg-reductions and concatenation.
pub(crate) const MODEL: &str = r#"
#define BLOCK 256

// RoPE on contiguous [b, h, s, d]. `per_batch` positions are [b, s], else [s]. One thread per (position slot, pair,
// chunk of ROPE_ROWS rows sharing that slot): the angle (f64 `pow` and `sincos`, the expensive part) is computed once
// and applied to every row of the chunk — all b·h rows of a slot share it for [s] positions, h rows for [b, s].
#define ROPE_ROWS 8
template <typename T> __device__ void rope_body(const T* x, T* y, const u32* pos, i64 b, i64 h, i64 s, i64 d,
                                                i64 half, int neox, int per_batch, double base, int inverse) {
    i64 slots = per_batch ? b * s : s, share = per_batch ? h : b * h;
    i64 chunks = (share + ROPE_ROWS - 1) / ROPE_ROWS;
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < slots * chunks * half; t += (i64)gridDim.x * blockDim.x) {
        i64 i = t % half, rest = t / half;
        i64 c = rest % chunks, slot = rest / chunks;
        double p = (double)pos[slot];
        double theta = pow(base, -2.0 * (double)i / (double)(2 * half));
        double sn, cs; sincos(p * theta, &sn, &cs);
        T cv = (T)cs, sv = inverse ? -(T)sn : (T)sn;
        i64 ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        i64 bi0 = per_batch ? slot / s : 0, si = per_batch ? slot % s : slot;
        T av[ROPE_ROWS], bv[ROPE_ROWS];
        i64 off[ROPE_ROWS];
        #pragma unroll
        for (int k = 0; k < ROPE_ROWS; ++k) {
            i64 m = c * ROPE_ROWS + k;
            if (m < share) {
                i64 bi = per_batch ? bi0 : m / h, hi = per_batch ? m : m % h;
                off[k] = ((bi * h + hi) * s + si) * d;
                av[k] = x[off[k] + ia]; bv[k] = x[off[k] + ib];
            }
        }
        #pragma unroll
        for (int k = 0; k < ROPE_ROWS; ++k) {
            if (c * ROPE_ROWS + k < share) {
                y[off[k] + ia] = av[k] * cv - bv[k] * sv;
                y[off[k] + ib] = av[k] * sv + bv[k] * cv;
            }
        }
    }
}
extern "C" __global__ void rope_f32(const float* x, float* y, const u32* pos, i64 b, i64 h, i64 s, i64 d, i64 half, int neox, int per_batch, double base, int inverse) { rope_body(x, y, pos, b, h, s, d, half, neox, per_batch, base, inverse); }
extern "C" __global__ void rope_f64(const double* x, double* y, const u32* pos, i64 b, i64 h, i64 s, i64 d, i64 half, int neox, int per_batch, double base, int inverse) { rope_body(x, y, pos, b, h, s, d, half, neox, per_batch, base, inverse); }

// Copies the dimensions past `rot` unchanged (launched before rope when rot < d).
template <typename T> __device__ void copy_body(const T* x, T* y, i64 n) {
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n; t += (i64)gridDim.x * blockDim.x) y[t] = x[t];
}
extern "C" __global__ void copy_f32(const float* x, float* y, i64 n) { copy_body(x, y, n); }
extern "C" __global__ void copy_f64(const double* x, double* y, i64 n) { copy_body(x, y, n); }

// Attention: one block per query row (b, hq, i); `scratch` holds s_kv floats per row.
template <typename T> __device__ void attention_body(const T* q, const T* k, const T* v, const u8* mask, T* out, T* scratch,
        i64 hq, i64 sq, i64 d, i64 hkv, i64 skv, i64 dv, int causal, double scale) {
    __shared__ double sh[BLOCK];
    i64 row = blockIdx.x;
    i64 bh = row / sq, i = row % sq, bi = bh / hq, h = bh % hq;
    i64 kvh = bi * hkv + h / (hq / hkv);
    const T* qr = q + row * d;
    T* sc = scratch + row * skv;
    i64 limit = causal ? skv - sq + i + 1 : skv;
    const u8* mr = mask ? mask + row * skv : 0;
    double m = -1.0 / 0.0;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) {
        bool ok = j < limit && (!mr || mr[j] != 0);
        double s = -1.0 / 0.0;
        if (ok) {
            const T* kr = k + (kvh * skv + j) * d;
            T acc = (T)0;
            for (i64 c = 0; c < d; ++c) acc += qr[c] * kr[c];
            s = (double)(acc * (T)scale);
        }
        sc[j] = (T)s;
        m = fmax(m, s);
    }
    sh[threadIdx.x] = m; __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) { if (threadIdx.x < st) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + st]); __syncthreads(); }
    m = sh[0]; __syncthreads();
    T* o = out + row * dv;
    if (m == -1.0 / 0.0) { for (i64 c = threadIdx.x; c < dv; c += blockDim.x) o[c] = (T)0; return; }
    double z = 0.0;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) {
        T p = (double)sc[j] == -1.0 / 0.0 ? (T)0 : exp(sc[j] - (T)m);
        sc[j] = p; z += (double)p;
    }
    sh[threadIdx.x] = z; __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) { if (threadIdx.x < st) sh[threadIdx.x] += sh[threadIdx.x + st]; __syncthreads(); }
    T inv = (T)(1.0 / sh[0]);
    for (i64 c = threadIdx.x; c < dv; c += blockDim.x) {
        T acc = (T)0;
        for (i64 j = 0; j < limit; ++j) acc += sc[j] * v[(kvh * skv + j) * dv + c];
        o[c] = acc * inv;
    }
}
extern "C" __global__ void attention_f32(const float* q, const float* k, const float* v, const u8* mask, float* out, float* scratch, i64 hq, i64 sq, i64 d, i64 hkv, i64 skv, i64 dv, int causal, double scale) { attention_body(q, k, v, mask, out, scratch, hq, sq, d, hkv, skv, dv, causal, scale); }
extern "C" __global__ void attention_f64(const double* q, const double* k, const double* v, const u8* mask, double* out, double* scratch, i64 hq, i64 sq, i64 d, i64 hkv, i64 skv, i64 dv, int causal, double scale) { attention_body(q, k, v, mask, out, scratch, hq, sq, d, hkv, skv, dv, causal, scale); }

// index_select on contiguous [outer, n, inner] for any element size; ids were bounds-checked by the caller.
extern "C" __global__ void index_select_any(const u8* x, u8* y, const u32* ids, i64 outer, i64 n, i64 picks, i64 inner, int esize) {
    i64 total = outer * picks * inner;
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        i64 in = t % inner, p = (t / inner) % picks, o = t / (inner * picks);
        i64 src = (o * n + (i64)ids[p]) * inner + in;
        for (int e = 0; e < esize; ++e) y[t * esize + e] = x[src * esize + e];
    }
}

// PyTorch `gather` along `dim` for any element size: y (contiguous, the index's shape) at i takes the source element
// whose coordinates are i's, with `dim`'s replaced by the index value. `ls`: the source's layout (strides, offset);
// `li`: the index's. Ids were bounds-checked by the caller.
extern "C" __global__ void gather_any(const u8* x, Lay ls, const u32* idx, Lay li, u8* y, i64 n, int dim, int esize) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 v = (i64)idx[lay_offset(li, i)], rem = i, so = ls.off;
        for (int d = li.rank - 1; d >= 0; --d) {
            i64 c = rem % li.shape[d];
            rem /= li.shape[d];
            so += ls.stride[d] * (d == dim ? v : c);
        }
        for (int e = 0; e < esize; ++e) y[i * esize + e] = x[so * esize + e];
    }
}

// `mask ? t : f` over broadcast layouts for any element size (mask: u8, non-zero = true).
extern "C" __global__ void where_any(const u8* m, Lay lm, const u8* t, Lay lt, const u8* f, Lay lf, u8* y, i64 n,
                                     int esize) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const u8* src = m[lay_offset(lm, i)] ? t + lay_offset(lt, i) * esize : f + lay_offset(lf, i) * esize;
        for (int e = 0; e < esize; ++e) y[i * esize + e] = src[e];
    }
}

// Writes a contiguous part [outer, len, inner] into [outer, total, inner] at `at` along the middle axis.
extern "C" __global__ void concat_part(const u8* x, u8* y, i64 outer, i64 len, i64 inner, i64 total, i64 at, int esize) {
    i64 count = outer * len * inner;
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {
        i64 o = t / (len * inner), r = t % (len * inner);
        i64 dst = o * total * inner + at * inner + r;
        for (int e = 0; e < esize; ++e) y[dst * esize + e] = x[t * esize + e];
    }
}

// Total-order key: IEEE totalOrder on doubles with -0 == +0 (NaN above +inf).
__device__ __forceinline__ i64 order_key(double v) {
    if (v == 0.0) v = 0.0;
    i64 b = __double_as_longlong(v);
    return b < 0 ? b ^ 0x7fffffffffffffffLL : b;
}

// arg-max/min over the middle axis of contiguous [outer, n, inner]; one block per output; ties -> lowest index.
template <typename T> __device__ void argreduce_body(const T* x, u32* y, i64 n, i64 inner, int max_) {
    __shared__ i64 kk[BLOCK]; __shared__ i64 ii[BLOCK];
    i64 o = blockIdx.x / inner, in = blockIdx.x % inner;
    const T* base = x + o * n * inner + in;
    i64 bk = 0, bi = -1;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        i64 key = order_key((double)base[j * inner]);
        if (!max_) key = ~key;
        if (bi < 0 || key > bk) { bk = key; bi = j; }
    }
    kk[threadIdx.x] = bk; ii[threadIdx.x] = bi; __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) {
            i64 ok = kk[threadIdx.x + st], oi = ii[threadIdx.x + st];
            i64 mk = kk[threadIdx.x], mi = ii[threadIdx.x];
            if (oi >= 0 && (mi < 0 || ok > mk || (ok == mk && oi < mi))) { kk[threadIdx.x] = ok; ii[threadIdx.x] = oi; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) y[blockIdx.x] = (u32)(ii[0] < 0 ? 0 : ii[0]);
}
extern "C" __global__ void argreduce_f32(const float* x, u32* y, i64 n, i64 inner, int max_) { argreduce_body(x, y, n, inner, max_); }
extern "C" __global__ void argreduce_f64(const double* x, u32* y, i64 n, i64 inner, int max_) { argreduce_body(x, y, n, inner, max_); }
"#;

/// Fills a buffer with one element's bit pattern (any element size up to 8 bytes).
pub(crate) const FILL: &str = r#"
// One store of the element's width per element (a byte loop made gradient zeroing a visible share of a training
// step); 4-byte elements go as 16-byte stores when the buffer is aligned (the host launches n/4 threads then).
extern "C" __global__ void fill_any(u8* y, i64 n, u64 bits, int esize) {
    i64 stride = (i64)gridDim.x * blockDim.x, t0 = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    switch (esize) {
        case 1: for (i64 t = t0; t < n; t += stride) y[t] = (u8)bits; break;
        case 2: for (i64 t = t0; t < n; t += stride) ((u16*)y)[t] = (u16)bits; break;
        case 8: for (i64 t = t0; t < n; t += stride) ((u64*)y)[t] = bits; break;
        default: for (i64 t = t0; t < n; t += stride) ((u32*)y)[t] = (u32)bits; break;
    }
}
extern "C" __global__ void fill_u32_x4(u32* y, i64 n, u32 bits) {
    i64 n4 = (((size_t)y) & 15) == 0 ? n / 4 : 0, stride = (i64)gridDim.x * blockDim.x;
    i64 t0 = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (i64 t = t0; t < n4; t += stride) ((uint4*)y)[t] = make_uint4(bits, bits, bits, bits);
    for (i64 t = 4 * n4 + t0; t < n; t += stride) y[t] = bits;
}
"#;

/// Quantized (ggml Q4_0 / Q4_1 / Q8_0) matrix kernels reading the blocks directly: a fused GEMV for up to a few
/// activation rows (one warp per four output rows, one lane per block, shuffle reduction), single-row Q4_1 and Q8_0 GEMVs
/// (`qgemv1_q4_1`, `qgemv1_q8_0`: subnormal floats) and a dequantizer for prefill-sized inputs (then cuBLAS). Type ids:
/// 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
pub(crate) const QUANT: &str = r#"
__device__ __forceinline__ float ld_f16(const u8* p) { return f16_to_f32((u16)p[0] | ((u16)p[1] << 8)); }
__device__ __forceinline__ int block_bytes(int ty) { return ty == 0 ? 18 : ty == 1 ? 20 : 34; }

// Fused GEMV, y[i, r] = W[r] · x[i] for m ≤ 8 activation rows. Half a warp per row, QG_ROWS rows per half-warp:
// lane l of the half-warp takes quant word l % 4 of block 4s + l / 4 at step s, so the 16 lanes read 4 consecutive
// blocks' quant bytes side by side (one 64-80-byte span per load instruction; the block header is the same address
// for 4 lanes) and their activations as two float4s each, contiguous across the half-warp. All QG_ROWS rows' words
// are loaded before the arithmetic, and the activations once for them. 4 lanes per block keep 14 of 16 lanes busy
// on SmolLM2's 18-block rows (a lane per block and one warp per row idled 14 of 32 and scattered its loads).
// Quants become floats without the slow int→float unit: a byte b in the low mantissa byte of 2^23 (one byte_perm)
// is the float 2^23 + b, and subtracting 2^23 (+8 for Q4_0, +128 for Q8_0's offset bytes) is exact. Each lane adds
// its own share of the block formula (Q4_1: d·Σqx + m·Σx over its 8 weights), then 4 xor shuffles reduce the
// half-warp in a fixed order (deterministic).
#define QG_ROWS 4
__device__ __forceinline__ float byte_f(u32 w, u32 k, float bias) { return __int_as_float(__byte_perm(w, 0x4B000000u, 0x7440u + k)) - bias; }
__device__ __forceinline__ float dot4_bytes(u32 w, float4 x, float bias) {
    return byte_f(w, 0, bias) * x.x + byte_f(w, 1, bias) * x.y + byte_f(w, 2, bias) * x.z + byte_f(w, 3, bias) * x.w;
}
__device__ __forceinline__ u32 ld_u16x2(const u8* p) { return (u32)__ldg((const u16*)p) | ((u32)__ldg((const u16*)p + 1) << 16); }
// TY: 0 = Q4_0 (18-byte blocks: d, 16 bytes of nibble pairs), 1 = Q4_1 (20: d, m, 16 bytes), 2 = Q8_0 (34: d, 32 int8).
template <int TY> struct QgBlock { static constexpr int BYTES = TY == 0 ? 18 : TY == 1 ? 20 : 34; };
// The QG_ROWS rows of half-warp `half` (rows past the end read the last row; their results are not stored).
template <int TY> __device__ __forceinline__ void qg_rows(const u8* w, i64 row0, int halves, int half, i64 n_rows, i64 nb, const u8* rows[QG_ROWS]) {
    #pragma unroll
    for (int j = 0; j < QG_ROWS; ++j) {
        i64 r = row0 + j * halves + half;
        rows[j] = w + (r < n_rows ? r : n_rows - 1) * nb * QgBlock<TY>::BYTES;
    }
}
// Lane `word`'s share of block b in each row: the header (d, and m for Q4_1) and 4 quant bytes (8 for Q8_0, in q1).
template <int TY> __device__ __forceinline__ void qg_load(const u8* const rows[QG_ROWS], i64 b, int word, u32 head[QG_ROWS], u32 q0[QG_ROWS], u32 q1[QG_ROWS]) {
    #pragma unroll
    for (int j = 0; j < QG_ROWS; ++j) {
        const u8* blk = rows[j] + b * QgBlock<TY>::BYTES;
        if (TY == 1) {
            head[j] = __ldg((const u32*)blk);
            q0[j] = __ldg((const u32*)(blk + 4) + word);
        } else if (TY == 0) {
            head[j] = __ldg((const u16*)blk);
            q0[j] = ld_u16x2(blk + 2 + 4 * word);
        } else {
            head[j] = __ldg((const u16*)blk);
            q0[j] = ld_u16x2(blk + 2 + 8 * word);
            q1[j] = ld_u16x2(blk + 6 + 8 * word);
        }
    }
}
// Sums each row's lane partials over the half-warp in a fixed order; lane 0 writes the rows that exist to yi.
__device__ __forceinline__ void qg_store(float acc[QG_ROWS], unsigned lanes, int l, i64 row0, int halves, int half, i64 n_rows, float* yi) {
    #pragma unroll
    for (int j = 0; j < QG_ROWS; ++j) {
        #pragma unroll
        for (int o = 8; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(lanes, acc[j], o, 16);
    }
    if (l == 0) {
        #pragma unroll
        for (int j = 0; j < QG_ROWS; ++j) {
            i64 r = row0 + j * halves + half;
            if (r < n_rows) yi[r] = acc[j];
        }
    }
}
template <int TY> __device__ __forceinline__ void qgemv_body(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) {
    int l = threadIdx.x & 15, half = threadIdx.x >> 4, halves = blockDim.x >> 4;
    int word = l & 3, sub = l >> 2;
    i64 nb = k >> 5, rows_cta = (i64)halves * QG_ROWS, row0 = (i64)blockIdx.x * rows_cta;
    if (row0 + half >= n_rows) return;  // a whole half-warp at once: its shuffles name only its own 16 lanes
    const unsigned lanes = 0xffffu << (threadIdx.x & 16);
    const u8* rows[QG_ROWS];
    qg_rows<TY>(w, row0, halves, half, n_rows, nb, rows);
    // Element offsets of this lane's two runs of 4 within a block (Q4: low nibbles 4w.., high 16+4w..; Q8_0: 8w..).
    int e0 = TY == 2 ? 8 * word : 4 * word, e1 = TY == 2 ? 8 * word + 4 : 16 + 4 * word;
    bool xvec = ((((size_t)x) | ((size_t)k << 2)) & 15) == 0;
    for (i64 i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        float acc[QG_ROWS];
        #pragma unroll
        for (int j = 0; j < QG_ROWS; ++j) acc[j] = 0.f;
        #pragma unroll 2
        for (i64 b = sub; b < nb; b += 4) {
            u32 head[QG_ROWS], q0[QG_ROWS], q1[QG_ROWS];
            qg_load<TY>(rows, b, word, head, q0, q1);
            const float* xb = xi + b * 32;
            float4 xa, xc;
            if (xvec) { xa = __ldg((const float4*)(xb + e0)); xc = __ldg((const float4*)(xb + e1)); }
            else { xa = make_float4(xb[e0], xb[e0 + 1], xb[e0 + 2], xb[e0 + 3]); xc = make_float4(xb[e1], xb[e1 + 1], xb[e1 + 2], xb[e1 + 3]); }
            float sx = TY == 1 ? (xa.x + xa.y) + (xa.z + xa.w) + ((xc.x + xc.y) + (xc.z + xc.w)) : 0.f;
            #pragma unroll
            for (int j = 0; j < QG_ROWS; ++j) {
                float d = f16_to_f32((u16)(head[j] & 0xffffu)), s;
                if (TY == 2) {
                    s = dot4_bytes(q0[j] ^ 0x80808080u, xa, 8388736.f) + dot4_bytes(q1[j] ^ 0x80808080u, xc, 8388736.f);
                    acc[j] += d * s;
                } else {
                    const float bias = TY == 1 ? 8388608.f : 8388616.f;
                    s = dot4_bytes(q0[j] & 0x0F0F0F0Fu, xa, bias) + dot4_bytes((q0[j] >> 4) & 0x0F0F0F0Fu, xc, bias);
                    acc[j] += TY == 1 ? d * s + f16_to_f32((u16)(head[j] >> 16)) * sx : d * s;
                }
            }
        }
        qg_store(acc, lanes, l, row0, halves, half, n_rows, y + i * n_rows);
    }
}
// The same GEMV with activations quantised to Q8 (ActivationQuant::Q8, llama.cpp's numerics, as the CPU's Q8 path):
// each CTA quantises the activation rows (one at a time) into shared memory per 32-block as ggml's Q8_1 (d = amax/127,
// q = roundf(x/d) with the unrounded d, then d and s = d·Σq rounded to f16 and widened), one warp per block; the
// rows then go through the f32 kernel's layout (4 lanes per block, QG_ROWS rows per half-warp) with integer dot
// products: two dp4a per lane and row per block instead of 8 byte→float conversions, subtractions and FMAs (the f32
// kernel issues ~6.6 instructions per weight and is bound by issue, not by memory). Per block and row:
// d_w·d_x·Σ q_w q_x, plus m_w·s_x for Q4_1 (added by the block's first lane); Q4_0's nibbles are re-centred to
// −8..7 by a byte-wise subtraction. One activation row at a time in shared memory: k bytes of quants (16-byte
// padded), then d and s per block (`qlinear` passes that size at launch).
template <int TY> __device__ __forceinline__ void qgemv_q8a_body(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) {
    extern __shared__ __align__(16) unsigned char qg_smem[];
    const i64 nb = k >> 5;
    signed char* xq = (signed char*)qg_smem;
    float* xd = (float*)(qg_smem + ((k + 15) & ~(i64)15));
    float* xs = xd + nb;
    int l = threadIdx.x & 15, half = threadIdx.x >> 4, halves = blockDim.x >> 4;
    int word = l & 3, sub = l >> 2;
    i64 rows_cta = (i64)halves * QG_ROWS, row0 = (i64)blockIdx.x * rows_cta;
    const bool active = row0 + half < n_rows;  // whole half-warps: their shuffles name only their own 16 lanes
    const unsigned lanes = 0xffffu << (threadIdx.x & 16);
    const u8* rows[QG_ROWS];
    qg_rows<TY>(w, row0, halves, half, n_rows, nb, rows);
    int e0 = TY == 2 ? 8 * word : 4 * word, e1 = TY == 2 ? 8 * word + 4 : 16 + 4 * word;
    for (i64 i = 0; i < m; ++i) {
        __syncthreads();  // the previous row's quants are no longer read
        {
            const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
            for (i64 blk = threadIdx.x >> 5; blk < nb; blk += warps) {
                float v = x[i * k + blk * 32 + lane], a = fabsf(v);
                #pragma unroll
                for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
                float d = a / 127.f, id = d != 0.f ? 1.f / d : 0.f;
                int q = (int)roundf(v * id);
                q = q < -128 ? -128 : q > 127 ? 127 : q;
                xq[blk * 32 + lane] = (signed char)q;
                int sum = q;
                #pragma unroll
                for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (lane == 0) {
                    xd[blk] = f16_to_f32(f32_to_f16(d));
                    xs[blk] = f16_to_f32(f32_to_f16((float)sum * d));
                }
            }
        }
        __syncthreads();
        if (!active) continue;
        float acc[QG_ROWS];
        #pragma unroll
        for (int j = 0; j < QG_ROWS; ++j) acc[j] = 0.f;
        #pragma unroll 2
        for (i64 b = sub; b < nb; b += 4) {
            u32 head[QG_ROWS], q0[QG_ROWS], q1[QG_ROWS];
            qg_load<TY>(rows, b, word, head, q0, q1);
            const int xa = *(const int*)(xq + b * 32 + e0), xc = *(const int*)(xq + b * 32 + e1);
            const float dx = xd[b], sx = TY == 1 && word == 0 ? xs[b] : 0.f;
            #pragma unroll
            for (int j = 0; j < QG_ROWS; ++j) {
                float d = f16_to_f32((u16)(head[j] & 0xffffu));
                int s;
                if (TY == 2) {
                    s = __dp4a((int)q0[j], xa, __dp4a((int)q1[j], xc, 0));
                } else if (TY == 1) {
                    s = __dp4a((int)(q0[j] & 0x0F0F0F0Fu), xa, __dp4a((int)((q0[j] >> 4) & 0x0F0F0F0Fu), xc, 0));
                } else {
                    s = __dp4a((int)__vsub4(q0[j] & 0x0F0F0F0Fu, 0x08080808u), xa,
                               __dp4a((int)__vsub4((q0[j] >> 4) & 0x0F0F0F0Fu, 0x08080808u), xc, 0));
                }
                acc[j] += (d * dx) * (float)s;
                if (TY == 1) acc[j] += f16_to_f32((u16)(head[j] >> 16)) * sx;
            }
        }
        qg_store(acc, lanes, l, row0, halves, half, n_rows, y + i * n_rows);
    }
}
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q8a_q4_0(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_q8a_body<0>(w, x, y, n_rows, k, m); }
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q8a_q4_1(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_q8a_body<1>(w, x, y, n_rows, k, m); }
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q8a_q8_0(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_q8a_body<2>(w, x, y, n_rows, k, m); }

// One kernel per format (each gets its own register allocation). Launch 256 threads and
// ceil(n_rows / (16 · QG_ROWS)) CTAs. Q4_1 reads 4-byte words (its 20-byte blocks keep 4-byte alignment), the
// others 2-byte halves; `qlinear` passes 4-byte-aligned blocks.
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q4_0(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_body<0>(w, x, y, n_rows, k, m); }
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q4_1(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_body<1>(w, x, y, n_rows, k, m); }
extern "C" __global__ void __launch_bounds__(256, 4) qgemv_q8_0(const u8* w, const float* x, float* y, i64 n_rows, i64 k, i64 m) { qgemv_body<2>(w, x, y, n_rows, k, m); }

// Single-row Q4_1 GEMV (m = 1, f32 activations), about 1.2-1.4x the kernel above on the LM head. A nibble n masked in
// place at bit p of its 32-bit word (p ≤ 20) is, read as a float, exactly n·2^(p−149) (a subnormal, or for p = 20
// the smallest normal binade, which continues the subnormal scale); the nibbles at bits 24 and 28 are shifted down by
// 8 first. So one LOP and one FFMA per weight, against an activation pre-scaled by 2^(100−e−p) (e: the binary exponent
// of max|x|), give n·x·2^(−49−e) with no byte permute and no bias subtraction; the row's sum is scaled back by
// 2^(49+e) (exact powers of two; FFMA takes subnormal operands at full rate, and NVRTC keeps them: no -ftz).
// Each CTA first builds that table in shared memory: for block b and word w, the 8 activations in the order the word
// holds its nibbles, as two float4 arrays (the 8 lanes of a group read 128 contiguous bytes), and 2^(−49−e) times
// their sum for the m·Σx term. Then 8 lanes per row group (lane l of the group: word w = l & 3 of blocks sub, sub + 2,
// ... with sub = l >> 2), 2 rows per group, 64 rows per CTA tile, persistent CTAs; per chunk of QG1_U steps all words of
// both rows are loaded before any arithmetic (one memory round trip per chunk). 3 xor shuffles per row in a fixed
// order: deterministic.
#define QG1_R 2
#define QG1_U 5
// The binary exponent e of mx ≥ 0 (mx < 2^e): -126 for zero or subnormal mx, clamped to 128 for inf or NaN (which
// then propagate through the products). The single-row kernels pre-scale activations by powers of two around it.
__device__ __forceinline__ int scale_exponent(float mx) {
    const int e = (int)((__float_as_uint(mx) >> 23) & 0xff) - 126;
    return e > 128 ? 128 : e;
}
// v·2^a for -252 <= a <= 254, exactly unless the result leaves the float range (two power-of-two factors).
__device__ __forceinline__ float mul_pow2(float v, int a) {
    const int a1 = a < -126 ? -126 : a > 127 ? 127 : a;
    return v * __uint_as_float((u32)(a1 + 127) << 23) * __uint_as_float((u32)(a - a1 + 127) << 23);
}
// s + one 32-bit word of Q4 nibbles against its 8 pre-scaled activations (a: the nibbles at bits 0-12, b: at bits
// 16-28). Bits 0..12 hold elements 4w..4w+1 and 16+4w..17+4w as (low, high) nibble pairs, bits 16..28 elements 4w+2..
// and 18+4w..; each nibble is masked in place (the top two after >> 8) and read as a subnormal float. The single-row
// and tile GEMVs share it.
__device__ __forceinline__ float subnormal_dot4(u32 q, float4 a, float4 b, float s) {
    const u32 h = q >> 8;
    s = fmaf(__uint_as_float(q & 0xFu), a.x, s);
    s = fmaf(__uint_as_float(q & 0xF0u), a.y, s);
    s = fmaf(__uint_as_float(q & 0xF00u), a.z, s);
    s = fmaf(__uint_as_float(q & 0xF000u), a.w, s);
    s = fmaf(__uint_as_float(q & 0xF0000u), b.x, s);
    s = fmaf(__uint_as_float(q & 0xF00000u), b.y, s);
    s = fmaf(__uint_as_float(h & 0xF0000u), b.z, s);
    return fmaf(__uint_as_float(h & 0xF00000u), b.w, s);
}
// s + one 32-bit word of Q8_0 quants against its 4 pre-scaled activations, the quants made offset-binary (q + 128):
// bytes at bits 0, 8, 16 and (after >> 8) 16.
__device__ __forceinline__ float subnormal_dot8(u32 q, float4 a, float s) {
    q ^= 0x80808080u;
    s = fmaf(__uint_as_float(q & 0xFFu), a.x, s);
    s = fmaf(__uint_as_float(q & 0xFF00u), a.y, s);
    s = fmaf(__uint_as_float(q & 0xFF0000u), a.z, s);
    return fmaf(__uint_as_float((q >> 8) & 0xFF0000u), a.w, s);
}
extern "C" __global__ void __launch_bounds__(256, 3) qgemv1_q4_1(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, i64 n_rows, i64 k) {
    extern __shared__ __align__(16) float qg1_smem[];
    const int nb = (int)(k >> 5);
    float* tab = qg1_smem;          // 2 · nb·4 float4s
    float* sums = qg1_smem + 8 * nb * 4;  // nb·4
    float* red = sums + nb * 4;     // one per warp
    // e from max|x| over the CTA (fmaxf skips NaN, so no lane's value is NaN).
    float mx = 0.f;
    for (i64 i = threadIdx.x; i < k; i += blockDim.x) mx = fmaxf(mx, fabsf(x[i]));
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) mx = fmaxf(mx, red[i]);
    const int e = scale_exponent(mx);
    for (int t = threadIdx.x; t < nb * 4; t += blockDim.x) {
        const float* xb = x + (i64)(t >> 2) * 32;
        const int w4 = 4 * (t & 3);
        // Word w's nibbles: bits 0, 8, 16 (and 24 → 16 after the shift) hold elements 4w..4w+3 (low nibbles of bytes
        // 4w..4w+3), bits 4, 12, 20 (28 → 20) elements 16+4w.. (high nibbles).
        const float v[8] = {xb[w4], xb[16 + w4], xb[w4 + 1], xb[17 + w4], xb[w4 + 2], xb[18 + w4], xb[w4 + 3], xb[19 + w4]};
        const int p[8] = {0, 4, 8, 12, 16, 20, 16, 20};
        float s = 0.f;
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            tab[(j < 4 ? 0 : nb * 16) + t * 4 + (j & 3)] = mul_pow2(v[j], 100 - e - p[j]);
            s += v[j];
        }
        sums[t] = mul_pow2(s, -49 - e);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, grp = lane >> 3, gl = lane & 7, wd = gl & 3, sub = gl >> 2;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const i64 rows_tile = (i64)warps * 4 * QG1_R, row_bytes = (i64)nb * 20;
    const int steps = (nb + 1) >> 1;
    const float4* tab4 = (const float4*)tab;
    for (i64 tile = blockIdx.x; tile * rows_tile < n_rows; tile += gridDim.x) {
        const i64 rbase = tile * rows_tile + (warp * 4 + grp) * QG1_R;
        const u8* rp[QG1_R];
        #pragma unroll
        for (int j = 0; j < QG1_R; ++j) {
            const i64 r = rbase + j;
            rp[j] = w + (r < n_rows ? r : n_rows - 1) * row_bytes + sub * 20;
        }
        float acc[QG1_R];
        #pragma unroll
        for (int j = 0; j < QG1_R; ++j) acc[j] = 0.f;
        for (int s0 = 0; s0 < steps; s0 += QG1_U) {
            u32 hd[QG1_U][QG1_R], qw[QG1_U][QG1_R];
            #pragma unroll
            for (int u = 0; u < QG1_U; ++u) {
                const bool ok = sub + 2 * (s0 + u) < nb;
                #pragma unroll
                for (int j = 0; j < QG1_R; ++j) {
                    const u8* blk = rp[j] + 40 * (s0 + u);
                    hd[u][j] = ok ? __ldg((const u32*)blk) : 0u;
                    qw[u][j] = ok ? __ldg((const u32*)(blk + 4) + wd) : 0u;
                }
            }
            #pragma unroll
            for (int u = 0; u < QG1_U; ++u) {
                const int b = sub + 2 * (s0 + u);
                if (b < nb) {
                    const float4 ta = tab4[b * 4 + wd], tb = tab4[nb * 4 + b * 4 + wd];
                    const float sx = sums[b * 4 + wd];
                    #pragma unroll
                    for (int j = 0; j < QG1_R; ++j) {
                        const float s = subnormal_dot4(qw[u][j], ta, tb, 0.f);
                        acc[j] = fmaf(f16_to_f32((u16)(hd[u][j] & 0xffffu)), s, acc[j]);
                        acc[j] = fmaf(f16_to_f32((u16)(hd[u][j] >> 16)), sx, acc[j]);
                    }
                }
            }
        }
        #pragma unroll
        for (int j = 0; j < QG1_R; ++j) {
            #pragma unroll
            for (int o = 4; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o, 8);
        }
        if (gl == 0) {
            #pragma unroll
            for (int j = 0; j < QG1_R; ++j) if (rbase + j < n_rows) y[rbase + j] = mul_pow2(acc[j], 49 + e);
        }
    }
}

// Single-row Q8_0 GEMV (m = 1, f32 activations, rows of at most 18 blocks with an even count, so that rows stay
// 4-byte aligned: SmolLM2's LM head). The same subnormal conversion on offset-binary bytes: a byte masked in place
// at bit 0, 8 or 16 of its word (the 4th shifted down by 8 first) and XORed with 0x80 is (q + 128)·2^(p−149); the
// −128·Σx of each word's activations starts its sum. Here the loads are coalesced instead: a warp owns 4 rows at a
// time and lane l reads the row's 32-bit words l, l + 32, ... (every load instruction reads 128 contiguous bytes), then
// the f16 scale of the word's block (a word's quant bytes never span two blocks: the 2 header bytes lie between any
// two blocks' quants, and a header never straddles a word since blocks start at even offsets). Each lane keeps the
// pre-scaled activations of its word positions in registers for all its rows (the exponent e of max|x| from a
// warp-wide reduction). 5 xor shuffles per row, in a fixed order. On an H100 the LM head streams at ~59 % of copy
// bandwidth against ~52 % for the half-warp kernel (`docs/benchmarks-gpu.md`).
#define QG8_R 4
#define QG8_SLOTS 5
extern "C" __global__ void __launch_bounds__(256, 2) qgemv1_q8_0(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, i64 n_rows, i64 k) {
    // 32-bit row indices (the host passes n_rows < 2^31): the loop's arithmetic is part of the issue budget.
    const int lane = threadIdx.x & 31, nr = (int)n_rows;
    const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, nw = (gridDim.x * blockDim.x) >> 5;
    const int nb = (int)(k >> 5), row_words = nb * 34 / 4;
    // e from max|x| over the warp (fmaxf skips NaN, so no lane's value is NaN).
    float mx = 0.f;
    for (i64 i = lane; i < k; i += 32) mx = fmaxf(mx, fabsf(x[i]));
    const int e = scale_exponent(warp_max(mx));
    float tb[QG8_SLOTS][4], bias[QG8_SLOTS];
    int hoff[QG8_SLOTS];
    #pragma unroll
    for (int t = 0; t < QG8_SLOTS; ++t) {
        const int W = lane + 32 * t;
        float sum = 0.f;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int p = 4 * W + i, blk = p / 34, o = p - 34 * blk;
            const float xv = (W < row_words && o >= 2) ? x[blk * 32 + o - 2] : 0.f;
            tb[t][i] = mul_pow2(xv, 100 - e - (i == 3 ? 16 : 8 * i));
            sum += xv;
        }
        bias[t] = mul_pow2(-sum, -42 - e);  // −128·Σx·2^(−49−e), scaled before it could overflow
        hoff[t] = W < row_words ? 34 * ((4 * W) / 34) : 0;
    }
    for (int r0 = gw * QG8_R; r0 < nr; r0 += nw * QG8_R) {
        u32 wv[QG8_R][QG8_SLOTS];
        u16 dh[QG8_R][QG8_SLOTS];
        #pragma unroll
        for (int j = 0; j < QG8_R; ++j) {
            const int row = r0 + j < nr ? r0 + j : nr - 1;
            const u8* rp = w + (i64)row * (row_words * 4);
            #pragma unroll
            for (int t = 0; t < QG8_SLOTS; ++t) {
                const bool ok = lane + 32 * t < row_words;
                wv[j][t] = ok ? __ldg((const u32*)rp + lane + 32 * t) : 0u;
                dh[j][t] = ok ? __ldg((const u16*)(rp + hoff[t])) : (u16)0;
            }
        }
        #pragma unroll
        for (int j = 0; j < QG8_R; ++j) {
            float acc = 0.f;
            #pragma unroll
            for (int t = 0; t < QG8_SLOTS; ++t) {
                // subnormal_dot8's values, with the offset applied per byte after the mask: the measured form (XORing
                // the word first, as subnormal_dot8 does, gives this kernel another schedule, not yet timed).
                const u32 q = wv[j][t], h = q >> 8;
                float sq = bias[t];
                sq = fmaf(__uint_as_float((q & 0xFFu) ^ 0x80u), tb[t][0], sq);
                sq = fmaf(__uint_as_float((q & 0xFF00u) ^ 0x8000u), tb[t][1], sq);
                sq = fmaf(__uint_as_float((q & 0xFF0000u) ^ 0x800000u), tb[t][2], sq);
                sq = fmaf(__uint_as_float((h & 0xFF0000u) ^ 0x800000u), tb[t][3], sq);
                acc = fmaf(f16_to_f32(dh[j][t]), sq, acc);
            }
            #pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            if (lane == 0 && r0 + j < nr) y[r0 + j] = mul_pow2(acc, 49 + e);
        }
    }
}

// One thread per block: writes its 32 dequantized weights (ggml formulas, multiply then add).
extern "C" __global__ void qdequant(const u8* w, float* out, i64 n_blocks, int ty) {
    int bsz = block_bytes(ty);
    for (i64 b = blockIdx.x * (i64)blockDim.x + threadIdx.x; b < n_blocks; b += (i64)gridDim.x * blockDim.x) {
        const u8* blk = w + b * bsz; float* o = out + b * 32; float d = ld_f16(blk);
        if (ty == 2) { for (int j = 0; j < 32; ++j) o[j] = d * (float)((const signed char*)(blk + 2))[j]; }
        else if (ty == 1) { float mn = ld_f16(blk + 2); const u8* qs = blk + 4;
            for (int j = 0; j < 16; ++j) { o[j] = __fadd_rn(__fmul_rn(d, (float)(qs[j] & 15)), mn); o[j + 16] = __fadd_rn(__fmul_rn(d, (float)(qs[j] >> 4)), mn); } }
        else { const u8* qs = blk + 2;
            for (int j = 0; j < 16; ++j) { o[j] = d * (float)((int)(qs[j] & 15) - 8); o[j + 16] = d * (float)((int)(qs[j] >> 4) - 8); } }
    }
}

// ---- The GEMV tile layout (`QWeight::with_gemv_layout`; `quant::gemv_tiles` writes it, where it is described). Rows
// in tiles of 16, two lanes per row: at step s of a tile, lane 2r + j holds block 2s + j of the tile's row r. A step
// is one 16-byte-aligned chunk of the 32 blocks: their 16 quant bytes in lane order (Q8_0: the first 16 bytes of the
// 32 blocks, then the last 16), then their headers in lane order (Q4_0, Q8_0: d; Q4_1: d and m). Every load of a warp
// reads one contiguous span (512 bytes of quants, 64-128 bytes of headers).
template <int TY> struct QtStep { uint4 q, q2; u32 h; };
// Bytes of one step (32 blocks) of format ty (0: Q4_0, 1: Q4_1, 2: Q8_0), as `quant::tiles::chunk_bytes`.
__device__ __forceinline__ int qt_chunk_bytes(int ty) { return ty == 0 ? 576 : ty == 1 ? 640 : 1088; }
template <int TY> __device__ __forceinline__ int qt_chunk() { return qt_chunk_bytes(TY); }
template <int TY> __device__ __forceinline__ void qt_load(QtStep<TY>& t, const u8* ch, int lane, bool ok) {
    t.q = ok ? __ldg((const uint4*)(ch + 16 * lane)) : make_uint4(0, 0, 0, 0);
    if (TY == 2) t.q2 = ok ? __ldg((const uint4*)(ch + 512 + 16 * lane)) : make_uint4(0, 0, 0, 0);
    if (TY == 1) t.h = ok ? __ldg((const u32*)(ch + 512 + 4 * lane)) : 0u;
    else t.h = ok ? (u32)__ldg((const u16*)(ch + (TY == 0 ? 512 : 1024) + 2 * lane)) : 0u;
}
// acc + one block: tb is the block's 9 table entries (8 float4s of pre-scaled activations in the order the block's
// words hold them, then the sum term in .x).
template <int TY> __device__ __forceinline__ float qt_block(const QtStep<TY>& t, const float4* tb, float acc) {
    if (TY == 2) {
        float a = subnormal_dot8(t.q.x, tb[0], tb[8].x), b = subnormal_dot8(t.q.y, tb[1], 0.f);
        a = subnormal_dot8(t.q.z, tb[2], a);
        b = subnormal_dot8(t.q.w, tb[3], b);
        a = subnormal_dot8(t.q2.x, tb[4], a);
        b = subnormal_dot8(t.q2.y, tb[5], b);
        a = subnormal_dot8(t.q2.z, tb[6], a);
        b = subnormal_dot8(t.q2.w, tb[7], b);
        return fmaf(f16_to_f32((u16)t.h), a + b, acc);
    }
    float a = subnormal_dot4(t.q.x, tb[0], tb[1], TY == 0 ? tb[8].x : 0.f), b = subnormal_dot4(t.q.y, tb[2], tb[3], 0.f);
    a = subnormal_dot4(t.q.z, tb[4], tb[5], a);
    b = subnormal_dot4(t.q.w, tb[6], tb[7], b);
    acc = fmaf(f16_to_f32((u16)(t.h & 0xffffu)), a + b, acc);
    return TY == 1 ? fmaf(f16_to_f32((u16)(t.h >> 16)), tb[8].x, acc) : acc;
}
// The CTA's activation table for one row x of nb blocks (nbp ≥ nb, padded with zeros), from one pass over x: warp w
// takes blocks w, w + warps, ...: the block's max|x| (its exponent eb) and Σ x·2^(−eb) by shuffles in a fixed order
// (each term scaled by a power of two first: no block sum can overflow, and subnormal activations keep their bits).
// After a barrier: e, the exponent of max|x| (fmaxf skips NaN); per block the sum term 2^(−49−e)·Σx (Q4_1),
// −8·2^(−49−e)·Σx (Q4_0) or −128·2^(−49−e)·Σx (Q8_0); and 8 float4s of activations pre-scaled by 2^(100−e−p) (p:
// the bit position of the weight's quant in its word after masking).
template <int TY> __device__ __forceinline__ int qt_table(const float* __restrict__ x, int nb, int nbp, float4* tab, float* bmax) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float* bsum = bmax + nbp;
    for (int b = warp; b < nb; b += warps) {
        const float v = x[b * 32 + lane], m = warp_max(fabsf(v));
        const float s = warp_sum(mul_pow2(v, -scale_exponent(m)));
        if (lane == 0) { bmax[b] = m; bsum[b] = s; }
    }
    __syncthreads();
    float mx = 0.f;
    for (int b = 0; b < nb; ++b) mx = fmaxf(mx, bmax[b]);
    const int e = scale_exponent(mx);
    for (int t = threadIdx.x; t < nbp * 9; t += blockDim.x) {
        const int b = t / 9, i = t - 9 * b;
        if (i == 8) {
            // Below 2^−252 the term is zero in f32 anyway: the clamp keeps mul_pow2 within its range.
            const int a = b < nb ? scale_exponent(bmax[b]) - e + (TY == 1 ? -49 : TY == 0 ? -46 : -42) : 0;
            const float s = b < nb ? mul_pow2(TY == 1 ? bsum[b] : -bsum[b], a < -252 ? -252 : a) : 0.f;
            tab[t] = make_float4(s, 0.f, 0.f, 0.f);
            continue;
        }
        const float* xb = x + b * 32;
        int idx[4], p[4];
        if (TY == 2) {
            #pragma unroll
            for (int j = 0; j < 4; ++j) { idx[j] = 4 * i + j; p[j] = j == 3 ? 16 : 8 * j; }
        } else {
            // Word i >> 1; half 0: bits 0, 4, 8, 12 (elements 4w, 16+4w, 4w+1, 17+4w), half 1: bits 16, 20, 16, 20.
            const int w4 = 4 * (i >> 1), h = i & 1;
            #pragma unroll
            for (int j = 0; j < 4; ++j) { idx[j] = w4 + 2 * h + (j >> 1) + 16 * (j & 1); p[j] = h ? 16 + 4 * (j & 1) : 4 * j; }
        }
        float v[4];
        #pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = b < nb ? mul_pow2(xb[idx[j]], 100 - e - p[j]) : 0.f;
        tab[t] = make_float4(v[0], v[1], v[2], v[3]);
    }
    __syncthreads();
    return e;
}
// y[i, r] = W[r] · x[i] on the tile layout: one CTA row per activation row i (blockIdx.y), one tile of 16 rows per
// warp, two lanes per row, one xor shuffle per row (deterministic). The first steps' words are loaded before the
// table is built (they do not depend on x).
// STEPS = 0: any row length, chunks of 3 steps (Q8_0: 2) double-buffered (the next chunk's loads issued before this
// chunk's arithmetic). STEPS > 0: rows of exactly that many steps (SmolLM2's 576 and 1536 columns), fully unrolled,
// each step's loads issued D steps ahead: 3 for Q4, 4 for Q8_0. Launched plainly, the unrolled form with D = 2 for Q4
// was about 5 % (Q4_1) and 5-8 % (Q8_0) faster on the LM head than the generic loop; in overlapping launches D = 3
// is 4-7 % faster than D = 2 for Q4_1.
// On Hopper `qlinear_tiles` launches it as a programmatic dependent launch: those first loads, and the CTAs' start,
// overlap the previous kernel's tail; the kernel lets the next kernel start as soon as its loads are issued and
// waits for the previous one before it reads x or writes y. Only the tile buffer is read before the wait: it is
// written once, by the host-to-device copy of `QWeight::with_gemv_layout`, never by a kernel. (The early trigger
// lets the next kernel's pre-wait part overlap this kernel's predecessor too: see `launch_with_attribute`.) In a
// stream of calls on an H100 the Q4_1 LM head then reads its weights at 69.5-71 % of copy bandwidth and Q8_0 at
// 79-80 %, against 41-42 % and 56 % for the single-row kernels on ggml rows (`docs/benchmarks-gpu.md`).
template <int TY, int STEPS> __device__ __forceinline__ void qgemv_tiles_body(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n, int k) {
    extern __shared__ __align__(16) float qt_smem[];
    const int nb = k >> 5, steps = STEPS > 0 ? STEPS : (nb + 1) >> 1, nbp = 2 * steps, ch = qt_chunk<TY>();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tiles = (n + 15) >> 4;
    const int tile = blockIdx.x * (blockDim.x >> 5) + warp, j = lane & 1;
    x += (i64)blockIdx.y * k;
    const u8* tp = w + (i64)(tile < tiles ? tile : 0) * steps * ch;
    float4* tab = (float4*)qt_smem;
    float acc = 0.f;
    int e;
    if (STEPS > 0) {
        constexpr int D = TY == 2 ? 4 : 3;
        QtStep<TY> buf[D + 1];
        #pragma unroll
        for (int s = 0; s < D; ++s) qt_load<TY>(buf[s], tp + s * ch, lane, tile < tiles);
        effllm_allow_next_kernel();
        effllm_wait_for_previous_kernel();
        e = qt_table<TY>(x, nb, nbp, tab, qt_smem + nbp * 36);
        if (tile >= tiles) return;
        #pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            if (s + D < STEPS) qt_load<TY>(buf[(s + D) % (D + 1)], tp + (s + D) * ch, lane, true);
            acc = qt_block<TY>(buf[s % (D + 1)], tab + (2 * s + j) * 9, acc);
        }
    } else {
        // Q8_0 steps hold twice the words: chunks of 2 steps keep it within the register bound without spills.
        constexpr int U = TY == 2 ? 2 : 3;
        QtStep<TY> a[U], b[U];
        #pragma unroll
        for (int u = 0; u < U; ++u) qt_load<TY>(a[u], tp + u * ch, lane, tile < tiles && u < steps);
        effllm_allow_next_kernel();
        effllm_wait_for_previous_kernel();
        e = qt_table<TY>(x, nb, nbp, tab, qt_smem + nbp * 36);
        if (tile >= tiles) return;
        for (int s0 = 0; s0 < steps; s0 += 2 * U) {
            #pragma unroll
            for (int u = 0; u < U; ++u) qt_load<TY>(b[u], tp + (s0 + U + u) * ch, lane, s0 + U + u < steps);
            #pragma unroll
            for (int u = 0; u < U; ++u) if (s0 + u < steps) acc = qt_block<TY>(a[u], tab + (2 * (s0 + u) + j) * 9, acc);
            #pragma unroll
            for (int u = 0; u < U; ++u) qt_load<TY>(a[u], tp + (s0 + 2 * U + u) * ch, lane, s0 + 2 * U + u < steps);
            #pragma unroll
            for (int u = 0; u < U; ++u) if (s0 + U + u < steps) acc = qt_block<TY>(b[u], tab + (2 * (s0 + U + u) + j) * 9, acc);
        }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    const int row = tile * 16 + (lane >> 1);
    if (j == 0 && row < n) y[(i64)blockIdx.y * n + row] = mul_pow2(acc, 49 + e);
}
#define QGEMV_TILES(steps, suffix) \
extern "C" __global__ void __launch_bounds__(256, 3) qgemv_tiles##suffix##_q4_0(const u8* w, const float* x, float* y, int n, int k) { qgemv_tiles_body<0, steps>(w, x, y, n, k); } \
extern "C" __global__ void __launch_bounds__(256, 3) qgemv_tiles##suffix##_q4_1(const u8* w, const float* x, float* y, int n, int k) { qgemv_tiles_body<1, steps>(w, x, y, n, k); } \
extern "C" __global__ void __launch_bounds__(256, 3) qgemv_tiles##suffix##_q8_0(const u8* w, const float* x, float* y, int n, int k) { qgemv_tiles_body<2, steps>(w, x, y, n, k); }
QGEMV_TILES(0, )
QGEMV_TILES(9, _s9)
QGEMV_TILES(24, _s24)
// The f32 matrix of a tile layout (prefill-sized inputs, then cuBLAS): one thread per block, each value as
// `qdequant` computes it.
extern "C" __global__ void qdequant_tiles(const u8* w, float* out, i64 n, i64 k, int ty) {
    const i64 nb = k >> 5, steps = (nb + 1) >> 1, ch = qt_chunk_bytes(ty);
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n * nb; t += (i64)gridDim.x * blockDim.x) {
        const i64 r = t / nb, blk = t - r * nb;
        const u8* c = w + ((r >> 4) * steps + (blk >> 1)) * ch;
        const int lane = (int)(2 * (r & 15) + (blk & 1));
        float* o = out + t * 32;
        if (ty == 2) {
            const float d = ld_f16(c + 1024 + 2 * lane);
            for (int j = 0; j < 32; ++j) o[j] = d * (float)((const signed char*)(c + (j < 16 ? 0 : 512) + 16 * lane))[j & 15];
        } else {
            const u8* qs = c + 16 * lane;
            if (ty == 1) {
                const float d = ld_f16(c + 512 + 4 * lane), mn = ld_f16(c + 512 + 4 * lane + 2);
                for (int j = 0; j < 16; ++j) { o[j] = __fadd_rn(__fmul_rn(d, (float)(qs[j] & 15)), mn); o[j + 16] = __fadd_rn(__fmul_rn(d, (float)(qs[j] >> 4)), mn); }
            } else {
                const float d = ld_f16(c + 512 + 2 * lane);
                for (int j = 0; j < 16; ++j) { o[j] = d * (float)((int)(qs[j] & 15) - 8); o[j + 16] = d * (float)((int)(qs[j] >> 4) - 8); }
            }
        }
    }
}
"#;

/// Training kernels: the fused cross-entropy (log-sum-exp per row; the closed-form gradient) and the row
/// scatter-add that is the backward of an embedding lookup (`atomicAdd`: the summation order of repeated rows is
/// not fixed, so such gradients can differ in the last bits between runs).
pub(crate) const TRAIN: &str = r#"
#define CE_BLOCK 256
extern "C" __global__ void ce_lse_f32(const float* x, float* lse, i64 v) {
    __shared__ float shm[CE_BLOCK]; __shared__ float shs[CE_BLOCK];
    const float* r = x + (i64)blockIdx.x * v;
    const float NEG = -1.0f / 0.0f;
    float m = NEG, s = 0.0f;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) {
        float z = r[j];
        if (z > m) { s = (m == NEG ? 0.0f : s * expf(m - z)) + 1.0f; m = z; }
        else if (z > NEG) { s += expf(z - m); }
    }
    shm[threadIdx.x] = m; shs[threadIdx.x] = s; __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) {
            float m1 = shm[threadIdx.x], s1 = shs[threadIdx.x], m2 = shm[threadIdx.x + st], s2 = shs[threadIdx.x + st];
            float mm = fmaxf(m1, m2);
            float t = (m1 == NEG ? 0.0f : s1 * expf(m1 - mm)) + (m2 == NEG ? 0.0f : s2 * expf(m2 - mm));
            shm[threadIdx.x] = mm; shs[threadIdx.x] = t;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) lse[blockIdx.x] = shm[0] == NEG ? NEG : shm[0] + logf(shs[0]);
}
extern "C" __global__ void ce_grad_f32(const float* x, const float* lse, const u32* t, const float* g, float* out, i64 v, float inv_rows) {
    i64 row = blockIdx.x;
    float l = lse[row], scale = g[0] * inv_rows;
    i64 target = (i64)t[row];
    const float* r = x + row * v; float* o = out + row * v;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) o[j] = (expf(r[j] - l) - (j == target ? 1.0f : 0.0f)) * scale;
}
// Block-wide sum / max of one value per thread (blockDim.x a multiple of 32, at most 1024), through warp
// shuffles; every thread gets the result.
template <typename T> __device__ T blk_sum(T v, T* sh) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) r += sh[w];
    __syncthreads();
    return r;
}
template <typename T> __device__ T blk_max(T v, T* sh) {
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = sh[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) r = sh[w] > r ? sh[w] : r;
    __syncthreads();
    return r;
}
// Attention rows: s = [rows, skv] raw scores q·kᵀ, row r holding query i = r % sq (rows ordered as
// [batch, kv head, group, s_q], which is also the [batch, q head, s_q] order of the mask and of o/go).
// Key j is allowed when j < skv − sq + i + 1 (causal) and mask[r·skv + j] != 0 (when a mask is given).
template <typename T> __device__ bool attn_allowed(const u8* mr, i64 j, i64 limit) { return j < limit && (!mr || mr[j] != 0); }

// Forward: s ← softmax(scale · s) over the allowed keys, 0 elsewhere; a row with no allowed key becomes all zeros.
template <typename T> __device__ void attn_softmax_body(T* s, const u8* mask, i64 sq, i64 skv, int causal, T scale) {
    __shared__ T sh[32];
    const T NEG = -1.0 / 0.0;
    i64 r = blockIdx.x, i = r % sq;
    T* row = s + r * skv;
    const u8* mr = mask ? mask + r * skv : 0;
    i64 limit = causal ? skv - sq + i + 1 : skv;
    T m = NEG;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) if (attn_allowed<T>(mr, j, limit)) { T v = row[j] * scale; m = v > m ? v : m; }
    m = blk_max(m, sh);
    if (m == NEG) { for (i64 j = threadIdx.x; j < skv; j += blockDim.x) row[j] = 0; return; }
    T z = 0;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) {
        T p = attn_allowed<T>(mr, j, limit) ? exp(row[j] * scale - m) : (T)0;
        row[j] = p; z += p;
    }
    T inv = (T)1 / blk_sum(z, sh);
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) row[j] *= inv;
}
extern "C" __global__ void attn_softmax_f32(float* s, const u8* mask, i64 sq, i64 skv, int causal, float scale) { attn_softmax_body(s, mask, sq, skv, causal, scale); }
extern "C" __global__ void attn_softmax_f64(double* s, const u8* mask, i64 sq, i64 skv, int causal, double scale) { attn_softmax_body(s, mask, sq, skv, causal, scale); }

// Backward: with s = raw scores, dp = dO·vᵀ, D = Σ_c dO[r,c]·O[r,c]: s ← P (recomputed softmax), dp ← scale · P ⊙ (dp − D).
template <typename T> __device__ void attn_grad_body(T* s, T* dp, const T* go, const T* o, const u8* mask, i64 sq, i64 skv, i64 dv, int causal, T scale) {
    __shared__ T sh[32];
    const T NEG = -1.0 / 0.0;
    i64 r = blockIdx.x, i = r % sq;
    T* row = s + r * skv; T* drow = dp + r * skv;
    const u8* mr = mask ? mask + r * skv : 0;
    i64 limit = causal ? skv - sq + i + 1 : skv;
    T dsum = 0;
    for (i64 c = threadIdx.x; c < dv; c += blockDim.x) dsum += go[r * dv + c] * o[r * dv + c];
    dsum = blk_sum(dsum, sh);
    T m = NEG;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) if (attn_allowed<T>(mr, j, limit)) { T v = row[j] * scale; m = v > m ? v : m; }
    m = blk_max(m, sh);
    if (m == NEG) { for (i64 j = threadIdx.x; j < skv; j += blockDim.x) { row[j] = 0; drow[j] = 0; } return; }
    T z = 0;
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) if (attn_allowed<T>(mr, j, limit)) z += exp(row[j] * scale - m);
    T inv = (T)1 / blk_sum(z, sh);
    for (i64 j = threadIdx.x; j < skv; j += blockDim.x) {
        T p = attn_allowed<T>(mr, j, limit) ? exp(row[j] * scale - m) * inv : (T)0;
        row[j] = p;
        drow[j] = p * (drow[j] - dsum) * scale;
    }
}
extern "C" __global__ void attn_grad_f32(float* s, float* dp, const float* go, const float* o, const u8* mask, i64 sq, i64 skv, i64 dv, int causal, float scale) { attn_grad_body(s, dp, go, o, mask, sq, skv, dv, causal, scale); }
extern "C" __global__ void attn_grad_f64(double* s, double* dp, const double* go, const double* o, const u8* mask, i64 sq, i64 skv, i64 dv, int causal, double scale) { attn_grad_body(s, dp, go, o, mask, sq, skv, dv, causal, scale); }

// f32 attention rows of at most 32·VALS keys: one warp per row, eight rows per 256-thread block, the row held in
// registers (read once, written once; keys past the causal limit are written without being read). A block per row
// of 256 keys left most of its threads idle and paid two block reductions with barriers per row. Same formulas as
// the block kernels above; the sums are taken in another order. VALS (8, 16 or 32: up to 256, 512 or 1024 keys) is
// the register slots per lane: the smallest that fits keeps registers, hence resident warps, up.
// The part both warp-row kernels share: lane's slots of row `row` (key j = lane + 32·u) get e^(scale·s − m) for the
// allowed keys (bit u of `allowed`) and 0 elsewhere, m the row's maximum over its allowed keys; returns 1/Σ, and
// `any` says whether the row allows a key at all (if not, every slot is 0 and so is the result).
template <int VALS> __device__ float attn_warp_exp(const float* row, const u8* mr, i64 skv, i64 limit, float scale,
                                                  int lane, float* v, u32& allowed, bool& any) {
    const float NEG = -1.0f / 0.0f;
    allowed = 0;
    float m = NEG;
    #pragma unroll
    for (int u = 0; u < VALS; ++u) {
        i64 j = lane + 32 * u;
        v[u] = 0.f;
        if (j < skv && attn_allowed<float>(mr, j, limit)) { v[u] = row[j] * scale; allowed |= 1u << u; m = v[u] > m ? v[u] : m; }
    }
    m = warp_max(m);
    any = m != NEG;
    if (!any) return 0.f;
    float z = 0.f;
    #pragma unroll
    for (int u = 0; u < VALS; ++u) { v[u] = (allowed >> u) & 1 ? exp(v[u] - m) : 0.f; z += v[u]; }
    return 1.f / warp_sum(z);
}
template <int VALS> __device__ void attn_softmax_warp(float* s, const u8* mask, i64 rows, i64 sq, i64 skv, int causal, float scale) {
    i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31;
    float* row = s + r * skv;
    i64 limit = causal ? skv - sq + r % sq + 1 : skv;
    float v[VALS];
    u32 allowed;
    bool any;
    float inv = attn_warp_exp<VALS>(row, mask ? mask + r * skv : 0, skv, limit, scale, lane, v, allowed, any);
    #pragma unroll
    for (int u = 0; u < VALS; ++u) {
        i64 j = lane + 32 * u;
        if (j < skv) row[j] = any ? v[u] * inv : 0.f;
    }
}
// Backward rows (see `attn_grad_body`): s ← P, dp ← scale · P ⊙ (dp − D); dp is read only where P can be non-zero.
template <int VALS> __device__ void attn_grad_warp(float* s, float* dp, const float* go, const float* o, const u8* mask, i64 rows, i64 sq, i64 skv, i64 dv, int causal, float scale) {
    i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31;
    float* row = s + r * skv; float* drow = dp + r * skv;
    i64 limit = causal ? skv - sq + r % sq + 1 : skv;
    float dsum = 0.f;
    for (i64 c = lane; c < dv; c += 32) dsum += go[r * dv + c] * o[r * dv + c];
    dsum = warp_sum(dsum);
    float v[VALS];
    u32 allowed;
    bool any;
    float inv = attn_warp_exp<VALS>(row, mask ? mask + r * skv : 0, skv, limit, scale, lane, v, allowed, any);
    #pragma unroll
    for (int u = 0; u < VALS; ++u) {
        i64 j = lane + 32 * u;
        if (j < skv) {
            float p = any ? v[u] * inv : 0.f;
            row[j] = p;
            drow[j] = (allowed >> u) & 1 && any ? p * (drow[j] - dsum) * scale : 0.f;
        }
    }
}

#define ATT_WARP_ENTRY(N) \
extern "C" __global__ void attn_softmax_warp##N##_f32(float* s, const u8* mask, i64 rows, i64 sq, i64 skv, int causal, float scale) { attn_softmax_warp<N>(s, mask, rows, sq, skv, causal, scale); } \
extern "C" __global__ void attn_grad_warp##N##_f32(float* s, float* dp, const float* go, const float* o, const u8* mask, i64 rows, i64 sq, i64 skv, i64 dv, int causal, float scale) { attn_grad_warp<N>(s, dp, go, o, mask, rows, sq, skv, dv, causal, scale); }
ATT_WARP_ENTRY(8)
ATT_WARP_ENTRY(16)
ATT_WARP_ENTRY(32)

// RMSNorm backward, one block per row of contiguous [rows, d]: with r = 1/√(mean(x²) + ε) and m = mean(g⊙w⊙x),
// dx = r·g⊙w − r³·m·x; gxr = g⊙x·r (summed over rows afterwards for dw).
template <typename T> __device__ void rms_norm_bwd_body(const T* x, const T* w, const T* g, T* dx, T* gxr, i64 d, double eps) {
    __shared__ T sh[32];
    i64 r0 = (i64)blockIdx.x * d;
    T ss = 0, dot = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { T xv = x[r0 + j]; ss += xv * xv; dot += g[r0 + j] * w[j] * xv; }
    ss = blk_sum(ss, sh);
    dot = blk_sum(dot, sh);
    T r = (T)1 / sqrt(ss / (T)d + (T)eps);
    T c = r * r * r * dot / (T)d;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        T xv = x[r0 + j], gv = g[r0 + j];
        dx[r0 + j] = r * gv * w[j] - c * xv;
        gxr[r0 + j] = gv * xv * r;
    }
}
extern "C" __global__ void rms_norm_bwd_f32(const float* x, const float* w, const float* g, float* dx, float* gxr, i64 d, double eps) { rms_norm_bwd_body(x, w, g, dx, gxr, d, eps); }
extern "C" __global__ void rms_norm_bwd_f64(const double* x, const double* w, const double* g, double* dx, double* gxr, i64 d, double eps) { rms_norm_bwd_body(x, w, g, dx, gxr, d, eps); }
// f32 rows of at most 1024 values: one warp per row (eight rows per 256-thread block), x and g held in registers; the
// same arithmetic as the block kernel, sums in f32 through shuffles.
#define RMS_BWD_CACHE 8
extern "C" __global__ void rms_norm_bwd_warp_f32(const float* x, const float* w, const float* g, float* dx, float* gxr, i64 rows, i64 d, double eps) {
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    i64 r0 = row * d;
    bool vec = (d & 3) == 0 && d <= 128 * RMS_BWD_CACHE
        && ((((size_t)(x + r0)) | ((size_t)(g + r0)) | ((size_t)w) | ((size_t)(dx + r0)) | ((size_t)(gxr + r0))) & 15) == 0;
    int n4 = (int)(d >> 2);
    float ss = 0.f, dot = 0.f;
    float4 xv[RMS_BWD_CACHE], gv[RMS_BWD_CACHE];
    if (vec) {
        #pragma unroll
        for (int u = 0; u < RMS_BWD_CACHE; ++u) {
            int c = lane + 32 * u;
            if (c < n4) {
                xv[u] = ((const float4*)(x + r0))[c]; gv[u] = ((const float4*)(g + r0))[c];
                float4 wv = ((const float4*)w)[c];
                ss += xv[u].x * xv[u].x; dot += gv[u].x * wv.x * xv[u].x;
                ss += xv[u].y * xv[u].y; dot += gv[u].y * wv.y * xv[u].y;
                ss += xv[u].z * xv[u].z; dot += gv[u].z * wv.z * xv[u].z;
                ss += xv[u].w * xv[u].w; dot += gv[u].w * wv.w * xv[u].w;
            }
        }
    } else {
        for (i64 j = lane; j < d; j += 32) { float t = x[r0 + j]; ss += t * t; dot += g[r0 + j] * w[j] * t; }
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    float r = 1.f / sqrtf(ss / (float)d + (float)eps);
    float c = r * r * r * dot / (float)d;
    if (vec) {
        #pragma unroll
        for (int u = 0; u < RMS_BWD_CACHE; ++u) {
            int cc = lane + 32 * u;
            if (cc < n4) {
                float4 wv = ((const float4*)w)[cc], a = xv[u], b = gv[u], o, q;
                o.x = r * b.x * wv.x - c * a.x; q.x = b.x * a.x * r;
                o.y = r * b.y * wv.y - c * a.y; q.y = b.y * a.y * r;
                o.z = r * b.z * wv.z - c * a.z; q.z = b.z * a.z * r;
                o.w = r * b.w * wv.w - c * a.w; q.w = b.w * a.w * r;
                ((float4*)(dx + r0))[cc] = o; ((float4*)(gxr + r0))[cc] = q;
            }
        }
    } else {
        for (i64 j = lane; j < d; j += 32) {
            float xv1 = x[r0 + j], gv1 = g[r0 + j];
            dx[r0 + j] = r * gv1 * w[j] - c * xv1;
            gxr[r0 + j] = gv1 * xv1 * r;
        }
    }
}

// SwiGLU backward: y = silu(a)·u gives da = g·u·σ(a)·(1 + a·(1 − σ(a))), du = g·silu(a).
template <typename T> __device__ void swiglu_bwd_body(const T* g, const T* a, const T* u, T* da, T* du, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        T av = a[i], gv = g[i];
        T s = (T)1 / ((T)1 + exp(-av));
        da[i] = gv * u[i] * s * ((T)1 + av * ((T)1 - s));
        du[i] = gv * av * s;
    }
}
__device__ __forceinline__ void swiglu_bwd_one(float gv, float av, float uv, float& da, float& du) {
    float s = 1.f / (1.f + exp(-av));
    da = gv * uv * s * (1.f + av * (1.f - s));
    du = gv * av * s;
}
// f32: four elements per thread with 16-byte accesses when the five buffers are aligned (the host launches n/4
// threads); the same arithmetic as `swiglu_bwd_body`.
extern "C" __global__ void swiglu_bwd_f32(const float* g, const float* a, const float* u, float* da, float* du, i64 n) {
    if (((((size_t)g) | ((size_t)a) | ((size_t)u) | ((size_t)da) | ((size_t)du)) & 15) != 0) { swiglu_bwd_body(g, a, u, da, du, n); return; }
    i64 n4 = n / 4, stride = (i64)gridDim.x * blockDim.x, t = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (i64 i = t; i < n4; i += stride) {
        float4 gv = ((const float4*)g)[i], av = ((const float4*)a)[i], uv = ((const float4*)u)[i], dav, duv;
        swiglu_bwd_one(gv.x, av.x, uv.x, dav.x, duv.x);
        swiglu_bwd_one(gv.y, av.y, uv.y, dav.y, duv.y);
        swiglu_bwd_one(gv.z, av.z, uv.z, dav.z, duv.z);
        swiglu_bwd_one(gv.w, av.w, uv.w, dav.w, duv.w);
        ((float4*)da)[i] = dav; ((float4*)du)[i] = duv;
    }
    for (i64 i = 4 * n4 + t; i < n; i += stride) swiglu_bwd_one(g[i], a[i], u[i], da[i], du[i]);
}
extern "C" __global__ void swiglu_bwd_f64(const double* g, const double* a, const double* u, double* da, double* du, i64 n) { swiglu_bwd_body(g, a, u, da, du, n); }

extern "C" __global__ void index_add_rows_f32(const float* g, const u32* ids, float* out, i64 picks, i64 inner) {
    i64 n = picks * inner;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 p = i / inner, c = i % inner;
        atomicAdd(&out[(i64)ids[p] * inner + c], g[i]);
    }
}

// Sums of squares of many f32 tensors at once (global gradient norms). `table` holds, per tensor, its device
// address, its element count and the index of its first chunk; chunk `c` of `NORM_CHUNK` elements belongs to the
// tensor whose first chunk is the largest not above `c`. Pass 1: one block per chunk writes the chunk's Σx² (squares
// and sums in f64); pass 2: one block per tensor adds its chunks' partial sums in a fixed order (no atomics:
// deterministic).
#define NORM_BLOCK 256
#define NORM_CHUNK 8192
extern "C" __global__ void sq_norm_chunks(const u64* table, i64 tensors, double* partials) {
    __shared__ double sh[32];
    i64 c = blockIdx.x, lo = 0, hi = tensors - 1;
    while (lo < hi) { i64 mid = (lo + hi + 1) / 2; if ((i64)table[3 * mid + 2] <= c) lo = mid; else hi = mid - 1; }
    const float* x = (const float*)table[3 * lo];
    i64 n = (i64)table[3 * lo + 1], start = (c - (i64)table[3 * lo + 2]) * NORM_CHUNK;
    i64 end = start + NORM_CHUNK < n ? start + NORM_CHUNK : n;
    double s = 0.0;
    bool vec = (((size_t)x) & 15) == 0;
    if (vec) {
        // 16-byte loads over the chunk (chunks start at multiples of 8192 elements, so stay aligned).
        for (i64 i = start + 4 * threadIdx.x; i + 3 < end; i += 4 * NORM_BLOCK) {
            float4 v = *(const float4*)(x + i);
            double a = v.x, b = v.y, c2 = v.z, d = v.w;
            s += a * a + b * b + c2 * c2 + d * d;
        }
        i64 tail = start + ((end - start) / 4) * 4;
        for (i64 i = tail + threadIdx.x; i < end; i += NORM_BLOCK) { double v = x[i]; s += v * v; }
    } else {
        for (i64 i = start + threadIdx.x; i < end; i += NORM_BLOCK) { double v = x[i]; s += v * v; }
    }
    double r = blk_sum(s, sh);
    if (threadIdx.x == 0) partials[c] = r;
}
extern "C" __global__ void sq_norm_totals(const u64* table, const double* partials, i64 tensors, i64 chunks, double* out) {
    __shared__ double sh[32];
    i64 t = blockIdx.x;
    i64 first = (i64)table[3 * t + 2], last = t + 1 < tensors ? (i64)table[3 * (t + 1) + 2] : chunks;
    double s = 0.0;
    for (i64 c = first + threadIdx.x; c < last; c += NORM_BLOCK) s += partials[c];
    double r = blk_sum(s, sh);
    if (threadIdx.x == 0) out[t] = r;
}
"#;

/// Scatter, scatter-add and top-k with the CPU backend's results bit for bit: every destination element receives
/// its writes in the CPU's order (one thread per lane), and top-k ranks by the CPU's order key with ties broken by
/// the lower index (one block per row: radix select, then a bitonic sort of the winners).
pub(crate) const INDEX: &str = r#"
// Bounds check of a u32 index tensor (layout `li`, `n` elements) against `size`: `bad` (zeroed by the host) ends up
// holding the complement of the lowest row-major position whose id is >= size, so 0 means "all in range" and the
// host reports the same first offender as the CPU's scan.
extern "C" __global__ void index_check(const u32* idx, Lay li, i64 n, u64 size, u64* bad) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        if ((u64)idx[lay_offset(li, i)] >= size) atomicMax(bad, ~(u64)i);
}

// A lane: the index positions that share every coordinate except `dim` (row-major over the other dimensions).
// Writes to one destination element only ever come from one lane, so a thread that walks its lane along `dim` in
// increasing order applies them in the CPU's row-major order of the index, and lanes never race. Sets the lane's
// first element offsets in the index (`li`), the source (`ls`, read with the index's coordinates) and the
// contiguous output (`lo`).
__device__ __forceinline__ void lane_start(i64 lane, const Lay& li, const Lay& ls, const Lay& lo, int dim, i64& io,
                                           i64& so, i64& oo) {
    io = li.off; so = ls.off; oo = lo.off;
    for (int d = li.rank - 1; d >= 0; --d) {
        if (d == dim) continue;
        i64 c = lane % li.shape[d];
        lane /= li.shape[d];
        io += c * li.stride[d]; so += c * ls.stride[d]; oo += c * lo.stride[d];
    }
}

template <typename T> __device__ void scatter_body(const u32* idx, Lay li, const T* src, Lay ls, T* out, Lay lo,
                                                   i64 lanes, int dim) {
    i64 len = li.shape[dim];
    for (i64 lane = blockIdx.x * (i64)blockDim.x + threadIdx.x; lane < lanes; lane += (i64)gridDim.x * blockDim.x) {
        i64 io, so, oo;
        lane_start(lane, li, ls, lo, dim, io, so, oo);
        for (i64 i = 0; i < len; ++i)
            out[oo + (i64)idx[io + i * li.stride[dim]] * lo.stride[dim]] = src[so + i * ls.stride[dim]];
    }
}

// scatter for any element size (1, 2, 4 or 8 bytes): `out` is already a contiguous copy of the destination, and the
// last write along each lane wins, as on the CPU. Ids were bounds-checked by `index_check`.
extern "C" __global__ void scatter_any(const u32* idx, Lay li, const void* src, Lay ls, void* out, Lay lo, i64 lanes,
                                       int dim, int esize) {
    switch (esize) {
        case 1: scatter_body(idx, li, (const u8*)src, ls, (u8*)out, lo, lanes, dim); break;
        case 2: scatter_body(idx, li, (const u16*)src, ls, (u16*)out, lo, lanes, dim); break;
        case 4: scatter_body(idx, li, (const u32*)src, ls, (u32*)out, lo, lanes, dim); break;
        default: scatter_body(idx, li, (const u64*)src, ls, (u64*)out, lo, lanes, dim); break;
    }
}

// scatter_add into an f32 copy of the destination (f32, or f16/bf16 widened by the host): each source element
// (f32, f16 or bf16 by `sdt`) is widened to f32 and added in the lane's order, as the CPU accumulates.
extern "C" __global__ void scatter_add_f32(const u32* idx, Lay li, const void* src, int sdt, Lay ls, float* out,
                                           Lay lo, i64 lanes, int dim) {
    i64 len = li.shape[dim];
    for (i64 lane = blockIdx.x * (i64)blockDim.x + threadIdx.x; lane < lanes; lane += (i64)gridDim.x * blockDim.x) {
        i64 io, so, oo;
        lane_start(lane, li, ls, lo, dim, io, so, oo);
        for (i64 i = 0; i < len; ++i) {
            i64 s = so + i * ls.stride[dim];
            float v = sdt == DT_F16    ? f16_to_f32(((const u16*)src)[s])
                      : sdt == DT_BF16 ? bf16_to_f32(((const u16*)src)[s])
                                       : ((const float*)src)[s];
            i64 d = oo + (i64)idx[io + i * li.stride[dim]] * lo.stride[dim];
            out[d] = out[d] + v;
        }
    }
}

extern "C" __global__ void scatter_add_f64(const u32* idx, Lay li, const double* src, Lay ls, double* out, Lay lo,
                                           i64 lanes, int dim) {
    i64 len = li.shape[dim];
    for (i64 lane = blockIdx.x * (i64)blockDim.x + threadIdx.x; lane < lanes; lane += (i64)gridDim.x * blockDim.x) {
        i64 io, so, oo;
        lane_start(lane, li, ls, lo, dim, io, so, oo);
        for (i64 i = 0; i < len; ++i) {
            i64 d = oo + (i64)idx[io + i * li.stride[dim]] * lo.stride[dim];
            out[d] = out[d] + src[so + i * ls.stride[dim]];
        }
    }
}

// Order key of element j of a top-k row, as an unsigned integer whose order is the CPU's `order_key` order: IEEE
// totalOrder of the value widened to f64, with -0 == +0. Widening sets the quiet bit of a NaN (f16/bf16 through
// the `half` conversion to f32, f32 through the conversion to f64) and keeps the payload, so a NaN is keyed with
// its quiet bit set. Sign-magnitude to unsigned: negative patterns are complemented, positive ones get the sign bit.
// f16/bf16 keys have 16 bits, f32 keys 32, f64 keys 64.
__device__ __forceinline__ u64 topk_key(const void* row, i64 j, int dt) {
    if (dt == DT_F64) {
        u64 b = ((const u64*)row)[j];
        if ((b << 1) == 0) b = 0;
        return (b >> 63) ? ~b : (b | 0x8000000000000000ULL);
    }
    if (dt == DT_F32) {
        u32 b = ((const u32*)row)[j];
        if ((b & 0x7FFFFFFFu) > 0x7F800000u) b |= 0x00400000u;
        if ((b << 1) == 0) b = 0;
        return (b >> 31) ? (u64)(~b) : (u64)(b | 0x80000000u);
    }
    u32 h = ((const u16*)row)[j];
    if (dt == DT_F16 && (h & 0x7FFFu) > 0x7C00u) h |= 0x0200u;
    if (dt == DT_BF16 && (h & 0x7FFFu) > 0x7F80u) h |= 0x0040u;
    if ((h & 0x7FFFu) == 0) h = 0;
    return (h >> 15) ? (u64)(~h & 0xFFFFu) : (u64)(h | 0x8000u);
}

// Whether element a comes before element b in top-k order: larger key first, equal keys by the lower index.
__device__ __forceinline__ bool topk_before(const void* row, u32 a, u32 b, int dt) {
    u64 ka = topk_key(row, a, dt), kb = topk_key(row, b, dt);
    return ka > kb || (ka == kb && a < b);
}

// Thread 0 of a radix-select step: the digit `b` whose bucket holds the `need`-th element counted from the top
// (`from_top`) or from the bottom of the histogram; publishes b, the rank left inside it and the bucket's size.
__device__ __forceinline__ void radix_pick(const u32* hist, i64 need, bool from_top, u32* s_digit, i64* s_need,
                                           u32* s_size) {
    i64 passed = 0;
    int b = from_top ? 255 : 0;
    for (int step = 0; step < 255; ++step, b += from_top ? -1 : 1) {
        if (passed + hist[b] >= need) break;
        passed += hist[b];
    }
    *s_digit = (u32)b; *s_need = need - passed; *s_size = hist[b];
}

// top_k of each contiguous row of `n` (< 2^32) elements (dtype `dt`: f16, bf16, f32 or f64), 0 < k <= n: one block
// per row (grid-stride over rows). The winners are the k largest (key, -index) pairs, which are all distinct, so
// they are exactly the elements with key > T, plus those with key == T and index <= I, where T (the k-th largest
// key) comes from an MSB-first radix select over the keys and I from a second one over the indices of the elements
// keyed T. The winners' indices land in `ids` in any order and are then sorted in place by a bitonic network over
// the next power of two (the missing tail counts as -inf, and with every compare-exchange ordered low position to
// high position such a pair never swaps, so it is skipped). `vals` gets the winners' values; f16/bf16 NaNs get their
// quiet bit, as the CPU's round trip through f32 gives them.
extern "C" __global__ void topk_rows(const void* x, int dt, i64 rows, i64 n, i64 k, void* vals, u32* ids) {
    __shared__ u32 hist[256];
    __shared__ u32 s_digit, s_size, s_count;
    __shared__ i64 s_need;
    int es = dt == DT_F64 ? 8 : dt == DT_F32 ? 4 : 2;
    int kbits = dt == DT_F64 ? 64 : dt == DT_F32 ? 32 : 16;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const void* row = (const u8*)x + r * n * es;
        u32* rid = ids + r * k;
        // T and I for k == n: every element wins.
        u64 t_key = 0;
        u32 i_lim = (u32)(n - 1);
        if (k < n) {
            u64 mask = 0;
            i64 need = k;
            u32 ties = 0;
            for (int shift = kbits - 8; shift >= 0; shift -= 8) {
                for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
                __syncthreads();
                for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
                    u64 key = topk_key(row, j, dt);
                    if ((key & mask) == t_key) atomicAdd(&hist[(key >> shift) & 255], 1u);
                }
                __syncthreads();
                if (threadIdx.x == 0) radix_pick(hist, need, true, &s_digit, &s_need, &s_size);
                __syncthreads();
                t_key |= (u64)s_digit << shift;
                need = s_need;
                ties = s_size;
                mask |= (u64)255 << shift;
                __syncthreads();
            }
            // `need` of the `ties` elements keyed T win: the ones with the `need` lowest indices.
            if (need < (i64)ties) {
                int top = 0;
                while (top + 8 < 32 && ((u64)(n - 1) >> (top + 8)) != 0) top += 8;
                u32 ipre = 0, imask = 0;
                for (int shift = top; shift >= 0; shift -= 8) {
                    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
                    __syncthreads();
                    for (i64 j = threadIdx.x; j < n; j += blockDim.x)
                        if (((u32)j & imask) == ipre && topk_key(row, j, dt) == t_key)
                            atomicAdd(&hist[((u32)j >> shift) & 255], 1u);
                    __syncthreads();
                    if (threadIdx.x == 0) radix_pick(hist, need, false, &s_digit, &s_need, &s_size);
                    __syncthreads();
                    ipre |= s_digit << shift;
                    need = s_need;
                    imask |= 255u << shift;
                    __syncthreads();
                }
                i_lim = ipre;
            }
        }
        if (threadIdx.x == 0) s_count = 0;
        __syncthreads();
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            u64 key = topk_key(row, j, dt);
            if (key > t_key || (key == t_key && (u32)j <= i_lim)) {
                u32 slot = atomicAdd(&s_count, 1u);
                if ((i64)slot < k) rid[slot] = (u32)j;
            }
        }
        __syncthreads();
        i64 p = 1;
        while (p < k) p <<= 1;
        for (i64 size = 2; size <= p; size <<= 1) {
            for (i64 stride = size >> 1; stride > 0; stride >>= 1) {
                for (i64 t = threadIdx.x; t < p / 2; t += blockDim.x) {
                    i64 i, j;
                    if (stride == size >> 1) {
                        // The first step of a merge compares mirrored positions (so every block sorts descending).
                        i64 blk = t / stride, pos = t % stride;
                        i = blk * size + pos;
                        j = blk * size + size - 1 - pos;
                    } else {
                        i = (t / stride) * 2 * stride + t % stride;
                        j = i + stride;
                    }
                    if (j < k) {
                        u32 a = rid[i], b = rid[j];
                        if (topk_before(row, b, a, dt)) { rid[i] = b; rid[j] = a; }
                    }
                }
                __syncthreads();
            }
        }
        for (i64 t = threadIdx.x; t < k; t += blockDim.x) {
            u32 j = rid[t];
            i64 o = r * k + t;
            if (dt == DT_F64) ((u64*)vals)[o] = ((const u64*)row)[j];
            else if (dt == DT_F32) ((u32*)vals)[o] = ((const u32*)row)[j];
            else {
                u16 h = ((const u16*)row)[j];
                if (dt == DT_F16 && (h & 0x7FFFu) > 0x7C00u) h |= 0x0200u;
                if (dt == DT_BF16 && (h & 0x7FFFu) > 0x7F80u) h |= 0x0040u;
                ((u16*)vals)[o] = h;
            }
        }
        __syncthreads();
    }
}
"#;

/// The elementwise derivative kernels of `autograd::kernels` (ids match `GRAD_*` in `ops.rs`), in the CPU's
/// expressions: `g·f'(x)` for |x|, ReLU, GELU (tanh) and GELU (erf), clamp's pass-through mask, and the share of a
/// maximum's / minimum's gradient that goes to its first operand (1 where it wins, ½ on ties, 0 elsewhere).
pub(crate) const GRAD: &str = r#"
template <typename T> __device__ __forceinline__ T grad_sigm(T x) {
    if (x >= (T)0) return (T)1 / ((T)1 + exp(-x));
    T e = exp(x); return e / ((T)1 + e);
}

template <typename T> __device__ __forceinline__ T grad_apply(T x, T g, int op, T p0, T p1) {
    switch (op) {
        case 0: return g * (x > (T)0 ? (T)1 : x < (T)0 ? (T)-1 : x * (T)0);
        case 1: return g * (x > (T)0 ? (T)1 : x * (T)0);
        case 2: {
            T k = (T)0.044715, a = sqrt((T)2 / (T)3.14159265358979323846);
            T z = a * (x + k * x * x * x), s = grad_sigm(z + z);
            return g * (s + x * s * ((T)1 - s) * (T)2 * a * ((T)1 + (T)3 * k * x * x));
        }
        case 3: {
            T cdf = (T)0.5 * erfc(-x * (T)0.70710678118654752440);
            T pdf = exp(-(x * x) * (T)0.5) / sqrt((T)2 * (T)3.14159265358979323846);
            return g * (cdf + x * pdf);
        }
        case 4: return (x >= p0 && x <= p1) ? g : (T)0;
        case 5: return x > g ? (T)1 : x == g ? (T)0.5 : (T)0;
        default: return x < g ? (T)1 : x == g ? (T)0.5 : (T)0;
    }
}

template <typename T> __device__ void grad_body(const T* x, const T* g, T* y, i64 n, int op, T p0, T p1) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = grad_apply(x[i], g[i], op, p0, p1);
}
extern "C" __global__ void grad_f32(const float* x, const float* g, float* y, i64 n, int op, float p0, float p1) { grad_body(x, g, y, n, op, p0, p1); }
extern "C" __global__ void grad_f64(const double* x, const double* g, double* y, i64 n, int op, double p0, double p1) { grad_body(x, g, y, n, op, p0, p1); }
"#;
