//! Memory accounting, alone in its binary: the tensor crate's live-memory counters are process-wide, so no other
//! test may allocate tensors while the trainer measures its activations.

mod common;

use common::{params_f64, rel_l2};
use effllm_data::TokenizedSplit;
use effllm_train::{TrainConfig, TrainData, Trainer};

const VOCAB: usize = 32;

fn data(seq_len: usize) -> TrainData {
    let walk = |start: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| (start + 7 * i) % VOCAB as u32).collect() };
    let train = TokenizedSplit::from_parts(vec!["a".into()], vec![walk(1, 900)]);
    let val = TokenizedSplit::from_parts(vec!["v".into()], vec![walk(3, 200)]);
    TrainData::from_documents(&train, &val, VOCAB, Some(0), seq_len, "synthetic-walk").unwrap()
}

fn cfg(_dir: &str) -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.model.d_model = 32;
    c.model.d_ff = 64;
    c.data.seq_len = 16;
    c.data.batch_size = 4;
    c
}

/// Parameters, gradients and AdamW state have their exact sizes; activations are positive and smaller with
/// activation checkpointing, which changes neither the loss nor the update.
#[test]
fn memory_is_accounted_part_by_part() {
    let run = |ckpt: bool| {
        let mut c = cfg("memory");
        c.model.n_layer = 3;
        c.run.activation_checkpointing = ckpt;
        let mut d = data(16);
        let mut t = Trainer::new(c, VOCAB).unwrap();
        let r0 = t.train_step(&mut d).unwrap();
        (t.memory(), t.num_parameters(), r0.loss, params_f64(&t))
    };
    let (m, n, loss, p) = run(false);
    assert_eq!(m.params, 4 * n);
    assert_eq!(m.grads, 4 * n, "one f32 gradient per parameter");
    assert_eq!(m.optimizer_state, 2 * 4 * n, "AdamW: two f32 moments");
    assert!(m.activations > 0 && m.step_peak >= m.activations, "{m:?}");
    let (mc, _, loss_c, p_c) = run(true);
    assert!(mc.activations < m.activations, "checkpointing keeps less: {} vs {}", mc.activations, m.activations);
    assert!((loss - loss_c).abs() < 1e-6 * loss && rel_l2(&p_c, &p) < 1e-6, "recomputation changes nothing");
}
