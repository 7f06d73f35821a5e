//! The decoder is differentiable: the gradient of the cross-entropy of a short sequence, computed by the backward
//! sweep through the same forward pass that serves inference (f32), equals central finite differences of the
//! naive f64 reference model on sampled coordinates of every weight.

mod common;

use common::{Tiny, tiny_gguf};
use effllm_gguf::GgmlType;
use effllm_model::reference::{Mat, ReferenceLlama};
use effllm_model::{Batch, CausalLm, LayeredLm, LlamaModel, LoadOptions, LogitRows, ModelError, Tensor, WeightFormat};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{Device, Error};

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 2654435761 + seed * 40503) % vocab as u64) as u32).collect()
}

/// Mean cross-entropy of the reference's causal logits of `inputs` against `targets`.
fn reference_loss(r: &ReferenceLlama, inputs: &[u32], targets: &[u32]) -> f64 {
    let logits = r.forward_causal(inputs).concat();
    effllm_tensor::reference::cross_entropy(&logits, r.config.vocab, targets)
}

/// The f64 weight a parameter name refers to in the reference (both copies for the tied table).
fn weight_mut<'a>(r: &'a mut ReferenceLlama, name: &str) -> Vec<&'a mut Vec<f64>> {
    let parts: Vec<&str> = name.split('.').collect();
    let tied = r.config.tied_embeddings;
    match parts.as_slice() {
        ["embedding"] if tied => vec![&mut r.embedding.data, &mut r.lm_head.data],
        ["embedding"] => vec![&mut r.embedding.data],
        ["lm_head"] => vec![&mut r.lm_head.data],
        ["norm"] => vec![&mut r.norm],
        ["layers", i, rest @ ..] => {
            let l = &mut r.layers[i.parse::<usize>().unwrap()];
            let m = |m: &'a mut Mat| &mut m.data;
            vec![match rest {
                ["attn_norm"] => &mut l.attn_norm,
                ["ffn_norm"] => &mut l.ffn_norm,
                ["wq"] => m(&mut l.wq),
                ["wk"] => m(&mut l.wk),
                ["wv"] => m(&mut l.wv),
                ["wo"] => m(&mut l.wo),
                ["ffn", "gate"] => m(&mut l.gate),
                ["ffn", "up"] => m(&mut l.up),
                ["ffn", "down"] => m(&mut l.down),
                other => panic!("unknown parameter {other:?}"),
            }]
        }
        other => panic!("unknown parameter {other:?}"),
    }
}

fn check_model_gradient(t: &Tiny, seed: u64, n_tokens: usize, coords_per_param: usize, tol: f64) {
    let m =
        LlamaModel::from_gguf(&tiny_gguf(t, seed), &LoadOptions { format: WeightFormat::F32, ..Default::default() })
            .unwrap()
            .requires_grad()
            .unwrap();
    let toks = tokens(n_tokens + 1, t.vocab, seed);
    let (inputs, targets) = (&toks[..n_tokens], &toks[1..]);
    let logits = m.forward(&Batch::causal(inputs, 0), &mut m.new_cache(), &LogitRows::All).unwrap();
    let target_t = Tensor::from_slice(targets, &[n_tokens], &Device::Cpu).unwrap();
    let loss = logits.cross_entropy(&target_t).unwrap();
    let grads = loss.backward().unwrap();
    grads.check_finite().unwrap();

    let base = ReferenceLlama::from_model(&m).unwrap();
    let want_loss = reference_loss(&base, inputs, targets);
    let got_loss = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0), "loss {got_loss} vs {want_loss}");

    let params = m.named_parameters();
    let expected = if t.tied { 2 + 9 * t.n_layer } else { 3 + 9 * t.n_layer };
    assert_eq!(params.len(), expected);
    let h = 1e-4;
    let (mut all_got, mut all_fd) = (Vec::new(), Vec::new());
    for (pi, (name, p)) in params.iter().enumerate() {
        let g = grads.get(p).unwrap_or_else(|| panic!("no gradient for {name}")).to_vec::<f32>().unwrap();
        assert_eq!(g.len(), p.elem_count());
        let rng = CounterRng::new(seed, 1000 + pi as u64);
        let (mut got, mut fd) = (Vec::new(), Vec::new());
        for j in 0..coords_per_param {
            let c = (rng.uniform_f64_at(j as u64) * g.len() as f64) as usize % g.len();
            let eval = |delta: f64| {
                let mut r = base.clone();
                for w in weight_mut(&mut r, name) {
                    w[c] += delta;
                }
                reference_loss(&r, inputs, targets)
            };
            fd.push((eval(h) - eval(-h)) / (2.0 * h));
            got.push(g[c] as f64);
        }
        let err = common::rel_l2(&got.iter().map(|&x| x as f32).collect::<Vec<_>>(), &fd);
        assert!(err < tol, "{name}: autograd vs finite differences rel L2 {err:e}\n{got:?}\n{fd:?}");
        all_got.extend(got);
        all_fd.extend(fd);
    }
    let err = common::rel_l2(&all_got.iter().map(|&x| x as f32).collect::<Vec<_>>(), &all_fd);
    assert!(err < tol / 3.0, "all parameters: rel L2 {err:e}");
}

/// Tied embeddings, grouped-query attention, the per-query attention kernel (short sequence).
#[test]
fn tiny_llama_gradient_matches_finite_differences_tied() {
    check_model_gradient(&Tiny::default_f32(), 11, 7, 6, 2e-3);
}

/// A separate LM head, two KV groups of three heads, and the GEMM attention path of long batches (≥ 32 tokens).
#[test]
fn tiny_llama_gradient_matches_finite_differences_untied_gemm_attention() {
    let t = Tiny { n_layer: 1, n_head: 6, n_head_kv: 2, head_dim: 8, tied: false, vocab: 40, ..Tiny::default_f32() };
    check_model_gradient(&t, 12, 33, 4, 2e-3);
}

/// Inference is untouched by training: the logits of a model whose weights require grad equal the plain model's
/// bitwise, and a no-grad forward records nothing.
#[test]
fn requires_grad_does_not_change_the_forward() {
    let t = Tiny::default_f32();
    let plain =
        LlamaModel::from_gguf(&tiny_gguf(&t, 3), &LoadOptions { format: WeightFormat::F32, ..Default::default() })
            .unwrap();
    let trainable = plain.requires_grad().unwrap();
    let toks = tokens(9, t.vocab, 3);
    let a = plain.forward(&Batch::causal(&toks, 0), &mut plain.new_cache(), &LogitRows::All).unwrap();
    let b = trainable.forward(&Batch::causal(&toks, 0), &mut trainable.new_cache(), &LogitRows::All).unwrap();
    assert!(!a.is_tracked() && b.is_tracked());
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let c = effllm_tensor::no_grad(|| {
        trainable.forward(&Batch::causal(&toks, 0), &mut trainable.new_cache(), &LogitRows::All).unwrap()
    });
    assert!(!c.is_tracked());
    assert_eq!(a.to_vec::<f32>().unwrap(), c.to_vec::<f32>().unwrap());
}

/// Quantized weights: asking for their gradient is a typed error, but activations still get gradients through
/// them (the input gradient of a quantized layer equals that of its dequantized f32 twin).
#[test]
fn quantized_weights_are_not_trainable_but_pass_gradients() {
    let t = Tiny { weights: GgmlType::Q8_0, ..Tiny::default_f32() };
    let file = tiny_gguf(&t, 5);
    let q = LlamaModel::from_gguf(&file, &LoadOptions::default()).unwrap();
    assert!(matches!(q.requires_grad(), Err(ModelError::Tensor(Error::NotDifferentiable { .. }))));
    let f = LlamaModel::from_gguf(&file, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap();
    let toks = tokens(5, t.vocab, 5);
    let targets = Tensor::from_slice(&tokens(5, t.vocab, 6), &[5], &Device::Cpu).unwrap();
    let input_grad = |m: &LlamaModel| {
        let h = m.embed(&toks).unwrap().requires_grad();
        let mut cache = m.new_cache();
        let out = m
            .run_layers(h.clone(), 0..t.n_layer, &Batch::causal(&toks, 0), &mut cache, &mut effllm_model::NoHooks)
            .unwrap();
        let logits = m.lm_head(&m.final_norm(&out).unwrap()).unwrap();
        let grads = logits.cross_entropy(&targets).unwrap().backward().unwrap();
        grads.get(&h).unwrap().to_vec::<f32>().unwrap()
    };
    let (gq, gf) = (input_grad(&q), input_grad(&f));
    let gf64: Vec<f64> = gf.iter().map(|&x| x as f64).collect();
    assert!(common::rel_l2(&gq, &gf64) < 1e-4);
}

/// Training over a non-empty cache: cached slots are constants, so the gradient of a loss over new tokens with
/// respect to their hidden states equals that of one forward over prefix + new tokens (where the prefix does not
/// depend on the new tokens either). Covers the per-query kernel and the GEMM attention path (≥ 32 new tokens).
#[test]
fn gradients_through_a_prefilled_cache_equal_a_full_forward() {
    let t = Tiny::default_f32();
    let m = LlamaModel::from_gguf(&tiny_gguf(&t, 8), &LoadOptions { format: WeightFormat::F32, ..Default::default() })
        .unwrap();
    for (p, n) in [(3, 4), (2, 33)] {
        let toks = tokens(p + n, t.vocab, 8);
        let targets = Tensor::from_slice(&tokens(n, t.vocab, 9), &[n], &Device::Cpu).unwrap();
        let head = |h: &Tensor| m.lm_head(&m.final_norm(h).unwrap()).unwrap();
        // One forward over everything, the input hidden states a leaf.
        let h_all = m.embed(&toks).unwrap().requires_grad();
        let out = m
            .run_layers(
                h_all.clone(),
                0..t.n_layer,
                &Batch::causal(&toks, 0),
                &mut m.new_cache(),
                &mut effllm_model::NoHooks,
            )
            .unwrap();
        let loss = head(&out.narrow(0, p, n).unwrap()).cross_entropy(&targets).unwrap();
        let g_all = loss.backward().unwrap().get(&h_all).unwrap().narrow(0, p, n).unwrap().to_vec::<f32>().unwrap();
        // The prefix into the cache without gradients, then the new tokens with.
        let mut cache = m.new_cache();
        effllm_tensor::no_grad(|| m.forward(&Batch::causal(&toks[..p], 0), &mut cache, &LogitRows::Last).unwrap());
        let h_new = m.embed(&toks[p..]).unwrap().requires_grad();
        let out = m
            .run_layers(
                h_new.clone(),
                0..t.n_layer,
                &Batch::causal(&toks[p..], p),
                &mut cache,
                &mut effllm_model::NoHooks,
            )
            .unwrap();
        let loss2 = head(&out).cross_entropy(&targets).unwrap();
        let g_new = loss2.backward().unwrap().get(&h_new).unwrap().to_vec::<f32>().unwrap();
        let want: Vec<f64> = g_all.iter().map(|&x| x as f64).collect();
        let err = common::rel_l2(&g_new, &want);
        assert!(err < 1e-5, "prefix {p}, new {n}: rel L2 {err:e}");
        assert!((loss.to_scalar::<f32>().unwrap() - loss2.to_scalar::<f32>().unwrap()).abs() < 1e-5);
    }
}

/// A batch of packed sequences (`Batch::sequences`) is the same as one forward per sequence: equal logits, and the
/// gradient of the mean loss over the batch equals the mean of the per-sequence gradients. Also: a non-empty
/// cache or a length that does not divide the batch is a typed error.
#[test]
fn a_batch_of_sequences_equals_one_forward_per_sequence() {
    let t = Tiny { n_layer: 2, tied: false, ..Tiny::default_f32() };
    let m = LlamaModel::from_gguf(&tiny_gguf(&t, 21), &LoadOptions { format: WeightFormat::F32, ..Default::default() })
        .unwrap()
        .requires_grad()
        .unwrap();
    let (n_seq, len) = (3, 6);
    let toks = tokens(n_seq * len, t.vocab, 21);
    let targets = tokens(n_seq * len, t.vocab, 22);
    let batch = Batch::sequences(&toks, len).unwrap();
    let logits = m.forward(&batch, &mut m.new_cache(), &LogitRows::All).unwrap();
    assert_eq!(logits.shape(), [n_seq * len, t.vocab]);
    let target_t = Tensor::from_slice(&targets, &[n_seq * len], &Device::Cpu).unwrap();
    let grads = logits.cross_entropy(&target_t).unwrap().backward().unwrap();

    let mut want_logits = Vec::new();
    let mut want_grads: Vec<Vec<f64>> = Vec::new();
    for s in 0..n_seq {
        let r = s * len..(s + 1) * len;
        let l = m.forward(&Batch::causal(&toks[r.clone()], 0), &mut m.new_cache(), &LogitRows::All).unwrap();
        want_logits.extend(l.to_vec::<f32>().unwrap().into_iter().map(f64::from));
        let tt = Tensor::from_slice(&targets[r], &[len], &Device::Cpu).unwrap();
        let g = l.cross_entropy(&tt).unwrap().backward().unwrap();
        for (pi, (_, p)) in m.named_parameters().iter().enumerate() {
            let v = g.get(p).unwrap().to_vec_f64().unwrap();
            match want_grads.get_mut(pi) {
                Some(acc) => acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b / n_seq as f64),
                None => want_grads.push(v.iter().map(|b| b / n_seq as f64).collect()),
            }
        }
    }
    let err = common::rel_l2(&logits.to_vec::<f32>().unwrap(), &want_logits);
    assert!(err < 1e-5, "logits rel L2 {err:e}");
    for ((name, p), want) in m.named_parameters().iter().zip(&want_grads) {
        let got = grads.get(p).unwrap().to_vec::<f32>().unwrap();
        let err = common::rel_l2(&got, want);
        assert!(err < 1e-4, "{name}: gradient rel L2 {err:e}");
    }

    let mut cache = m.new_cache();
    effllm_tensor::no_grad(|| m.forward(&Batch::causal(&toks[..2], 0), &mut cache, &LogitRows::Last).unwrap());
    assert!(matches!(m.forward(&batch, &mut cache, &LogitRows::All), Err(ModelError::Invalid { .. })));
    assert!(matches!(Batch::sequences(&toks, 7), Err(ModelError::Invalid { .. })));
    // The dense form of the mask is block-diagonal causal.
    let dense = Batch::sequences(&toks[..4], 2).unwrap().dense_mask(0).unwrap().unwrap();
    assert_eq!(dense, vec![1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1]);
}

/// Mixed precision: bf16 casts of the f32 master matrices (`map_weights`; norm gains stay f32, as under PyTorch's
/// autocast) give f32 gradients on the masters, close to the all-f32 gradients (bf16 keeps 8 bits of mantissa:
/// rel L2 < 5e-2), with a tied head receiving one gradient.
#[test]
fn bf16_compute_copies_pass_gradients_to_f32_masters() {
    let t = Tiny { n_layer: 2, ..Tiny::default_f32() };
    let m = LlamaModel::from_gguf(&tiny_gguf(&t, 31), &LoadOptions { format: WeightFormat::F32, ..Default::default() })
        .unwrap()
        .requires_grad()
        .unwrap();
    let (n_seq, len) = (2, 8);
    let toks = tokens(n_seq * len, t.vocab, 31);
    let target_t = Tensor::from_slice(&tokens(n_seq * len, t.vocab, 32), &[n_seq * len], &Device::Cpu).unwrap();
    let batch = Batch::sequences(&toks, len).unwrap();
    let loss_of = |model: &LlamaModel| {
        let logits = model.forward(&batch, &mut model.new_cache(), &LogitRows::All).unwrap();
        logits.to_dtype(effllm_tensor::DType::F32).unwrap().cross_entropy(&target_t).unwrap()
    };
    let g32 = loss_of(&m).backward().unwrap();
    let mut casts = 0;
    let bf = m
        .map_weights(&mut |_, w| {
            if w.shape().len() < 2 {
                return Ok(w.clone());
            }
            casts += 1;
            Ok(w.to_dtype(effllm_tensor::DType::BF16)?)
        })
        .unwrap();
    let matrices = m.named_parameters().iter().filter(|(_, p)| p.shape().len() == 2).count();
    assert_eq!(casts, matrices, "one cast per matrix (the tied head is the embedding's)");
    assert!(bf.map_weights(&mut |_, w| Ok(w.narrow(0, 0, 1)?)).is_err(), "a shape change is an error");
    let g16 = loss_of(&bf).backward().unwrap();
    for (name, p) in m.named_parameters() {
        let a = g16.get(&p).unwrap_or_else(|| panic!("{name}: no gradient on the master"));
        assert_eq!(a.dtype(), effllm_tensor::DType::F32);
        let err = common::rel_l2(&a.to_vec::<f32>().unwrap(), &g32.get(&p).unwrap().to_vec_f64().unwrap());
        assert!(err < 5e-2, "{name}: bf16 vs f32 gradient rel L2 {err:e}");
    }
}
