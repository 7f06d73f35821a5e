//! Packing token streams into fixed-length training sequences, batching, and sliding windows for perplexity.
//!
//! # Packing ([`PackedSequences::new`])
//!
//! 1. The stream is the documents' tokens in order, each followed by the separator when one is set
//!    (`d0 SEP d1 SEP … dN SEP`), so the model also learns where documents end, and packing is associative over
//!    documents.
//! 2. With sequence length `L` and width `W = L` (or `L + 1` with [`PackConfig::target_shift`]), sequence `k` is
//!    `stream[k·L .. k·L + W]`: without the shift, sequences tile the stream; with it, consecutive sequences
//!    overlap by one token, so that `seq[..L]` is the input and `seq[1..]` the target and every token after the
//!    first is a target exactly once.
//! 3. The last partial sequence (fewer than `W` tokens left, but more than the one-token overlap) is dropped
//!    ([`Remainder::Drop`]) or padded to `W` with a pad id ([`Remainder::Pad`]); its [`Sequence::valid_len`] says
//!    how many tokens are real.
//! 4. With a shuffle seed the sequence order is permuted by [`permutation`] (Fisher–Yates driven by SplitMix64, both
//!    implemented here so the order never changes with a dependency's version).
//!
//! # Perplexity windows ([`sliding_windows`])
//!
//! A document `t[0..n]` is scored in windows of at most `max_len` tokens, `stride` new target tokens per window
//! after the first: window `k` ends at `end_k = min(max_len + k·stride, n)` and starts at
//! `max(0, end_k − max_len)`, and it scores the tokens after the previous window's end (the first window scores
//! positions `1..end_0`). So every position `1..n` is scored exactly once, each with at least
//! `min(position, max_len − stride)` tokens of context, and the last window is as long as possible. Position 0 has
//! no context and is never scored: prepend a BOS token to score it. Requires `1 <= stride < max_len`;
//! `stride = max_len − 1` gives disjoint windows with the minimal one-token overlap.

use std::ops::Range;

use crate::error::DataError;

/// What to do with the last, partial sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Remainder {
    /// Drop it (default).
    #[default]
    Drop,
    /// Pad it to the full width with this id.
    Pad(u32),
}

/// Packing parameters (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackConfig {
    /// Sequence length `L` (at least 1).
    pub seq_len: usize,
    /// Emit `L + 1` tokens per sequence, overlapping by one, for input/target shifting.
    pub target_shift: bool,
    /// Id appended after every document (an EOS token), if any.
    pub separator: Option<u32>,
    /// The last partial sequence.
    pub remainder: Remainder,
    /// Shuffle the sequence order with this seed.
    pub shuffle_seed: Option<u64>,
}

impl PackConfig {
    /// Length `seq_len`, no shift, no separator, remainder dropped, no shuffle.
    pub fn new(seq_len: usize) -> Self {
        PackConfig { seq_len, target_shift: false, separator: None, remainder: Remainder::Drop, shuffle_seed: None }
    }

    /// With `L + 1`-token sequences for input/target shifting.
    pub fn with_target_shift(mut self) -> Self {
        self.target_shift = true;
        self
    }

    /// With `id` after every document.
    pub fn with_separator(mut self, id: u32) -> Self {
        self.separator = Some(id);
        self
    }

    /// Padding the last partial sequence with `id` instead of dropping it.
    pub fn with_padding(mut self, id: u32) -> Self {
        self.remainder = Remainder::Pad(id);
        self
    }

    /// Shuffling the sequence order with `seed`.
    pub fn with_shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Tokens per sequence: `seq_len`, plus one with the target shift.
    pub fn width(&self) -> usize {
        self.seq_len + usize::from(self.target_shift)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): the stream of `seed`.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`): the high 64 bits of `x · n` (bias below 2^-40 for `n < 2^24`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// A deterministic permutation of `0..n` for `seed`: Fisher–Yates from the last element down, swapping `i` with
/// `SplitMix64(seed).below(i + 1)`. Stable across versions and platforms.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        p.swap(i, j);
    }
    p
}

/// One packed sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence<'a> {
    /// The tokens (always [`PackedSequences::width`] long; padded at the end if `valid_len` is smaller).
    pub tokens: &'a [u32],
    /// How many leading tokens are real (the rest is padding).
    pub valid_len: usize,
    /// The sequence's position in the unshuffled order (sequence `k` starts at stream offset `k·L`).
    pub index: usize,
}

/// Fixed-length sequences packed from a token stream (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSequences {
    stream: Vec<u32>,
    cfg: PackConfig,
    n_full: usize,
    tail: Option<(Vec<u32>, usize)>,
    order: Vec<usize>,
}

impl PackedSequences {
    /// Packs documents' token lists. Fails if `seq_len` is 0.
    pub fn new<'d>(docs: impl IntoIterator<Item = &'d [u32]>, cfg: &PackConfig) -> Result<Self, DataError> {
        if cfg.seq_len == 0 {
            return Err(DataError::InvalidConfig("pack: seq_len must be at least 1".into()));
        }
        let mut stream = Vec::new();
        for d in docs {
            stream.extend_from_slice(d);
            if let Some(sep) = cfg.separator {
                stream.push(sep);
            }
        }
        let (l, w, n) = (cfg.seq_len, cfg.width(), stream.len());
        let n_full = if n < w { 0 } else { (n - w) / l + 1 };
        let rest_start = n_full * l;
        let tail = match cfg.remainder {
            Remainder::Pad(pad) if n > rest_start + usize::from(cfg.target_shift) => {
                let mut t = stream[rest_start..].to_vec();
                let valid = t.len();
                t.resize(w, pad);
                Some((t, valid))
            }
            _ => None,
        };
        let mut packed = PackedSequences { stream, cfg: *cfg, n_full, tail, order: Vec::new() };
        packed.order = (0..packed.len()).collect();
        if let Some(seed) = cfg.shuffle_seed {
            packed.shuffle(seed);
        }
        Ok(packed)
    }

    /// The configuration.
    pub fn config(&self) -> &PackConfig {
        &self.cfg
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.n_full + usize::from(self.tail.is_some())
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens per sequence.
    pub fn width(&self) -> usize {
        self.cfg.width()
    }

    /// The packed stream (documents and separators).
    pub fn stream(&self) -> &[u32] {
        &self.stream
    }

    /// Sets the order to [`permutation`]`(len, seed)` of the unshuffled order (independent of earlier shuffles,
    /// so `shuffle(base + epoch)` gives one reproducible order per epoch).
    pub fn shuffle(&mut self, seed: u64) {
        self.order = permutation(self.len(), seed);
    }

    /// Restores the unshuffled order.
    pub fn unshuffle(&mut self) {
        self.order = (0..self.len()).collect();
    }

    fn unshuffled(&self, k: usize) -> Sequence<'_> {
        if k < self.n_full {
            let s = k * self.cfg.seq_len;
            Sequence { tokens: &self.stream[s..s + self.width()], valid_len: self.width(), index: k }
        } else {
            let (t, valid) = self.tail.as_ref().expect("k < len");
            Sequence { tokens: t, valid_len: *valid, index: k }
        }
    }

    /// The `i`-th sequence in the current order.
    pub fn get(&self, i: usize) -> Option<Sequence<'_>> {
        self.order.get(i).map(|&k| self.unshuffled(k))
    }

    /// All sequences in the current order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Sequence<'_>> + '_ {
        self.order.iter().map(|&k| self.unshuffled(k))
    }

    /// Batches of `batch_size` sequences in the current order; the last, smaller batch is dropped if `drop_last`.
    pub fn batches(&self, batch_size: usize, drop_last: bool) -> Result<Batches<'_>, DataError> {
        if batch_size == 0 {
            return Err(DataError::InvalidConfig("batch_size must be at least 1".into()));
        }
        Ok(Batches { packed: self, next: 0, batch_size, drop_last })
    }
}

/// A batch: `rows × width` tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The tokens, row-major (`rows · width`).
    pub tokens: Vec<u32>,
    /// Number of rows (sequences).
    pub rows: usize,
    /// Tokens per row.
    pub width: usize,
    /// Real tokens per row (the rest is padding).
    pub valid_lens: Vec<usize>,
    /// Each row's unshuffled sequence index.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Row `r`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.tokens[r * self.width..(r + 1) * self.width]
    }
}

/// Iterator of [`Batch`]es ([`PackedSequences::batches`]).
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    packed: &'a PackedSequences,
    next: usize,
    batch_size: usize,
    drop_last: bool,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let len = self.packed.len();
        let end = (self.next + self.batch_size).min(len);
        if self.next >= len || (self.drop_last && end - self.next < self.batch_size) {
            return None;
        }
        let width = self.packed.width();
        let mut b = Batch {
            tokens: Vec::with_capacity((end - self.next) * width),
            rows: 0,
            width,
            valid_lens: vec![],
            indices: vec![],
        };
        for i in self.next..end {
            let s = self.packed.get(i).expect("in range");
            b.tokens.extend_from_slice(s.tokens);
            b.valid_lens.push(s.valid_len);
            b.indices.push(s.index);
            b.rows += 1;
        }
        self.next = end;
        Some(b)
    }
}

/// One perplexity window over a document (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalWindow<'a> {
    /// Position of `tokens[0]` in the document.
    pub start: usize,
    /// The model input.
    pub tokens: &'a [u32],
    /// `tokens[score_from..]` are scored, each from the logits at the previous position (`score_from >= 1`).
    pub score_from: usize,
}

impl<'a> EvalWindow<'a> {
    /// The scored tokens.
    pub fn targets(&self) -> &'a [u32] {
        &self.tokens[self.score_from..]
    }

    /// Document positions of the scored tokens.
    pub fn scored_positions(&self) -> Range<usize> {
        self.start + self.score_from..self.start + self.tokens.len()
    }
}

/// Sliding windows over one document (see the module docs). Fails unless `max_len >= 2` and
/// `1 <= stride < max_len`.
pub fn sliding_windows(tokens: &[u32], max_len: usize, stride: usize) -> Result<SlidingWindows<'_>, DataError> {
    if max_len < 2 || stride == 0 || stride >= max_len {
        return Err(DataError::InvalidConfig(format!(
            "sliding windows need max_len >= 2 and 1 <= stride < max_len (got max_len {max_len}, stride {stride})"
        )));
    }
    Ok(SlidingWindows { tokens, max_len, stride, prev_end: 1, k: 0, done: tokens.len() < 2 })
}

/// Iterator of [`EvalWindow`]s ([`sliding_windows`]).
#[derive(Debug, Clone)]
pub struct SlidingWindows<'a> {
    tokens: &'a [u32],
    max_len: usize,
    stride: usize,
    prev_end: usize,
    k: usize,
    done: bool,
}

impl<'a> Iterator for SlidingWindows<'a> {
    type Item = EvalWindow<'a>;

    fn next(&mut self) -> Option<EvalWindow<'a>> {
        if self.done {
            return None;
        }
        let n = self.tokens.len();
        let end = self.max_len.saturating_add(self.k.saturating_mul(self.stride)).min(n);
        let start = end.saturating_sub(self.max_len);
        let w = EvalWindow { start, tokens: &self.tokens[start..end], score_from: self.prev_end - start };
        self.prev_end = end;
        self.k += 1;
        self.done = end == n;
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_golden() {
        // Reference values of SplitMix64 with seed 1234567 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, GOLDEN_SPLITMIX);
    }

    const GOLDEN_SPLITMIX: [u64; 3] = [0x599e_d017_fb08_fc85, 0x2c73_f084_5854_0fa5, 0x883e_bce5_a3f2_7c77];

    #[test]
    fn permutation_golden_and_valid() {
        assert_eq!(permutation(8, 42), GOLDEN_PERM);
        for n in 0..50 {
            let mut p = permutation(n, n as u64);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }

    // Computed with an independent Python implementation of the same rule.
    const GOLDEN_PERM: [usize; 8] = [4, 3, 2, 0, 7, 6, 1, 5];

    #[test]
    fn pack_small() {
        let docs: [&[u32]; 2] = [&[1, 2, 3], &[4, 5]];
        let p = PackedSequences::new(docs, &PackConfig::new(2).with_separator(0)).unwrap();
        let seqs: Vec<_> = p.iter().map(|s| s.tokens.to_vec()).collect();
        assert_eq!(seqs, [vec![1, 2], vec![3, 0], vec![4, 5]]); // stream 1 2 3 0 4 5 0: the lone 0 is dropped
        let p = PackedSequences::new(docs, &PackConfig::new(2).with_separator(0).with_padding(9)).unwrap();
        assert_eq!(p.get(3).unwrap(), Sequence { tokens: &[0, 9], valid_len: 1, index: 3 });
        let p = PackedSequences::new(docs, &PackConfig::new(3).with_target_shift()).unwrap();
        let seqs: Vec<_> = p.iter().map(|s| s.tokens.to_vec()).collect();
        assert_eq!(seqs, [vec![1, 2, 3, 4]]); // stream 1 2 3 4 5: [4 5] is a partial window, dropped
        let p = PackedSequences::new(docs, &PackConfig::new(3).with_target_shift().with_padding(7)).unwrap();
        assert_eq!(p.get(1).unwrap().tokens, [4, 5, 7, 7]);
        let p = PackedSequences::new(docs, &PackConfig::new(4).with_target_shift().with_padding(7)).unwrap();
        assert_eq!(p.len(), 1); // stream of 5 = one full window of 5; the overlap token alone is no sequence
        assert!(PackedSequences::new(docs, &PackConfig::new(0)).is_err());
    }

    #[test]
    fn batches() {
        let docs: [&[u32]; 1] = [&[1, 2, 3, 4, 5, 6, 7]];
        let p = PackedSequences::new(docs, &PackConfig::new(2).with_padding(0)).unwrap();
        let b: Vec<_> = p.batches(3, false).unwrap().collect();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].tokens, [1, 2, 3, 4, 5, 6]);
        assert_eq!(b[1].row(0), [7, 0]);
        assert_eq!(b[1].valid_lens, [1]);
        assert_eq!(p.batches(3, true).unwrap().count(), 1);
        assert!(p.batches(0, true).is_err());
    }

    #[test]
    fn windows_small() {
        let t: Vec<u32> = (0..10).collect();
        let w: Vec<_> = sliding_windows(&t, 4, 2).unwrap().map(|w| (w.start, w.tokens.len(), w.score_from)).collect();
        assert_eq!(w, [(0, 4, 1), (2, 4, 2), (4, 4, 2), (6, 4, 2)]);
        let w: Vec<_> = sliding_windows(&t, 4, 3).unwrap().map(|w| w.scored_positions()).collect();
        assert_eq!(w, [1..4, 4..7, 7..10]);
        let w: Vec<_> = sliding_windows(&t, 8, 5).unwrap().map(|w| (w.start, w.score_from)).collect();
        assert_eq!(w, [(0, 1), (2, 6)]); // the last window is full length: more context
        assert_eq!(sliding_windows(&t[..1], 4, 2).unwrap().count(), 0);
        assert_eq!(sliding_windows(&t[..2], 4, 2).unwrap().map(|w| w.targets().to_vec()).collect::<Vec<_>>(), [[1]]);
        assert!(sliding_windows(&t, 4, 4).is_err());
        assert!(sliding_windows(&t, 1, 1).is_err());
        assert!(sliding_windows(&t, 4, 0).is_err());
    }
}
