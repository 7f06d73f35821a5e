//! The trainer driving Megalodon (`"architecture": "megalodon"`) on the synthetic walk corpus: it learns, its
//! evaluation loss is the reference cross-entropy of independent rows each from a fresh state, checkpoints resume
//! bitwise and refuse the other architecture, unsupported features are config errors, and the Megalodon presets
//! match their Llama presets' parameter counts.

mod common;

use common::{params_f64, rel_l2};
use effllm_tensor::{DType, Device, Tensor};
use effllm_train::{Architecture, Precision, TrainConfig, TrainData, TrainError, Trainer, reference};

const VOCAB: usize = common::WALK_VOCAB;

fn data(seq_len: usize) -> TrainData {
    common::walk_data(seq_len)
}

/// A two-layer Megalodon whose 16-token rows span two attention chunks of 8.
fn cfg(dir: &str) -> TrainConfig {
    let mut c = common::walk_config("megalodon", dir);
    c.model.architecture = Architecture::Megalodon;
    (c.model.n_head, c.model.n_head_kv) = (2, 2);
    c.model.megalodon = Some(common::tiny_megalodon_shape());
    c
}

#[test]
fn megalodon_learns_the_walk() {
    let c = cfg("learn");
    let mut d = data(c.data.seq_len);
    let mut t = Trainer::new(c, VOCAB).unwrap();
    assert!(t.megalodon().is_ok() && t.model().is_err(), "a Megalodon run has no Llama");
    let first = t.evaluate(&d).unwrap().loss;
    for _ in 0..40 {
        t.train_step(&mut d).unwrap();
    }
    let last = t.evaluate(&d).unwrap().loss;
    assert!(first > 0.8 * d.unigram_nats(), "initial loss {first} near the unigram {}", d.unigram_nats());
    assert!(last < 0.5 * d.unigram_nats(), "{last} vs unigram {}", d.unigram_nats());
    assert!(t.parameters().iter().all(|(_, p)| p.dtype() == DType::F32));
}

#[test]
fn the_evaluation_loss_is_the_reference_cross_entropy_of_independent_rows() {
    let c = cfg("eval");
    let mut d = data(c.data.seq_len);
    let mut t = Trainer::new(c.clone(), VOCAB).unwrap();
    // A few steps, so the weights are not the initial ones.
    for _ in 0..3 {
        t.train_step(&mut d).unwrap();
    }
    let got = t.evaluate(&d).unwrap();
    let rows = d.val_rows_flat(c.data.eval_sequences);
    let len = c.data.seq_len;
    let (inputs, targets) = effllm_train::inputs_and_targets(&rows, len);
    let m = t.megalodon().unwrap();
    // Each row alone, from its own fresh state: packed rows must not leak state into one another.
    let mut logits = Vec::new();
    effllm_tensor::no_grad(|| {
        for row in inputs.chunks(len) {
            let mut state = m.init_state(1).unwrap();
            let x = Tensor::from_vec(row.to_vec(), &[1, len], &Device::Cpu).unwrap();
            logits.extend(m.forward(&x, &mut state).unwrap().to_vec_f64().unwrap());
        }
    });
    let want = reference::mean_cross_entropy(&logits, VOCAB, &targets);
    assert!((got.loss - want).abs() < 1e-5 * want, "{} vs {want}", got.loss);
    assert_eq!(got.tokens, targets.len());
}

#[test]
fn megalodon_gradient_accumulation_equals_one_big_batch() {
    // Rows are independent sequences (each from a fresh state), so 2 micro-batches of 2 rows = 1 batch of 4.
    let big = cfg("accum");
    let mut small = big.clone();
    (small.data.batch_size, small.data.grad_accum) = (2, 2);
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
}

#[test]
fn a_resumed_megalodon_run_continues_bitwise_and_refuses_a_llama() {
    let c = cfg("resume");
    let dir = c.run.out_dir.join("checkpoint");
    let mut d = data(16);
    let mut a = Trainer::new(c.clone(), VOCAB).unwrap();
    for _ in 0..3 {
        a.train_step(&mut d).unwrap();
    }
    a.save(&dir, &d).unwrap();
    for _ in 0..3 {
        a.train_step(&mut d).unwrap();
    }
    let mut d2 = data(16);
    let mut b = Trainer::resume(&dir, c.clone(), &d2).unwrap();
    assert_eq!((b.step(), b.tokens_seen()), (3, 3 * 64));
    for _ in 0..3 {
        b.train_step(&mut d2).unwrap();
    }
    assert_eq!(params_f64(&a), params_f64(&b));
    // The resumed history's first entries went through JSON; serde_json's `float_roundtrip` parsing (enabled in
    // the workspace) reads every f64 back exactly, so the histories are compared bitwise.
    let losses = |t: &Trainer| t.history().iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b));
    // The same checkpoint under a Llama config (same d, layers, heads) is another architecture.
    let mut llama = c.clone();
    llama.model.architecture = Architecture::Llama;
    llama.model.megalodon = None;
    let e = Trainer::resume(&dir, llama, &d2).unwrap_err();
    assert!(matches!(e, TrainError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("Megalodon"), "{e}");
    std::fs::remove_dir_all(&c.run.out_dir).ok();
}

#[test]
fn unsupported_megalodon_configs_are_typed_errors_naming_the_field() {
    let err = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = cfg("config");
        f(&mut c);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, TrainError::Config(_)), "{e}");
        let via_trainer = Trainer::new(c, VOCAB).unwrap_err();
        assert!(matches!(via_trainer, TrainError::Config(_)), "{via_trainer}");
        e.to_string()
    };
    assert!(err(&|c| c.run.precision = Precision::Bf16).contains("run.precision"));
    assert!(err(&|c| c.run.activation_checkpointing = true).contains("run.activation_checkpointing"));
    assert!(err(&|c| c.model.megalodon = None).contains("model.megalodon"));
    assert!(err(&|c| c.model.n_head_kv = 1).contains("model.n_head_kv"));
    assert!(err(&|c| c.model.d_model = 30).contains("norm_num_groups"));
    assert!(err(&|c| c.model.megalodon.as_mut().unwrap().chunk_size = 0).contains("chunk_size"));
    assert!(err(&|c| c.model.architecture = Architecture::Llama).contains("model.megalodon"));
    // The JSON form: a preset switched to Megalodon, and an unknown Megalodon key.
    let c = TrainConfig::from_json(
        r#"{"preset": "tiny", "model": {"architecture": "megalodon", "n_head": 2, "n_head_kv": 2, "d_model": 32,
            "megalodon": {"z_dim": 16, "value_dim": 64, "cema_ndim": 4, "norm_num_groups": 4, "chunk_size": 8}}}"#,
    )
    .unwrap();
    assert_eq!(c.model.architecture, Architecture::Megalodon);
    assert_eq!(TrainConfig::from_json(&c.to_json()).unwrap(), c, "JSON round trip");
    let e = TrainConfig::from_json(r#"{"preset": "cpu-small-megalodon", "model": {"megalodon": {"chunk": 8}}}"#);
    assert!(e.unwrap_err().to_string().contains("chunk"));
    // A Llama run has no Megalodon.
    let mut l = TrainConfig::preset("tiny").unwrap();
    l.run.out_dir = cfg("llama").run.out_dir;
    assert!(matches!(Trainer::new(l, VOCAB).unwrap().megalodon(), Err(TrainError::Config(_))));
}

#[test]
fn megalodon_presets_match_the_llama_presets_parameter_count() {
    let vocab = 49_152;
    let llama = Trainer::new(TrainConfig::preset("cpu-small").unwrap(), vocab).unwrap().num_parameters();
    let mega = Trainer::new(TrainConfig::preset("cpu-small-megalodon").unwrap(), vocab).unwrap().num_parameters();
    let rel = (mega as f64 - llama as f64).abs() / llama as f64;
    assert!(rel < 0.01, "cpu-small {llama} vs cpu-small-megalodon {mega}");
    assert_eq!(llama, 15_993_088);
    // gpu-medium by formula (building it would take 400 MB): the Llama count and Megalodon's own formula.
    let g = TrainConfig::preset("gpu-medium").unwrap();
    let lc = g.llama_config(vocab);
    let (d, f, l) = (lc.d_model, lc.d_ff, lc.n_layer);
    let llama = vocab * d + d + l * (4 * d * d + 3 * d * f + 2 * d);
    let gm = TrainConfig::preset("gpu-medium-megalodon").unwrap();
    let mega = gm.megalodon_config(vocab).unwrap().param_count() as usize;
    let rel = (mega as f64 - llama as f64).abs() / llama as f64;
    assert!(rel < 0.01, "gpu-medium {llama} vs gpu-medium-megalodon {mega}");
}
