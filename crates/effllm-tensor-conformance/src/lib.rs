//! # effllm-tensor-conformance
//!
//! One property-test suite for every `effllm-tensor` backend. Each check draws random inputs (never zeros) from a
//! seed, runs one op on the device under test, runs the naive f64 [`effllm_tensor::reference`] on the *same*
//! rounded inputs, and compares by relative L2 error `‖out − ref‖ / ‖ref‖` against a tolerance that fits the dtype
//! ([`tolerance`]). NaN never passes.
//!
//! The checks take a [`Device`]; the [`conformance_suite!`] macro expands them into proptest tests for one device.
//! The CPU backend runs the suite in `cargo test`; the CUDA backend runs the very same macro with
//! `Device::Cuda(0)` on a GPU machine.
//!
//! ```no_run
//! // tests/cpu.rs
//! effllm_tensor_conformance::conformance_suite!(effllm_tensor::Device::Cpu);
//! ```

#![deny(missing_docs)]

/// The oracle of every check: `effllm-tensor`'s naive f64 implementations, re-exported so that a backend crate
/// running the suite can name the exact reference it is held to. The suite adds no math of its own beyond the
/// comparison ([`compare`]).
pub mod reference {
    pub use effllm_tensor::reference::*;
}

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{AttentionMask, BinaryOp, DType, Device, RopeConfig, RopeStyle, Tensor, UnaryOp};
use reference as r;

#[doc(hidden)]
pub use proptest;

/// The result of one check: `Err` carries a message naming the op, the inputs and the error.
pub type Outcome = Result<(), String>;

/// The float dtypes every op is checked in.
pub const FLOAT_DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// Relative-L2 tolerance for `dtype` when each output element is a reduction over `k` inputs.
///
/// f64: `1e-12·√k`; f32: `1e-5·√k` (the foundation spec's bound); f16: `2e-3·max(1, √k/8)`; bf16:
/// `1.2e-2·max(1, √k/8)` — half types compute in f32 and round once, so the output rounding (2⁻¹¹ and 2⁻⁸ relative)
/// dominates.
pub fn tolerance(dtype: DType, k: usize) -> f64 {
    let rk = (k.max(1) as f64).sqrt();
    match dtype {
        DType::F64 => 1e-12 * rk,
        DType::F32 => 1e-5 * rk,
        DType::F16 => 2e-3 * (rk / 8.0).max(1.0),
        DType::BF16 => 1.2e-2 * (rk / 8.0).max(1.0),
        DType::U8 | DType::U32 => 0.0,
    }
}

/// Seeded standard normals in f64 (from the counter-based generator; never exactly zero in practice, and checked).
pub fn normals(seed: u64, n: usize) -> Vec<f64> {
    let rng = CounterRng::new(seed, 0xC0F0);
    let mut v = vec![0.0; n];
    rng.fill_normal_f64(0, &mut v);
    for x in &mut v {
        if *x == 0.0 {
            *x = 0.5;
        }
    }
    v
}

/// Seeded uniform indices in `0..bound`.
pub fn indices(seed: u64, n: usize, bound: usize) -> Vec<u32> {
    let rng = CounterRng::new(seed, 0x1D5);
    (0..n as u64).map(|i| ((rng.uniform_f64_at(i) * bound as f64) as usize).min(bound - 1) as u32).collect()
}

/// A tensor of `dtype` on `dev` holding `data` (rounded to `dtype`), and the rounded values in f64: the reference
/// must see exactly the inputs the device sees.
pub fn input(dev: &Device, dtype: DType, shape: &[usize], data: &[f64]) -> Result<(Tensor, Vec<f64>), String> {
    let t = Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_device(dev))
        .map_err(|e| format!("building input {shape:?} {dtype}: {e}"))?;
    let rounded = t.to_vec_f64().map_err(|e| e.to_string())?;
    Ok((t, rounded))
}

/// Compares `got` with the reference `want`; `k` is the reduction length behind each output element.
pub fn compare(what: &str, dtype: DType, got: &Tensor, want: &[f64], want_shape: &[usize], k: usize) -> Outcome {
    compare_tol(what, dtype, got, want, want_shape, tolerance(dtype, k))
}

/// [`compare`] with an explicit tolerance.
pub fn compare_tol(what: &str, dtype: DType, got: &Tensor, want: &[f64], want_shape: &[usize], tol: f64) -> Outcome {
    if got.shape() != want_shape {
        return Err(format!("{what}: shape {:?}, expected {want_shape:?}", got.shape()));
    }
    if got.dtype() != dtype {
        return Err(format!("{what}: dtype {}, expected {dtype}", got.dtype()));
    }
    let g = got.to_vec_f64().map_err(|e| format!("{what}: reading output: {e}"))?;
    if g.iter().zip(want).any(|(a, b)| a.is_nan() != b.is_nan()) {
        return Err(format!("{what}: NaN mismatch"));
    }
    // Relative L2 with a floor on the denominator, so that a reference that is zero up to rounding (e.g.
    // log-softmax of one element) does not turn a tiny absolute error into a relative error of 1.
    let num: f64 = g.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    let rel = num / den.max(1e-3 * (want.len().max(1) as f64).sqrt());
    if !within(rel, tol) {
        return Err(format!("{what} [{dtype}]: rel L2 error {rel:e} > tolerance {tol:e} (shape {want_shape:?})"));
    }
    Ok(())
}

/// `err ≤ tol`, false for NaN: a NaN error never passes.
fn within(err: f64, tol: f64) -> bool {
    err <= tol
}

/// Which (batch, head, query, key) pairs may attend.
type Allowed = Box<dyn Fn(usize, usize, usize, usize) -> bool>;

fn err(what: &str) -> impl Fn(effllm_tensor::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// All unary ops.
pub const UNARY_OPS: [UnaryOp; 15] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Ln,
    UnaryOp::Sqrt,
    UnaryOp::Sqr,
    UnaryOp::Recip,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Relu,
    UnaryOp::Silu,
    UnaryOp::Gelu,
    UnaryOp::GeluErf,
];

/// A unary op on random data in its domain.
pub fn unary(dev: &Device, dtype: DType, op: UnaryOp, shape: &[usize], seed: u64) -> Outcome {
    let n = shape.iter().product();
    let name = op.name();
    let data: Vec<f64> = normals(seed, n)
        .into_iter()
        .map(|x| match op {
            UnaryOp::Ln | UnaryOp::Sqrt => x.abs() + 0.1,
            UnaryOp::Recip => x.signum() * (x.abs() + 0.5),
            UnaryOp::Exp => x.clamp(-8.0, 8.0),
            _ => 3.0 * x,
        })
        .collect();
    let (t, xs) = input(dev, dtype, shape, &data)?;
    let got = t.unary(op).map_err(err(name))?;
    let want: Vec<f64> = xs.iter().map(|&x| r::unary(name, x)).collect();
    compare(name, dtype, &got, &want, shape, 1)
}

/// `affine`, `powf` and `clamp`.
pub fn scalar_ops(dev: &Device, dtype: DType, shape: &[usize], seed: u64) -> Outcome {
    let n = shape.iter().product();
    let (t, xs) = input(dev, dtype, shape, &normals(seed, n))?;
    let got = t.affine(1.75, -0.5).map_err(err("affine"))?;
    compare("affine", dtype, &got, &xs.iter().map(|x| x * 1.75 - 0.5).collect::<Vec<_>>(), shape, 1)?;
    let got = t.clamp(-0.5, 0.7).map_err(err("clamp"))?;
    compare("clamp", dtype, &got, &xs.iter().map(|x| x.clamp(-0.5, 0.7)).collect::<Vec<_>>(), shape, 1)?;
    let (p, ps) = input(dev, dtype, shape, &normals(seed ^ 1, n).iter().map(|x| x.abs() + 0.2).collect::<Vec<_>>())?;
    let got = p.powf(1.3).map_err(err("powf"))?;
    compare("powf", dtype, &got, &ps.iter().map(|x| x.powf(1.3)).collect::<Vec<_>>(), shape, 1)
}

/// All binary ops, with `b_shape` broadcast against `a_shape`.
pub fn binary(dev: &Device, dtype: DType, a_shape: &[usize], b_shape: &[usize], seed: u64) -> Outcome {
    let (na, nb) = (a_shape.iter().product(), b_shape.iter().product());
    // Both operands stay away from zero: each is a divisor in one direction.
    let adata: Vec<f64> = normals(seed, na).into_iter().map(|x| x.signum() * (x.abs() + 0.25)).collect();
    let (a, av) = input(dev, dtype, a_shape, &adata)?;
    let bdata: Vec<f64> = normals(seed ^ 0xB, nb).into_iter().map(|x| x.signum() * (x.abs() + 0.25)).collect();
    let (b, bv) = input(dev, dtype, b_shape, &bdata)?;
    for (op, name) in [
        (BinaryOp::Add, "add"),
        (BinaryOp::Sub, "sub"),
        (BinaryOp::Mul, "mul"),
        (BinaryOp::Div, "div"),
        (BinaryOp::Maximum, "maximum"),
        (BinaryOp::Minimum, "minimum"),
    ] {
        let got = a.binary(&b, op).map_err(err(name))?;
        let (want, shape) = r::binary_broadcast(name, &av, a_shape, &bv, b_shape);
        compare(name, dtype, &got, &want, &shape, 1)?;
        // Swapped operands exercise the other broadcast direction.
        let got = b.binary(&a, op).map_err(err(name))?;
        let (want, shape) = r::binary_broadcast(name, &bv, b_shape, &av, a_shape);
        compare(name, dtype, &got, &want, &shape, 1)?;
    }
    Ok(())
}

/// `sum`, `mean`, `max`, `min`, `logsumexp`, `argmax`, `argmin` over `dim`.
pub fn reductions(dev: &Device, dtype: DType, shape: &[usize], dim: usize, seed: u64) -> Outcome {
    let n = shape.iter().product();
    let (t, xs) = input(dev, dtype, shape, &normals(seed, n))?;
    let mut out_shape = shape.to_vec();
    out_shape.remove(dim);
    let k = shape[dim];
    for name in ["sum", "mean", "max", "min", "logsumexp"] {
        let got = match name {
            "sum" => t.sum(dim, false),
            "mean" => t.mean(dim, false),
            "max" => t.max(dim, false),
            "min" => t.min(dim, false),
            _ => t.logsumexp(dim, false),
        }
        .map_err(err(name))?;
        compare(name, dtype, &got, &r::reduce(name, &xs, shape, dim), &out_shape, k)?;
    }
    let keep = t.sum(dim, true).map_err(err("sum keepdim"))?;
    let mut kshape = shape.to_vec();
    kshape[dim] = 1;
    compare("sum keepdim", dtype, &keep, &r::reduce("sum", &xs, shape, dim), &kshape, k)?;
    for max in [true, false] {
        let got = if max { t.argmax(dim, false) } else { t.argmin(dim, false) }.map_err(err("argmax"))?;
        let got = got.to_vec::<u32>().map_err(|e| e.to_string())?;
        let want = r::arg_reduce(&xs, shape, dim, max);
        if got != want {
            return Err(format!(
                "arg{} over dim {dim} of {shape:?}: {got:?} != {want:?}",
                if max { "max" } else { "min" }
            ));
        }
    }
    Ok(())
}

/// `softmax` and `log_softmax` over `dim`.
pub fn softmax(dev: &Device, dtype: DType, shape: &[usize], dim: usize, seed: u64) -> Outcome {
    let n = shape.iter().product();
    let data: Vec<f64> = normals(seed, n).iter().map(|x| 4.0 * x).collect();
    let (t, xs) = input(dev, dtype, shape, &data)?;
    let got = t.softmax(dim).map_err(err("softmax"))?;
    compare("softmax", dtype, &got, &r::softmax(&xs, shape, dim), shape, shape[dim])?;
    let got = t.log_softmax(dim).map_err(err("log_softmax"))?;
    compare("log_softmax", dtype, &got, &r::log_softmax(&xs, shape, dim), shape, shape[dim])
}

/// `rms_norm`, `layer_norm` (with and without bias) and `swiglu` over rows of `d`.
pub fn norms(dev: &Device, dtype: DType, rows: usize, d: usize, seed: u64) -> Outcome {
    let shape = [rows, d];
    let (x, xs) =
        input(dev, dtype, &shape, &normals(seed, rows * d).iter().map(|v| 2.0 * v + 0.3).collect::<Vec<_>>())?;
    let (w, ws) = input(dev, dtype, &[d], &normals(seed ^ 7, d))?;
    let (b, bs) = input(dev, dtype, &[d], &normals(seed ^ 9, d))?;
    let eps = 1e-5;
    let got = x.rms_norm(&w, eps).map_err(err("rms_norm"))?;
    compare("rms_norm", dtype, &got, &r::rms_norm(&xs, &ws, d, eps), &shape, d)?;
    let got = x.layer_norm(&w, Some(&b), eps).map_err(err("layer_norm"))?;
    compare("layer_norm", dtype, &got, &r::layer_norm(&xs, &ws, Some(&bs), d, eps), &shape, d)?;
    let got = x.layer_norm(&w, None, eps).map_err(err("layer_norm"))?;
    compare("layer_norm (no bias)", dtype, &got, &r::layer_norm(&xs, &ws, None, d, eps), &shape, d)?;
    let (u, us) = input(dev, dtype, &shape, &normals(seed ^ 11, rows * d))?;
    let got = x.swiglu(&u).map_err(err("swiglu"))?;
    let want: Vec<f64> = xs.iter().zip(&us).map(|(g, u)| r::unary("silu", *g) * u).collect();
    compare("swiglu", dtype, &got, &want, &shape, 1)
}

/// RoPE on `[b, h, s, d]` in both layouts, with shared or per-batch positions and partial rotation.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    dev: &Device,
    dtype: DType,
    shape: [usize; 4],
    rot: usize,
    per_batch: bool,
    interleaved: bool,
    seed: u64,
) -> Outcome {
    let [b, _h, s, _d] = shape;
    let n = shape.iter().product();
    let (x, xs) = input(dev, dtype, &shape, &normals(seed, n))?;
    let raw = indices(seed ^ 3, if per_batch { b * s } else { s }, 9000);
    let pos_t =
        if per_batch { Tensor::from_vec(raw.clone(), &[b, s], dev) } else { Tensor::from_vec(raw.clone(), &[s], dev) }
            .map_err(err("rope positions"))?;
    let pos: Vec<Vec<u32>> =
        (0..b).map(|bi| if per_batch { raw[bi * s..(bi + 1) * s].to_vec() } else { raw.clone() }).collect();
    let style = if interleaved { RopeStyle::Interleaved } else { RopeStyle::NeoX };
    let cfg = RopeConfig { style, base: 10_000.0, rotary_dims: rot };
    let got = x.rope(&pos_t, &cfg).map_err(err("rope"))?;
    compare("rope", dtype, &got, &r::rope(&xs, shape, &pos, interleaved, 10_000.0, rot), &shape, 2)
}

/// Which mask an attention check uses.
#[derive(Clone, Copy, Debug)]
pub enum MaskKind {
    /// No mask.
    None,
    /// Causal over cached + new keys.
    Causal,
    /// A random boolean mask `[b, 1, s_q, s_kv]` (broadcast over heads).
    Random,
}

/// Grouped-query attention `[b, hq, sq, d]` against `[b, hkv, skv, d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &Device,
    dtype: DType,
    b: usize,
    hkv: usize,
    group: usize,
    sq: usize,
    skv: usize,
    d: usize,
    mask: MaskKind,
    seed: u64,
) -> Outcome {
    let hq = hkv * group;
    let sq = if matches!(mask, MaskKind::Causal) { sq.min(skv) } else { sq };
    let (q, qs) = input(dev, dtype, &[b, hq, sq, d], &normals(seed, b * hq * sq * d))?;
    let (k, ks) = input(dev, dtype, &[b, hkv, skv, d], &normals(seed ^ 1, b * hkv * skv * d))?;
    let (v, vs) = input(dev, dtype, &[b, hkv, skv, d], &normals(seed ^ 2, b * hkv * skv * d))?;
    let bits = indices(seed ^ 5, b * sq * skv, 4);
    let (m, allowed): (AttentionMask, Allowed) = match mask {
        MaskKind::None => (AttentionMask::None, Box::new(|_, _, _, _| true)),
        MaskKind::Causal => (AttentionMask::Causal, Box::new(move |_, _, i, j| j <= skv - sq + i)),
        MaskKind::Random => {
            let mbits: Vec<u8> = bits.iter().map(|&x| u8::from(x != 0)).collect();
            let t = Tensor::from_vec(mbits.clone(), &[b, 1, sq, skv], dev).map_err(err("mask"))?;
            (AttentionMask::Mask(t), Box::new(move |bi, _, i, j| mbits[(bi * sq + i) * skv + j] != 0))
        }
    };
    let scale = 1.0 / (d as f64).sqrt();
    let got = q.attention(&k, &v, &m, None).map_err(err("attention"))?;
    let want = r::attention(&qs, &ks, &vs, [b, hq, sq, d], hkv, skv, d, scale, allowed);
    compare("attention", dtype, &got, &want, &[b, hq, sq, d], skv.max(d))
}

/// Attention of `dtype` queries (f32, f16 or bf16) over keys and values stored in f16 (an f16 KV cache), against
/// the reference on the same f16-rounded keys and values.
#[allow(clippy::too_many_arguments)]
pub fn attention_f16_kv(
    dev: &Device,
    dtype: DType,
    hkv: usize,
    group: usize,
    sq: usize,
    skv: usize,
    d: usize,
    causal: bool,
    seed: u64,
) -> Outcome {
    let hq = hkv * group;
    let sq = if causal { sq.min(skv) } else { sq };
    let (q, qs) = input(dev, dtype, &[1, hq, sq, d], &normals(seed, hq * sq * d))?;
    let (k, ks) = input(dev, DType::F16, &[1, hkv, skv, d], &normals(seed ^ 1, hkv * skv * d))?;
    let (v, vs) = input(dev, DType::F16, &[1, hkv, skv, d], &normals(seed ^ 2, hkv * skv * d))?;
    let (m, allowed): (AttentionMask, Allowed) = if causal {
        (AttentionMask::Causal, Box::new(move |_, _, i, j| j <= skv - sq + i))
    } else {
        (AttentionMask::None, Box::new(|_, _, _, _| true))
    };
    let scale = 1.0 / (d as f64).sqrt();
    let got = q.attention(&k, &v, &m, None).map_err(err("attention, f16 KV"))?;
    let want = r::attention(&qs, &ks, &vs, [1, hq, sq, d], hkv, skv, d, scale, allowed);
    compare("attention, f16 KV", dtype, &got, &want, &[1, hq, sq, d], skv.max(d))
}

/// Batched matmul with broadcast batch dimensions; `transpose_b` reads B through a transposed view.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dev: &Device,
    dtype: DType,
    a_batch: &[usize],
    b_batch: &[usize],
    m: usize,
    k: usize,
    n: usize,
    transpose_b: bool,
    seed: u64,
) -> Outcome {
    let mut a_shape = a_batch.to_vec();
    a_shape.extend([m, k]);
    let mut b_shape = b_batch.to_vec();
    b_shape.extend([k, n]);
    let (a, av) = input(dev, dtype, &a_shape, &normals(seed, a_shape.iter().product()))?;
    let (b, bv) = if transpose_b {
        // Store Bᵀ contiguously and hand the op a transposed view.
        let mut bt_shape = b_batch.to_vec();
        bt_shape.extend([n, k]);
        let (bt, btv) = input(dev, dtype, &bt_shape, &normals(seed ^ 1, bt_shape.iter().product()))?;
        let r = bt_shape.len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        (bt.t().map_err(err("t"))?, r::permute(&btv, &bt_shape, &perm))
    } else {
        input(dev, dtype, &b_shape, &normals(seed ^ 1, b_shape.iter().product()))?
    };
    let got = a.matmul(&b).map_err(err("matmul"))?;
    let (want, shape) = r::batched_matmul(&av, &a_shape, &bv, &b_shape);
    compare("matmul", dtype, &got, &want, &shape, k)
}

/// `linear` (`x · Wᵀ`) for `rows` rows: the GEMV / skinny path for `rows ≤ 8`, faer above.
pub fn linear(dev: &Device, dtype: DType, rows: usize, k: usize, n: usize, seed: u64) -> Outcome {
    let (x, xv) = input(dev, dtype, &[rows, k], &normals(seed, rows * k))?;
    let (w, wv) = input(dev, dtype, &[n, k], &normals(seed ^ 1, n * k))?;
    let got = x.linear(&w).map_err(err("linear"))?;
    let wt = r::permute(&wv, &[n, k], &[1, 0]);
    compare("linear", dtype, &got, &r::matmul(&xv, &wt, rows, k, n), &[rows, n], k)
}

/// `linear_q`: activations times a quantized weight (Q4_0 / Q4_1 / Q8_0 blocks read directly), against the f64
/// product with the dequantized weight. `rows ≤ 8` takes the fused GEMV path, more rows the GEMM path.
pub fn linear_q(dev: &Device, dtype: DType, qtype: usize, rows: usize, blocks: usize, n: usize, seed: u64) -> Outcome {
    use effllm_tensor::quant::{QMatrix, QWeight, QuantType};
    let ty = [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0][qtype % 3];
    let k = 32 * blocks;
    let wdata: Vec<f32> = normals(seed ^ 1, n * k).iter().map(|&v| v as f32).collect();
    let qm = QMatrix::quantize(ty, n, k, &wdata).map_err(err("quantize"))?;
    let wd: Vec<f64> = qm.dequantize().iter().map(|&v| v as f64).collect();
    let w = QWeight::new(qm).to_device(dev).map_err(err("QWeight::to_device"))?;
    let (x, xv) = input(dev, dtype, &[rows, k], &normals(seed, rows * k))?;
    let got = x.linear_q(&w).map_err(err("linear_q"))?;
    let wt = r::permute(&wd, &[n, k], &[1, 0]);
    let want = r::matmul(&xv, &wt, rows, k, n);
    // Quantized products are computed in f32 whatever the activation dtype.
    let tol = tolerance(if dtype == DType::F64 { DType::F32 } else { dtype }, k);
    compare_tol(&format!("linear_q {ty:?}"), dtype, &got, &want, &[rows, n], tol)
}

/// Views and copies: transpose, permute, narrow, strided slice, reshape, concat, contiguous.
pub fn views(dev: &Device, dtype: DType, shape: &[usize], seed: u64) -> Outcome {
    let n: usize = shape.iter().product();
    let (t, xs) = input(dev, dtype, shape, &normals(seed, n))?;
    let rank = shape.len();
    // Reverse permutation.
    let perm: Vec<usize> = (0..rank).rev().collect();
    let p = t.permute(&perm).map_err(err("permute"))?;
    let pshape: Vec<usize> = perm.iter().map(|&i| shape[i]).collect();
    let pv = r::permute(&xs, shape, &perm);
    compare("permute", dtype, &p, &pv, &pshape, 1)?;
    compare("permute+contiguous", dtype, &p.contiguous().map_err(err("contiguous"))?, &pv, &pshape, 1)?;
    // Reshape of a non-contiguous view copies; the elements keep row-major order.
    let flat = p.reshape(&[n]).map_err(err("reshape"))?;
    compare("reshape", dtype, &flat, &pv, &[n], 1)?;
    // Narrow + strided slice on dimension 0.
    let d0 = shape[0];
    let start = (seed as usize) % d0;
    let len = d0 - start;
    let nar = t.narrow(0, start, len).map_err(err("narrow"))?;
    let ids: Vec<u32> = (start..d0).map(|i| i as u32).collect();
    let mut nshape = shape.to_vec();
    nshape[0] = len;
    compare("narrow", dtype, &nar, &r::index_select(&xs, shape, 0, &ids), &nshape, 1)?;
    let sl = t.slice(0, 0, d0, 2).map_err(err("slice"))?;
    let ids: Vec<u32> = (0..d0).step_by(2).map(|i| i as u32).collect();
    let mut sshape = shape.to_vec();
    sshape[0] = ids.len();
    compare("slice step 2", dtype, &sl, &r::index_select(&xs, shape, 0, &ids), &sshape, 1)?;
    // Concat of the tensor with its narrowed self along the last dimension.
    let last = rank - 1;
    let tail = t.narrow(last, 0, 1.max(shape[last] / 2)).map_err(err("narrow"))?;
    let tv = tail.to_vec_f64().map_err(|e| e.to_string())?;
    let cat = Tensor::concat(&[&t, &tail, &t], last).map_err(err("concat"))?;
    let want = r::concat(&[(&xs, shape), (&tv, tail.shape()), (&xs, shape)], last);
    let mut cshape = shape.to_vec();
    cshape[last] = 2 * shape[last] + tail.shape()[last];
    compare("concat", dtype, &cat, &want, &cshape, 1)?;
    // Transpose of the first and last dimension, then the op sees a strided input.
    let tt = t.transpose(0, last).map_err(err("transpose"))?;
    let mut tperm: Vec<usize> = (0..rank).collect();
    tperm.swap(0, last);
    let ttv = r::permute(&xs, shape, &tperm);
    let tshape: Vec<usize> = tperm.iter().map(|&i| shape[i]).collect();
    compare("transpose", dtype, &tt, &ttv, &tshape, 1)?;
    let e = tt.exp().map_err(err("exp of strided"))?;
    compare("exp of a transposed view", dtype, &e, &ttv.iter().map(|v| v.exp()).collect::<Vec<_>>(), &tshape, 1)
}

/// `index_select`, `embedding`, `gather`, `scatter`, `scatter_add` on a `[rows, cols]` matrix along `dim`.
pub fn indexing(dev: &Device, dtype: DType, rows: usize, cols: usize, picks: usize, dim: usize, seed: u64) -> Outcome {
    let shape = [rows, cols];
    let (t, xs) = input(dev, dtype, &shape, &normals(seed, rows * cols))?;
    let size = shape[dim];
    let ids = indices(seed ^ 1, picks, size);
    let ids_t = Tensor::from_vec(ids.clone(), &[picks], dev).map_err(err("ids"))?;
    let got = t.index_select(dim, &ids_t).map_err(err("index_select"))?;
    let mut oshape = shape.to_vec();
    oshape[dim] = picks;
    compare("index_select", dtype, &got, &r::index_select(&xs, &shape, dim, &ids), &oshape, 1)?;
    let ids2 = indices(seed ^ 2, 2 * picks, rows);
    let ids2_t = Tensor::from_vec(ids2.clone(), &[2, picks], dev).map_err(err("ids"))?;
    let got = t.embedding(&ids2_t).map_err(err("embedding"))?;
    compare("embedding", dtype, &got, &r::index_select(&xs, &shape, 0, &ids2), &[2, picks, cols], 1)?;
    // gather / scatter with an index of shape [rows', cols'] no larger than `shape` off `dim`.
    let ishape = if dim == 0 { [picks, cols] } else { [rows, picks] };
    let gidx = indices(seed ^ 3, ishape[0] * ishape[1], size);
    let gidx_t = Tensor::from_vec(gidx.clone(), &ishape, dev).map_err(err("index"))?;
    let got = t.gather(dim, &gidx_t).map_err(err("gather"))?;
    compare("gather", dtype, &got, &r::gather(&xs, &shape, dim, &gidx, &ishape), &ishape, 1)?;
    let (src, sv) = input(dev, dtype, &ishape, &normals(seed ^ 4, ishape[0] * ishape[1]))?;
    let got = t.scatter(dim, &gidx_t, &src).map_err(err("scatter"))?;
    compare("scatter", dtype, &got, &r::scatter(&xs, &shape, dim, &gidx, &ishape, &sv, &ishape, false), &shape, 1)?;
    let got = t.scatter_add(dim, &gidx_t, &src).map_err(err("scatter_add"))?;
    compare(
        "scatter_add",
        dtype,
        &got,
        &r::scatter(&xs, &shape, dim, &gidx, &ishape, &sv, &ishape, true),
        &shape,
        picks,
    )
}

/// `top_k` on rows with many ties (values rounded to a few levels): exact values and the deterministic order.
pub fn top_k(dev: &Device, dtype: DType, rows: usize, n: usize, k: usize, seed: u64) -> Outcome {
    let data: Vec<f64> = normals(seed, rows * n).iter().map(|v| (v * 2.0).round()).collect();
    let (t, xs) = input(dev, dtype, &[rows, n], &data)?;
    let (vals, idx) = t.top_k(k).map_err(err("top_k"))?;
    let (wv, wi) = r::top_k(&xs, n, k);
    let gi = idx.to_vec::<u32>().map_err(|e| e.to_string())?;
    if gi != wi {
        return Err(format!("top_k indices {gi:?} != {wi:?}"));
    }
    compare("top_k values", dtype, &vals, &wv, &[rows, k], 1)
}

/// Thin SVD and QR invariants: reconstruction, orthonormality, ordering, triangularity.
pub fn decompositions(dev: &Device, dtype: DType, m: usize, n: usize, seed: u64) -> Outcome {
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Ok(()); // Decompositions of half matrices are computed in f32; f32 is the checked precision.
    }
    let (a, av) = input(dev, dtype, &[m, n], &normals(seed, m * n))?;
    let rnk = m.min(n);
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    let (u, s, v) = a.thin_svd().map_err(err("thin_svd"))?;
    let (uv, sv, vv) = (
        u.to_vec_f64().map_err(|e| e.to_string())?,
        s.to_vec_f64().map_err(|e| e.to_string())?,
        v.to_vec_f64().map_err(|e| e.to_string())?,
    );
    if u.shape() != [m, rnk] || s.shape() != [rnk] || v.shape() != [n, rnk] {
        return Err(format!("svd shapes {:?} {:?} {:?}", u.shape(), s.shape(), v.shape()));
    }
    let us: Vec<f64> = (0..m * rnk).map(|i| uv[i] * sv[i % rnk]).collect();
    let vt = r::permute(&vv, &[n, rnk], &[1, 0]);
    let recon = r::matmul(&us, &vt, m, rnk, n);
    let e = r::rel_l2(&recon, &av);
    if !within(e, tol) {
        return Err(format!("svd reconstruction error {e:e} > {tol:e} for {m}x{n}"));
    }
    let orth = |q: &[f64], rows: usize, cols: usize, what: &str| -> Outcome {
        let qt = r::permute(q, &[rows, cols], &[1, 0]);
        let g = r::matmul(&qt, q, cols, rows, cols);
        let dev_: f64 =
            (0..cols * cols).map(|i| (g[i] - if i / cols == i % cols { 1.0 } else { 0.0 }).powi(2)).sum::<f64>().sqrt();
        if !within(dev_, tol * cols as f64) { Err(format!("{what}: ‖QᵀQ − I‖ = {dev_:e}")) } else { Ok(()) }
    };
    orth(&uv, m, rnk, "svd U")?;
    orth(&vv, n, rnk, "svd V")?;
    if sv.windows(2).any(|w| w[0] < w[1]) || sv.iter().any(|&x| x < 0.0) {
        return Err(format!("singular values not non-increasing and non-negative: {sv:?}"));
    }
    let s2 = a.singular_values().map_err(err("singular_values"))?.to_vec_f64().map_err(|e| e.to_string())?;
    let e = r::rel_l2(&s2, &sv);
    if !within(e, tol) {
        return Err(format!("singular_values differ from thin_svd's S by {e:e}"));
    }
    let (q, rr) = a.qr().map_err(err("qr"))?;
    let (qv, rv) = (q.to_vec_f64().map_err(|e| e.to_string())?, rr.to_vec_f64().map_err(|e| e.to_string())?);
    if q.shape() != [m, rnk] || rr.shape() != [rnk, n] {
        return Err(format!("qr shapes {:?} {:?}", q.shape(), rr.shape()));
    }
    orth(&qv, m, rnk, "qr Q")?;
    let e = r::rel_l2(&r::matmul(&qv, &rv, m, rnk, n), &av);
    if !within(e, tol) {
        return Err(format!("qr reconstruction error {e:e}"));
    }
    for i in 0..rnk {
        for j in 0..i.min(n) {
            if rv[i * n + j] != 0.0 {
                return Err(format!("R[{i},{j}] = {} below the diagonal", rv[i * n + j]));
            }
        }
    }
    Ok(())
}

/// dtype round trips: every float dtype through f32/f64 and back is exact; u32 and u8 round-trip through f64.
pub fn conversions(dev: &Device, dtype: DType, n: usize, seed: u64) -> Outcome {
    let (t, xs) = input(dev, dtype, &[n], &normals(seed, n))?;
    // Widening round trips are exact (f64 only widens to itself).
    let vias: &[DType] = if dtype == DType::F64 { &[DType::F64] } else { &[DType::F32, DType::F64] };
    for &via in vias {
        let back = t.to_dtype(via).and_then(|x| x.to_dtype(dtype)).map_err(err("to_dtype"))?;
        let bv = back.to_vec_f64().map_err(|e| e.to_string())?;
        if bv != xs {
            return Err(format!("{dtype} -> {via} -> {dtype} is not exact"));
        }
    }
    let ints: Vec<u32> = indices(seed, n, 1 << 20);
    let it = Tensor::from_vec(ints.clone(), &[n], dev).map_err(err("u32"))?;
    let back = it.to_dtype(DType::F64).and_then(|x| x.to_dtype(DType::U32)).map_err(err("to_dtype"))?;
    if back.to_vec::<u32>().map_err(|e| e.to_string())? != ints {
        return Err("u32 -> f64 -> u32 is not exact".into());
    }
    Ok(())
}

/// Seeded random tensors: any chunking of a stream regenerates the same values; distinct seeds and streams
/// differ; uniform values lie in `[0, 1)`; moments of normals are plausible.
pub fn random(dev: &Device, dtype: DType, n: usize, split: usize, seed: u64) -> Outcome {
    let rng = CounterRng::new(seed, 3);
    let split = split.min(n);
    for normal in [true, false] {
        let draw = |len: usize, off: u64, g: &CounterRng| {
            if normal {
                Tensor::randn(&[len], dtype, dev, g, off, 0.0, 1.0)
            } else {
                Tensor::rand_uniform(&[len], dtype, dev, g, off)
            }
        };
        let whole = draw(n, 0, &rng).and_then(|t| t.to_vec_f64()).map_err(err("rand"))?;
        let a = draw(split, 0, &rng).and_then(|t| t.to_vec_f64()).map_err(err("rand"))?;
        let b = draw(n - split, split as u64, &rng).and_then(|t| t.to_vec_f64()).map_err(err("rand"))?;
        if [a, b].concat() != whole {
            return Err(format!("chunked generation differs from one-shot (n = {n}, split = {split})"));
        }
        let other =
            draw(n, 0, &CounterRng::new(seed.wrapping_add(1), 3)).and_then(|t| t.to_vec_f64()).map_err(err("rand"))?;
        let other_stream = draw(n, 0, &CounterRng::new(seed, 4)).and_then(|t| t.to_vec_f64()).map_err(err("rand"))?;
        if n >= 4 && (other == whole || other_stream == whole) {
            return Err("different seeds or streams gave identical values".into());
        }
        if !normal && whole.iter().any(|&u| !(0.0..=1.0).contains(&u)) {
            return Err("uniform value outside [0, 1]".into());
        }
    }
    Ok(())
}

/// Whether the checks for `dev` must be skipped: true for a CUDA device when CUDA is unusable here (printing why
/// once). With `EFFLLM_REQUIRE_CUDA=1` (set on GPU machines) an unusable CUDA device is a failure instead, so a
/// broken GPU setup cannot pass silently.
pub fn skip(dev: &Device) -> bool {
    if dev.is_cpu() {
        return false;
    }
    match dev.check_available() {
        Ok(()) => false,
        Err(e) => {
            if std::env::var("EFFLLM_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("EFFLLM_REQUIRE_CUDA=1 but {dev} is unusable: {e}");
            }
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| eprintln!("skipped: {dev} is unusable here ({e})"));
            true
        }
    }
}

/// Cases per property: `PROPTEST_CASES` if set, else 24 (keeps the 2-core CI fast).
pub fn case_count() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// Expands the whole suite into proptest tests for one device expression.
///
/// Case counts are modest (the suite must stay fast on a 2-core CI machine); set `PROPTEST_CASES` to run more.
#[macro_export]
macro_rules! conformance_suite {
    ($device:expr) => {
        use $crate::proptest::prelude::*;

        fn __dev() -> ::effllm_tensor::Device {
            $device
        }

        fn __dtype() -> impl Strategy<Value = ::effllm_tensor::DType> {
            prop_oneof![
                Just(::effllm_tensor::DType::F32),
                Just(::effllm_tensor::DType::F64),
                Just(::effllm_tensor::DType::F16),
                Just(::effllm_tensor::DType::BF16),
            ]
        }

        fn __shape() -> impl Strategy<Value = Vec<usize>> {
            $crate::proptest::collection::vec(1usize..6, 1..4)
        }

        fn __check(o: $crate::Outcome) -> Result<(), TestCaseError> {
            o.map_err(TestCaseError::fail)
        }

        #[test]
        fn device_is_usable_or_skipped() {
            // Fails only when EFFLLM_REQUIRE_CUDA=1 and the device is unusable.
            let _ = $crate::skip(&__dev());
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases($crate::case_count()))]

            #[test]
            fn unary_ops(dtype in __dtype(), shape in __shape(), op in 0usize..15, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::unary(&__dev(), dtype, $crate::UNARY_OPS[op], &shape, seed))?;
            }

            #[test]
            fn scalar_ops(dtype in __dtype(), shape in __shape(), seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::scalar_ops(&__dev(), dtype, &shape, seed))?;
            }

            #[test]
            fn binary_broadcast(dtype in __dtype(), shape in __shape(), mask in any::<u8>(), drop in 0usize..3, seed in any::<u64>()) {
                // b: a's shape with some dims set to 1 and some leading dims dropped.
                let mut b: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect();
                let drop = drop.min(b.len() - 1);
                b.drain(..drop);
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::binary(&__dev(), dtype, &shape, &b, seed))?;
            }

            #[test]
            fn reductions(dtype in __dtype(), shape in __shape(), dim in 0usize..3, seed in any::<u64>()) {
                let dim = dim % shape.len();
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::reductions(&__dev(), dtype, &shape, dim, seed))?;
            }

            #[test]
            fn reductions_long_rows(dtype in __dtype(), n in 100usize..3000, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::reductions(&__dev(), dtype, &[2, n], 1, seed))?;
            }

            // Rows long enough for the CUDA backend's multi-block partial sums (n ≥ 2¹⁵), whole-tensor too.
            #[test]
            fn reductions_very_long_rows(dtype in __dtype(), n in 32768usize..70000, rows in 1usize..3, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::reductions(&__dev(), dtype, &[rows, n], 1, seed))?;
                __check($crate::reductions(&__dev(), dtype, &[rows * n], 0, seed))?;
            }

            #[test]
            fn softmax(dtype in __dtype(), shape in __shape(), dim in 0usize..3, seed in any::<u64>()) {
                let dim = dim % shape.len();
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::softmax(&__dev(), dtype, &shape, dim, seed))?;
            }

            #[test]
            fn norms(dtype in __dtype(), rows in 1usize..6, d in 1usize..80, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::norms(&__dev(), dtype, rows, d, seed))?;
            }

            // Model widths: rows that span several register slots of a warp-per-row kernel, and rows past its limit.
            #[test]
            fn norms_model_widths(dtype in __dtype(), rows in 1usize..4, d in 100usize..1100, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::norms(&__dev(), dtype, rows, d, seed))?;
            }

            #[test]
            fn rope(dtype in __dtype(), b in 1usize..3, h in 1usize..12, s in 1usize..6, half in 1usize..9, partial in any::<bool>(), per_batch in any::<bool>(), interleaved in any::<bool>(), seed in any::<u64>()) {
                let d = 2 * half;
                let rot = if partial && half > 1 { 2 * (half / 2) } else { d };
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::rope(&__dev(), dtype, [b, h, s, d], rot, per_batch, interleaved, seed))?;
            }

            #[test]
            fn attention(dtype in __dtype(), b in 1usize..3, hkv in 1usize..3, group in 1usize..4, sq in 1usize..6, skv in 1usize..12, d in 1usize..17, mask in 0usize..3, seed in any::<u64>()) {
                let mask = [$crate::MaskKind::None, $crate::MaskKind::Causal, $crate::MaskKind::Random][mask];
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::attention(&__dev(), dtype, b, hkv, group, sq, skv, d, mask, seed))?;
            }

            // Long query blocks: the CUDA backend switches to batched GEMMs around a fused softmax here.
            #[test]
            fn attention_long_queries(dtype in __dtype(), hkv in 1usize..3, group in 1usize..4, sq in 16usize..40, extra in 0usize..24, d in 1usize..33, mask in 0usize..3, seed in any::<u64>()) {
                let mask = [$crate::MaskKind::None, $crate::MaskKind::Causal, $crate::MaskKind::Random][mask];
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::attention(&__dev(), dtype, 1, hkv, group, sq, sq + extra, d, mask, seed))?;
            }

            // Keys and values in f16 (an f16 KV cache) for f32, f16 and bf16 queries; head sizes up to 72 reach the
            // CPU's SIMD kernels (multiples of 8) and the one-query decode path.
            #[test]
            fn attention_f16_kv(dtype in prop_oneof![Just(::effllm_tensor::DType::F32), Just(::effllm_tensor::DType::F16), Just(::effllm_tensor::DType::BF16)], hkv in 1usize..3, group in 1usize..5, sq in 1usize..4, skv in 1usize..40, d8 in 1usize..10, odd in any::<bool>(), causal in any::<bool>(), seed in any::<u64>()) {
                let d = 8 * d8 - usize::from(odd);
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::attention_f16_kv(&__dev(), dtype, hkv, group, sq, skv, d, causal, seed))?;
            }

            #[test]
            fn matmul(dtype in __dtype(), m in 1usize..=64, k in 1usize..=64, n in 1usize..=64, tb in any::<bool>(), seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::matmul(&__dev(), dtype, &[], &[], m, k, n, tb, seed))?;
            }

            #[test]
            fn matmul_batched_broadcast(dtype in __dtype(), batch in 1usize..4, bcast in 0usize..3, m in 1usize..12, k in 1usize..20, n in 1usize..12, tb in any::<bool>(), seed in any::<u64>()) {
                let (ab, bb): (Vec<usize>, Vec<usize>) = match bcast {
                    0 => (vec![2, batch], vec![2, batch]),
                    1 => (vec![2, batch], vec![batch]),
                    _ => (vec![batch, 1], vec![3]),
                };
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::matmul(&__dev(), dtype, &ab, &bb, m, k, n, tb, seed))?;
            }

            #[test]
            fn linear(dtype in __dtype(), rows in 1usize..=12, k in 1usize..=200, n in 1usize..=96, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::linear(&__dev(), dtype, rows, k, n, seed))?;
            }

            #[test]
            fn linear_q(dtype in __dtype(), qtype in 0usize..3, rows in 1usize..=12, blocks in 1usize..=8, n in 1usize..=80, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::linear_q(&__dev(), dtype, qtype, rows, blocks, n, seed))?;
            }

            #[test]
            fn views(dtype in __dtype(), shape in $crate::proptest::collection::vec(1usize..6, 2..5), seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::views(&__dev(), dtype, &shape, seed))?;
            }

            #[test]
            fn indexing(dtype in __dtype(), rows in 1usize..8, cols in 1usize..8, picks in 1usize..10, dim in 0usize..2, seed in any::<u64>()) {
                // gather/scatter indices must fit the tensor off `dim`.
                let picks = if dim == 0 { picks.min(rows.max(1)) } else { picks.min(cols.max(1)) };
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::indexing(&__dev(), dtype, rows, cols, picks, dim, seed))?;
            }

            #[test]
            fn top_k(dtype in __dtype(), rows in 1usize..4, n in 1usize..40, k in 0usize..40, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::top_k(&__dev(), dtype, rows, n, k.min(n), seed))?;
            }

            #[test]
            fn decompositions(dtype in __dtype(), m in 1usize..24, n in 1usize..24, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::decompositions(&__dev(), dtype, m, n, seed))?;
            }

            #[test]
            fn conversions(dtype in __dtype(), n in 1usize..200, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::conversions(&__dev(), dtype, n, seed))?;
            }

            #[test]
            fn random(dtype in __dtype(), n in 1usize..5000, split in 0usize..5000, seed in any::<u64>()) {
                if $crate::skip(&__dev()) { return Ok(()); }
                __check($crate::random(&__dev(), dtype, n, split, seed))?;
            }
        }
    };
}
