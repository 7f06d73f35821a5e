//! The f64 oracle: naive, obviously correct loops for every piece of Megalodon, written straight from the
//! equations of the crate docs. Every fast path of the crate is property-tested against these functions.
//!
//! Layouts are row-major `Vec<f64>`: activations `[B, L, D]`, CEMA parameters `[D, N]` / `[D]`, CEMA states
//! `[B, D, N]` complex, TSN states `[B]` / `[B, G]`.

use std::collections::HashMap;

use realfft::num_complex::Complex64;

use crate::config::MegalodonConfig;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Raw CEMA parameters of one layer, as stored (the reference code's parameterisation).
#[derive(Clone, Debug, PartialEq)]
pub struct CemaParams {
    /// Channels `D`.
    pub d: usize,
    /// Expansion `N`.
    pub n: usize,
    /// `[D, N]`, `p = σ(alpha)`.
    pub alpha: Vec<f64>,
    /// `[D, N]`, damping: `|q| = 1 − σ(alpha)σ(delta)`.
    pub delta: Vec<f64>,
    /// `[D]`, base frequency `σ(theta)`.
    pub theta: Vec<f64>,
    /// `[D, N]`, real part of the output projection.
    pub gamma_re: Vec<f64>,
    /// `[D, N]`, imaginary part of the output projection.
    pub gamma_im: Vec<f64>,
    /// `[D]`, the skip term.
    pub omega: Vec<f64>,
}

/// The derived coefficients `p`, `q` and `γ/√N`, each `[D, N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CemaCoeffs {
    /// `p = σ(alpha)`, real in (0, 1).
    pub p: Vec<f64>,
    /// `q = (1 − σ(alpha)σ(delta)) · e^{iφ}`, `φ[d, n] = σ(theta_d) · 2π(n + 1)/N`.
    pub q: Vec<Complex64>,
    /// `γ = (gamma_re + i gamma_im)/√N`.
    pub gamma: Vec<Complex64>,
}

/// The coefficients of the reference's `_calc_coeffs` (index `n` runs 1..N there, 0..N−1 here, hence `n + 1`).
pub fn cema_coeffs(c: &CemaParams) -> CemaCoeffs {
    let (d, n) = (c.d, c.n);
    let mut out = CemaCoeffs { p: vec![0.0; d * n], q: vec![Complex64::new(0.0, 0.0); d * n], gamma: vec![] };
    for di in 0..d {
        let base = sigmoid(c.theta[di]) * 2.0 * std::f64::consts::PI / n as f64;
        for ni in 0..n {
            let i = di * n + ni;
            let p = sigmoid(c.alpha[i]);
            out.p[i] = p;
            out.q[i] = Complex64::from_polar(1.0 - p * sigmoid(c.delta[i]), base * (ni + 1) as f64);
        }
    }
    let s = (n as f64).sqrt();
    out.gamma = c.gamma_re.iter().zip(&c.gamma_im).map(|(&r, &i)| Complex64::new(r / s, i / s)).collect();
    out
}

/// The recurrence `h_t = p ⊙ x_t + q ⊙ h_{t−1}`, `y_t = Re(Σ_n γ_n h_{t,n}) + ω x_t` over `x` = `[B, L, D]` from the
/// state `hx` = `[B, D, N]`; returns `y` and the state after the last step.
pub fn cema_scan(c: &CemaParams, x: &[f64], b: usize, l: usize, hx: &[Complex64]) -> (Vec<f64>, Vec<Complex64>) {
    let (d, n) = (c.d, c.n);
    let co = cema_coeffs(c);
    let mut h = hx.to_vec();
    let mut y = vec![0.0; b * l * d];
    for bi in 0..b {
        for t in 0..l {
            for di in 0..d {
                let xv = x[(bi * l + t) * d + di];
                let mut acc = 0.0;
                for ni in 0..n {
                    let i = di * n + ni;
                    let hs = &mut h[(bi * d + di) * n + ni];
                    *hs = co.q[i] * *hs + co.p[i] * xv;
                    acc += (co.gamma[i] * *hs).re;
                }
                y[(bi * l + t) * d + di] = acc + c.omega[di] * xv;
            }
        }
    }
    (y, h)
}

/// The paper's form of the recurrence (phase on both terms): `h_t = e^{iφ}(p x_t + |q| h_{t−1})`,
/// `y_t = Re(Σ_n η_n h_{t,n}) + ω x_t`, with `η` = `[D, N]` (already divided by √N).
pub fn cema_scan_paper(c: &CemaParams, eta: &[Complex64], x: &[f64], b: usize, l: usize) -> Vec<f64> {
    let (d, n) = (c.d, c.n);
    let co = cema_coeffs(c);
    let mut h = vec![Complex64::new(0.0, 0.0); b * d * n];
    let mut y = vec![0.0; b * l * d];
    for bi in 0..b {
        for t in 0..l {
            for di in 0..d {
                let xv = x[(bi * l + t) * d + di];
                let mut acc = 0.0;
                for ni in 0..n {
                    let i = di * n + ni;
                    let rot = Complex64::from_polar(1.0, co.q[i].arg());
                    let hs = &mut h[(bi * d + di) * n + ni];
                    *hs = rot * (*hs * co.q[i].norm() + co.p[i] * xv);
                    acc += (eta[i] * *hs).re;
                }
                y[(bi * l + t) * d + di] = acc + c.omega[di] * xv;
            }
        }
    }
    y
}

/// The convolution kernel `k[d, j] = Re(Σ_n γ_n p_n q_n^j)` for `j < len`, `[D, len]`.
pub fn cema_kernel(c: &CemaParams, len: usize) -> Vec<f64> {
    let co = cema_coeffs(c);
    let mut k = vec![0.0; c.d * len];
    for di in 0..c.d {
        for j in 0..len {
            k[di * len + j] = (0..c.n)
                .map(|ni| {
                    let i = di * c.n + ni;
                    (co.gamma[i] * co.p[i] * co.q[i].powi(j as i32)).re
                })
                .sum();
        }
    }
    k
}

/// The direct O(L²) causal convolution of rows: `out[r, t] = Σ_{j ≤ t} k[r mod krows, j] · x[r, t − j]`, with
/// `x` = `[rows, len]` and `k` = `[krows, len]`.
pub fn causal_conv(x: &[f64], k: &[f64], rows: usize, krows: usize, len: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * len];
    for r in 0..rows {
        let kr = &k[(r % krows) * len..(r % krows + 1) * len];
        for t in 0..len {
            out[r * len + t] = (0..=t).map(|j| kr[j] * x[r * len + t - j]).sum();
        }
    }
    out
}

/// A timestep-norm state: per batch row the number of steps seen, and per group the running mean and population
/// variance.
#[derive(Clone, Debug, PartialEq)]
pub struct TsnState {
    /// `[B]`
    pub count: Vec<u64>,
    /// `[B, G]`
    pub mean: Vec<f64>,
    /// `[B, G]`
    pub var: Vec<f64>,
}

/// Timestep normalisation in closed form: for an unmasked step `t` of batch row `b` and group `g`, with the prior
/// `(c₀, μ₀, v₀)` from `state` and `S` the unmasked steps up to and including `t`, `n = c₀ + |S|`,
/// `m = (c₀μ₀ + Σ_{s∈S} mean_i x_{s,i}) / n`, `v = (c₀(v₀ + (μ₀ − m)²) + Σ_{s∈S} mean_i (x_{s,i} − m)²) / n` (two
/// passes over the whole prefix), and `y_{t,i} = (x_{t,i} − m)/√(v + ε) · (1 + w_i) + b_i`. Masked steps output 0
/// and change nothing. `x` = `[B, L, D]`, `mask` = `[B, L]` (true = padding).
#[allow(clippy::too_many_arguments)]
pub fn timestep_norm(
    x: &[f64],
    b: usize,
    l: usize,
    d: usize,
    groups: usize,
    w: &[f64],
    bias: &[f64],
    eps: f64,
    state: &mut TsnState,
    mask: Option<&[bool]>,
) -> Vec<f64> {
    let gs = d / groups;
    let mut y = vec![0.0; b * l * d];
    for bi in 0..b {
        let c0 = state.count[bi] as f64;
        // Mean and population variance of the prior plus the steps `seen`, for group `g`.
        let stats = |g: usize, seen: &[usize]| -> (f64, f64) {
            let (mu0, v0) = (state.mean[bi * groups + g], state.var[bi * groups + g]);
            let n = c0 + seen.len() as f64;
            let feats = g * gs..(g + 1) * gs;
            let step_mean = |s: usize| feats.clone().map(|i| x[(bi * l + s) * d + i]).sum::<f64>() / gs as f64;
            let m = (c0 * mu0 + seen.iter().map(|&s| step_mean(s)).sum::<f64>()) / n;
            let dev = |s: usize| feats.clone().map(|i| (x[(bi * l + s) * d + i] - m).powi(2)).sum::<f64>() / gs as f64;
            let v = (c0 * (v0 + (mu0 - m).powi(2)) + seen.iter().map(|&s| dev(s)).sum::<f64>()) / n;
            (m, v)
        };
        let mut seen: Vec<usize> = Vec::new();
        for t in 0..l {
            if mask.is_some_and(|m| m[bi * l + t]) {
                continue;
            }
            seen.push(t);
            for g in 0..groups {
                let (m, v) = stats(g, &seen);
                for i in g * gs..(g + 1) * gs {
                    let xi = x[(bi * l + t) * d + i];
                    y[(bi * l + t) * d + i] = (xi - m) / (v + eps).sqrt() * (1.0 + w[i]) + bias[i];
                }
            }
        }
        if !seen.is_empty() {
            let new: Vec<(f64, f64)> = (0..groups).map(|g| stats(g, &seen)).collect();
            for (g, (m, v)) in new.into_iter().enumerate() {
                state.mean[bi * groups + g] = m;
                state.var[bi * groups + g] = v;
            }
        }
        state.count[bi] += seen.len() as u64;
    }
    y
}

/// Interleaved RoPE of one head vector at position `pos`: pairs `(x₂ᵢ, x₂ᵢ₊₁)` rotate by `pos · base^(−2i/dz)`.
pub fn rope(v: &[f64], pos: usize, base: f64) -> Vec<f64> {
    let dz = v.len();
    let mut out = v.to_vec();
    for i in 0..dz / 2 {
        let a = pos as f64 * base.powf(-2.0 * i as f64 / dz as f64);
        let (s, c) = a.sin_cos();
        out[2 * i] = v[2 * i] * c - v[2 * i + 1] * s;
        out[2 * i + 1] = v[2 * i] * s + v[2 * i + 1] * c;
    }
    out
}

/// Chunked causal attention from position 0: `q`, `k` = `[B, L, H, dz]`, `v` = `[B, L, H, dv]` → `[B, L, H·dv]`.
/// Query `t` sees keys `s ≤ t` of its own chunk (`⌊s/C⌋ = ⌊t/C⌋`); q and k are rotated at `t mod C`; scores are
/// `scale · q·k` (no 1/√d in Megalodon: `scale` = 1).
#[allow(clippy::too_many_arguments)]
pub fn chunked_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (b, l, h, dz, dv): (usize, usize, usize, usize, usize),
    chunk: usize,
    rope_base: f64,
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; b * l * h * dv];
    let qv = |bi: usize, t: usize, hi: usize| &q[((bi * l + t) * h + hi) * dz..((bi * l + t) * h + hi + 1) * dz];
    let kv = |bi: usize, t: usize, hi: usize| &k[((bi * l + t) * h + hi) * dz..((bi * l + t) * h + hi + 1) * dz];
    for bi in 0..b {
        for hi in 0..h {
            for t in 0..l {
                let qr = rope(qv(bi, t, hi), t % chunk, rope_base);
                let start = t / chunk * chunk;
                let scores: Vec<f64> = (start..=t)
                    .map(|s| {
                        let kr = rope(kv(bi, s, hi), s % chunk, rope_base);
                        scale * qr.iter().zip(&kr).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, s) in (start..=t).enumerate() {
                    for c in 0..dv {
                        out[((bi * l + t) * h + hi) * dv + c] += e[j] / z * v[((bi * l + s) * h + hi) * dv + c];
                    }
                }
            }
        }
    }
    out
}

/// `x W ᵀ (+ b)` for `x` = `[rows, k]`, `w` = `[n, k]`.
pub fn linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, rows: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            y[r * n + o] = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum::<f64>() + bias.map_or(0.0, |b| b[o]);
        }
    }
    y
}

/// RMSNorm of each row of width `d`: `x / √(mean(x²) + ε) · (1 + w)` (no weight: `w` = 0).
pub fn rms_norm(x: &[f64], d: usize, w: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let mut y = x.to_vec();
    for row in y.chunks_mut(d) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v *= r * (1.0 + w.map_or(0.0, |w| w[i]));
        }
    }
    y
}

/// LayerNorm of each row of width `d`: `(x − μ)/√(σ² + ε) · (1 + w) + b` (population σ²).
pub fn layer_norm(x: &[f64], d: usize, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let mut y = x.to_vec();
    for row in y.chunks_mut(d) {
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
        for (i, v) in row.iter_mut().enumerate() {
            *v = (*v - mu) / (var + eps).sqrt() * (1.0 + w[i]) + b[i];
        }
    }
    y
}

fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// The whole model in f64, read from the parameter names of
/// [`Megalodon::named_parameters`](crate::Megalodon::named_parameters): a forward over a sequence from the fresh
/// state (TSN count 0, CEMA state 0, empty attention cache).
#[derive(Clone, Debug)]
pub struct ReferenceMegalodon {
    cfg: MegalodonConfig,
    params: HashMap<String, Vec<f64>>,
}

impl ReferenceMegalodon {
    /// The oracle over `params` (name → values in f64, as `named_parameters` lists them).
    pub fn new(cfg: MegalodonConfig, params: HashMap<String, Vec<f64>>) -> ReferenceMegalodon {
        ReferenceMegalodon { cfg, params }
    }

    fn p(&self, name: &str) -> &[f64] {
        self.params.get(name).map(Vec::as_slice).unwrap_or_else(|| panic!("reference: no parameter {name}"))
    }

    /// Logits `[B, L, V]` for `tokens` (`B` rows of `L` ids).
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Vec<f64> {
        let c = &self.cfg;
        let (b, l, d, v) = (tokens.len(), tokens[0].len(), c.model_dim, c.vocab_size);
        let emb = self.p("embed");
        let scale = if c.scale_emb { (d as f64).sqrt() } else { 1.0 };
        let mut x: Vec<f64> = tokens
            .iter()
            .flatten()
            .flat_map(|&t| emb[t as usize * d..(t as usize + 1) * d].iter().map(|e| e * scale))
            .collect();
        for i in 0..c.num_layers {
            let y = self.layer(i, &x, b, l);
            x = self.ffn(i, &y, &x, b * l);
        }
        let mut st = TsnState {
            count: vec![0; b],
            mean: vec![0.0; b * c.norm_num_groups],
            var: vec![1.0; b * c.norm_num_groups],
        };
        let xn = timestep_norm(
            &x,
            b,
            l,
            d,
            c.norm_num_groups,
            self.p("final_norm.weight"),
            self.p("final_norm.bias"),
            c.norm_eps,
            &mut st,
            None,
        );
        let out = if c.share_emb { self.p("embed") } else { self.p("output") };
        linear(&xn, out, None, b * l, d, v)
    }

    fn layer(&self, li: usize, x: &[f64], b: usize, l: usize) -> Vec<f64> {
        let c = &self.cfg;
        let (d, z, e, h) = (c.model_dim, c.z_dim, c.value_dim, c.num_heads);
        let (dz, dv, rows) = (z / h, e / h, b * l);
        let n = |s: &str| format!("layers.{li}.{s}");
        let mut st = TsnState {
            count: vec![0; b],
            mean: vec![0.0; b * c.norm_num_groups],
            var: vec![1.0; b * c.norm_num_groups],
        };
        let xn = timestep_norm(
            x,
            b,
            l,
            d,
            c.norm_num_groups,
            self.p(&n("tsn.weight")),
            self.p(&n("tsn.bias")),
            c.norm_eps,
            &mut st,
            None,
        );
        let cema = CemaParams {
            d,
            n: c.cema_ndim,
            alpha: self.p(&n("cema.alpha")).to_vec(),
            delta: self.p(&n("cema.delta")).to_vec(),
            theta: self.p(&n("cema.theta")).to_vec(),
            gamma_re: self.p(&n("cema.gamma_re")).to_vec(),
            gamma_im: self.p(&n("cema.gamma_im")).to_vec(),
            omega: self.p(&n("cema.omega")).to_vec(),
        };
        let (ce, _) = cema_scan(&cema, &xn, b, l, &vec![Complex64::new(0.0, 0.0); b * d * c.cema_ndim]);
        let mx = rms_norm(&ce, d, Some(self.p(&n("rmsnorm.weight"))), c.norm_eps);
        let zz = linear(&mx, self.p(&n("wz.weight")), Some(self.p(&n("wz.bias"))), rows, d, z);
        let zn = rms_norm(&zz, dz, None, c.norm_eps);
        let (gamma, beta) = (self.p(&n("qk_gamma")), self.p(&n("qk_beta")));
        let mut q = vec![0.0; rows * z];
        let mut k = vec![0.0; rows * z];
        for r in 0..rows {
            for j in 0..z {
                let v = zn[r * z + j] / (dz as f64).sqrt();
                q[r * z + j] = v * (1.0 + gamma[j]) + beta[j];
                k[r * z + j] = v * (1.0 + gamma[z + j]) + beta[z + j];
            }
        }
        let vv: Vec<f64> = linear(&xn, self.p(&n("wv.weight")), Some(self.p(&n("wv.bias"))), rows, d, e)
            .into_iter()
            .map(silu)
            .collect();
        let r: Vec<f64> = linear(&mx, self.p(&n("wr.weight")), Some(self.p(&n("wr.bias"))), rows, d, e)
            .into_iter()
            .map(silu)
            .collect();
        let o = chunked_attention(&q, &k, &vv, (b, l, h, dz, dv), c.chunk_size, c.rope_base, 1.0);
        let or: Vec<f64> = o.iter().zip(&r).map(|(a, b)| a * b).collect();
        let h1 = linear(&mx, self.p(&n("wh1.weight")), Some(self.p(&n("wh1.bias"))), rows, d, d);
        let h2 = linear(&or, self.p(&n("wh2.weight")), None, rows, e, d);
        (0..rows * d).map(|i| h1[i] + h2[i] + x[i]).collect()
    }

    fn ffn(&self, li: usize, y: &[f64], x: &[f64], rows: usize) -> Vec<f64> {
        let c = &self.cfg;
        let (d, f) = (c.model_dim, c.ffn_hidden_dim);
        let n = |s: &str| format!("layers.{li}.ffn.{s}");
        let u = layer_norm(y, d, self.p(&n("norm.weight")), self.p(&n("norm.bias")), c.norm_eps);
        let mut hid: Vec<f64> = linear(&u, self.p(&n("fc1")), None, rows, d, f).into_iter().map(silu).collect();
        if c.swiglu {
            let g3 = linear(&u, self.p(&n("fc3")), None, rows, d, f);
            hid.iter_mut().zip(g3).for_each(|(a, b)| *a *= b);
        }
        let out = linear(&hid, self.p(&n("fc2")), None, rows, f, d);
        (0..rows * d)
            .map(|i| {
                let a = if c.rescale_nffn { self.p(&n("alpha"))[i % d] } else { 1.0 };
                a * out[i] + x[i]
            })
            .collect()
    }
}
