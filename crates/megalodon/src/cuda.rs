//! CUDA kernels (f32) launched through `effllm-tensor`'s public kernel API: the row convolution behind
//! [`causal_conv`](crate::causal_conv) (direct O(L²) sums, one thread per output; both the causal form and the
//! correlation of the backward rule), the CEMA recurrence (one thread per batch row and channel) and the timestep
//! norm's forward (one thread per batch row and group, statistics in f64). The timestep norm's backward runs on the
//! host. Without the `cuda` feature no tensor can live on a CUDA device, so none of this is reached.

use effllm_tensor::cuda::{Arg, CustomKernel, LaunchDims, Param};
use effllm_tensor::{DType, Device, Tensor};

use crate::cema::CemaCoeffs;
use crate::error::{MegalodonError, Result};

/// The largest CEMA expansion `N` the scan kernel keeps in registers; larger ones run on the host.
pub(crate) const MAX_SCAN_N: usize = 64;

const SOURCE: &str = r#"
extern "C" __global__ void megalodon_conv_rows_v1(const float* x, const float* k, float* out, unsigned int rows,
                                                   unsigned int krows, unsigned int len, int anticausal) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (unsigned long long)rows * len) return;
    unsigned int r = (unsigned int)(idx / len), t = (unsigned int)(idx % len);
    const float* xr = x + (unsigned long long)r * len;
    const float* kr = k + (unsigned long long)(r % krows) * len;
    float acc = 0.0f;
    if (anticausal) {
        for (unsigned int j = 0; j < len - t; ++j) acc += kr[j] * xr[t + j];
    } else {
        for (unsigned int j = 0; j <= t; ++j) acc += kr[j] * xr[t - j];
    }
    out[idx] = acc;
}

extern "C" __global__ void megalodon_cema_scan_v1(const float* x, const float* p, const float* log_mag,
                                                   const float* phase, const float* gre, const float* gim,
                                                   const float* omega, const float* h_re_in, const float* h_im_in,
                                                   float* y, float* h_re_out, float* h_im_out, unsigned int B,
                                                   unsigned int L, unsigned int D, unsigned int N) {
    unsigned int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * D) return;
    unsigned int b = idx / D, d = idx % D;
    float hr[64], hi[64], qr[64], qi[64], pp[64], gr[64], gi[64];
    for (unsigned int n = 0; n < N; ++n) {
        unsigned int i = d * N + n, s = (b * D + d) * N + n;
        float m = expf(log_mag[i]);
        qr[n] = m * cosf(phase[i]);
        qi[n] = m * sinf(phase[i]);
        pp[n] = p[i];
        gr[n] = gre[i];
        gi[n] = gim[i];
        hr[n] = h_re_in[s];
        hi[n] = h_im_in[s];
    }
    float om = omega[d];
    for (unsigned int t = 0; t < L; ++t) {
        unsigned long long o = ((unsigned long long)b * L + t) * D + d;
        float xv = x[o], acc = 0.0f;
        for (unsigned int n = 0; n < N; ++n) {
            float nr = qr[n] * hr[n] - qi[n] * hi[n] + pp[n] * xv;
            float ni = qr[n] * hi[n] + qi[n] * hr[n];
            hr[n] = nr;
            hi[n] = ni;
            acc += gr[n] * nr - gi[n] * ni;
        }
        y[o] = acc + om * xv;
    }
    for (unsigned int n = 0; n < N; ++n) {
        unsigned int s = (b * D + d) * N + n;
        h_re_out[s] = hr[n];
        h_im_out[s] = hi[n];
    }
}

extern "C" __global__ void megalodon_tsn_fwd_v1(const float* x, const float* w, const float* bias,
                                                 const float* mean0, const float* var0, const unsigned int* count0,
                                                 const unsigned char* mask, float* y, float* mean1, float* var1,
                                                 unsigned int* count1, unsigned int B, unsigned int L, unsigned int D,
                                                 unsigned int G, float eps, int has_mask) {
    unsigned int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * G) return;
    unsigned int b = idx / G, g = idx % G, gs = D / G;
    double m1 = mean0[idx], m2 = var0[idx];
    unsigned int cnt = count0[b];
    for (unsigned int t = 0; t < L; ++t) {
        unsigned long long base = ((unsigned long long)b * L + t) * D + (unsigned long long)g * gs;
        if (has_mask && mask[b * L + t]) {
            for (unsigned int i = 0; i < gs; ++i) y[base + i] = 0.0f;
            continue;
        }
        double mu = 0.0, v = 0.0;
        for (unsigned int i = 0; i < gs; ++i) mu += x[base + i];
        mu /= gs;
        for (unsigned int i = 0; i < gs; ++i) { double z = x[base + i] - mu; v += z * z; }
        v /= gs;
        cnt += 1;
        double c2 = 1.0 / cnt, c1 = 1.0 - c2, delta = mu - m1;
        m1 = c1 * m1 + c2 * mu;
        m2 = c1 * m2 + c2 * v + (c1 * delta) * (c2 * delta);
        double r = 1.0 / sqrt(m2 + (double)eps);
        for (unsigned int i = 0; i < gs; ++i) {
            unsigned int f = g * gs + i;
            y[base + i] = (float)((x[base + i] - m1) * r * (1.0 + w[f]) + bias[f]);
        }
    }
    mean1[idx] = (float)m1;
    var1[idx] = (float)m2;
    if (g == 0) count1[b] = cnt;
}
// power_sum: out[r, d, j] = sum_n Re(c[r, d, n] q^(j + shift)); one thread per (r, d, tile of 64 j).
extern "C" __global__ void megalodon_power_sum_v1(const float* cre, const float* cim, const float* m, const float* ph,
                                                   float* out, unsigned int R, unsigned int D, unsigned int N,
                                                   unsigned int L, unsigned int shift) {
    unsigned int tiles = (L + 63) / 64;
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (unsigned long long)R * D * tiles) return;
    unsigned int tile = (unsigned int)(idx % tiles);
    unsigned long long rd = idx / tiles;
    unsigned int d = (unsigned int)(rd % D);
    unsigned int j0 = tile * 64, len = min(64u, L - j0);
    double acc[64];
    for (unsigned int t = 0; t < len; ++t) acc[t] = 0.0;
    for (unsigned int n = 0; n < N; ++n) {
        unsigned int i = d * N + n;
        double cr = cre[rd * N + n], ci = cim[rd * N + n];
        double s1, c1, s0, c0;
        sincos((double)ph[i], &s1, &c1);
        double e1 = exp((double)m[i]);
        double qr = e1 * c1, qi = e1 * s1;
        double k0 = (double)(j0 + shift);
        sincos(k0 * (double)ph[i], &s0, &c0);
        double e0 = exp(k0 * (double)m[i]);
        double wr = e0 * c0, wi = e0 * s0;
        for (unsigned int t = 0; t < len; ++t) {
            acc[t] += cr * wr - ci * wi;
            double nr = wr * qr - wi * qi;
            wi = wr * qi + wi * qr;
            wr = nr;
        }
    }
    for (unsigned int t = 0; t < len; ++t) out[rd * L + j0 + t] = (float)acc[t];
}

// power_sum backward: one thread per (r, d, n); dm and dph per r (summed over r by the caller).
extern "C" __global__ void megalodon_power_sum_bwd_v1(const float* g, const float* cre, const float* cim,
                                                       const float* m, const float* ph, float* dcre, float* dcim,
                                                       float* dm_r, float* dph_r, unsigned int R, unsigned int D,
                                                       unsigned int N, unsigned int L, unsigned int shift) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (unsigned long long)R * D * N) return;
    unsigned int n = (unsigned int)(idx % N);
    unsigned long long rd = idx / N;
    unsigned int d = (unsigned int)(rd % D);
    unsigned int i = d * N + n;
    double mm = m[i], pp = ph[i];
    double cr = cre[idx], ci = cim[idx];
    double s1, c1;
    sincos(pp, &s1, &c1);
    double qr = exp(mm) * c1, qi = exp(mm) * s1;
    double wr = 0.0, wi = 0.0, are = 0.0, aim = 0.0, am = 0.0, aph = 0.0;
    const float* grow = g + rd * L;
    for (unsigned int j = 0; j < L; ++j) {
        if (j % 64 == 0) {
            double k = (double)(j + shift), s, c;
            sincos(k * pp, &s, &c);
            double e = exp(k * mm);
            wr = e * c;
            wi = e * s;
        }
        double gj = grow[j], k = (double)(j + shift);
        are += gj * wr;
        aim += gj * wi;
        am += gj * k * (cr * wr - ci * wi);
        aph += gj * k * (cr * wi + ci * wr);
        double nr = wr * qr - wi * qi;
        wi = wr * qi + wi * qr;
        wr = nr;
    }
    dcre[idx] = (float)are;
    dcim[idx] = (float)(-aim);
    dm_r[idx] = (float)am;
    dph_r[idx] = (float)(-aph);
}

// decayed_sum: S[b, d, n] = sum_j q^(L-1-j) x[b, j, d] (Horner); out = [2, B, D, N]. One thread per (b, d, n).
extern "C" __global__ void megalodon_decayed_sum_v1(const float* x, const float* m, const float* ph, float* out,
                                                     unsigned int B, unsigned int L, unsigned int D, unsigned int N) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)B * D * N;
    if (idx >= total) return;
    unsigned int n = (unsigned int)(idx % N);
    unsigned long long bd = idx / N;
    unsigned int d = (unsigned int)(bd % D), b = (unsigned int)(bd / D);
    unsigned int i = d * N + n;
    double s1, c1;
    sincos((double)ph[i], &s1, &c1);
    double e1 = exp((double)m[i]);
    double qr = e1 * c1, qi = e1 * s1, sr = 0.0, si = 0.0;
    for (unsigned int j = 0; j < L; ++j) {
        double nr = qr * sr - qi * si + (double)x[((unsigned long long)b * L + j) * D + d];
        si = qr * si + qi * sr;
        sr = nr;
    }
    out[idx] = (float)sr;
    out[total + idx] = (float)si;
}

// decayed_sum backward, log-magnitude and phase part: per (b, d, n), summed over b by the caller.
extern "C" __global__ void megalodon_decayed_sum_bwd_q_v1(const float* g, const float* x, const float* m,
                                                           const float* ph, float* dm_b, float* dph_b,
                                                           unsigned int B, unsigned int L, unsigned int D,
                                                           unsigned int N) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)B * D * N;
    if (idx >= total) return;
    unsigned int n = (unsigned int)(idx % N);
    unsigned long long bd = idx / N;
    unsigned int d = (unsigned int)(bd % D), b = (unsigned int)(bd / D);
    unsigned int i = d * N + n;
    double s1, c1;
    sincos((double)ph[i], &s1, &c1);
    double e1 = exp((double)m[i]);
    double qr = e1 * c1, qi = e1 * s1, sr = 0.0, si = 0.0, tr = 0.0, ti = 0.0;
    for (unsigned int j = 0; j < L; ++j) {
        double ar = tr + sr, ai = ti + si;
        tr = qr * ar - qi * ai;
        ti = qr * ai + qi * ar;
        double nr = qr * sr - qi * si + (double)x[((unsigned long long)b * L + j) * D + d];
        si = qr * si + qi * sr;
        sr = nr;
    }
    double gre = g[idx], gim = g[total + idx];
    dm_b[idx] = (float)(gre * tr + gim * ti);
    dph_b[idx] = (float)(gim * tr - gre * ti);
}

// decayed_sum backward, input part: dx[b, j, d] = sum_n Re(conj(G) q^(L-1-j)); one thread per (b, d, tile of 64 j).
extern "C" __global__ void megalodon_decayed_sum_bwd_x_v1(const float* g, const float* m, const float* ph, float* dx,
                                                           unsigned int B, unsigned int L, unsigned int D,
                                                           unsigned int N) {
    unsigned int tiles = (L + 63) / 64;
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (unsigned long long)B * D * tiles) return;
    unsigned int tile = (unsigned int)(idx % tiles);
    unsigned long long bd = idx / tiles;
    unsigned int d = (unsigned int)(bd % D), b = (unsigned int)(bd / D);
    unsigned int j0 = tile * 64, j1 = min(j0 + 64u, L) - 1;
    unsigned long long total = (unsigned long long)B * D * N;
    double acc[64];
    for (unsigned int t = 0; t <= j1 - j0; ++t) acc[t] = 0.0;
    for (unsigned int n = 0; n < N; ++n) {
        unsigned int i = d * N + n;
        double gre = g[bd * N + n], gim = g[total + bd * N + n];
        double s1, c1, s0, c0;
        sincos((double)ph[i], &s1, &c1);
        double e1 = exp((double)m[i]);
        double qr = e1 * c1, qi = e1 * s1;
        double k0 = (double)(L - 1 - j1);
        sincos(k0 * (double)ph[i], &s0, &c0);
        double e0 = exp(k0 * (double)m[i]);
        double wr = e0 * c0, wi = e0 * s0;
        for (unsigned int j = j1 + 1; j-- > j0;) {
            acc[j - j0] += gre * wr + gim * wi;
            double nr = wr * qr - wi * qi;
            wi = wr * qi + wi * qr;
            wr = nr;
        }
    }
    for (unsigned int t = 0; t <= j1 - j0; ++t) dx[((unsigned long long)b * L + j0 + t) * D + d] = (float)acc[t];
}

// Timestep-norm backward: one thread per (b, g); scratch dc1, dc2 = [B, G, L]; dw, db partial per b ([B, D]).
extern "C" __global__ void megalodon_tsn_bwd_v1(const float* x, const float* gy, const float* w, const float* mean0,
                                                 const float* var0, const unsigned int* count0,
                                                 const unsigned char* mask, float* dx, float* dw_b, float* db_b,
                                                 float* dmean, float* dvar, float* dc1, float* dc2, unsigned int B,
                                                 unsigned int L, unsigned int D, unsigned int G, float eps,
                                                 int has_mask) {
    unsigned int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * G) return;
    unsigned int b = idx / G, g = idx % G, gs = D / G;
    double c0 = count0[b], mu0 = mean0[idx], v0 = var0[idx];
    double s1 = c0 * mu0, s2 = c0 * (v0 + mu0 * mu0), a = c0;
    unsigned long long sc = (unsigned long long)idx * L;
    for (unsigned int t = 0; t < L; ++t) {
        unsigned long long base = ((unsigned long long)b * L + t) * D + (unsigned long long)g * gs;
        if (has_mask && mask[b * L + t]) {
            dc1[sc + t] = 0.0f;
            dc2[sc + t] = 0.0f;
            for (unsigned int k = 0; k < gs; ++k) dx[base + k] = 0.0f;
            continue;
        }
        double mu = 0.0, e = 0.0;
        for (unsigned int k = 0; k < gs; ++k) { double z = x[base + k]; mu += z; e += z * z; }
        a += 1.0;
        s1 += mu / gs;
        s2 += e / gs;
        double mt = s1 / a, m2 = s2 / a - mt * mt;
        if (m2 < 0.0) m2 = 0.0;
        double r = 1.0 / sqrt(m2 + (double)eps), sg = 0.0, sgx = 0.0;
        for (unsigned int k = 0; k < gs; ++k) {
            unsigned int f = g * gs + k;
            double z = x[base + k], gv = gy[base + k];
            dw_b[(unsigned long long)b * D + f] += (float)(gv * (z - mt) * r);
            db_b[(unsigned long long)b * D + f] += (float)gv;
            double gh = gv * (1.0 + w[f]);
            dx[base + k] = (float)(gh * r);
            sg += gh;
            sgx += gh * (z - mt);
        }
        double dm = -r * sg, dm2 = -0.5 * r * r * r * sgx;
        dc1[sc + t] = (float)((dm - 2.0 * mt * dm2) / a);
        dc2[sc + t] = (float)(dm2 / a);
    }
    double acc1 = 0.0, acc2 = 0.0;
    for (unsigned int t = L; t-- > 0;) {
        if (has_mask && mask[b * L + t]) continue;
        acc1 += dc1[sc + t];
        acc2 += dc2[sc + t];
        unsigned long long base = ((unsigned long long)b * L + t) * D + (unsigned long long)g * gs;
        for (unsigned int k = 0; k < gs; ++k) dx[base + k] += (float)((acc1 + 2.0 * x[base + k] * acc2) / gs);
    }
    dmean[idx] = (float)(c0 * acc1 + 2.0 * c0 * mu0 * acc2);
    dvar[idx] = (float)(c0 * acc2);
}
"#;

const KEY: &str = "megalodon::kernels_v2";

fn kernel(function: &str, params: &[Param]) -> CustomKernel {
    CustomKernel::new(KEY, SOURCE, function, params)
}

fn f32c(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

fn u32_arg(v: usize, what: &str) -> Result<Arg<'static>> {
    u32::try_from(v).map(Arg::U32).map_err(|_| MegalodonError::InvalidArgument {
        op: "megalodon CUDA kernel",
        msg: format!("{what} = {v} exceeds u32"),
    })
}

/// `out[r, t] = Σ_j k[r mod krows, j] · x[r, t ∓ j]` (see [`conv_rows`](crate::conv::conv_rows)) on the GPU.
pub(crate) fn conv_rows(
    x: &Tensor,
    k: &Tensor,
    rows: usize,
    krows: usize,
    len: usize,
    anticausal: bool,
) -> Result<Tensor> {
    let dev = x.device();
    let (xc, kc) = (f32c(x)?, f32c(k)?);
    let mut out = Tensor::zeros(x.shape(), DType::F32, &dev)?;
    let mut args = [
        Arg::In(&xc),
        Arg::In(&kc),
        Arg::Out(&mut out),
        u32_arg(rows, "rows")?,
        u32_arg(krows, "krows")?,
        u32_arg(len, "len")?,
        Arg::I32(i32::from(anticausal)),
    ];
    let params = [
        Param::In(DType::F32),
        Param::In(DType::F32),
        Param::Out(DType::F32),
        Param::U32,
        Param::U32,
        Param::U32,
        Param::I32,
    ];
    kernel("megalodon_conv_rows_v1", &params).launch(dev, LaunchDims::linear(rows * len), &mut args, 1)?;
    Ok(out.to_dtype(x.dtype())?)
}

/// The CEMA recurrence on the GPU: `(y [B, L, D], h_re, h_im [B, D, N])`.
pub(crate) fn cema_scan(
    x: &Tensor,
    co: &CemaCoeffs,
    omega: &Tensor,
    h_re: &Tensor,
    h_im: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev: Device = x.device();
    let [b, l, d] = *x.shape() else {
        return Err(MegalodonError::Shape {
            op: "cema_scan (CUDA)",
            expected: "x = [B, L, D]".into(),
            found: x.shape().to_vec(),
        });
    };
    let n = co.p.shape()[1];
    let ins = [x, &co.p, &co.log_mag, &co.phase, &co.gamma_re, &co.gamma_im, omega, h_re, h_im].map(f32c);
    let [xc, p, lm, ph, gr, gi, om, hr, hi] = ins;
    let (xc, p, lm, ph, gr, gi, om, hr, hi) = (xc?, p?, lm?, ph?, gr?, gi?, om?, hr?, hi?);
    let mut y = Tensor::zeros(&[b, l, d], DType::F32, &dev)?;
    let mut hro = Tensor::zeros(&[b, d, n], DType::F32, &dev)?;
    let mut hio = Tensor::zeros(&[b, d, n], DType::F32, &dev)?;
    let mut args = [
        Arg::In(&xc),
        Arg::In(&p),
        Arg::In(&lm),
        Arg::In(&ph),
        Arg::In(&gr),
        Arg::In(&gi),
        Arg::In(&om),
        Arg::In(&hr),
        Arg::In(&hi),
        Arg::Out(&mut y),
        Arg::Out(&mut hro),
        Arg::Out(&mut hio),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
    ];
    let mut params = vec![Param::In(DType::F32); 9];
    params.extend([Param::Out(DType::F32); 3]);
    params.extend([Param::U32; 4]);
    kernel("megalodon_cema_scan_v1", &params).launch(dev, LaunchDims::linear(b * d), &mut args, 1)?;
    let dt = x.dtype();
    Ok((y.to_dtype(dt)?, hro.to_dtype(dt)?, hio.to_dtype(dt)?))
}

/// The timestep norm's forward on the GPU: `(y, count, mean, var)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn timestep_norm(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    count0: &[u64],
    mean0: &Tensor,
    var0: &Tensor,
    mask: Option<&[bool]>,
    (b, l, d, g): (usize, usize, usize, usize),
    eps: f64,
) -> Result<(Tensor, Vec<u64>, Tensor, Tensor)> {
    let dev = x.device();
    let counts: Vec<u32> = count0
        .iter()
        .map(|&c| {
            u32::try_from(c).map_err(|_| MegalodonError::InvalidArgument {
                op: "timestep_norm (CUDA)",
                msg: format!("count {c} exceeds u32"),
            })
        })
        .collect::<Result<_>>()?;
    let counts = Tensor::from_vec(counts, &[b], &Device::Cpu)?.to_device(&dev)?;
    let mask_u8: Vec<u8> = match mask {
        Some(m) => m.iter().map(|&v| u8::from(v)).collect(),
        None => vec![0; b * l],
    };
    let mask_t = Tensor::from_vec(mask_u8, &[b * l], &Device::Cpu)?.to_device(&dev)?;
    let (xc, wc, bc, mc, vc) = (f32c(x)?, f32c(w)?, f32c(bias)?, f32c(mean0)?, f32c(var0)?);
    let mut y = Tensor::zeros(&[b, l, d], DType::F32, &dev)?;
    let mut mean1 = Tensor::zeros(&[b, g], DType::F32, &dev)?;
    let mut var1 = Tensor::zeros(&[b, g], DType::F32, &dev)?;
    let mut count1 = Tensor::zeros(&[b], DType::U32, &dev)?;
    let mut args = [
        Arg::In(&xc),
        Arg::In(&wc),
        Arg::In(&bc),
        Arg::In(&mc),
        Arg::In(&vc),
        Arg::In(&counts),
        Arg::In(&mask_t),
        Arg::Out(&mut y),
        Arg::Out(&mut mean1),
        Arg::Out(&mut var1),
        Arg::Out(&mut count1),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(g, "G")?,
        Arg::F32(eps as f32),
        Arg::I32(i32::from(mask.is_some())),
    ];
    let mut params = vec![Param::In(DType::F32); 5];
    params.extend([Param::In(DType::U32), Param::In(DType::U8)]);
    params.extend([Param::Out(DType::F32); 3]);
    params.push(Param::Out(DType::U32));
    params.extend([Param::U32; 4]);
    params.extend([Param::F32, Param::I32]);
    kernel("megalodon_tsn_fwd_v1", &params).launch(dev, LaunchDims::linear(b * g), &mut args, 1)?;
    let count = count1.to_device(&Device::Cpu)?.to_vec::<u32>()?.into_iter().map(u64::from).collect();
    let dt = x.dtype();
    Ok((y.to_dtype(dt)?, count, mean1.to_dtype(dt)?, var1.to_dtype(dt)?))
}

fn tiles(len: usize) -> usize {
    len.div_ceil(64)
}

/// [`power_sum`](crate::cema_ops::power_sum) on the GPU: `[R, D, len]`.
pub(crate) fn power_sum(
    cre: &Tensor,
    cim: &Tensor,
    m: &Tensor,
    ph: &Tensor,
    len: usize,
    shift: usize,
) -> Result<Tensor> {
    let dev = cre.device();
    let [r, d, n] = *cre.shape() else { return Err(rank_error("power_sum")) };
    let (a, b, c, e) = (f32c(cre)?, f32c(cim)?, f32c(m)?, f32c(ph)?);
    let mut out = Tensor::zeros(&[r, d, len], DType::F32, &dev)?;
    let mut args = [
        Arg::In(&a),
        Arg::In(&b),
        Arg::In(&c),
        Arg::In(&e),
        Arg::Out(&mut out),
        u32_arg(r, "R")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
        u32_arg(len, "L")?,
        u32_arg(shift, "shift")?,
    ];
    let mut params = vec![Param::In(DType::F32); 4];
    params.push(Param::Out(DType::F32));
    params.extend([Param::U32; 5]);
    kernel("megalodon_power_sum_v1", &params).launch(dev, LaunchDims::linear(r * d * tiles(len)), &mut args, 1)?;
    Ok(out.to_dtype(cre.dtype())?)
}

fn rank_error(op: &'static str) -> MegalodonError {
    MegalodonError::InvalidArgument { op, msg: "unexpected operand rank".into() }
}

/// The backward of [`power_sum`]: `(∂c_re, ∂c_im, ∂m, ∂φ)`.
pub(crate) fn power_sum_grad(
    g: &Tensor,
    cre: &Tensor,
    cim: &Tensor,
    m: &Tensor,
    ph: &Tensor,
    shift: usize,
) -> Result<[Tensor; 4]> {
    let dev = g.device();
    let [r, d, n] = *cre.shape() else { return Err(rank_error("power_sum backward")) };
    let len = g.shape()[2];
    let (gg, a, b, c, e) = (f32c(g)?, f32c(cre)?, f32c(cim)?, f32c(m)?, f32c(ph)?);
    let zeros = || Tensor::zeros(&[r, d, n], DType::F32, &dev);
    let (mut dcre, mut dcim, mut dm, mut dph) = (zeros()?, zeros()?, zeros()?, zeros()?);
    let mut args = [
        Arg::In(&gg),
        Arg::In(&a),
        Arg::In(&b),
        Arg::In(&c),
        Arg::In(&e),
        Arg::Out(&mut dcre),
        Arg::Out(&mut dcim),
        Arg::Out(&mut dm),
        Arg::Out(&mut dph),
        u32_arg(r, "R")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
        u32_arg(len, "L")?,
        u32_arg(shift, "shift")?,
    ];
    let mut params = vec![Param::In(DType::F32); 5];
    params.extend([Param::Out(DType::F32); 4]);
    params.extend([Param::U32; 5]);
    kernel("megalodon_power_sum_bwd_v1", &params).launch(dev, LaunchDims::linear(r * d * n), &mut args, 1)?;
    let dt = cre.dtype();
    Ok([dcre.to_dtype(dt)?, dcim.to_dtype(dt)?, dm.sum(0, false)?.to_dtype(dt)?, dph.sum(0, false)?.to_dtype(dt)?])
}

/// [`decayed_sum`](crate::cema_ops::decayed_sum) on the GPU: `[2, B, D, N]`.
pub(crate) fn decayed_sum(x: &Tensor, m: &Tensor, ph: &Tensor) -> Result<Tensor> {
    let dev = x.device();
    let [b, l, d] = *x.shape() else { return Err(rank_error("decayed_sum")) };
    let n = m.shape()[1];
    let (xc, mc, pc) = (f32c(x)?, f32c(m)?, f32c(ph)?);
    let mut out = Tensor::zeros(&[2, b, d, n], DType::F32, &dev)?;
    let mut args = [
        Arg::In(&xc),
        Arg::In(&mc),
        Arg::In(&pc),
        Arg::Out(&mut out),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
    ];
    let mut params = vec![Param::In(DType::F32); 3];
    params.push(Param::Out(DType::F32));
    params.extend([Param::U32; 4]);
    kernel("megalodon_decayed_sum_v1", &params).launch(dev, LaunchDims::linear(b * d * n), &mut args, 1)?;
    Ok(out.to_dtype(x.dtype())?)
}

/// The backward of [`decayed_sum`]: `(∂x, ∂m, ∂φ)`.
pub(crate) fn decayed_sum_grad(g: &Tensor, x: &Tensor, m: &Tensor, ph: &Tensor) -> Result<[Tensor; 3]> {
    let dev = x.device();
    let [b, l, d] = *x.shape() else { return Err(rank_error("decayed_sum backward")) };
    let n = m.shape()[1];
    let (gg, xc, mc, pc) = (f32c(g)?, f32c(x)?, f32c(m)?, f32c(ph)?);
    let (mut dm, mut dph) =
        (Tensor::zeros(&[b, d, n], DType::F32, &dev)?, Tensor::zeros(&[b, d, n], DType::F32, &dev)?);
    let mut args = [
        Arg::In(&gg),
        Arg::In(&xc),
        Arg::In(&mc),
        Arg::In(&pc),
        Arg::Out(&mut dm),
        Arg::Out(&mut dph),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
    ];
    let mut params = vec![Param::In(DType::F32); 4];
    params.extend([Param::Out(DType::F32); 2]);
    params.extend([Param::U32; 4]);
    kernel("megalodon_decayed_sum_bwd_q_v1", &params).launch(dev, LaunchDims::linear(b * d * n), &mut args, 1)?;
    let mut dx = Tensor::zeros(&[b, l, d], DType::F32, &dev)?;
    let mut args = [
        Arg::In(&gg),
        Arg::In(&mc),
        Arg::In(&pc),
        Arg::Out(&mut dx),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(n, "N")?,
    ];
    let mut params = vec![Param::In(DType::F32); 3];
    params.push(Param::Out(DType::F32));
    params.extend([Param::U32; 4]);
    kernel("megalodon_decayed_sum_bwd_x_v1", &params).launch(
        dev,
        LaunchDims::linear(b * d * tiles(l)),
        &mut args,
        1,
    )?;
    let dt = x.dtype();
    Ok([dx.to_dtype(dt)?, dm.sum(0, false)?.to_dtype(dt)?, dph.sum(0, false)?.to_dtype(dt)?])
}

/// The timestep norm's backward on the GPU: `(∂x, ∂w, ∂b, ∂mean₀, ∂var₀)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn timestep_norm_grad(
    x: &Tensor,
    g: &Tensor,
    w: &Tensor,
    count0: &[u64],
    mean0: &Tensor,
    var0: &Tensor,
    mask: Option<&[bool]>,
    (b, l, d, groups): (usize, usize, usize, usize),
    eps: f64,
) -> Result<[Tensor; 5]> {
    let dev = x.device();
    let counts: Vec<u32> = count0
        .iter()
        .map(|&c| {
            u32::try_from(c).map_err(|_| MegalodonError::InvalidArgument {
                op: "timestep_norm (CUDA)",
                msg: format!("count {c} exceeds u32"),
            })
        })
        .collect::<Result<_>>()?;
    let counts = Tensor::from_vec(counts, &[b], &Device::Cpu)?.to_device(&dev)?;
    let mask_u8: Vec<u8> = match mask {
        Some(m) => m.iter().map(|&v| u8::from(v)).collect(),
        None => vec![0; b * l],
    };
    let mask_t = Tensor::from_vec(mask_u8, &[b * l], &Device::Cpu)?.to_device(&dev)?;
    let (xc, gc, wc, mc, vc) = (f32c(x)?, f32c(g)?, f32c(w)?, f32c(mean0)?, f32c(var0)?);
    let mut dx = Tensor::zeros(&[b, l, d], DType::F32, &dev)?;
    let mut dw = Tensor::zeros(&[b, d], DType::F32, &dev)?;
    let mut db = Tensor::zeros(&[b, d], DType::F32, &dev)?;
    let mut dmean = Tensor::zeros(&[b, groups], DType::F32, &dev)?;
    let mut dvar = Tensor::zeros(&[b, groups], DType::F32, &dev)?;
    let mut dc1 = Tensor::zeros(&[b, groups, l], DType::F32, &dev)?;
    let mut dc2 = Tensor::zeros(&[b, groups, l], DType::F32, &dev)?;
    let mut args = [
        Arg::In(&xc),
        Arg::In(&gc),
        Arg::In(&wc),
        Arg::In(&mc),
        Arg::In(&vc),
        Arg::In(&counts),
        Arg::In(&mask_t),
        Arg::Out(&mut dx),
        Arg::Out(&mut dw),
        Arg::Out(&mut db),
        Arg::Out(&mut dmean),
        Arg::Out(&mut dvar),
        Arg::Out(&mut dc1),
        Arg::Out(&mut dc2),
        u32_arg(b, "B")?,
        u32_arg(l, "L")?,
        u32_arg(d, "D")?,
        u32_arg(groups, "G")?,
        Arg::F32(eps as f32),
        Arg::I32(i32::from(mask.is_some())),
    ];
    let mut params = vec![Param::In(DType::F32); 5];
    params.extend([Param::In(DType::U32), Param::In(DType::U8)]);
    params.extend([Param::Out(DType::F32); 7]);
    params.extend([Param::U32; 4]);
    params.extend([Param::F32, Param::I32]);
    kernel("megalodon_tsn_bwd_v1", &params).launch(dev, LaunchDims::linear(b * groups), &mut args, 1)?;
    let dt = x.dtype();
    Ok([
        dx.to_dtype(dt)?,
        dw.sum(0, false)?.to_dtype(dt)?,
        db.sum(0, false)?.to_dtype(dt)?,
        dmean.to_dtype(dt)?,
        dvar.to_dtype(dt)?,
    ])
}
