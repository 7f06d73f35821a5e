//! Naive, obviously correct f64 implementations of every op: the oracle of the property tests.
//!
//! Everything here works on row-major `&[f64]` buffers with explicit shapes, loops over multi-indices the slow
//! way, and shares no code with the kernels it checks. Nothing here is meant to be fast.

/// Row-major multi-index of flat index `flat` in `shape`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
    }
    idx
}

/// Flat row-major index of a multi-index.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// `C[m×n] = A[m×k] · B[k×n]`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// Numpy broadcast shape (panics on incompatible shapes: the reference is only called on valid inputs).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            assert!(da == db || da == 1 || db == 1, "shapes {a:?} and {b:?} do not broadcast");
            da.max(db)
        })
        .collect()
}

/// The element of `x` (shape `shape`) that broadcasting maps to output multi-index `out_idx`.
pub fn broadcast_get(x: &[f64], shape: &[usize], out_idx: &[usize]) -> f64 {
    let extra = out_idx.len() - shape.len();
    let idx: Vec<usize> = shape.iter().enumerate().map(|(d, &s)| if s == 1 { 0 } else { out_idx[extra + d] }).collect();
    x[ravel(&idx, shape)]
}

/// Batched matmul `[.., m, k] × [.., k, n]` with broadcast batch dims; returns the output and its shape.
pub fn batched_matmul(a: &[f64], a_shape: &[usize], b: &[f64], b_shape: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
    let batch = broadcast_shape(&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let total: usize = shape.iter().product();
    let mut out = vec![0.0; total];
    for (flat, o) in out.iter_mut().enumerate() {
        let idx = unravel(flat, &shape);
        let (bi, i, j) = (&idx[..idx.len() - 2], idx[idx.len() - 2], idx[idx.len() - 1]);
        let mut s = 0.0;
        for p in 0..k {
            let mut ia: Vec<usize> = bi.to_vec();
            ia.extend([i, p]);
            let mut ib: Vec<usize> = bi.to_vec();
            ib.extend([p, j]);
            s += broadcast_get(a, a_shape, &ia) * broadcast_get(b, b_shape, &ib);
        }
        *o = s;
    }
    (out, shape)
}

/// Named unary functions, written out independently of the kernels.
pub fn unary(name: &str, x: f64) -> f64 {
    match name {
        "neg" => -x,
        "abs" => x.abs(),
        "exp" => x.exp(),
        "ln" => x.ln(),
        "sqrt" => x.sqrt(),
        "sqr" => x * x,
        "recip" => 1.0 / x,
        "tanh" => x.tanh(),
        "sigmoid" => 1.0 / (1.0 + (-x).exp()),
        "sin" => x.sin(),
        "cos" => x.cos(),
        "relu" => x.max(0.0),
        "silu" => x / (1.0 + (-x).exp()),
        "gelu" => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
        "gelu_erf" => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        other => panic!("unknown unary op {other}"),
    }
}

/// Named binary functions.
pub fn binary(name: &str, a: f64, b: f64) -> f64 {
    match name {
        "add" => a + b,
        "sub" => a - b,
        "mul" => a * b,
        "div" => a / b,
        "maximum" => a.max(b),
        "minimum" => a.min(b),
        other => panic!("unknown binary op {other}"),
    }
}

/// A binary op with broadcasting.
pub fn binary_broadcast(
    name: &str,
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let shape = broadcast_shape(a_shape, b_shape);
    let n: usize = shape.iter().product();
    let out = (0..n)
        .map(|f| {
            let idx = unravel(f, &shape);
            binary(name, broadcast_get(a, a_shape, &idx), broadcast_get(b, b_shape, &idx))
        })
        .collect();
    (out, shape)
}

/// The slices of `x` along `dim`: one `Vec` per position of the other dimensions, in row-major order of those.
pub fn lanes(x: &[f64], shape: &[usize], dim: usize) -> Vec<Vec<f64>> {
    let mut other = shape.to_vec();
    other[dim] = 1;
    let count: usize = other.iter().product();
    (0..count)
        .map(|f| {
            let mut idx = unravel(f, &other);
            (0..shape[dim])
                .map(|i| {
                    idx[dim] = i;
                    x[ravel(&idx, shape)]
                })
                .collect()
        })
        .collect()
}

/// Inverse of [`lanes`]: writes lanes back into a buffer of `shape`.
pub fn from_lanes(l: &[Vec<f64>], shape: &[usize], dim: usize) -> Vec<f64> {
    let mut other = shape.to_vec();
    other[dim] = 1;
    let mut out = vec![0.0; shape.iter().product()];
    for (f, lane) in l.iter().enumerate() {
        let mut idx = unravel(f, &other);
        for (i, &v) in lane.iter().enumerate() {
            idx[dim] = i;
            out[ravel(&idx, shape)] = v;
        }
    }
    out
}

/// Reduction `name` ∈ {sum, mean, max, min, logsumexp} over `dim` (keepdim = false).
pub fn reduce(name: &str, x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    lanes(x, shape, dim)
        .into_iter()
        .map(|l| match name {
            "sum" => l.iter().sum(),
            "mean" => l.iter().sum::<f64>() / l.len() as f64,
            "max" => l.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "min" => l.iter().copied().fold(f64::INFINITY, f64::min),
            "logsumexp" => l.iter().map(|v| v.exp()).sum::<f64>().ln(),
            other => panic!("unknown reduction {other}"),
        })
        .collect()
}

/// Index of the first maximum (or minimum) of each lane along `dim`.
pub fn arg_reduce(x: &[f64], shape: &[usize], dim: usize, max: bool) -> Vec<u32> {
    lanes(x, shape, dim)
        .into_iter()
        .map(|l| {
            let mut best = 0;
            for i in 1..l.len() {
                if (max && l[i] > l[best]) || (!max && l[i] < l[best]) {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Softmax along `dim`: `exp(x) / Σ exp(x)` (naive; inputs in tests are moderate).
pub fn softmax(x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let l: Vec<Vec<f64>> = lanes(x, shape, dim)
        .into_iter()
        .map(|l| {
            let z: f64 = l.iter().map(|v| v.exp()).sum();
            l.iter().map(|v| v.exp() / z).collect()
        })
        .collect();
    from_lanes(&l, shape, dim)
}

/// Log-softmax along `dim`: `x − ln Σ exp(x)`.
pub fn log_softmax(x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let l: Vec<Vec<f64>> = lanes(x, shape, dim)
        .into_iter()
        .map(|l| {
            let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
            l.iter().map(|v| v - lse).collect()
        })
        .collect();
    from_lanes(&l, shape, dim)
}

/// RMSNorm over rows of length `d`.
pub fn rms_norm(x: &[f64], w: &[f64], d: usize, eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|r| {
            let ms = r.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let s = 1.0 / (ms + eps).sqrt();
            r.iter().zip(w).map(move |(v, g)| v * s * g).collect::<Vec<_>>()
        })
        .collect()
}

/// LayerNorm over rows of length `d` (biased variance).
pub fn layer_norm(x: &[f64], w: &[f64], b: Option<&[f64]>, d: usize, eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|r| {
            let mean = r.iter().sum::<f64>() / d as f64;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            (0..d).map(move |i| (r[i] - mean) / (var + eps).sqrt() * w[i] + b.map_or(0.0, |b| b[i])).collect::<Vec<_>>()
        })
        .collect()
}

/// RoPE on `[b, h, s, d]` with positions `pos[bi][si]`; `interleaved` picks pairs `(2i, 2i+1)`, else `(i, i+R/2)`.
#[allow(clippy::needless_range_loop)] // index loops mirror the formula
pub fn rope(x: &[f64], shape: [usize; 4], pos: &[Vec<u32>], interleaved: bool, base: f64, rot: usize) -> Vec<f64> {
    let [b, h, s, d] = shape;
    let mut out = x.to_vec();
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let row = ((bi * h + hi) * s + si) * d;
                let p = pos[bi][si] as f64;
                for i in 0..rot / 2 {
                    let theta = p * base.powf(-(2.0 * i as f64) / rot as f64);
                    let (ia, ib) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + rot / 2) };
                    let (xa, xb) = (x[row + ia], x[row + ib]);
                    out[row + ia] = xa * theta.cos() - xb * theta.sin();
                    out[row + ib] = xa * theta.sin() + xb * theta.cos();
                }
            }
        }
    }
    out
}

/// Attention `softmax(q kᵀ·scale + mask) v` with GQA; `allowed(b, h, i, j)` says whether query `i` of head `h`
/// sees key `j`. Shapes: q `[b, hq, sq, d]`, k `[b, hkv, skv, d]`, v `[b, hkv, skv, dv]`. Rows with no allowed
/// key are zero.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    [b, hq, sq, d]: [usize; 4],
    hkv: usize,
    skv: usize,
    dv: usize,
    scale: f64,
    allowed: impl Fn(usize, usize, usize, usize) -> bool,
) -> Vec<f64> {
    let mut out = vec![0.0; b * hq * sq * dv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..sq {
                let qi = &q[((bi * hq + h) * sq + i) * d..][..d];
                let mut w = vec![0.0; skv];
                let mut any = false;
                for (j, wj) in w.iter_mut().enumerate() {
                    if allowed(bi, h, i, j) {
                        let kj = &k[((bi * hkv + kh) * skv + j) * d..][..d];
                        *wj = (qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>() * scale).exp();
                        any = true;
                    }
                }
                if !any {
                    continue;
                }
                let z: f64 = w.iter().sum();
                for (j, wj) in w.iter().enumerate() {
                    let vj = &v[((bi * hkv + kh) * skv + j) * dv..][..dv];
                    for c in 0..dv {
                        out[((bi * hq + h) * sq + i) * dv + c] += wj / z * vj[c];
                    }
                }
            }
        }
    }
    out
}

/// `index_select` along `dim`.
pub fn index_select(x: &[f64], shape: &[usize], dim: usize, ids: &[u32]) -> Vec<f64> {
    let mut out_shape = shape.to_vec();
    out_shape[dim] = ids.len();
    let n: usize = out_shape.iter().product();
    (0..n)
        .map(|f| {
            let mut idx = unravel(f, &out_shape);
            idx[dim] = ids[idx[dim]] as usize;
            x[ravel(&idx, shape)]
        })
        .collect()
}

/// PyTorch `gather` along `dim`.
pub fn gather(x: &[f64], shape: &[usize], dim: usize, index: &[u32], index_shape: &[usize]) -> Vec<f64> {
    (0..index.len())
        .map(|f| {
            let mut idx = unravel(f, index_shape);
            idx[dim] = index[f] as usize;
            x[ravel(&idx, shape)]
        })
        .collect()
}

/// PyTorch `scatter` (`add = false`, last write wins) or `scatter_add` along `dim`.
#[allow(clippy::too_many_arguments)]
pub fn scatter(
    x: &[f64],
    shape: &[usize],
    dim: usize,
    index: &[u32],
    index_shape: &[usize],
    src: &[f64],
    src_shape: &[usize],
    add: bool,
) -> Vec<f64> {
    let mut out = x.to_vec();
    for (f, &target) in index.iter().enumerate() {
        let idx = unravel(f, index_shape);
        let s = src[ravel(&idx, src_shape)];
        let mut o = idx.clone();
        o[dim] = target as usize;
        let p = ravel(&o, shape);
        out[p] = if add { out[p] + s } else { s };
    }
    out
}

/// Concatenation along `dim`.
pub fn concat(parts: &[(&[f64], &[usize])], dim: usize) -> Vec<f64> {
    let mut shape = parts[0].1.to_vec();
    shape[dim] = parts.iter().map(|p| p.1[dim]).sum();
    let n: usize = shape.iter().product();
    (0..n)
        .map(|f| {
            let mut idx = unravel(f, &shape);
            let mut part = 0;
            while idx[dim] >= parts[part].1[dim] {
                idx[dim] -= parts[part].1[dim];
                part += 1;
            }
            parts[part].0[ravel(&idx, parts[part].1)]
        })
        .collect()
}

/// Permutation of dimensions: output dimension `i` is input dimension `perm[i]`.
pub fn permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let n: usize = shape.iter().product();
    (0..n)
        .map(|f| {
            let oi = unravel(f, &out_shape);
            let mut ii = vec![0; shape.len()];
            for (i, &p) in perm.iter().enumerate() {
                ii[p] = oi[i];
            }
            x[ravel(&ii, shape)]
        })
        .collect()
}

/// Top-k of each row of length `n`: values descending, ties by ascending index.
pub fn top_k(x: &[f64], n: usize, k: usize) -> (Vec<f64>, Vec<u32>) {
    let (mut vals, mut idx) = (vec![], vec![]);
    for row in x.chunks(n) {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        for &i in &order[..k] {
            vals.push(row[i]);
            idx.push(i as u32);
        }
    }
    (vals, idx)
}

/// `‖a − b‖₂ / ‖b‖₂` (or `‖a − b‖₂` when `b` is zero).
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

/// Mean cross-entropy of `rows × v` logits against class ids: `(1/rows) Σᵢ (ln Σⱼ exp xᵢⱼ − xᵢ,tᵢ)`, with the
/// log-sum-exp taken around the row maximum.
pub fn cross_entropy(logits: &[f64], v: usize, targets: &[u32]) -> f64 {
    let rows = targets.len();
    let mut total = 0.0;
    for (i, &t) in targets.iter().enumerate() {
        let row = &logits[i * v..(i + 1) * v];
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
    }
    total / rows as f64
}
