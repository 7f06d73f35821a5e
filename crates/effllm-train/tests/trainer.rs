//! The trainer on synthetic token streams (tiny shapes, seconds): it learns, gradient accumulation equals one
//! big batch, checkpoints resume bitwise, bad checkpoints and configs are typed errors, a non-finite loss stops
//! the run and keeps the last checkpoint, activation checkpointing and bf16 mixed precision train the model.
//! (Memory accounting has its own test binary: the live-memory counters are process-wide.)

mod common;

use common::{params_f64, rel_l2};
use effllm_data::TokenizedSplit;
use effllm_model::{Batch, CausalLm, LogitRows};
use effllm_tensor::DType;
use effllm_train::{Precision, TrainConfig, TrainData, TrainError, Trainer, reference};
use proptest::prelude::*;

const VOCAB: usize = common::WALK_VOCAB;

fn data(seq_len: usize) -> TrainData {
    common::walk_data(seq_len)
}

fn cfg(dir: &str) -> TrainConfig {
    common::walk_config("test", dir)
}

#[test]
fn the_model_learns_in_f32_bf16_and_with_activation_checkpointing() {
    for (precision, ckpt) in [(Precision::F32, false), (Precision::Bf16, false), (Precision::F32, true)] {
        let mut c = cfg("learn");
        c.run.precision = precision;
        c.run.activation_checkpointing = ckpt;
        let mut d = data(c.data.seq_len);
        let mut t = Trainer::new(c, VOCAB).unwrap();
        let first = t.evaluate(&d).unwrap().loss;
        for _ in 0..40 {
            t.train_step(&mut d).unwrap();
        }
        let last = t.evaluate(&d).unwrap().loss;
        let label = format!("{precision:?}, checkpointing {ckpt}");
        assert!((first - (VOCAB as f64).ln()).abs() < 0.3, "{label}: initial loss {first} ≈ ln V");
        assert!(last < 0.5 * d.unigram_nats(), "{label}: {last} vs unigram {}", d.unigram_nats());
        assert!(t.parameters().iter().all(|(_, p)| p.dtype() == DType::F32), "{label}: masters stay f32");
    }
}

#[test]
fn the_evaluation_loss_is_the_reference_cross_entropy() {
    let c = cfg("eval");
    let d = data(c.data.seq_len);
    let mut t = Trainer::new(c.clone(), VOCAB).unwrap();
    let got = t.evaluate(&d).unwrap();
    let rows = d.val_rows_flat(c.data.eval_sequences);
    let (inputs, targets) = effllm_train::inputs_and_targets(&rows, c.data.seq_len);
    let m = t.model().unwrap();
    let logits = effllm_tensor::no_grad(|| {
        m.forward(&Batch::sequences(&inputs, c.data.seq_len).unwrap(), &mut m.new_cache(), &LogitRows::All).unwrap()
    });
    let want = reference::mean_cross_entropy(&logits.to_vec_f64().unwrap(), VOCAB, &targets);
    assert!((got.loss - want).abs() < 1e-5 * want, "{} vs {want}", got.loss);
    assert_eq!(got.tokens, targets.len());
    assert!((got.perplexity - want.exp()).abs() < 1e-4 * want.exp());
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let mut big = cfg("accum-a");
    big.data.batch_size = 4;
    let mut small = big.clone();
    small.data.batch_size = 2;
    small.data.grad_accum = 2;
    let (mut da, mut db) = (data(16), data(16));
    let mut a = Trainer::new(big, VOCAB).unwrap();
    let mut b = Trainer::new(small, VOCAB).unwrap();
    let init = params_f64(&a);
    assert_eq!(init, params_f64(&b), "same seed, same initialisation");
    let (ra, rb) = (a.train_step(&mut da).unwrap(), b.train_step(&mut db).unwrap());
    assert!((ra.loss - rb.loss).abs() < 1e-6 * ra.loss, "{} vs {}", ra.loss, rb.loss);
    assert!((ra.grad_norm - rb.grad_norm).abs() < 1e-5 * ra.grad_norm);
    let upd = |p: Vec<f64>| p.iter().zip(&init).map(|(x, y)| x - y).collect::<Vec<_>>();
    let err = rel_l2(&upd(params_f64(&b)), &upd(params_f64(&a)));
    assert!(err < 1e-3, "updates differ: rel L2 {err:e}");
    assert_eq!(a.tokens_seen(), b.tokens_seen());
}

#[test]
fn a_resumed_run_continues_bitwise() {
    let c = cfg("resume");
    let dir = c.run.out_dir.join("checkpoint");
    let mut d = data(16);
    let mut a = Trainer::new(c.clone(), VOCAB).unwrap();
    for _ in 0..3 {
        a.train_step(&mut d).unwrap();
    }
    a.evaluate(&d).unwrap();
    a.save(&dir, &d).unwrap();
    for _ in 0..3 {
        a.train_step(&mut d).unwrap();
    }
    let mut d2 = data(16);
    let mut b = Trainer::resume(&dir, c.clone(), &d2).unwrap();
    assert_eq!((b.step(), b.tokens_seen(), b.evals().len()), (3, 3 * 64, 1));
    for _ in 0..3 {
        b.train_step(&mut d2).unwrap();
    }
    assert_eq!(params_f64(&a), params_f64(&b));
    assert_eq!(
        a.history().iter().map(|r| r.loss).collect::<Vec<_>>(),
        b.history().iter().map(|r| r.loss).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}

#[test]
fn bad_checkpoints_are_typed_errors() {
    let c = cfg("bad-ckpt");
    let dir = c.run.out_dir.join("checkpoint");
    let mut d = data(16);
    let mut t = Trainer::new(c.clone(), VOCAB).unwrap();
    t.train_step(&mut d).unwrap();
    t.save(&dir, &d).unwrap();
    let copy = |name: &str| {
        let to = c.run.out_dir.join(name);
        std::fs::remove_dir_all(&to).ok();
        std::fs::create_dir_all(&to).unwrap();
        for f in ["model.safetensors", "optimizer.safetensors", "trainer.json"] {
            std::fs::copy(dir.join(f), to.join(f)).unwrap();
        }
        to
    };
    let msg = |r: Result<Trainer, TrainError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed from a bad checkpoint"),
    };
    // Truncated weights.
    let trunc = copy("truncated");
    let bytes = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = msg(Trainer::resume(&trunc, c.clone(), &d));
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    // Another architecture.
    let mut other = c.clone();
    other.model.d_model = 64;
    assert!(msg(Trainer::resume(&dir, other, &d)).contains("the checkpoint's model"));
    // Missing optimizer state: an optimizer file without the moments.
    let no_state = copy("no-state");
    // A valid safetensors file holding one unrelated tensor instead of the moments.
    std::fs::write(no_state.join("optimizer.safetensors"), safetensors_with_one_tensor()).unwrap();
    let e = msg(Trainer::resume(&no_state, c.clone(), &d));
    assert!(e.contains("optimizer.safetensors") && e.contains("exp_avg"), "{e}");
    // Another tokenizer.
    let val = TokenizedSplit::from_parts(vec!["v".into()], vec![common::walk(3, 300)]);
    let train = TokenizedSplit::from_parts(vec!["a".into()], vec![common::walk(1, 700)]);
    let other_tok = TrainData::from_documents(&train, &val, VOCAB, Some(0), 16, "another-tokenizer").unwrap();
    assert!(msg(Trainer::resume(&dir, c.clone(), &other_tok)).contains("tokenizer"));
    // Not a checkpoint at all.
    assert!(matches!(Trainer::resume(&c.run.out_dir.join("nowhere"), c.clone(), &d), Err(TrainError::Io { .. })));
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}

fn safetensors_with_one_tensor() -> Vec<u8> {
    let data: Vec<u8> = 1f32.to_le_bytes().to_vec();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    safetensors::serialize([("embedding/unrelated", view)], None).unwrap()
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    let mut c = cfg("nan");
    c.optim.lr = 1e30; // the first update throws the weights to ±1e30: the next loss is not finite
    c.optim.min_lr = 1e30;
    c.optim.warmup_steps = 0;
    c.run.checkpoint_every = 1;
    c.run.eval_every = 100;
    c.run.steps = 5;
    let mut d = data(16);
    let mut t = Trainer::new(c.clone(), VOCAB).unwrap();
    let mut seen = Vec::new();
    let err = t
        .run(&mut d, &mut |e| {
            if let effllm_train::Event::Step(r) = e {
                seen.push(r.step)
            }
        })
        .unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 2, .. }), "{err}");
    assert_eq!(seen, [1]);
    assert_eq!(t.step(), 1, "the failed step changed nothing");
    let back = Trainer::resume(&c.run.out_dir.join("checkpoint"), c.clone(), &d).unwrap();
    assert_eq!(back.step(), 1);
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}

#[test]
fn configs_are_checked_and_presets_merge() {
    let err = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = TrainConfig::preset("tiny").unwrap();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(err(&|c| c.model.d_model = 250).contains("model.d_model"));
    assert!(err(&|c| c.model.n_head_kv = 3).contains("model.n_head"));
    assert!(err(&|c| c.data.seq_len = 0).contains("data.seq_len"));
    assert!(err(&|c| c.optim.beta2 = 1.0).contains("optim.beta2"));
    assert!(err(&|c| c.optim.min_lr = 1.0).contains("optim.min_lr"));
    assert!(err(&|c| c.optim.warmup_steps = 20).contains("optim.warmup_steps"));
    assert!(err(&|c| c.run.device = "tpu:0".into()).contains("run.device"));
    let c =
        TrainConfig::from_json(r#"{"preset": "cpu-small", "run": {"steps": 70}, "model": {"n_layer": 2}}"#).unwrap();
    let base = TrainConfig::preset("cpu-small").unwrap();
    assert_eq!((c.run.steps, c.model.n_layer, c.model.d_model, c.run.seed), (70, 2, 256, base.run.seed));
    assert!(
        TrainConfig::from_json(r#"{"preset": "cpu-small", "run": {"stepz": 7}}"#)
            .unwrap_err()
            .to_string()
            .contains("stepz")
    );
    assert!(TrainConfig::from_json(r#"{"preset": "huge"}"#).unwrap_err().to_string().contains("unknown preset"));
    assert_eq!(TrainConfig::from_json(&base.to_json()).unwrap(), base, "JSON round trip");
    for (name, _) in effllm_train::PRESETS {
        TrainConfig::preset(name).unwrap().validate().unwrap();
    }
}

#[test]
fn non_finite_configs_and_bad_data_are_rejected() {
    let train = TokenizedSplit::from_parts(vec!["a".into()], vec![vec![1, 2, 40]]);
    let e = TrainData::from_documents(&train, &train, VOCAB, None, 1, "x").unwrap_err();
    assert!(e.to_string().contains("40"), "{e}");
    let short = TokenizedSplit::from_parts(vec!["a".into()], vec![vec![1, 2]]);
    let e = TrainData::from_documents(&short, &short, VOCAB, None, 16, "x").unwrap_err();
    assert!(e.to_string().contains("not one row"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The unigram baseline equals the naive reference.
    #[test]
    fn unigram_baseline_matches_reference(
        train in proptest::collection::vec(0u32..20, 1..300),
        eval in proptest::collection::vec(0u32..20, 1..100),
    ) {
        let got = effllm_train::unigram_cross_entropy(&train, &eval, 20);
        let want = reference::unigram_cross_entropy(&train, &eval, 20);
        prop_assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0));
    }
}

/// Any `Optimizer` plugs in through a factory (here SGD with momentum): it trains, checkpoints carry its state and
/// name, and resuming with another optimizer is a typed error.
#[test]
fn another_optimizer_trains_checkpoints_and_is_checked_on_resume() {
    use effllm_optim::{Sgd, SgdConfig};
    let sgd = |c: &TrainConfig, wd: f64| -> effllm_train::Result<Box<dyn effllm_optim::Optimizer + Send>> {
        Ok(Box::new(Sgd::new(SgdConfig { lr: c.optim.lr, momentum: 0.9, weight_decay: wd, ..SgdConfig::default() })?))
    };
    let mut c = cfg("sgd");
    c.optim.lr = 0.5;
    c.optim.min_lr = 0.05;
    let dir = c.run.out_dir.join("checkpoint");
    let mut d = data(16);
    let mut t = Trainer::with_optimizer(c.clone(), VOCAB, &sgd).unwrap();
    let first = t.evaluate(&d).unwrap().loss;
    for _ in 0..30 {
        t.train_step(&mut d).unwrap();
    }
    let last = t.evaluate(&d).unwrap().loss;
    assert!(last < 0.8 * first, "SGD: {first} -> {last}");
    assert_eq!(t.memory().optimizer_state, t.memory().params, "one momentum buffer per parameter");
    t.save(&dir, &d).unwrap();
    let back = Trainer::resume_with_optimizer(&dir, c.clone(), &d, &sgd).unwrap();
    assert_eq!(back.step(), 30);
    let e = match Trainer::resume(&dir, c.clone(), &d) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed an SGD checkpoint with AdamW"),
    };
    assert!(e.contains("SGD") && e.contains("AdamW"), "{e}");
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}

/// A group factory is given each group's parameters — the matrices (with the config's weight decay) and the norm
/// gains (decay 0), the trainer's own tensors in `named_parameters` order, each exactly once — and, returning
/// AdamW, trains bitwise like `Trainer::new`.
#[test]
fn group_factory_sees_each_groups_parameters() {
    use std::sync::Mutex;
    /// Parameter names and identities of one group.
    type Group = Vec<(String, Option<effllm_tensor::TensorId>)>;
    let seen: Mutex<Vec<(f64, Group)>> = Mutex::new(Vec::new());
    let make = |c: &TrainConfig,
                wd: f64,
                group: &[(String, effllm_tensor::Tensor)]|
     -> effllm_train::Result<Box<dyn effllm_optim::Optimizer + Send>> {
        seen.lock().unwrap().push((wd, group.iter().map(|(n, t)| (n.clone(), t.id())).collect()));
        effllm_train::adamw(c, wd)
    };
    let c = cfg("group-factory");
    let mut grouped = Trainer::with_group_optimizer(c.clone(), VOCAB, &make).unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 2);
    let all: Group = grouped.parameters().iter().map(|(n, t)| (n.clone(), t.id())).collect();
    let is_matrix = |name: &str| grouped.parameters().iter().any(|(n, t)| n == name && t.shape().len() >= 2);
    assert_eq!(seen[0].0, c.optim.weight_decay);
    assert_eq!(seen[1].0, 0.0);
    assert!(!seen[0].1.is_empty() && seen[0].1.iter().all(|(n, _)| is_matrix(n)));
    assert!(!seen[1].1.is_empty() && seen[1].1.iter().all(|(n, _)| !is_matrix(n)));
    let matrices: Vec<_> = all.iter().filter(|(n, _)| is_matrix(n)).cloned().collect();
    let gains: Vec<_> = all.iter().filter(|(n, _)| !is_matrix(n)).cloned().collect();
    assert_eq!(seen[0].1, matrices);
    assert_eq!(seen[1].1, gains);
    let mut plain = Trainer::new(c.clone(), VOCAB).unwrap();
    let (mut d1, mut d2) = (data(16), data(16));
    for _ in 0..3 {
        let (a, b) = (grouped.train_step(&mut d1).unwrap(), plain.train_step(&mut d2).unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    }
    assert_eq!(params_f64(&grouped), params_f64(&plain));
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}
