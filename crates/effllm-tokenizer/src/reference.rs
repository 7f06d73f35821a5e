//! A naive, obviously-correct byte-level BPE encoder: the oracle the `tokenizers`-based path is tested against.
//!
//! Nothing here shares code with the fast path except the GPT-2 byte-to-character table and the Unicode class
//! tables of the `regex` crate (so both sides agree on what `\p{L}`, `\p{N}` and `\s` mean):
//!
//! - special tokens (with `parse_special`): scan left to right, at each character take the longest special token
//!   string starting there (leftmost-longest), else move on one character;
//! - pre-tokenization: a hand-written scanner for the split rules of [`PreTokenizerKind`] (the digit split, then
//!   GPT-2's alternation tried in order at each position, with the look-ahead of `\s+(?!\S)` spelled out), not a
//!   regex engine;
//! - BPE: each piece's bytes mapped to byte-level characters, one symbol per character; then, as long as some
//!   adjacent pair is a merge rule, merge the pair with the lowest rank (leftmost on ties); the final symbols are
//!   looked up in the vocabulary. A byte whose character is not a vocabulary token is dropped and its neighbours
//!   are never merged across it (llama.cpp's behaviour). Quadratic per piece, which is fine for an oracle.

use std::collections::HashMap;

use regex::Regex;

use crate::byte_level::{byte_to_char_table, bytes_to_token, token_bytes};
use crate::pretok::PreTokenizerKind;
use crate::vocab::GgufVocab;

/// Unicode classes as the pre-tokenizer regexes see them (`regex` crate tables).
#[derive(Debug, Clone)]
pub struct CharClasses {
    letter: Regex,
    number: Regex,
    space: Regex,
}

impl Default for CharClasses {
    fn default() -> Self {
        Self::new()
    }
}

impl CharClasses {
    /// The classes `\p{L}`, `\p{N}` and `\s`.
    pub fn new() -> Self {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| unreachable!("constant regex {p}: {e}"));
        CharClasses { letter: re(r"^\p{L}$"), number: re(r"^\p{N}$"), space: re(r"^\s$") }
    }

    fn is(re: &Regex, c: char) -> bool {
        let mut buf = [0u8; 4];
        re.is_match(c.encode_utf8(&mut buf))
    }

    /// `\p{L}`: a letter.
    pub fn is_letter(&self, c: char) -> bool {
        Self::is(&self.letter, c)
    }

    /// `\p{N}`: a number (decimal digits, letter numbers like `Ⅻ`, other numbers like `²` or `½`).
    pub fn is_number(&self, c: char) -> bool {
        Self::is(&self.number, c)
    }

    /// `\s`: Unicode white space.
    pub fn is_space(&self, c: char) -> bool {
        Self::is(&self.space, c)
    }

    /// `[^\s\p{L}\p{N}]`: anything else.
    pub fn is_other(&self, c: char) -> bool {
        !self.is_space(c) && !self.is_letter(c) && !self.is_number(c)
    }
}

/// `Split(\p{N}, Isolated)`: every number character becomes its own piece; the runs between them are pieces too.
pub fn split_digits<'t>(text: &'t str, classes: &CharClasses) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut run_start = 0;
    for (i, c) in text.char_indices() {
        if classes.is_number(c) {
            if run_start < i {
                out.push(&text[run_start..i]);
            }
            out.push(&text[i..i + c.len_utf8()]);
            run_start = i + c.len_utf8();
        }
    }
    if run_start < text.len() {
        out.push(&text[run_start..]);
    }
    out
}

/// `Split(GPT2_REGEX, Isolated)` by hand: at each position the first alternative of
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` that matches there wins.
pub fn split_gpt2<'t>(text: &'t str, classes: &CharClasses) -> Vec<&'t str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let byte_at = |k: usize| if k < n { chars[k].0 } else { text.len() };
    let ch = |k: usize| chars.get(k).map(|&(_, c)| c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let end = gpt2_match_at(i, n, &ch, classes);
        out.push(&text[byte_at(i)..byte_at(end)]);
        i = end;
    }
    out
}

/// End (in characters) of the GPT-2 regex match starting at character `i`.
fn gpt2_match_at(i: usize, n: usize, ch: &dyn Fn(usize) -> Option<char>, classes: &CharClasses) -> usize {
    // 1. 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, ASCII apostrophe only).
    if ch(i) == Some('\'') {
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            if suffix.chars().enumerate().all(|(k, s)| ch(i + 1 + k) == Some(s)) {
                return i + 1 + suffix.len();
            }
        }
    }
    // 2-4. ` ?X+` for X = \p{L}, \p{N}, [^\s\p{L}\p{N}], in that order.
    type Class = fn(&CharClasses, char) -> bool;
    let class_fns: [Class; 3] = [CharClasses::is_letter, CharClasses::is_number, CharClasses::is_other];
    for is_x in class_fns {
        let start = if ch(i) == Some(' ') { i + 1 } else { i };
        if ch(start).is_some_and(|c| is_x(classes, c)) {
            let mut k = start;
            while ch(k).is_some_and(|c| is_x(classes, c)) {
                k += 1;
            }
            return k;
        }
    }
    // 5. \s+(?!\S): the whole white-space run if it ends the text, else the run minus its last character (which
    //    then precedes the non-space), provided that leaves at least one character.
    // 6. \s+: the whole run.
    if ch(i).is_some_and(|c| classes.is_space(c)) {
        let mut k = i;
        while ch(k).is_some_and(|c| classes.is_space(c)) {
            k += 1;
        }
        return if k < n && k - i >= 2 { k - 1 } else { k };
    }
    // Unreachable: every character is a space, a letter, a number or other. Take it alone to make progress.
    i + 1
}

/// The naive oracle encoder for a [`GgufVocab`] and a known pre-tokenizer.
#[derive(Debug, Clone)]
pub struct ReferenceBpe {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    ranks: HashMap<(String, String), usize>,
    specials: Vec<String>,
    kind: PreTokenizerKind,
    classes: CharClasses,
    table: [char; 256],
    bos: Option<u32>,
    eos: Option<u32>,
}

impl ReferenceBpe {
    /// The oracle for `vocab` with the pre-tokenizer `kind`. BOS/EOS are inserted as `vocab.add_bos` /
    /// `vocab.add_eos` say (absent = off), like [`GgufTokenizer`](crate::GgufTokenizer)'s defaults.
    pub fn new(vocab: &GgufVocab, kind: PreTokenizerKind) -> Self {
        let mut ranks = HashMap::with_capacity(vocab.merges.len());
        for (rank, pair) in vocab.merges.iter().enumerate() {
            ranks.entry(pair.clone()).or_insert(rank);
        }
        let specials = vocab
            .special_ids()
            .into_iter()
            .map(|id| vocab.tokens[id as usize].clone())
            .filter(|t| !t.is_empty())
            .collect();
        ReferenceBpe {
            vocab: vocab.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect(),
            tokens: vocab.tokens.clone(),
            ranks,
            specials,
            kind,
            classes: CharClasses::new(),
            table: byte_to_char_table(),
            bos: vocab.bos_id.filter(|_| vocab.add_bos == Some(true)),
            eos: vocab.eos_id.filter(|_| vocab.add_eos == Some(true)),
        }
    }

    /// The character classes in use.
    pub fn classes(&self) -> &CharClasses {
        &self.classes
    }

    /// The pre-tokenizer pieces of `text` (no special-token handling).
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        match self.kind {
            PreTokenizerKind::Gpt2 => split_gpt2(text, &self.classes),
            PreTokenizerKind::DigitsThenGpt2 => {
                split_digits(text, &self.classes).into_iter().flat_map(|p| split_gpt2(p, &self.classes)).collect()
            }
        }
    }

    /// BPE of one piece: lowest-rank adjacent pair merged first, leftmost on ties, until no pair is a merge rule.
    /// A byte whose character is not a vocabulary token is dropped and splits the piece: the parts on either
    /// side are merged separately.
    pub fn bpe(&self, piece: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut symbols: Vec<String> = Vec::new();
        for c in bytes_to_token(piece.as_bytes(), &self.table).chars() {
            let s = c.to_string();
            if self.vocab.contains_key(&s) {
                symbols.push(s);
            } else {
                out.extend(self.merge_run(std::mem::take(&mut symbols)));
            }
        }
        out.extend(self.merge_run(symbols));
        out
    }

    fn merge_run(&self, mut symbols: Vec<String>) -> Vec<u32> {
        loop {
            let mut best: Option<(usize, usize)> = None; // (rank, position)
            for i in 0..symbols.len().saturating_sub(1) {
                let rank = self.ranks.get(&(symbols[i].clone(), symbols[i + 1].clone()));
                if let Some(&rank) = rank
                    && best.is_none_or(|(r, _)| rank < r)
                {
                    best = Some((rank, i));
                }
            }
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        symbols.iter().filter_map(|s| self.vocab.get(s).copied()).collect()
    }

    /// Encodes `text`: special tokens split out leftmost-longest when `parse_special`, every other stretch
    /// pre-tokenized and BPE-encoded piece by piece; BOS/EOS as configured.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        let mut plain_start = 0;
        let mut i = 0;
        while i < text.len() {
            let longest = if parse_special {
                self.specials.iter().filter(|s| text[i..].starts_with(s.as_str())).max_by_key(|s| s.len())
            } else {
                None
            };
            match longest {
                Some(s) => {
                    for piece in self.pre_tokenize(&text[plain_start..i]) {
                        ids.extend(self.bpe(piece));
                    }
                    ids.push(self.vocab[s]);
                    i += s.len();
                    plain_start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        for piece in self.pre_tokenize(&text[plain_start..]) {
            ids.extend(self.bpe(piece));
        }
        ids.extend(self.eos);
        ids
    }

    /// The bytes of `ids` concatenated (unknown ids skipped).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().filter_map(|&id| self.tokens.get(id as usize)).flat_map(|t| token_bytes(t)).collect()
    }
}
