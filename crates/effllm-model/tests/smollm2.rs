//! SmolLM2-135M-Instruct (the real Q4_1 GGUF): greedy continuation and logits against the committed fixtures
//! from llama.cpp and an f64 numpy reference (`scripts/fixtures/smollm2_forward.py`).

use effllm_gguf::model_cache;
use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows};

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

fn greedy(m: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache();
    let mut logits = m.forward(&Batch::causal(prompt, 0), &mut cache, &LogitRows::Last).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let next = logits.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0];
        out.push(next);
        logits = m.forward(&Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last).unwrap();
    }
    out
}

#[test]
fn capital_of_france() {
    let Some(m) = model() else { return };
    let c = m.config();
    assert_eq!((c.n_layer, c.d_model, c.n_head, c.n_head_kv, c.d_ff, c.vocab), (30, 576, 9, 3, 1536, 49152));
    assert!(c.tied_embeddings);
    assert_eq!(greedy(&m, &PROMPT, 8), [504, 3575, 282, 4649, 314, 7042, 30, 2]);
}
