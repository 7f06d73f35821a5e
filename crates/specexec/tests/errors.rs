//! Bad input: clear typed errors, never a silent fallback to another distribution.

use effllm_model::{Batch, CausalLm, Device, KvCache, LogitRows, Tensor};
use effllm_sampling::SamplingParams;
use specexec::models::LookupLm;
use specexec::{ChainConfig, Engine, SpecError, SpecExecConfig, SpecInferConfig, check_same_tokens};

/// A lookup LM whose logits turn NaN (or +∞) once the context reaches `after` tokens.
#[derive(Debug)]
struct Poisoned {
    inner: LookupLm,
    after: usize,
    value: f32,
}

impl CausalLm for Poisoned {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn new_cache(&self) -> KvCache {
        self.inner.new_cache()
    }
    fn forward(&self, batch: &Batch, cache: &mut KvCache, rows: &LogitRows) -> effllm_model::Result<Tensor> {
        let before = cache.len();
        let t = self.inner.forward(batch, cache, rows)?;
        if before + batch.len() < self.after {
            return Ok(t);
        }
        let shape = t.shape().to_vec();
        let mut v = t.to_vec::<f32>()?;
        let last = v.len() - 1;
        v[last] = self.value;
        Tensor::from_vec(v, &shape, &Device::Cpu).map_err(Into::into)
    }
}

#[test]
fn different_vocabularies_are_rejected() {
    let (a, b) = (LookupLm::new(12, 2, 1, 1.0), LookupLm::new(13, 2, 1, 1.0));
    let e = Engine::specexec(&a, &b, SpecExecConfig::default()).unwrap_err();
    assert!(matches!(e, SpecError::VocabSizeMismatch { draft: 12, target: 13 }), "{e}");
    let e = Engine::chain(&a, &b, ChainConfig::default()).unwrap_err();
    assert!(matches!(e, SpecError::VocabSizeMismatch { .. }));
    let e = check_same_tokens(&["a", "b", "c"], &["a", "x", "c"]).unwrap_err();
    assert!(matches!(e, SpecError::TokenizerMismatch { id: 1, .. }), "{e}");
    let e = check_same_tokens(&["a", "b"], &["a", "b", "c"]).unwrap_err();
    assert!(matches!(e, SpecError::TokenizerMismatch { id: 2, .. }));
    check_same_tokens(&["a", "b"], &["a".to_string(), "b".to_string()]).unwrap();
}

#[test]
fn invalid_configurations_are_rejected() {
    let m = LookupLm::new(8, 2, 1, 1.0);
    let bad = |cfg: SpecExecConfig, name: &str| {
        let e = Engine::specexec(&m, &m, cfg).unwrap_err();
        assert!(matches!(e, SpecError::InvalidConfig { name: n, .. } if n == name), "{e}");
    };
    bad(SpecExecConfig { budget: 0, ..Default::default() }, "budget");
    bad(SpecExecConfig { max_depth: 0, ..Default::default() }, "max_depth");
    bad(SpecExecConfig { expand_batch: 0, ..Default::default() }, "expand_batch");
    bad(SpecExecConfig { max_branch: 0, ..Default::default() }, "max_branch");
    bad(SpecExecConfig { depth_decay: 0.0, ..Default::default() }, "depth_decay");
    bad(SpecExecConfig { depth_decay: 1.5, ..Default::default() }, "depth_decay");
    bad(SpecExecConfig { draft_temperature: 0.0, ..Default::default() }, "draft_temperature");
    bad(SpecExecConfig { min_log_prob: Some(f64::NAN), ..Default::default() }, "min_log_prob");
    bad(SpecExecConfig { max_draft_forwards: Some(0), ..Default::default() }, "max_draft_forwards");
    assert!(matches!(Engine::chain(&m, &m, ChainConfig { draft_len: 0 }), Err(SpecError::InvalidConfig { .. })));
    let si = SpecInferConfig { widths: vec![], ..Default::default() };
    assert!(matches!(Engine::spec_infer(&m, &m, si), Err(SpecError::InvalidConfig { .. })));
    let si = SpecInferConfig { widths: vec![2, 0], ..Default::default() };
    assert!(matches!(Engine::spec_infer(&m, &m, si), Err(SpecError::InvalidConfig { .. })));
    // Invalid sampling parameters are the sampler's typed error, not a silent greedy fallback.
    let e = Engine::specexec(&m, &m, SpecExecConfig::with_budget(4))
        .unwrap()
        .generate(&[1], 4, &SamplingParams { top_p: 0.0, ..Default::default() })
        .unwrap_err();
    assert!(matches!(e, SpecError::Sampling(_)), "{e}");
}

#[test]
fn bad_prompts_are_rejected() {
    let m = LookupLm::new(8, 2, 1, 1.0);
    let engine = Engine::specexec(&m, &m, SpecExecConfig::with_budget(4)).unwrap();
    let p = SamplingParams::default();
    assert!(matches!(engine.generate(&[], 4, &p), Err(SpecError::EmptyPrompt)));
    assert!(matches!(
        engine.generate(&[1, 8], 4, &p),
        Err(SpecError::TokenOutOfRange { token: 8, index: 1, vocab: 8 })
    ));
    assert!(matches!(specexec::autoregressive(&m, &[], 4, &p), Err(SpecError::EmptyPrompt)));
}

#[test]
fn stop_tokens_outside_the_vocabulary_are_rejected() {
    let m = LookupLm::new(8, 2, 1, 1.0);
    let p = SamplingParams::default();
    let bad = |e: &SpecError| matches!(e, SpecError::StopTokenOutOfRange { token: 8, index: 1, vocab: 8 });
    for method in [
        specexec::Method::SpecExec(SpecExecConfig::with_budget(4)),
        specexec::Method::Chain(ChainConfig::default()),
        specexec::Method::SpecInfer(SpecInferConfig::default()),
    ] {
        let engine = Engine::new(&m, &m, method).unwrap();
        let e = engine.generate_until(&[1, 2], 4, &[2, 8], &p).unwrap_err();
        assert!(bad(&e), "{e}");
        let e = engine.start(&[1, 2], &p).unwrap().with_stop_tokens(&[2, 8]).unwrap_err();
        assert!(bad(&e), "{e}");
    }
    let e = specexec::autoregressive_until(&m, &[1, 2], 4, &[2, 8], &p).unwrap_err();
    assert!(bad(&e), "{e}");
}

#[test]
fn stepping_after_a_stop_token_is_an_error() {
    let m = LookupLm::new(8, 2, 1, 1.0);
    let p = SamplingParams { temperature: 0.7, seed: 2, ..Default::default() };
    let engine = Engine::specexec(&m, &m, SpecExecConfig::with_budget(8)).unwrap();
    // Every token is a stop token: the first step ends the session after its first emitted token.
    let all: Vec<u32> = (0..8).collect();
    let mut s = engine.start(&[1, 2], &p).unwrap().with_stop_tokens(&all).unwrap();
    let emitted = s.step().unwrap();
    assert_eq!(emitted.len(), 1);
    assert_eq!(s.stopped(), Some(emitted[0]));
    let e = s.step().unwrap_err();
    assert!(matches!(e, SpecError::Stopped { token } if token == emitted[0]), "{e}");
}

#[test]
fn a_tree_larger_than_the_remaining_context_is_an_error() {
    let target = LookupLm::new(8, 2, 1, 1.0).with_context(40);
    let draft = LookupLm::new(8, 2, 2, 1.0);
    let p = SamplingParams::default();
    let prompt: Vec<u32> = (0..10).map(|i| i % 8).collect();
    // Up front: prompt + new tokens + one full tree do not fit.
    let engine = Engine::specexec(&draft, &target, SpecExecConfig::with_budget(64)).unwrap();
    let e = engine.generate(&prompt, 4, &p).unwrap_err();
    assert!(matches!(e, SpecError::ContextOverflow { model: "target", context: 40, .. }), "{e}");
    // During a session: the step that would overflow fails before any forward.
    let engine = Engine::specexec(&draft, &target, SpecExecConfig::with_budget(16)).unwrap();
    let mut s = engine.start(&prompt, &p).unwrap();
    let mut err = None;
    for _ in 0..40 {
        match s.step() {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the context must run out");
    assert!(matches!(e, SpecError::ContextOverflow { model: "target", context: 40, .. }), "{e}");
    assert!(s.sequence().len() - 1 + 17 > 40);
}

#[test]
fn non_finite_logits_are_errors() {
    let good = LookupLm::new(8, 2, 1, 1.0);
    let prompt = [1u32, 2, 3];
    let p = SamplingParams { temperature: 0.7, seed: 1, ..Default::default() };
    for value in [f32::NAN, f32::INFINITY] {
        let bad = Poisoned { inner: good.clone(), after: 6, value };
        let e = Engine::specexec(&good, &bad, SpecExecConfig::with_budget(8))
            .unwrap()
            .generate(&prompt, 20, &p)
            .unwrap_err();
        assert!(matches!(e, SpecError::NonFiniteLogits { model: "target", .. }), "{e}");
        let e = Engine::specexec(&bad, &good, SpecExecConfig::with_budget(8))
            .unwrap()
            .generate(&prompt, 20, &p)
            .unwrap_err();
        assert!(matches!(e, SpecError::NonFiniteLogits { model: "draft", .. }), "{e}");
        let e = Engine::chain(&bad, &good, ChainConfig::default()).unwrap().generate(&prompt, 20, &p).unwrap_err();
        assert!(matches!(e, SpecError::NonFiniteLogits { model: "draft", .. }), "{e}");
        let e = specexec::autoregressive(&bad, &prompt, 20, &p).unwrap_err();
        assert!(matches!(e, SpecError::NonFiniteLogits { model: "target", .. }), "{e}");
    }
}
