//! [`TrainData`]: packed training and validation sequences, the batch cursor, and the unigram baseline.

use effllm_data::{PackConfig, PackedSequences, TokenizedSplit};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Token sequences to train and evaluate on: packed rows of `seq_len + 1` tokens (inputs and shifted targets),
/// documents joined by a separator.
#[derive(Debug)]
pub struct TrainData {
    train: PackedSequences,
    val: PackedSequences,
    vocab: usize,
    fingerprint: String,
    unigram_nats: f64,
    /// The epoch whose shuffle `train` holds.
    order_epoch: Option<u64>,
}

/// Where the next training batch starts: the epoch (each has its own shuffle) and the row within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    /// Passes over the training rows completed.
    pub epoch: u64,
    /// The next row of the current epoch's order.
    pub row: usize,
}

impl TrainData {
    /// Packs token documents: `train` and `val` are lists of documents (token ids below `vocab`), `separator`
    /// goes after every document, rows are `seq_len + 1` tokens (the last partial row is dropped). `fingerprint`
    /// names the tokenizer (checkpoints refuse to resume under another).
    pub fn from_documents(
        train: &TokenizedSplit,
        val: &TokenizedSplit,
        vocab: usize,
        separator: Option<u32>,
        seq_len: usize,
        fingerprint: impl Into<String>,
    ) -> Result<TrainData> {
        if let Some(bad) =
            train.tokens().iter().chain(val.tokens()).chain(separator.iter()).find(|&&t| t as usize >= vocab)
        {
            return Err(TrainError::Data(format!("token id {bad} is not below the vocabulary size {vocab}")));
        }
        let mut pc = PackConfig::new(seq_len).with_target_shift();
        if let Some(s) = separator {
            pc = pc.with_separator(s);
        }
        let pack = |s: &TokenizedSplit, what: &str| -> Result<PackedSequences> {
            let p = s.pack(&pc).map_err(|e| TrainError::Data(format!("{what}: {e}")))?;
            if p.is_empty() {
                return Err(TrainError::Data(format!(
                    "the {what} split has {} tokens: not one row of {} tokens",
                    s.num_tokens(),
                    seq_len + 1
                )));
            }
            Ok(p)
        };
        let (train_p, val_p) = (pack(train, "training")?, pack(val, "validation")?);
        let unigram_nats = unigram_cross_entropy(train_p.stream(), val_p.stream(), vocab);
        Ok(TrainData {
            train: train_p,
            val: val_p,
            vocab,
            fingerprint: fingerprint.into(),
            unigram_nats,
            order_epoch: None,
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The tokenizer's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The training token stream (documents in order, each followed by the separator), as packed.
    pub fn train_stream(&self) -> &[u32] {
        self.train.stream()
    }

    /// The validation token stream.
    pub fn val_stream(&self) -> &[u32] {
        self.val.stream()
    }

    /// Training rows.
    pub fn train_rows(&self) -> usize {
        self.train.len()
    }

    /// Validation rows.
    pub fn val_rows(&self) -> usize {
        self.val.len()
    }

    /// Training tokens (the packed stream).
    pub fn train_tokens(&self) -> usize {
        self.train.stream().len()
    }

    /// The unigram baseline in nats per token: the cross-entropy of the validation tokens under the training
    /// split's token frequencies (add-one smoothed over the vocabulary) — the loss of a model that knows which
    /// tokens are common but nothing about context.
    pub fn unigram_nats(&self) -> f64 {
        self.unigram_nats
    }

    /// The next `n` training rows from `cursor` (advancing it; a new epoch reshuffles with `seed + epoch`), as one
    /// flat vector of `n · (seq_len + 1)` tokens.
    pub fn next_train_rows(&mut self, cursor: &mut DataCursor, n: usize, seed: u64) -> Vec<u32> {
        let mut out = Vec::with_capacity(n * self.train.width());
        for _ in 0..n {
            if cursor.row >= self.train.len() {
                cursor.epoch += 1;
                cursor.row = 0;
            }
            if self.order_epoch != Some(cursor.epoch) {
                self.train.shuffle(seed.wrapping_add(cursor.epoch));
                self.order_epoch = Some(cursor.epoch);
            }
            if let Some(s) = self.train.get(cursor.row) {
                out.extend_from_slice(s.tokens);
            }
            cursor.row += 1;
        }
        out
    }

    /// The first `n` validation rows (fixed order), flat.
    pub fn val_rows_flat(&self, n: usize) -> Vec<u32> {
        (0..n.min(self.val.len())).filter_map(|i| self.val.get(i)).flat_map(|s| s.tokens.iter().copied()).collect()
    }
}

/// Splits flat rows of `len + 1` tokens into inputs and targets of `len` tokens per row.
pub fn inputs_and_targets(rows: &[u32], len: usize) -> (Vec<u32>, Vec<u32>) {
    let w = len + 1;
    let mut inputs = Vec::with_capacity(rows.len() / w * len);
    let mut targets = Vec::with_capacity(rows.len() / w * len);
    for r in rows.chunks_exact(w) {
        inputs.extend_from_slice(&r[..len]);
        targets.extend_from_slice(&r[1..]);
    }
    (inputs, targets)
}

/// Cross-entropy in nats of `eval` under the add-one-smoothed unigram distribution of `train` over `vocab` ids.
pub fn unigram_cross_entropy(train: &[u32], eval: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![0u64; vocab];
    for &t in train {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1;
        }
    }
    let total = train.len() as f64 + vocab as f64;
    let nll: f64 = eval
        .iter()
        .map(|&t| {
            let c = counts.get(t as usize).copied().unwrap_or(0) as f64 + 1.0;
            -(c / total).ln()
        })
        .sum();
    nll / eval.len().max(1) as f64
}
