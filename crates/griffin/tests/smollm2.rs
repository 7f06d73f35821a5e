//! GRIFFIN on the real SmolLM2-135M-Instruct (Q4_1): prompt logits unchanged at any density, first greedy token
//! unchanged, density 1 bitwise dense through decode, teacher forcing equal to token-by-token decode, and the
//! packed down projection in use. Skips with a notice when the model is absent (unless `EFFLLM_REQUIRE_MODEL=1`).

use effllm_gguf::model_cache;
use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows};
use griffin::{GriffinConfig, GriffinLlama};

fn model() -> Option<LlamaModel> {
    match model_cache::smollm2_path() {
        Some(p) => Some(LlamaModel::open_gguf(p, &LoadOptions::default()).unwrap()),
        None if model_cache::require_model() => panic!("EFFLLM_REQUIRE_MODEL=1 but the model is missing"),
        None => {
            eprintln!("{}", model_cache::SKIP_NOTICE);
            None
        }
    }
}

const PROMPT: [u32; 16] = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];

fn argmax(t: &effllm_tensor::Tensor) -> u32 {
    t.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0]
}

#[test]
fn prompt_logits_and_first_token_unchanged() {
    let Some(m) = model() else { return };
    let dense = m.forward(&Batch::causal(&PROMPT, 0), &mut m.new_cache(), &LogitRows::All).unwrap();
    let dense = dense.to_vec::<f32>().unwrap();
    for density in [0.0, 0.25, 0.5] {
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(density)).unwrap();
        let mut seq = g.new_sequence();
        let mut cache = m.new_cache();
        let ours = g.prefill(&mut seq, &Batch::causal(&PROMPT, 0), &mut cache, &LogitRows::All).unwrap();
        assert_eq!(ours.to_vec::<f32>().unwrap(), dense, "density {density}");
        let last = ours.narrow(0, PROMPT.len() - 1, 1).unwrap();
        assert_eq!(argmax(&last), 504, "the first greedy token is the dense model's (\"The\")");
        g.finalize(&mut seq).unwrap();
        if density > 0.0 {
            assert!(seq.pruned(0).unwrap().is_packed(), "Q4_1 down is packed");
            assert_eq!(seq.experts(0).unwrap().len(), griffin::k_for_density(1536, density));
        }
    }
}

#[test]
fn density_one_is_bitwise_dense_and_half_density_decodes() {
    let Some(m) = model() else { return };
    let g = GriffinLlama::new(&m, GriffinConfig::with_density(1.0)).unwrap();
    let (mut seq, mut c1, mut c2) = (g.new_sequence(), m.new_cache(), m.new_cache());
    let mut a = g.prefill(&mut seq, &Batch::causal(&PROMPT, 0), &mut c1, &LogitRows::Last).unwrap();
    let mut b = m.forward(&Batch::causal(&PROMPT, 0), &mut c2, &LogitRows::Last).unwrap();
    g.finalize(&mut seq).unwrap();
    let mut out = Vec::new();
    for i in 0..6 {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "step {i}");
        let next = argmax(&b);
        out.push(next);
        a = g.decode(&mut seq, &Batch::causal(&[next], PROMPT.len() + i), &mut c1, &LogitRows::Last).unwrap();
        b = m.forward(&Batch::causal(&[next], PROMPT.len() + i), &mut c2, &LogitRows::Last).unwrap();
    }
    assert_eq!(out, [504, 3575, 282, 4649, 314, 7042]);
}

#[test]
fn teacher_forcing_equals_token_by_token() {
    let Some(m) = model() else { return };
    let cont = [504u32, 3575, 282, 4649, 314, 7042, 30];
    let g = GriffinLlama::new(&m, GriffinConfig::default()).unwrap();
    let (mut seq, mut cache) = (g.new_sequence(), m.new_cache());
    let mut step = vec![g.prefill(&mut seq, &Batch::causal(&PROMPT, 0), &mut cache, &LogitRows::Last).unwrap()];
    g.finalize(&mut seq).unwrap();
    for (i, &t) in cont[..cont.len() - 1].iter().enumerate() {
        step.push(g.decode(&mut seq, &Batch::causal(&[t], PROMPT.len() + i), &mut cache, &LogitRows::Last).unwrap());
    }
    let step: Vec<f64> = step.iter().flat_map(|t| t.to_vec_f64().unwrap()).collect();
    let all: Vec<u32> = PROMPT.iter().chain(&cont[..cont.len() - 1]).copied().collect();
    let n = PROMPT.len();
    let rows = LogitRows::Rows((n - 1..all.len()).collect());
    let (mut s1, mut c1) = (g.new_sequence(), m.new_cache());
    let one = g.teacher_forced(&mut s1, &Batch::causal(&all, 0), n, &mut c1, &rows).unwrap().to_vec_f64().unwrap();
    let num: f64 = one.iter().zip(&step).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let den: f64 = step.iter().map(|b| b * b).sum::<f64>().sqrt();
    assert!(num / den < 1e-4, "rel L2 {}", num / den);
    for l in 0..30 {
        assert_eq!(s1.experts(l), seq.experts(l), "layer {l}");
    }
}
