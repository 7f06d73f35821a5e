//! Gradients on CUDA equal the CPU's: the backward rules are tensor ops, so the same sweep runs on the device.
//! Each case differentiates one composite on both devices (f32) and compares every input's gradient by
//! `‖cuda − cpu‖ / ‖cpu‖ < 1e-4`. Without a usable GPU only the CPU side runs (finite, non-zero gradients), unless
//! `EFFLLM_REQUIRE_CUDA=1`, which turns the skip into a failure.

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{AttentionMask, DType, Device, RopeConfig, RopeStyle, Tensor};

const GPU: Device = Device::Cuda(0);

fn gpu() -> bool {
    match GPU.check_available() {
        Ok(()) => true,
        Err(e) => {
            assert!(std::env::var("EFFLLM_REQUIRE_CUDA").as_deref() != Ok("1"), "EFFLLM_REQUIRE_CUDA=1 but {e}");
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// Normal values scaled by `1/√(last dim)`, so that activations stay O(1) and the softmax does not saturate.
fn randn(shape: &[usize], seed: u64) -> Tensor {
    let std = 1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt();
    Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, std).unwrap()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

type Loss = dyn Fn(&[Tensor], &Device) -> effllm_tensor::Result<Tensor>;

fn same_gradients(name: &str, inputs: &[Tensor], loss: &Loss) {
    same_gradients_within(name, inputs, loss, 1e-4);
}

/// [`same_gradients`] with tolerance `tol` on the relative L2 error (bf16 compute needs about 1e-2).
fn same_gradients_within(name: &str, inputs: &[Tensor], loss: &Loss, tol: f64) {
    let grads_on = |dev: &Device| -> Vec<Vec<f64>> {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap().requires_grad()).collect();
        let l = loss(&leaves, dev).unwrap();
        let g = l.backward().unwrap();
        leaves
            .iter()
            .map(|t| {
                let gr = g.get(t).unwrap_or_else(|| panic!("{name}: no gradient"));
                assert_eq!(gr.device(), *dev, "{name}: the gradient lives where the input does");
                gr.to_vec_f64().unwrap()
            })
            .collect()
    };
    // The CPU side always runs (so the composite itself is checked on machines without a GPU).
    let cpu = grads_on(&Device::Cpu);
    for (i, g) in cpu.iter().enumerate() {
        assert!(
            g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0),
            "{name}: input {i}: bad CPU gradient: {} non-zero of {}",
            g.iter().filter(|v| **v != 0.0).count(),
            g.len()
        );
    }
    if !gpu() {
        return;
    }
    let cuda = grads_on(&GPU);
    for (i, (a, b)) in cuda.iter().zip(&cpu).enumerate() {
        let err = rel_l2(a, b);
        assert!(err < tol, "{name}: input {i}: CUDA vs CPU gradient rel L2 {err:e}");
    }
}

#[test]
fn transformer_block_gradients_match_the_cpu() {
    let (t, d, hq, hkv, hd, vocab) = (5, 16, 4, 2, 4, 11);
    let inputs = [
        randn(&[vocab, d], 1),     // embedding
        randn(&[d], 2),            // norm gain
        randn(&[hq * hd, d], 3),   // W_q
        randn(&[hkv * hd, d], 4),  // W_k
        randn(&[hkv * hd, d], 5),  // W_v
        randn(&[2 * d, d], 6),     // W_gate
        randn(&[2 * d, d], 7),     // W_up
        randn(&[vocab, 2 * d], 8), // W_out
    ];
    let loss = move |w: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
        let ids = Tensor::from_vec(vec![1u32, 4, 4, 9, 0], &[t], dev)?;
        let pos = Tensor::from_vec((0..t as u32).collect::<Vec<_>>(), &[t], dev)?;
        let cfg = RopeConfig { style: RopeStyle::NeoX, base: 10_000.0, rotary_dims: hd };
        let x = w[0].embedding(&ids)?.rms_norm(&w[1], 1e-5)?;
        let heads = |y: Tensor, n: usize| y.reshape(&[t, n, hd])?.transpose(0, 1)?.unsqueeze(0);
        let q = heads(x.linear(&w[2])?, hq)?.rope(&pos, &cfg)?;
        let k = heads(x.linear(&w[3])?, hkv)?.rope(&pos, &cfg)?;
        let v = heads(x.linear(&w[4])?, hkv)?;
        let a = q.attention(&k, &v, &AttentionMask::Causal, None)?.squeeze(0)?.transpose(0, 1)?.reshape(&[t, d])?;
        let h = x.add(&a)?;
        let f = h.linear(&w[5])?.swiglu(&h.linear(&w[6])?)?;
        let logits = f.linear(&w[7])?.softmax(1)?.affine(4.0, 0.0)?;
        logits.cross_entropy(&Tensor::from_vec(vec![3u32, 1, 0, 10, 2], &[t], dev)?)
    };
    same_gradients("transformer block", &inputs, &loss);
}

#[test]
fn elementwise_and_reduction_gradients_match_the_cpu() {
    let inputs = [randn(&[3, 7], 11), randn(&[7], 12)];
    let loss = |w: &[Tensor], _: &Device| -> effllm_tensor::Result<Tensor> {
        let a = w[0].mul(&w[1])?.tanh()?.add(&w[0].sigmoid()?)?.silu()?;
        let b = a.gelu()?.sub(&w[0].exp()?.affine(0.1, 0.0)?)?.div(&w[1].sqr()?.affine(1.0, 1.0)?)?;
        let c = b.logsumexp(1, false)?.add(&b.max(0, false)?.sum(0, true)?)?;
        c.add(&b.log_softmax(0)?.mean(0, false)?.sum_all()?)?.sum_all()
    };
    same_gradients("elementwise + reductions", &inputs, &loss);
}

/// The training kernels: the fused cross-entropy over a wide vocabulary (one block per row, several elements per
/// thread), an embedding lookup with repeated ids (rows added by `atomicAdd`) and `index_select` on bf16 tables.
#[test]
fn cross_entropy_and_embedding_kernels_match_the_cpu() {
    let (t, d, vocab) = (9, 24, 3001);
    let inputs = [randn(&[vocab, d], 21), randn(&[d, d], 22)];
    let loss = move |w: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
        let ids = Tensor::from_vec(vec![5u32, 3000, 5, 17, 5, 0, 17, 2999, 1], &[t], dev)?;
        let x = w[0].embedding(&ids)?.linear(&w[1])?.affine(3.0, 0.0)?;
        let logits = x.linear(&w[0])?.affine(2.0, 0.0)?; // tied head: the table gets both gradients
        let targets = Tensor::from_vec(vec![1u32, 2, 3000, 5, 5, 17, 0, 2999, 42], &[t], dev)?;
        logits.cross_entropy(&targets)?.affine(1.5, 0.0)
    };
    same_gradients("cross-entropy + embedding", &inputs, &loss);
    let bf16 = move |w: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
        let ids = Tensor::from_vec(vec![7u32, 7, 100, 2], &[4], dev)?;
        let rows = w[0].to_dtype(DType::BF16)?.index_select(0, &ids)?.to_dtype(DType::F32)?;
        rows.linear(&w[1])?.sqr()?.sum_all()
    };
    same_gradients("bf16 embedding rows", &inputs, &bf16);
}

/// Attention over long query blocks, which CUDA runs as batched cuBLAS GEMMs around fused softmax / gradient
/// kernels (forward and backward): grouped-query heads, causal with cached keys (s_q < s_kv), a random mask with
/// some fully masked rows, no mask; and the same in bf16 (scores stay f32 on the device).
#[test]
fn long_query_attention_gradients_match_the_cpu() {
    let (b, hkv, group, sq, skv, d) = (2, 2, 3, 19, 27, 8);
    let hq = hkv * group;
    let inputs = [randn(&[b, hq, sq, d], 31), randn(&[b, hkv, skv, d], 32), randn(&[b, hkv, skv, d], 33)];
    let weights = randn(&[b, hq, sq, d], 34);
    // Row i of batch 1 attends to nothing when i % 7 == 3 in the random mask (its output and gradients are zero).
    let mask = move |kind: usize, dev: &Device| -> effllm_tensor::Result<AttentionMask> {
        Ok(match kind {
            0 => AttentionMask::Causal,
            1 => AttentionMask::None,
            _ => {
                let bits: Vec<u8> = (0..b * sq * skv)
                    .map(|n| {
                        let (bi, i, j) = (n / (sq * skv), (n / skv) % sq, n % skv);
                        u8::from(!(bi == 1 && i % 7 == 3) && (i * 31 + j * 17 + bi) % 5 != 0)
                    })
                    .collect();
                AttentionMask::Mask(Tensor::from_vec(bits, &[b, 1, sq, skv], dev)?)
            }
        })
    };
    for (kind, name) in ["causal", "none", "random mask"].into_iter().enumerate() {
        for dtype in [DType::F32, DType::BF16] {
            let w = weights.clone();
            let loss = move |x: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
                let m = mask(kind, dev)?;
                let c = |t: &Tensor| t.to_dtype(dtype);
                let a = c(&x[0])?.attention(&c(&x[1])?, &c(&x[2])?, &m, None)?.to_dtype(DType::F32)?;
                a.mul(&w.to_device(dev)?)?.sum_all()
            };
            if dtype == DType::F32 {
                same_gradients(&format!("long-query attention, {name}"), &inputs, &loss);
            } else {
                same_gradients_within(&format!("long-query attention, {name}, bf16"), &inputs, &loss, 2e-2);
            }
        }
    }
}

/// The row kernels at model widths, forward and backward: RMSNorm over rows of 514 (not a multiple of four), 576
/// and 1030 values (past the warp-per-row limit), SwiGLU, RoPE over nine heads of one batch position set and of
/// per-batch positions, and causal attention over 70 to 160 keys (several register slots per lane).
#[test]
fn model_width_row_kernels_match_the_cpu() {
    for d in [514usize, 576, 1030] {
        let inputs = [randn(&[7, d], 41), randn(&[d], 42), randn(&[7, d], 43)];
        let loss = |w: &[Tensor], _: &Device| -> effllm_tensor::Result<Tensor> {
            let y = w[0].rms_norm(&w[1], 1e-5)?;
            y.swiglu(&w[2])?.mul(&y)?.sum_all()
        };
        same_gradients(&format!("rms_norm + swiglu, d = {d}"), &inputs, &loss);
    }
    let (b, h, s, hd) = (2, 9, 20, 16);
    for per_batch in [false, true] {
        let inputs = [randn(&[b, h, s, hd], 44), randn(&[b, h, s, hd], 45)];
        let loss = move |w: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
            let pos: Vec<u32> = (0..if per_batch { b * s } else { s } as u32).map(|p| 3 * p + 1).collect();
            let shape = if per_batch { vec![b, s] } else { vec![s] };
            let pos = Tensor::from_vec(pos, &shape, dev)?;
            let cfg = RopeConfig { style: RopeStyle::NeoX, base: 10_000.0, rotary_dims: hd };
            w[0].rope(&pos, &cfg)?.mul(&w[1])?.sum_all()
        };
        same_gradients(&format!("rope, per-batch positions: {per_batch}"), &inputs, &loss);
    }
    // Square, and with cached keys before the queries (s_q < s_kv); rows of up to 256, 512 and 1024 keys.
    for (sq, skv) in [(70usize, 70usize), (150, 150), (130, 160), (40, 300), (32, 600)] {
        let (b, hkv, group, d) = (1, 2, 2, 16);
        let inputs = [randn(&[b, hkv * group, sq, d], 46), randn(&[b, hkv, skv, d], 47), randn(&[b, hkv, skv, d], 48)];
        let weights = randn(&[b, hkv * group, sq, d], 49);
        let forward = |x: &[Tensor]| x[0].attention(&x[1], &x[2], &AttentionMask::Causal, None);
        if gpu() {
            let cpu = forward(&inputs).unwrap().to_vec_f64().unwrap();
            let on_gpu: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&GPU).unwrap()).collect();
            let cuda = forward(&on_gpu).unwrap().to_vec_f64().unwrap();
            let err = rel_l2(&cuda, &cpu);
            assert!(err < 1e-5, "causal attention {sq}×{skv}: CUDA vs CPU output rel L2 {err:e}");
        }
        let loss = move |x: &[Tensor], dev: &Device| -> effllm_tensor::Result<Tensor> {
            let a = x[0].attention(&x[1], &x[2], &AttentionMask::Causal, None)?;
            a.mul(&weights.to_device(dev)?)?.sum_all()
        };
        same_gradients(&format!("causal attention, {sq} queries over {skv} keys"), &inputs, &loss);
    }
}

/// The mixed-precision linear (bf16 GEMMs with the f32 accumulator as the result) over training-sized rows, through
/// an f32 master weight; ∂w is rounded to bf16 on both devices, so its last bit may differ.
#[test]
fn mixed_precision_linear_matches_the_cpu() {
    let inputs = [randn(&[2, 37, 96], 51), randn(&[80, 96], 52), randn(&[2, 37, 80], 53)];
    let loss = |w: &[Tensor], _: &Device| -> effllm_tensor::Result<Tensor> {
        w[0].linear_mixed(&w[1].to_dtype(DType::BF16)?)?.mul(&w[2])?.sum_all()
    };
    same_gradients_within("linear_mixed", &inputs, &loss, 1e-2);
}
