//! Reverse-mode gradients against central finite differences.
//!
//! Every differentiable op is checked the same way: with f64 inputs, the loss `Σ f(x) ⊙ R` for a fixed random
//! projection `R` is differentiated by the backward sweep and by central differences `(L(x + h) − L(x − h)) / 2h`
//! of the same op's f64 path (`h = 1e-5`), compared by `‖autograd − fd‖ / ‖fd‖ < 1e-6` over all coordinates (or
//! 40 seeded ones for larger inputs). The f32 path of the op is then differentiated too and held to the f64
//! gradient with `‖g32 − g64‖ / ‖g64‖ < 2e-4`. Inputs are random normals, never zeros; ops with kinks or restricted
//! domains get inputs kept away from them.

use effllm_tensor::autograd::{self, Gradients, TensorId};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{AttentionMask, DType, Device, Error, ReduceOp, RopeConfig, RopeStyle, Tensor, UnaryOp};
use proptest::prelude::*;

const CPU: Device = Device::Cpu;
const H: f64 = 1e-5;
const TOL_FD: f64 = 1e-6;
const TOL_F32: f64 = 2e-4;

type Op = dyn Fn(&[Tensor]) -> effllm_tensor::Result<Tensor>;

fn randn_vec(n: usize, seed: u64, stream: u64) -> Vec<f64> {
    let rng = CounterRng::new(seed, stream);
    (0..n as u64).map(|i| rng.normal_at(i)).collect()
}

fn t64(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &CPU).unwrap()
}

fn randn(shape: &[usize], seed: u64, stream: u64) -> Tensor {
    t64(randn_vec(shape.iter().product(), seed, stream), shape)
}

/// Random values with `|x| ≥ gap` (sign random): away from kinks at 0 and from poles.
fn away_from_zero(shape: &[usize], seed: u64, stream: u64, gap: f64) -> Tensor {
    let v = randn_vec(shape.iter().product(), seed, stream).into_iter().map(|x| x.signum() * (x.abs() + gap)).collect();
    t64(v, shape)
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

/// `Σ f(x) ⊙ R` as an f64 scalar tensor.
fn projected(f: &Op, xs: &[Tensor], r: &Tensor) -> Tensor {
    let y = f(xs).unwrap();
    let r = r.to_dtype(y.dtype()).unwrap();
    y.mul(&r).unwrap().reshape(&[y.elem_count()]).unwrap().sum(0, false).unwrap()
}

/// The gradient check described in the module docs. Returns the f64 autograd gradients.
fn check(name: &str, f: &Op, inputs: &[Tensor], seed: u64) -> Vec<Vec<f64>> {
    check_with(name, f, inputs, seed, Some(0.0))
}

/// `f32_floor`: `None` skips the f32 comparison; `Some(s)`: errors are measured relative to max(‖reference‖, s) —
/// ‖g − fd‖ < TOL_FD · max(‖fd‖, s) and ‖g₃₂ − g₆₄‖ < TOL_F32 · max(‖g₆₄‖, s) — where `s` is the natural scale of
/// the gradient's components when the gradient itself can be far smaller (0 for plain relative errors).
fn check_with(name: &str, f: &Op, inputs: &[Tensor], seed: u64, f32_floor: Option<f64>) -> Vec<Vec<f64>> {
    let floor = f32_floor.unwrap_or(0.0);
    let rel_floor = |a: &[f64], b: &[f64]| {
        let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        if norm.max(floor) == 0.0 { diff } else { diff / norm.max(floor) }
    };
    let out_shape = autograd::no_grad(|| f(inputs).unwrap()).shape().to_vec();
    let r = randn(&out_shape, seed, 99);
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.clone().requires_grad()).collect();
    let loss = projected(f, &leaves, &r);
    let grads = loss.backward().unwrap();
    let mut auto = Vec::new();
    for (i, (x, leaf)) in inputs.iter().zip(&leaves).enumerate() {
        let g = grads.get(leaf).map(|g| g.to_vec_f64().unwrap()).unwrap_or_else(|| vec![0.0; x.elem_count()]);
        assert_eq!(g.len(), x.elem_count(), "{name}: gradient {i} has the wrong size");
        let base = x.to_vec_f64().unwrap();
        let n = base.len();
        let coords: Vec<usize> = if n <= 60 {
            (0..n).collect()
        } else {
            let rng = CounterRng::new(seed, 7 + i as u64);
            (0..40).map(|j| (rng.uniform_f64_at(j) * n as f64) as usize % n).collect()
        };
        let mut fd = Vec::with_capacity(coords.len());
        let mut got = Vec::with_capacity(coords.len());
        for &c in &coords {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[c] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = t64(v, x.shape());
                autograd::no_grad(|| projected(f, &xs, &r)).to_scalar::<f64>().unwrap()
            };
            fd.push((eval(H) - eval(-H)) / (2.0 * H));
            got.push(g[c]);
        }
        let err = rel_floor(&got, &fd);
        assert!(err < TOL_FD, "{name}: input {i}: autograd vs finite differences rel L2 {err:e}\n{got:?}\n{fd:?}");
        auto.push(g);
    }
    if f32_floor.is_some() {
        let leaves32: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F32).unwrap().requires_grad()).collect();
        let loss32 = projected(f, &leaves32, &r);
        let grads32 = loss32.backward().unwrap();
        for (i, leaf) in leaves32.iter().enumerate() {
            let g = grads32.get(leaf).map(|g| g.to_vec_f64().unwrap()).unwrap_or_else(|| vec![0.0; leaf.elem_count()]);
            let err = rel_floor(&g, &auto[i]);
            assert!(err < TOL_F32, "{name}: input {i}: f32 gradient vs f64 rel L2 {err:e}");
        }
    }
    auto
}

fn ids(v: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &CPU).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn unary_ops(n in 1usize..24, seed in any::<u64>()) {
        let smooth = [UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Sqr, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Sin,
            UnaryOp::Cos, UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluErf];
        let x = randn(&[n], seed, 0);
        for op in smooth {
            check(op.name(), &move |xs| xs[0].unary(op), std::slice::from_ref(&x), seed);
        }
        // Kinks at 0 and poles: inputs with |x| ≥ 0.1.
        let xa = away_from_zero(&[n], seed, 1, 0.1);
        for op in [UnaryOp::Abs, UnaryOp::Relu, UnaryOp::Recip] {
            check(op.name(), &move |xs| xs[0].unary(op), std::slice::from_ref(&xa), seed);
        }
        // Positive domain.
        let xp = xa.abs().unwrap();
        for op in [UnaryOp::Ln, UnaryOp::Sqrt] {
            check(op.name(), &move |xs| xs[0].unary(op), std::slice::from_ref(&xp), seed);
        }
        check("powf", &|xs| xs[0].powf(1.7), std::slice::from_ref(&xp), seed);
        check("affine", &|xs| xs[0].affine(-1.5, 0.25), std::slice::from_ref(&x), seed);
        // Clamp bounds away from every input.
        let v = x.to_vec_f64().unwrap();
        let lo = -0.3;
        let hi = 0.45;
        prop_assume!(v.iter().all(|&a| (a - lo).abs() > 1e-3 && (a - hi).abs() > 1e-3));
        check("clamp", &move |xs| xs[0].clamp(lo, hi), std::slice::from_ref(&x), seed);
    }

    #[test]
    fn binary_ops_with_broadcasting(pair in 0usize..6, seed in any::<u64>()) {
        let shapes: [(&[usize], &[usize]); 6] = [
            (&[2, 3], &[2, 3]),
            (&[2, 3, 4], &[3, 1]),
            (&[4], &[2, 3, 4]),
            (&[2, 1, 4], &[1, 3, 1]),
            (&[], &[3, 2]),
            (&[3, 2], &[1]),
        ];
        let (sa, sb) = shapes[pair];
        let a = randn(sa, seed, 0);
        let b = away_from_zero(sb, seed, 1, 0.3);
        let xs = [a.clone(), b.clone()];
        // The gradient of a broadcast input sums the upstream terms (each of order 1) over the broadcast elements; a
        // sum that nearly cancels has a small norm but carries f32 rounding of order 1, so the f32 comparison is made
        // against max(‖g‖, 1) (seen: maximum, [3, 2] vs [1], rel L2 2.04e-4 against the plain norm).
        let floor = Some(1.0);
        check_with("add", &|xs| xs[0].add(&xs[1]), &xs, seed, floor);
        check_with("sub", &|xs| xs[0].sub(&xs[1]), &xs, seed, floor);
        check_with("mul", &|xs| xs[0].mul(&xs[1]), &xs, seed, floor);
        check_with("div", &|xs| xs[0].div(&xs[1]), &xs, seed, floor);
        // maximum/minimum: ties are measure-zero for random normals; keep |a − b| > h for the differences.
        let diff = autograd::no_grad(|| a.sub(&b).unwrap().abs().unwrap().to_vec_f64().unwrap());
        prop_assume!(diff.iter().all(|&d| d > 1e-3));
        check_with("maximum", &|xs| xs[0].maximum(&xs[1]), &xs, seed, floor);
        check_with("minimum", &|xs| xs[0].minimum(&xs[1]), &xs, seed, floor);
    }

    #[test]
    fn reductions(shape in prop::collection::vec(1usize..5, 1..4), dim_pick in 0usize..4, keepdim in any::<bool>(), seed in any::<u64>()) {
        let dim = dim_pick % shape.len();
        let x = randn(&shape, seed, 0);
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::LogSumExp] {
            check(&format!("{op:?}"), &move |xs| xs[0].reduce(dim, op, keepdim), std::slice::from_ref(&x), seed);
        }
        check("sum_all", &|xs| xs[0].sum_all(), std::slice::from_ref(&x), seed);
        check("softmax", &move |xs| xs[0].softmax(dim), std::slice::from_ref(&x), seed);
        check("log_softmax", &move |xs| xs[0].log_softmax(dim), std::slice::from_ref(&x), seed);
    }

    #[test]
    fn matmul_batched_and_linear(m in 1usize..5, k in 1usize..6, n in 1usize..5, case in 0usize..4, seed in any::<u64>()) {
        let (sa, sb): (Vec<usize>, Vec<usize>) = match case {
            0 => (vec![m, k], vec![k, n]),
            1 => (vec![2, m, k], vec![2, k, n]),
            2 => (vec![2, 1, m, k], vec![3, k, n]),
            _ => (vec![m, k], vec![2, k, n]),
        };
        let xs = [randn(&sa, seed, 0), randn(&sb, seed, 1)];
        check("matmul", &|xs| xs[0].matmul(&xs[1]), &xs, seed);
        let xs = [randn(&[2, m, k], seed, 2), randn(&[n, k], seed, 3)];
        check("linear", &|xs| xs[0].linear(&xs[1]), &xs, seed);
        // Transposed views as operands.
        let xs = [randn(&[k, m], seed, 4), randn(&[n, k], seed, 5)];
        check("matmul of views", &|xs| xs[0].t()?.matmul(&xs[1].t()?), &xs, seed);
    }

    #[test]
    fn norms_and_swiglu(rows in 1usize..4, d in 4usize..12, seed in any::<u64>()) {
        // (d ≥ 4: with two elements LayerNorm's output is ±w + b whatever x is, and its x-gradient is pure
        // cancellation noise.)
        let xs = [randn(&[rows, 2, d], seed, 0), randn(&[d], seed, 1)];
        check("rms_norm", &|xs| xs[0].rms_norm(&xs[1], 1e-5), &xs, seed);
        check("layer_norm", &|xs| xs[0].layer_norm(&xs[1], None, 1e-5), &xs, seed);
        let xs3 = [randn(&[rows, d], seed, 2), randn(&[d], seed, 3), randn(&[d], seed, 4)];
        check("layer_norm+bias", &|xs| xs[0].layer_norm(&xs[1], Some(&xs[2]), 1e-5), &xs3, seed);
        let g = [randn(&[rows, d], seed, 5), randn(&[rows, d], seed, 6)];
        check("swiglu", &|xs| xs[0].swiglu(&xs[1]), &g, seed);
    }

    #[test]
    fn rope_both_layouts(b in 1usize..3, h in 1usize..3, s in 1usize..4, half in 1usize..4, extra in 0usize..2, per_batch in any::<bool>(), seed in any::<u64>()) {
        let d = 2 * half + 2 * extra;
        let x = randn(&[b, h, s, d], seed, 0);
        let pos: Vec<u32> = (0..if per_batch { b * s } else { s }).map(|i| (i as u32 * 7 + seed as u32 % 13) % 50).collect();
        let pos = if per_batch { ids(&pos, &[b, s]) } else { ids(&pos, &[s]) };
        for style in [RopeStyle::Interleaved, RopeStyle::NeoX] {
            let cfg = RopeConfig { style, base: 10_000.0, rotary_dims: 2 * half };
            let p = pos.clone();
            check("rope", &move |xs| xs[0].rope(&p, &cfg), std::slice::from_ref(&x), seed);
        }
    }

    #[test]
    fn attention_masks_and_groups(b in 1usize..3, hkv in 1usize..3, group in 1usize..3, sq in 1usize..4, extra in 0usize..3, d in 1usize..5, mask_kind in 0usize..3, seed in any::<u64>()) {
        let skv = sq + extra;
        let hq = hkv * group;
        let xs = [randn(&[b, hq, sq, d], seed, 0), randn(&[b, hkv, skv, d], seed, 1), randn(&[b, hkv, skv, d + 1], seed, 2)];
        let mask = match mask_kind {
            0 => AttentionMask::None,
            1 => AttentionMask::Causal,
            _ => {
                // A random mask over [1, hq, sq, skv] (some rows may be fully masked: zero output, zero gradient).
                let rng = CounterRng::new(seed, 3);
                let m: Vec<u8> = (0..hq * sq * skv).map(|i| u8::from(rng.uniform_f64_at(i as u64) < 0.7)).collect();
                AttentionMask::Mask(Tensor::from_vec(m, &[1, hq, sq, skv], &CPU).unwrap())
            }
        };
        check("attention", &move |xs| xs[0].attention(&xs[1], &xs[2], &mask, None), &xs, seed);
    }

    #[test]
    fn indexing(rows in 2usize..6, d in 1usize..4, seed in any::<u64>()) {
        let x = randn(&[rows, d], seed, 0);
        // Repeated ids accumulate.
        let sel: Vec<u32> = (0..5).map(|i| ((i * 7 + seed as usize) % rows) as u32).collect();
        let sel_t = ids(&sel, &[5]);
        let s1 = sel_t.clone();
        check("index_select", &move |xs| xs[0].index_select(0, &s1), std::slice::from_ref(&x), seed);
        let s2 = sel_t.clone();
        check("index_select dim 1", &move |xs| xs[0].t()?.index_select(1, &s2), std::slice::from_ref(&x), seed);
        let e = ids(&sel[..4], &[2, 2]);
        check("embedding", &move |xs| xs[0].embedding(&e), std::slice::from_ref(&x), seed);
        let gi: Vec<u32> = (0..rows * d).map(|i| ((i * 5 + 1) % rows) as u32).collect();
        let gidx = ids(&gi, &[rows, d]);
        let g1 = gidx.clone();
        check("gather", &move |xs| xs[0].gather(0, &g1), std::slice::from_ref(&x), seed);
        let src = randn(&[rows, d], seed, 1);
        let g2 = gidx.clone();
        check("scatter_add", &move |xs| xs[0].scatter_add(0, &g2, &xs[1]), &[x.clone(), src.clone()], seed);
        let g3 = gidx.clone();
        check("scatter", &move |xs| xs[0].scatter(0, &g3, &xs[1]), &[x.clone(), src], seed);
        let (vals_input, k) = (randn(&[2, rows + 1], seed, 2), rows.min(3));
        check("top_k", &move |xs| Ok(xs[0].top_k(k)?.0), std::slice::from_ref(&vals_input), seed);
        let m: Vec<u8> = (0..rows * d).map(|i| u8::from(!(i + seed as usize).is_multiple_of(3))).collect();
        let mask = Tensor::from_vec(m, &[rows, d], &CPU).unwrap();
        check("where_cond", &move |xs| mask.where_cond(&xs[0], &xs[1]), &[x.clone(), randn(&[d], seed, 3)], seed);
    }

    #[test]
    fn views_and_concat(a in 1usize..4, b in 2usize..6, c in 1usize..4, seed in any::<u64>()) {
        let x = randn(&[a, b, c], seed, 0);
        let one = std::slice::from_ref(&x);
        check("reshape", &move |xs| xs[0].reshape(&[a * b, c]), one, seed);
        check("transpose", &|xs| xs[0].transpose(0, 2)?.contiguous(), one, seed);
        check("permute", &|xs| xs[0].permute(&[1, 2, 0]), one, seed);
        check("narrow", &move |xs| xs[0].narrow(1, 1, b - 1), one, seed);
        check("slice step 2", &move |xs| xs[0].slice(1, 0, b, 2), one, seed);
        check("broadcast_as", &move |xs| xs[0].unsqueeze(0)?.broadcast_as(&[2, a, b, c]), one, seed);
        check("squeeze", &|xs| xs[0].unsqueeze(1)?.squeeze(1)?.mul(&xs[0]), one, seed);
        let y = randn(&[a, 2, c], seed, 1);
        check("concat", &|xs| Tensor::concat(&[&xs[0], &xs[1], &xs[0]], 1), &[x.clone(), y], seed);
    }

    #[test]
    fn cross_entropy_matches_reference(rows in 1usize..6, v in 2usize..9, seed in any::<u64>()) {
        let x = randn(&[rows, v], seed, 0).affine(3.0, 0.0).unwrap();
        let t: Vec<u32> = (0..rows).map(|i| ((i * 3 + seed as usize) % v) as u32).collect();
        let want = effllm_tensor::reference::cross_entropy(&x.to_vec_f64().unwrap(), v, &t);
        let tt = ids(&t, &[rows]);
        let got = x.cross_entropy(&tt).unwrap().to_scalar::<f64>().unwrap();
        prop_assert!((got - want).abs() < 1e-12 * want.abs().max(1.0));
        // A saturated softmax (logits 3σ apart) has a tiny gradient p − 1 ≈ −e^(−Δ): f32 gives it only to within
        // ε₃₂/rows absolutely (p rounds to 1 ulp of 1) and central differences to within ε₆₄·|loss|/H, so both checks
        // are relative to the components' scale, 1/rows, when the gradient is smaller than that.
        let floor = Some(1.0 / rows as f64);
        check_with("cross_entropy", &move |xs| xs[0].cross_entropy(&tt), std::slice::from_ref(&x), seed, floor);
        // Batched logits [2, rows, v].
        let x3 = randn(&[2, rows, v], seed, 1);
        let t3: Vec<u32> = (0..2 * rows).map(|i| ((i * 5 + 1) % v) as u32).collect();
        let tt3 = ids(&t3, &[2, rows]);
        check("cross_entropy 3d", &move |xs| xs[0].cross_entropy(&tt3), std::slice::from_ref(&x3), seed);
    }

    /// The fused CPU f32 path (one log-sum-exp pass forward, one fused pass backward) equals the f64 composition
    /// in loss and gradient, for vocabularies up to a few hundred and any upstream gradient.
    #[test]
    fn cross_entropy_f32_fused_path_matches_f64(rows in 1usize..7, v in 2usize..300, g in 0.25f64..4.0, seed in any::<u64>()) {
        let x64 = randn(&[rows, v], seed, 2).affine(4.0, 0.0).unwrap();
        let t: Vec<u32> = (0..rows).map(|i| ((i * 7 + seed as usize) % v) as u32).collect();
        let tt = ids(&t, &[rows]);
        let run = |x: Tensor| {
            let x = x.requires_grad();
            let loss = x.cross_entropy(&tt).unwrap();
            let l = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            let grads = loss.affine(g, 0.0).unwrap().backward().unwrap();
            (l, grads.get(&x).unwrap().to_vec_f64().unwrap())
        };
        let (l32, g32) = run(x64.to_dtype(DType::F32).unwrap());
        let (l64, g64) = run(x64.clone());
        prop_assert!((l32 - l64).abs() < 1e-5 * l64.abs().max(1.0), "{} vs {}", l32, l64);
        let num: f64 = g32.iter().zip(&g64).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let den: f64 = g64.iter().map(|b| b * b).sum::<f64>().sqrt();
        prop_assert!(num / den < 1e-5, "gradient rel L2 {}", num / den);
    }
}

/// The checker itself rejects a wrong gradient: `x·detach(x)` has derivative `2x` but the sweep sees only one of
/// the two paths (`x`), which the finite differences must expose.
#[test]
fn checker_rejects_a_wrong_gradient() {
    let x = randn(&[5], 9, 0);
    let caught = std::panic::catch_unwind(|| {
        check_with("wrong", &|xs| xs[0].mul(&xs[0].detach()), std::slice::from_ref(&x), 9, None);
    });
    assert!(caught.is_err(), "a half-missing gradient passed the finite-difference check");
}

/// A two-layer composition exercising shared inputs (a tensor used twice accumulates both contributions).
#[test]
fn composite_graph_with_reuse() {
    let f = |xs: &[Tensor]| -> effllm_tensor::Result<Tensor> {
        let h = xs[0].linear(&xs[1])?.silu()?;
        let h = h.add(&xs[0].narrow(1, 0, 3)?)?; // x used twice
        h.rms_norm(&xs[2], 1e-6)?.softmax(1)
    };
    let xs = [randn(&[4, 5], 1, 0), randn(&[3, 5], 1, 1), randn(&[3], 1, 2)];
    check("composite", &f, &xs, 1);
}

/// bf16 compute from f32 master weights: the gradient crosses `to_dtype` back to the master's dtype.
#[test]
fn to_dtype_carries_the_gradient_back() {
    let w = randn(&[3, 4], 2, 0).to_dtype(DType::F32).unwrap().requires_grad();
    let x = randn(&[2, 4], 2, 1).to_dtype(DType::BF16).unwrap();
    let y = x.linear(&w.to_dtype(DType::BF16).unwrap()).unwrap().to_dtype(DType::F32).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads.get(&w).unwrap();
    assert_eq!(g.dtype(), DType::F32);
    // d Σ (x Wᵀ) / dW[j, :] = Σ_rows x (each row of W gets the column sums of x).
    let xs = x.to_vec_f64().unwrap();
    let want: Vec<f64> = (0..3).flat_map(|_| (0..4).map(|c| xs[c] + xs[4 + c]).collect::<Vec<_>>()).collect();
    assert!(rel_l2(&g.to_vec_f64().unwrap(), &want) < 1e-2);
}

/// Recomputation gives the gradient of the plain forward, for the block's inputs and for captured weights.
#[test]
fn checkpoint_equals_plain_backward() {
    let w = randn(&[6, 6], 3, 0).requires_grad();
    let g = randn(&[6], 3, 1).requires_grad();
    let x = randn(&[3, 6], 3, 2).requires_grad();
    let block = {
        let (w, g) = (w.clone(), g.clone());
        move |xs: &[Tensor]| -> effllm_tensor::Result<Tensor> {
            xs[0].rms_norm(&g, 1e-6)?.linear(&w)?.gelu()?.add(&xs[0])
        }
    };
    let plain = block(std::slice::from_ref(&x)).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let ck = autograd::checkpoint(std::slice::from_ref(&x), block).unwrap();
    let grads = ck.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for t in [&w, &g, &x] {
        let a = plain.get(t).unwrap().to_vec_f64().unwrap();
        let b = grads.get(t).unwrap().to_vec_f64().unwrap();
        assert!(rel_l2(&b, &a) < 1e-14, "checkpointed gradient differs");
    }
}

/// Two sweeps into one store add up; `clear` empties it.
#[test]
fn gradients_accumulate_across_backward_calls() {
    let w = randn(&[4], 4, 0).requires_grad();
    let loss = |scale: f64| w.sqr().unwrap().affine(scale, 0.0).unwrap().sum_all().unwrap();
    let mut grads = Gradients::new();
    grads.accumulate(&loss(1.0)).unwrap();
    grads.accumulate(&loss(2.0)).unwrap();
    let got = grads.get(&w).unwrap().to_vec_f64().unwrap();
    let want: Vec<f64> = w.to_vec_f64().unwrap().iter().map(|v| 6.0 * v).collect();
    assert!(rel_l2(&got, &want) < 1e-15);
    assert_eq!(grads.nbytes(), 4 * 8);
    grads.clear();
    assert!(grads.is_empty());
}

/// The ready callback fires once per leaf, after every consumer has contributed: the gradient it sees is the
/// final one (equal to a plain backward's), and taking it there frees it from the store.
#[test]
fn ready_callback_fires_once_per_leaf_with_the_final_gradient() {
    let w1 = randn(&[5, 4], 5, 0).requires_grad();
    let w2 = randn(&[3, 5], 5, 1).requires_grad();
    let x = randn(&[2, 4], 5, 2);
    // w1 is used twice (both layers' inputs depend on it), w2 once; the root uses both.
    let loss = || {
        let h = x.linear(&w1).unwrap().tanh().unwrap();
        let y = h.linear(&w2).unwrap();
        let z = x.linear(&w1).unwrap().sum_all().unwrap();
        y.sqr().unwrap().sum_all().unwrap().add(&z).unwrap()
    };
    let plain = loss().backward().unwrap();
    let mut seen: Vec<(TensorId, Vec<f64>)> = Vec::new();
    let mut grads = Gradients::new();
    grads
        .accumulate_with(&loss(), None, &mut |id, store| {
            let g = store.take_id(id).unwrap();
            seen.push((id, g.to_vec_f64().unwrap()));
            Ok(())
        })
        .unwrap();
    assert!(grads.is_empty(), "the callback took every gradient");
    assert_eq!(seen.len(), 2);
    let mut ids_seen: Vec<TensorId> = seen.iter().map(|(id, _)| *id).collect();
    ids_seen.sort();
    ids_seen.dedup();
    assert_eq!(ids_seen.len(), 2, "each leaf fires exactly once");
    for (id, g) in &seen {
        let want = plain.get_id(*id).unwrap().to_vec_f64().unwrap();
        assert!(rel_l2(g, &want) < 1e-15);
    }
    // The deeper weight becomes ready last: w2 (used only by the last layer) first.
    assert_eq!(seen[0].0, w2.id().unwrap());
}

/// `no_grad` stops recording, also inside `threads::install` and `with_num_threads`, whose closures run on pool
/// threads; grad mode comes back afterwards.
#[test]
fn no_grad_reaches_pool_threads() {
    let w = randn(&[3, 3], 6, 0).requires_grad();
    let y = autograd::no_grad(|| w.exp().unwrap());
    assert!(!y.is_tracked());
    let on_pool = autograd::no_grad(|| {
        effllm_tensor::threads::install(|| (autograd::is_grad_enabled(), w.exp().unwrap().is_tracked()))
    });
    assert_eq!(on_pool, (false, false));
    let sized = autograd::no_grad(|| {
        effllm_tensor::threads::with_num_threads(2, || (autograd::is_grad_enabled(), w.exp().unwrap().is_tracked()))
            .unwrap()
    });
    assert_eq!(sized, (false, false));
    // And grad mode on is carried too.
    let tracked = effllm_tensor::threads::with_num_threads(2, || w.exp().unwrap().is_tracked()).unwrap();
    assert!(tracked);
    assert!(autograd::is_grad_enabled());
    assert!(w.exp().unwrap().is_tracked());
}

/// Bad uses are typed errors.
#[test]
fn errors_are_typed() {
    let w = randn(&[2, 2], 7, 0).requires_grad();
    let y = w.exp().unwrap();
    assert!(matches!(y.backward(), Err(Error::NonScalarRoot { .. })));
    assert!(matches!(randn(&[1], 7, 1).backward(), Err(Error::NotTracked)));
    let loss = y.sum_all().unwrap();
    loss.backward().unwrap();
    assert!(matches!(loss.backward(), Err(Error::GraphConsumed { .. })));
    let mut t = w.clone();
    assert!(matches!(t.slice_assign(0, 0, &randn(&[1, 2], 7, 2)), Err(Error::NotDifferentiable { .. })));
    assert!(matches!(w.thin_svd(), Err(Error::NotDifferentiable { .. })));
    // A seed of the wrong shape.
    let mut g = Gradients::new();
    let y = w.exp().unwrap();
    assert!(matches!(
        g.accumulate_with(&y, Some(&randn(&[3], 7, 3)), &mut |_, _| Ok(())),
        Err(Error::ShapeMismatch { .. })
    ));
    // Non-finite gradients name the leaf.
    let bad = t64(vec![0.0, 1.0], &[2]).requires_grad();
    let grads = bad.sqrt().unwrap().sum_all().unwrap().backward().unwrap();
    match grads.check_finite() {
        Err(Error::NonFiniteGradient { id, count }) => {
            assert_eq!(id, bad.id().unwrap().as_u64());
            assert_eq!(count, 1);
        }
        other => panic!("expected a non-finite gradient error, got {other:?}"),
    }
}

/// A seed gradient for a non-scalar root, and `replace_data` keeping the identity.
#[test]
fn seeded_backward_and_replace_data() {
    let mut w = randn(&[3], 8, 0).requires_grad();
    let id = w.id();
    let seed = randn(&[3], 8, 1);
    let mut g = Gradients::new();
    g.accumulate_with(&w.affine(2.0, 1.0).unwrap(), Some(&seed), &mut |_, _| Ok(())).unwrap();
    let want: Vec<f64> = seed.to_vec_f64().unwrap().iter().map(|s| 2.0 * s).collect();
    assert_eq!(g.get(&w).unwrap().to_vec_f64().unwrap(), want);
    w.replace_data(&randn(&[3], 8, 2)).unwrap();
    assert_eq!(w.id(), id);
    assert!(w.is_leaf());
    assert!(matches!(w.replace_data(&randn(&[4], 8, 3)), Err(Error::ShapeMismatch { .. })));
}

/// A very deep graph (a long chain of ops) is dropped without recursing once per node, and a backward through it
/// works on a small stack too.
#[test]
fn deep_graphs_drop_and_differentiate_on_a_small_stack() {
    let run = || {
        let w = t64(vec![0.5], &[1]).requires_grad();
        let mut y = w.clone();
        for _ in 0..40_000 {
            y = y.affine(1.0, 1e-6).unwrap();
        }
        drop(y); // discarded without a backward
        let mut y = w.clone();
        for _ in 0..20_000 {
            y = y.affine(1.0, 0.0).unwrap();
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&w).unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
    };
    std::thread::Builder::new().stack_size(256 * 1024).spawn(run).unwrap().join().unwrap();
}

/// `round(v)` to bf16 and back, in f64.
fn bf16_round(v: &[f64]) -> Vec<f64> {
    t64(v.to_vec(), &[v.len()]).to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()
}

/// Row-major `[rows, cols]` → its transpose `[cols, rows]`.
fn transposed(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| v[r * cols + c])).collect()
}

/// `a [m, k] · bᵀ` (`b` = `[n, k]`) in f64.
fn times_t(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    (0..m).flat_map(|i| (0..n).map(move |j| (0..k).map(|c| a[i * k + c] * b[j * k + c]).sum::<f64>())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// `linear_mixed`: the f32 result of the bf16-rounded input times the bf16 weight (f32 accumulation, no
    /// rounding of the result), and its straight-through gradients: `∂x = round(g) · w` in f32, `∂w` the bf16
    /// rounding of `round(g)ᵀ · round(x)`, carried back to an f32 master through `to_dtype`.
    #[test]
    fn linear_mixed_is_the_rounded_product_with_straight_through_gradients(
        lead in 1usize..3, m in 1usize..5, k in 1usize..9, n in 1usize..6, seed in any::<u64>()
    ) {
        let rows = lead * m;
        let x = randn(&[lead, m, k], seed, 1).to_dtype(DType::F32).unwrap().requires_grad();
        let master = randn(&[n, k], seed, 2).to_dtype(DType::F32).unwrap().requires_grad();
        let r = randn(&[lead, m, n], seed, 3).to_dtype(DType::F32).unwrap();
        let w = master.to_dtype(DType::BF16).unwrap();
        let y = x.linear_mixed(&w).unwrap();
        prop_assert_eq!(y.dtype(), DType::F32);
        prop_assert_eq!(y.shape(), &[lead, m, n][..]);
        let (xs, ws, rs) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap(), r.to_vec_f64().unwrap());
        let x16 = bf16_round(&xs);
        let want = times_t(&x16, &ws, rows, k, n);
        let err = rel_l2(&y.to_vec_f64().unwrap(), &want);
        prop_assert!(err < 1e-6, "forward rel L2 {:e}", err);
        let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let r16 = bf16_round(&rs);
        // ∂x[i, c] = Σ_j round(r)[i, j] · w[j, c]: `times_t` against wᵀ.
        let wt = transposed(&ws, n, k);
        let gx = grads.get(&x).unwrap();
        prop_assert_eq!(gx.dtype(), DType::F32);
        let err = rel_l2(&gx.to_vec_f64().unwrap(), &times_t(&r16, &wt, rows, n, k));
        prop_assert!(err < 1e-6, "∂x rel L2 {:e}", err);
        // ∂w[j, c] = Σ_i round(r)[i, j] · round(x)[i, c], rounded once to bf16.
        let (rt, xt) = (transposed(&r16, rows, n), transposed(&x16, rows, k));
        let gw = grads.get(&master).unwrap();
        prop_assert_eq!(gw.dtype(), DType::F32);
        let err = rel_l2(&gw.to_vec_f64().unwrap(), &times_t(&rt, &xt, n, rows, k));
        prop_assert!(err < 4e-3, "∂w rel L2 {:e}", err);
    }
}

#[test]
fn linear_mixed_takes_f32_activations_and_16_bit_weights() {
    let x = randn(&[2, 3], 5, 0).to_dtype(DType::F32).unwrap();
    let w = randn(&[4, 3], 5, 1).to_dtype(DType::F32).unwrap();
    // Same dtypes: plain `linear`.
    assert_eq!(x.linear_mixed(&w).unwrap().to_vec::<f32>().unwrap(), x.linear(&w).unwrap().to_vec::<f32>().unwrap());
    let x64 = x.to_dtype(DType::F64).unwrap();
    let w16 = w.to_dtype(DType::BF16).unwrap();
    assert!(matches!(x64.linear_mixed(&w16), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(x.linear_mixed(&w16.t().unwrap()), Err(Error::ShapeMismatch { .. })));
}
