//! Naive, obviously-correct versions of the crate's algorithms, written for clarity rather than speed, and used
//! as test oracles: the property tests check the real implementations against them on random inputs.

use std::ops::Range;

use crate::entities::NAMED;
use crate::pack::{PackConfig, Remainder, permutation};

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// [`crate::split_passages`] by the letter of its rule: lines, paragraphs, cut pieces, greedy packing, each step
/// materialised and every length recounted from scratch.
pub fn split_passages(text: &str, max_chars: usize) -> Vec<Range<usize>> {
    let max = max_chars.max(1);

    // 1. Lines with their byte offsets.
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in text.split('\n') {
        lines.push((offset, line));
        offset += line.len() + 1;
    }

    // 2. Paragraphs: maximal runs of non-blank lines, trimmed.
    let mut paragraphs: Vec<Range<usize>> = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for (offset, line) in lines {
        if line.trim().is_empty() {
            if let Some(p) = current.take() {
                paragraphs.push(p);
            }
        } else {
            let end = offset + line.len();
            current = Some(match current {
                Some(p) => p.start..end,
                None => offset..end,
            });
        }
    }
    paragraphs.extend(current);
    let paragraphs: Vec<Range<usize>> = paragraphs
        .into_iter()
        .map(|p| {
            let s = &text[p.clone()];
            let start = p.start + (s.len() - s.trim_start().len());
            start..start + s.trim().len()
        })
        .collect();

    // 3. Units: short paragraphs as they are, long ones cut.
    let mut units: Vec<Range<usize>> = Vec::new();
    for p in paragraphs {
        if chars(&text[p.clone()]) <= max {
            units.push(p);
            continue;
        }
        let (mut start, end) = (p.start, p.end);
        loop {
            let rest = &text[start..end];
            let cs: Vec<(usize, char)> = rest.char_indices().collect();
            if cs.len() <= max {
                units.push(start..end);
                break;
            }
            let newline = (1..=max).rev().find(|&k| cs[k].1 == '\n');
            let space = (1..=max).rev().find(|&k| cs[k].1.is_whitespace());
            let cut = cs[newline.or(space).unwrap_or(max)].0;
            let piece = rest[..cut].trim_end();
            units.push(start..start + piece.len());
            let after = &rest[cut..];
            start += cut + (after.len() - after.trim_start().len());
            if start >= end {
                break;
            }
        }
    }

    // 4. Greedy packing.
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for u in units {
        current = Some(match current {
            Some(c) if chars(&text[c.start..u.end]) <= max => c.start..u.end,
            Some(c) => {
                out.push(c);
                u
            }
            None => u,
        });
    }
    out.extend(current);
    out
}

/// [`crate::PackedSequences`] as a list of `(tokens, valid_len)` in the configured order: build the whole stream,
/// slide a window over it, pad or drop the rest, permute.
pub fn pack(docs: &[Vec<u32>], cfg: &PackConfig) -> Vec<(Vec<u32>, usize)> {
    let mut stream = Vec::new();
    for d in docs {
        stream.extend_from_slice(d);
        if let Some(sep) = cfg.separator {
            stream.push(sep);
        }
    }
    let width = cfg.width();
    let mut out = Vec::new();
    let mut start = 0;
    while start + width <= stream.len() {
        out.push((stream[start..start + width].to_vec(), width));
        start += cfg.seq_len;
    }
    if let Remainder::Pad(pad) = cfg.remainder {
        let left = stream.len() - start;
        if left > usize::from(cfg.target_shift) {
            let mut t = stream[start..].to_vec();
            t.resize(width, pad);
            out.push((t, left));
        }
    }
    if let Some(seed) = cfg.shuffle_seed {
        let order = permutation(out.len(), seed);
        out = order.iter().map(|&k| out[k].clone()).collect();
    }
    out
}

/// [`crate::sliding_windows`] restated over target chunks: the targets `1..n` are cut into a first chunk of up to
/// `max_len − 1` and then chunks of `stride`; each chunk's window is the `max_len` tokens ending with it. Returns
/// `(start, end, score_from)` per window.
pub fn sliding_windows(n: usize, max_len: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    let (mut first_target, mut end) = (1, max_len.min(n));
    loop {
        let start = end.saturating_sub(max_len);
        out.push((start, end, first_target - start));
        if end == n {
            return out;
        }
        first_target = end;
        end = (end + stride).min(n);
    }
}

/// [`crate::decode_entities`] by a linear scan: at each `&`, try a numeric reference, then every known name.
pub fn decode_entities(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < cs.len() {
        if cs[i] != '&' {
            out.push(cs[i]);
            i += 1;
            continue;
        }
        if cs.get(i + 1) == Some(&'#') {
            let hex = matches!(cs.get(i + 2), Some('x' | 'X'));
            let first = if hex { i + 3 } else { i + 2 };
            let mut j = first;
            let radix = if hex { 16 } else { 10 };
            while j < cs.len() && cs[j].is_ascii() && cs[j].is_digit(radix) {
                j += 1;
            }
            if j > first {
                let digits: String = cs[first..j].iter().collect();
                let value = u64::from_str_radix(digits.trim_start_matches('0'), radix)
                    .unwrap_or(if digits.chars().all(|c| c == '0') { 0 } else { u64::MAX });
                out.push(numeric(value));
                i = if cs.get(j) == Some(&';') { j + 1 } else { j };
                continue;
            }
        } else if let Some((name, cp)) = NAMED.iter().find(|(name, _)| {
            let n: Vec<char> = name.chars().collect();
            cs.len() >= i + 2 + n.len() && cs[i + 1..i + 1 + n.len()] == n[..] && cs[i + 1 + n.len()] == ';'
        }) {
            out.push(char::from_u32(*cp).expect("valid"));
            i += name.chars().count() + 2;
            continue;
        }
        out.push('&');
        i += 1;
    }
    out
}

fn numeric(value: u64) -> char {
    const W1252: [(u64, char); 27] = [
        (0x80, '€'),
        (0x82, '‚'),
        (0x83, 'ƒ'),
        (0x84, '„'),
        (0x85, '…'),
        (0x86, '†'),
        (0x87, '‡'),
        (0x88, 'ˆ'),
        (0x89, '‰'),
        (0x8A, 'Š'),
        (0x8B, '‹'),
        (0x8C, 'Œ'),
        (0x8E, 'Ž'),
        (0x91, '‘'),
        (0x92, '’'),
        (0x93, '“'),
        (0x94, '”'),
        (0x95, '•'),
        (0x96, '–'),
        (0x97, '—'),
        (0x98, '˜'),
        (0x99, '™'),
        (0x9A, 'š'),
        (0x9B, '›'),
        (0x9C, 'œ'),
        (0x9E, 'ž'),
        (0x9F, 'Ÿ'),
    ];
    if value == 0 {
        return '\u{FFFD}';
    }
    if let Some((_, c)) = W1252.iter().find(|(v, _)| *v == value) {
        return *c;
    }
    u32::try_from(value).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}')
}
