//! Helpers shared by the trainer's test binaries.

// Each test binary compiles this module and uses only some of its helpers.
#![allow(dead_code)]

use effllm_train::Trainer;

/// Every master weight of `t`, flattened in parameter order.
pub fn params_f64(t: &Trainer) -> Vec<f64> {
    t.parameters().iter().flat_map(|(_, p)| p.to_vec_f64().unwrap()).collect()
}

/// `‖a − b‖ / ‖b‖`.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

/// Vocabulary of [`walk`] documents.
pub const WALK_VOCAB: usize = 32;

/// A document whose next token is a fixed function of the current one (learnable; unigram entropy ≈ ln 32).
pub fn walk(start: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (start + 7 * i + (i / 5) % 3) % WALK_VOCAB as u32).collect()
}

/// Three training walks and one validation walk, packed into rows of `seq_len + 1`.
pub fn walk_data(seq_len: usize) -> effllm_train::TrainData {
    let train = effllm_data::TokenizedSplit::from_parts(
        vec!["a".into(), "b".into(), "c".into()],
        vec![walk(1, 700), walk(5, 500), walk(9, 400)],
    );
    let val = effllm_data::TokenizedSplit::from_parts(vec!["v".into()], vec![walk(3, 300)]);
    effllm_train::TrainData::from_documents(&train, &val, WALK_VOCAB, Some(0), seq_len, "synthetic-walk").unwrap()
}

/// The small Megalodon section of the test configs (d = 32 set by the caller): 16-token rows span two chunks of 8.
pub fn tiny_megalodon_shape() -> effllm_train::MegalodonShape {
    effllm_train::MegalodonShape {
        z_dim: 16,
        value_dim: 64,
        cema_ndim: 4,
        norm_num_groups: 4,
        chunk_size: 8,
        swiglu: false,
        rescale_nffn: false,
        scale_emb: false,
    }
}

/// The `tiny` preset at the walk tests' size (d = 32, d_ff = 64, rows of 16 tokens, batches of 4, 40 steps at
/// lr 1e-2 → 1e-3 after 2 warm-up steps), writing under the temp directory as `effllm-train-{kind}-{pid}-{dir}`.
pub fn walk_config(kind: &str, dir: &str) -> effllm_train::TrainConfig {
    let mut c = effllm_train::TrainConfig::preset("tiny").unwrap();
    c.model.d_model = 32;
    c.model.d_ff = 64;
    c.data.seq_len = 16;
    c.data.batch_size = 4;
    c.data.eval_sequences = 8;
    c.optim.lr = 1e-2;
    c.optim.min_lr = 1e-3;
    c.optim.warmup_steps = 2;
    c.run.steps = 40;
    c.run.out_dir = std::env::temp_dir().join(format!("effllm-train-{kind}-{}-{dir}", std::process::id()));
    c
}
