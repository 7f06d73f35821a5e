//! Packing, batching and perplexity windows against the naive reference and the stream they come from.

use effllm_data::{Batch, PackConfig, PackedSequences, Remainder, TokenizedSplit, reference, sliding_windows};
use proptest::prelude::*;

fn docs() -> impl Strategy<Value = Vec<Vec<u32>>> {
    proptest::collection::vec(proptest::collection::vec(1u32..1000, 0..30), 0..12)
}

fn config() -> impl Strategy<Value = PackConfig> {
    (
        1usize..20,
        any::<bool>(),
        proptest::option::of(1000u32..1010),
        proptest::option::of(2000u32..2010),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(seq_len, target_shift, separator, pad, shuffle_seed)| PackConfig {
            seq_len,
            target_shift,
            separator,
            remainder: pad.map_or(Remainder::Drop, Remainder::Pad),
            shuffle_seed,
        })
}

fn stream(docs: &[Vec<u32>], sep: Option<u32>) -> Vec<u32> {
    docs.iter().flat_map(|d| d.iter().copied().chain(sep)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_the_reference(docs in docs(), cfg in config()) {
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let packed = PackedSequences::new(refs, &cfg).unwrap();
        let got: Vec<(Vec<u32>, usize)> = packed.iter().map(|s| (s.tokens.to_vec(), s.valid_len)).collect();
        prop_assert_eq!(got, reference::pack(&docs, &cfg));
    }

    #[test]
    fn packing_preserves_the_token_stream(docs in docs(), cfg in config()) {
        let cfg = PackConfig { shuffle_seed: None, ..cfg };
        let s = stream(&docs, cfg.separator);
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let packed = PackedSequences::new(refs, &cfg).unwrap();
        prop_assert_eq!(packed.stream(), &s[..]);
        let shift = usize::from(cfg.target_shift);
        // Inputs (the first L tokens of each sequence, real tokens only) tile a prefix of the stream.
        let mut inputs = Vec::new();
        for seq in packed.iter() {
            prop_assert_eq!(seq.tokens.len(), cfg.seq_len + shift);
            let real = &seq.tokens[..seq.valid_len];
            inputs.extend_from_slice(&real[..real.len().min(cfg.seq_len)]);
            if let Remainder::Pad(p) = cfg.remainder {
                prop_assert!(seq.tokens[seq.valid_len..].iter().all(|&t| t == p));
            }
        }
        prop_assert!(s.starts_with(&inputs));
        let covered = packed.iter().map(|q| q.valid_len.min(cfg.seq_len)).sum::<usize>();
        match cfg.remainder {
            // Padding loses nothing: every token is an input, except with the shift the very last one, which is
            // then the last sequence's last target.
            Remainder::Pad(_) => {
                prop_assert!(s.len() - covered <= shift);
                if let Some(last) = packed.iter().last() {
                    prop_assert_eq!(last.tokens[last.valid_len - 1], *s.last().unwrap());
                }
            }
            // Dropping loses less than one sequence.
            Remainder::Drop => prop_assert!(s.len() - covered < cfg.seq_len + shift),
        }
        // With the shift, consecutive sequences overlap by exactly one token.
        if cfg.target_shift {
            for w in packed.iter().collect::<Vec<_>>().windows(2) {
                prop_assert_eq!(w[0].tokens[cfg.seq_len], w[1].tokens[0]);
            }
        }
    }

    #[test]
    fn shuffling_permutes_deterministically(docs in docs(), cfg in config(), seed in any::<u64>()) {
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let plain = PackedSequences::new(refs.clone(), &PackConfig { shuffle_seed: None, ..cfg }).unwrap();
        let a = PackedSequences::new(refs.clone(), &PackConfig { shuffle_seed: Some(seed), ..cfg }).unwrap();
        let b = PackedSequences::new(refs, &PackConfig { shuffle_seed: Some(seed), ..cfg }).unwrap();
        prop_assert_eq!(&a, &b);
        let mut idx: Vec<usize> = a.iter().map(|s| s.index).collect();
        idx.sort_unstable();
        prop_assert_eq!(idx, (0..plain.len()).collect::<Vec<_>>());
        for s in a.iter() {
            prop_assert_eq!(s, plain.get(s.index).unwrap());
        }
        let mut c = a.clone();
        c.unshuffle();
        prop_assert_eq!(c.iter().collect::<Vec<_>>(), plain.iter().collect::<Vec<_>>());
        c.shuffle(seed);
        prop_assert_eq!(&c, &a);
    }

    #[test]
    fn batches_cover_the_sequences(docs in docs(), cfg in config(), bs in 1usize..6, drop_last in any::<bool>()) {
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let packed = PackedSequences::new(refs, &cfg).unwrap();
        let batches: Vec<Batch> = packed.batches(bs, drop_last).unwrap().collect();
        let rows: Vec<Vec<u32>> = batches.iter().flat_map(|b| (0..b.rows).map(|r| b.row(r).to_vec())).collect();
        let n = if drop_last { packed.len() / bs * bs } else { packed.len() };
        prop_assert_eq!(rows.len(), n);
        for (i, r) in rows.iter().enumerate() {
            prop_assert_eq!(&r[..], packed.get(i).unwrap().tokens);
        }
        for b in &batches {
            prop_assert_eq!(b.tokens.len(), b.rows * b.width);
            prop_assert!(b.rows <= bs && b.rows > 0);
            prop_assert_eq!(b.valid_lens.len(), b.rows);
        }
    }

    #[test]
    fn windows_match_the_reference_and_score_each_position_once(n in 0usize..200, max_len in 2usize..40, stride_frac in 0.0f64..1.0) {
        let stride = 1 + ((max_len - 2) as f64 * stride_frac) as usize; // 1 ..= max_len - 1
        let t: Vec<u32> = (0..n as u32).collect();
        let ws: Vec<_> = sliding_windows(&t, max_len, stride).unwrap().collect();
        let got: Vec<(usize, usize, usize)> = ws.iter().map(|w| (w.start, w.start + w.tokens.len(), w.score_from)).collect();
        prop_assert_eq!(got, reference::sliding_windows(n, max_len, stride));
        let mut scored = vec![0u32; n];
        for w in &ws {
            prop_assert!(w.tokens.len() <= max_len && w.score_from >= 1 && w.score_from < w.tokens.len());
            prop_assert_eq!(w.tokens, &t[w.start..w.start + w.tokens.len()]);
            for p in w.scored_positions() {
                scored[p] += 1;
                prop_assert!(p - w.start >= p.min(max_len - stride), "position {} has too little context", p);
            }
        }
        for (p, &c) in scored.iter().enumerate() {
            prop_assert_eq!(c, u32::from(p > 0), "position {} scored {} times", p, c);
        }
    }
}

#[test]
fn tokenized_split_windows_and_packing() {
    let t = TokenizedSplit::from_parts(
        vec!["a".into(), "b".into(), "c".into()],
        vec![(0..10).collect(), vec![7], (0..5).collect()],
    );
    let ws: Vec<(usize, usize)> =
        t.perplexity_windows(4, 3).unwrap().map(|(d, w)| (d, w.scored_positions().len())).collect();
    assert_eq!(ws, [(0, 3), (0, 3), (0, 3), (2, 3), (2, 1)]); // 9 + 0 + 4 scored tokens
    assert!(t.perplexity_windows(4, 4).is_err());
    let p = t.pack(&PackConfig::new(4).with_separator(99)).unwrap();
    assert_eq!(p.stream().len(), 10 + 1 + 1 + 1 + 5 + 1);
    assert_eq!(p.len(), 4);
}
