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
"#;

const KEY: &str = "megalodon::kernels_v1";

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
