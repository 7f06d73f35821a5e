//! SmolLM2-135M-Instruct (the real Q4_1 GGUF): SpecExec at T = 0 equals greedy decoding of the target, with the
//! target dequantized to f32 and the Q4_1 file as the draft, and with the Q4_1 model as both target and a
//! 10-layer early-exit draft of itself. Skips with a notice when the model is absent (fails under
//! `EFFLLM_REQUIRE_MODEL=1`).

use effllm_gguf::model_cache;
use effllm_model::{LlamaModel, LoadOptions, WeightFormat};
use effllm_sampling::SamplingParams;
use specexec::models::EarlyExit;
use specexec::{Engine, SpecExecConfig, autoregressive};

fn models() -> Option<(LlamaModel, LlamaModel)> {
    match model_cache::smollm2_path() {
        Some(p) => Some((
            LlamaModel::open_gguf(&p, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap(),
            LlamaModel::open_gguf(&p, &LoadOptions::default()).unwrap(),
        )),
        None if model_cache::require_model() => panic!("EFFLLM_REQUIRE_MODEL=1 but the model is missing"),
        None => {
            eprintln!("{}", model_cache::SKIP_NOTICE);
            None
        }
    }
}

// "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
const PROMPT: [u32; 16] = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];

#[test]
fn greedy_specexec_equals_greedy_target() {
    let Some((f32_target, q4)) = models() else { return };
    let greedy = SamplingParams::greedy();
    let n = 12;
    let cfg = SpecExecConfig { budget: 16, max_depth: 6, expand_batch: 16, max_branch: 4, ..Default::default() };

    let want = autoregressive(&f32_target, &PROMPT, n, &greedy).unwrap().tokens;
    assert_eq!(&want[..8], [504, 3575, 282, 4649, 314, 7042, 30, 2]);
    let g = Engine::specexec(&q4, &f32_target, cfg.clone()).unwrap().generate(&PROMPT, n, &greedy).unwrap();
    assert_eq!(g.tokens, want);
    // The Q4_1 draft of the same model agrees with it on most tokens.
    assert!(g.stats.tokens_per_step() > 2.0, "tokens per step {}", g.stats.tokens_per_step());

    let want_q4 = autoregressive(&q4, &PROMPT, n, &greedy).unwrap().tokens;
    let early = EarlyExit::new(&q4, 10).unwrap();
    let g = Engine::specexec(&early, &q4, cfg).unwrap().generate(&PROMPT, n, &greedy).unwrap();
    assert_eq!(g.tokens, want_q4);
}
