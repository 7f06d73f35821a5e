//! Passages with stable ids: bounded pieces of a document for retrieval and attribution (NEST).
//!
//! # Splitting rule ([`split_passages`])
//!
//! Sizes are counted in characters (Unicode scalar values), independent of any tokenizer; the default
//! [`DEFAULT_MAX_PASSAGE_CHARS`] = 800 is about 200 tokens of English BPE (NEST uses passages of < 200 tokens).
//! "Whitespace" is [`char::is_whitespace`].
//!
//! 1. **Paragraphs.** A line is blank if it holds only whitespace. A paragraph is a maximal run of non-blank lines
//!    (lines are separated by `\n`), trimmed of whitespace at both ends.
//! 2. **Long paragraphs.** A paragraph of more than `max_chars` characters is cut into pieces. Let `w` be the
//!    byte offset of the `max_chars`-th character of the rest: the cut is at the last `\n` at a character
//!    position in `1..=max_chars` (the character right after the window counts), else at the last whitespace
//!    there, else at `w` (a hard cut inside a word). The piece before the cut is trimmed at its end; the rest is
//!    trimmed at its start and cut again until it fits.
//! 3. **Packing.** Paragraphs and pieces ("units") are packed greedily in order: a passage runs from the start of
//!    its first unit to the end of its last, and the next unit joins it if the passage would still have at most
//!    `max_chars` characters (the blank lines between units count), else it starts a new passage.
//!
//! So passages are non-empty, at most `max_chars` characters, in document order, disjoint, never start or end
//! with whitespace, and only whitespace lies between them and around them: `&text[range]` is the passage and
//! the gaps are whitespace. A document of only whitespace has no passages. `max_chars` of 0 is treated as 1.
//!
//! # Ids
//!
//! A passage is `(document id, index)` with the index counting from 0 in document order: [`PassageId`], whose
//! string form is `"{document id}#{index}"` (`book/ch04-01-what-is-ownership.html#3`). Its `u64` form
//! ([`passage_key`]) is `document_key(id) << 24 | index`, where `document_key` is the first 40 bits of
//! SHA-256(`"effllm-data passage v1\0" || id`) (big-endian) — stable across runs, machines and corpus versions
//! as long as the document's text (hence its passage count) is unchanged. Indices must be below 2^24; a
//! [`PassageTable`] checks that and that no two documents share a 40-bit key (about 10^-7 for 1000 documents).
//!
//! Passage ids are stable under the same `max_chars` and the same document text; changing either renumbers the
//! passages of that document only.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::cache::{TokenCache, TokenizedSplit};
use crate::corpus::Document;
use crate::encode::TextEncoder;
use crate::error::DataError;

/// The default maximum passage length in characters (about 200 BPE tokens of English).
pub const DEFAULT_MAX_PASSAGE_CHARS: usize = 800;

/// Bits of a [`passage_key`] that hold the passage index.
pub const PASSAGE_INDEX_BITS: u32 = 24;

/// Passage splitting parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PassageConfig {
    /// Maximum passage length in characters (0 is treated as 1).
    pub max_chars: usize,
}

impl Default for PassageConfig {
    fn default() -> Self {
        PassageConfig { max_chars: DEFAULT_MAX_PASSAGE_CHARS }
    }
}

fn trim_range(text: &str, r: Range<usize>) -> Range<usize> {
    let s = &text[r.clone()];
    let start = r.start + (s.len() - s.trim_start().len());
    let end = r.start + s.trim_end().len();
    if start >= end { start..start } else { start..end }
}

/// Paragraph ranges (trimmed) of `text`: maximal runs of non-blank lines.
fn paragraphs(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut para: Option<Range<usize>> = None;
    let mut line_start = 0;
    let b = text.as_bytes();
    loop {
        let line_end = b[line_start..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| line_start + p);
        let line = &text[line_start..line_end];
        let blank = line.chars().all(char::is_whitespace);
        match (&mut para, blank) {
            (Some(p), false) => p.end = line_end,
            (None, false) => para = Some(line_start..line_end),
            (Some(_), true) => out.push(trim_range(text, para.take().expect("some"))),
            (None, true) => {}
        }
        if line_end >= b.len() {
            break;
        }
        line_start = line_end + 1;
    }
    if let Some(p) = para {
        out.push(trim_range(text, p));
    }
    out
}

/// Cuts the trimmed paragraph `text[r]` into pieces of at most `max` characters (rule 2); appends
/// `(range, chars)`.
fn cut_long(text: &str, r: Range<usize>, max: usize, out: &mut Vec<(Range<usize>, usize)>) {
    let mut start = r.start;
    let end = r.end;
    while start < end {
        let rest = &text[start..end];
        // Byte offset of the character at position `max` (0-based), i.e. right after the window.
        let mut chars = rest.char_indices();
        let Some((w, _)) = chars.nth(max) else {
            out.push((start..end, rest.chars().count()));
            return;
        };
        let mut last_nl = None;
        let mut last_ws = None;
        for (i, c) in rest[..w].char_indices().skip(1).chain(std::iter::once((w, rest[w..].chars().next().unwrap()))) {
            if c == '\n' {
                last_nl = Some(i);
            } else if c.is_whitespace() {
                last_ws = Some(i);
            }
        }
        let cut = last_nl.or(last_ws).unwrap_or(w);
        let piece = rest[..cut].trim_end();
        out.push((start..start + piece.len(), piece.chars().count()));
        let after = &rest[cut..];
        start += cut + (after.len() - after.trim_start().len());
    }
}

/// Splits `text` into passages of at most `max_chars` characters by the rule of the module docs; returns their
/// byte ranges in `text`.
pub fn split_passages(text: &str, max_chars: usize) -> Vec<Range<usize>> {
    let max = max_chars.max(1);
    let mut units: Vec<(Range<usize>, usize)> = Vec::new();
    for p in paragraphs(text) {
        if p.is_empty() {
            continue;
        }
        let n = text[p.clone()].chars().count();
        if n <= max {
            units.push((p, n));
        } else {
            cut_long(text, p, max, &mut units);
        }
    }
    let mut out = Vec::new();
    let mut cur: Option<(Range<usize>, usize)> = None;
    for (r, n) in units {
        cur = Some(match cur.take() {
            None => (r, n),
            Some((c, cn)) => {
                let gap = text[c.end..r.start].chars().count();
                if cn + gap + n <= max {
                    (c.start..r.end, cn + gap + n)
                } else {
                    out.push(c);
                    (r, n)
                }
            }
        });
    }
    if let Some((c, _)) = cur {
        out.push(c);
    }
    out
}

/// The 40-bit key of a document id (the high bits of its passages' [`passage_key`]s).
pub fn document_key(doc_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"effllm-data passage v1\0");
    h.update(doc_id.as_bytes());
    let d = h.finalize();
    let mut x = [0u8; 8];
    x[3..].copy_from_slice(&d[..5]);
    u64::from_be_bytes(x)
}

/// The `u64` form of a passage id: `document_key(doc_id) << 24 | index`; `None` if `index >= 2^24`.
pub fn passage_key(doc_id: &str, index: u32) -> Option<u64> {
    (index < (1 << PASSAGE_INDEX_BITS)).then(|| (document_key(doc_id) << PASSAGE_INDEX_BITS) | u64::from(index))
}

/// A passage id: (document id, index). `Display`/`FromStr` use `"{doc}#{index}"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PassageId {
    /// The document id.
    pub doc: String,
    /// The passage's index within the document, from 0.
    pub index: u32,
}

impl PassageId {
    /// The `u64` form ([`passage_key`]); `None` if the index does not fit 24 bits.
    pub fn key(&self) -> Option<u64> {
        passage_key(&self.doc, self.index)
    }
}

impl fmt::Display for PassageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.doc, self.index)
    }
}

impl FromStr for PassageId {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DataError::InvalidConfig(format!("not a passage id `{s}` (expected `document-id#index`)"));
        let (doc, index) = s.rsplit_once('#').ok_or_else(bad)?;
        if doc.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(PassageId { doc: doc.to_string(), index: index.parse().map_err(|_| bad())? })
    }
}

/// A passage borrowed from its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage<'a> {
    /// The document.
    pub document: &'a Document,
    /// The index within the document.
    pub index: u32,
    /// Byte range in `document.text`.
    pub range: Range<usize>,
    /// The `u64` key ([`passage_key`]).
    pub key: u64,
}

impl<'a> Passage<'a> {
    /// The passage text, `&document.text[range]`.
    pub fn text(&self) -> &'a str {
        &self.document.text[self.range.clone()]
    }

    /// The id.
    pub fn id(&self) -> PassageId {
        PassageId { doc: self.document.id.clone(), index: self.index }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    doc: u32,
    index: u32,
    range: Range<usize>,
}

/// All passages of a set of documents, addressable by position, [`PassageId`] and `u64` key.
#[derive(Debug, Clone)]
pub struct PassageTable<'a> {
    docs: Vec<&'a Document>,
    doc_first: Vec<usize>,
    entries: Vec<Entry>,
    keys: Vec<u64>,
    by_key: HashMap<u64, usize>,
    by_doc: HashMap<&'a str, u32>,
    config: PassageConfig,
}

impl<'a> PassageTable<'a> {
    /// Splits every document. Fails if two documents have the same id or the same 40-bit key, or a document has
    /// 2^24 passages or more.
    pub fn build(
        documents: impl IntoIterator<Item = &'a Document>,
        config: &PassageConfig,
    ) -> Result<PassageTable<'a>, DataError> {
        let docs: Vec<&'a Document> = documents.into_iter().collect();
        let mut by_doc = HashMap::with_capacity(docs.len());
        let mut doc_keys: HashMap<u64, &str> = HashMap::with_capacity(docs.len());
        let mut entries = Vec::new();
        let mut keys = Vec::new();
        let mut doc_first = Vec::with_capacity(docs.len() + 1);
        for (di, d) in docs.iter().enumerate() {
            let di = u32::try_from(di).map_err(|_| DataError::PassageKey("more than 2^32 documents".into()))?;
            if by_doc.insert(d.id.as_str(), di).is_some() {
                return Err(DataError::PassageKey(format!("document id `{}` appears twice", d.id)));
            }
            let dk = document_key(&d.id);
            if let Some(other) = doc_keys.insert(dk, &d.id) {
                return Err(DataError::PassageKey(format!("documents `{other}` and `{}` share key {dk:#x}", d.id)));
            }
            doc_first.push(entries.len());
            for (pi, range) in split_passages(&d.text, config.max_chars).into_iter().enumerate() {
                let index = u32::try_from(pi)
                    .ok()
                    .filter(|&i| i < (1 << PASSAGE_INDEX_BITS))
                    .ok_or_else(|| DataError::PassageKey(format!("document `{}` has more than 2^24 passages", d.id)))?;
                keys.push((dk << PASSAGE_INDEX_BITS) | u64::from(index));
                entries.push(Entry { doc: di, index, range });
            }
        }
        doc_first.push(entries.len());
        let by_key = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        Ok(PassageTable { docs, doc_first, entries, keys, by_key, by_doc, config: *config })
    }

    /// The configuration used.
    pub fn config(&self) -> &PassageConfig {
        &self.config
    }

    /// Number of passages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no passages.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The documents, in the order given.
    pub fn documents(&self) -> &[&'a Document] {
        &self.docs
    }

    /// The passage at a position (documents in the order given, passages in document order).
    pub fn get(&self, position: usize) -> Option<Passage<'a>> {
        let e = self.entries.get(position)?;
        Some(Passage {
            document: self.docs[e.doc as usize],
            index: e.index,
            range: e.range.clone(),
            key: self.keys[position],
        })
    }

    /// The position of the passage with this key.
    pub fn position_of_key(&self, key: u64) -> Option<usize> {
        self.by_key.get(&key).copied()
    }

    /// The passage with this `u64` key.
    pub fn by_key(&self, key: u64) -> Option<Passage<'a>> {
        self.get(self.position_of_key(key)?)
    }

    /// The passage with this id.
    pub fn by_id(&self, id: &PassageId) -> Option<Passage<'a>> {
        let di = *self.by_doc.get(id.doc.as_str())? as usize;
        let first = self.doc_first[di];
        let count = self.doc_first[di + 1] - first;
        ((id.index as usize) < count).then(|| self.get(first + id.index as usize)).flatten()
    }

    /// The passages of one document, in order (empty if the document is not in the table).
    pub fn of_document(&self, doc_id: &str) -> impl Iterator<Item = Passage<'a>> + '_ {
        let span =
            self.by_doc.get(doc_id).map_or(0..0, |&di| self.doc_first[di as usize]..self.doc_first[di as usize + 1]);
        span.map(move |i| self.get(i).expect("in range"))
    }

    /// The tokens of every passage, in position order (`tokenized.document(i)` is passage `i`, whose id string
    /// is `tokenized.doc_id(i)`), through `cache` when given (label `passages-<max_chars>`).
    pub fn tokenize<E: TextEncoder + Sync + ?Sized>(
        &self,
        encoder: &E,
        cache: Option<&TokenCache>,
    ) -> Result<TokenizedSplit, DataError> {
        let ids: Vec<String> = self.iter().map(|p| p.id().to_string()).collect();
        let items: Vec<(&str, &str)> = ids.iter().zip(self.iter()).map(|(id, p)| (id.as_str(), p.text())).collect();
        match cache {
            Some(c) => Ok(c.load_or_build_texts(&items, &format!("passages-{}", self.config.max_chars), encoder)?.0),
            None => TokenizedSplit::encode_texts(&items, encoder),
        }
    }

    /// All passages in position order.
    pub fn iter(&self) -> impl Iterator<Item = Passage<'a>> + '_ {
        (0..self.entries.len()).map(move |i| self.get(i).expect("in range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Book;

    fn texts(text: &str, max: usize) -> Vec<&str> {
        split_passages(text, max).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn packs_paragraphs() {
        let t = "aaa\n\nbbb\n\n\nccc\nddd\n  \neee";
        assert_eq!(texts(t, 3), ["aaa", "bbb", "ccc", "ddd", "eee"]);
        assert_eq!(texts(t, 8), ["aaa\n\nbbb", "ccc\nddd", "eee"]);
        assert_eq!(texts(t, 100), [t]);
        assert!(texts("  \n\n \t ", 5).is_empty());
        assert!(texts("", 5).is_empty());
    }

    #[test]
    fn cuts_long_paragraphs() {
        assert_eq!(texts("one two three", 7), ["one two", "three"]);
        assert_eq!(texts("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(texts("ab\ncd ef gh", 8), ["ab", "cd ef gh"]); // a newline beats a later space
        assert_eq!(texts("ab cd\nef", 5), ["ab cd", "ef"]); // the newline right after the window is a cut
        assert_eq!(texts("ééé ééé", 4), ["ééé", "ééé"]);
        assert_eq!(texts("x", 0), ["x"]);
    }

    #[test]
    fn ids_and_keys() {
        let id: PassageId = "book/ch04-01-what-is-ownership.html#3".parse().unwrap();
        assert_eq!(id, PassageId { doc: "book/ch04-01-what-is-ownership.html".into(), index: 3 });
        assert_eq!(id.to_string(), "book/ch04-01-what-is-ownership.html#3");
        assert!("nohash".parse::<PassageId>().is_err());
        assert!("a#-1".parse::<PassageId>().is_err());
        assert!("#1".parse::<PassageId>().is_err());
        assert!("a#b#".parse::<PassageId>().is_err());
        assert_eq!("a#b#7".parse::<PassageId>().unwrap().doc, "a#b");
        let k = id.key().unwrap();
        assert_eq!(k & 0xFF_FFFF, 3);
        assert_eq!(k >> 24, document_key(&id.doc));
        assert!(document_key(&id.doc) < 1 << 40);
        assert_eq!(passage_key("x", 1 << 24), None);
        // Frozen, computed with Python: sha256(b"effllm-data passage v1\0" + id).digest()[:5] big-endian.
        assert_eq!(document_key("book/ch04-01-what-is-ownership.html"), GOLDEN_DOC_KEY);
    }

    const GOLDEN_DOC_KEY: u64 = 0x58_6d45_b80f;

    #[test]
    fn table_lookups() {
        let docs = [
            Document::new("a.html", Book::Book, "A", "p one\n\np two"),
            Document::new("b.html", Book::Nomicon, "B", "   "),
            Document::new("c.html", Book::Reference, "C", "solo"),
        ];
        let t = PassageTable::build(&docs, &PassageConfig { max_chars: 5 }).unwrap();
        assert_eq!(t.len(), 3);
        let all: Vec<String> = t.iter().map(|p| p.id().to_string()).collect();
        assert_eq!(all, ["a.html#0", "a.html#1", "c.html#0"]);
        let p = t.by_id(&"a.html#1".parse().unwrap()).unwrap();
        assert_eq!(p.text(), "p two");
        assert_eq!(t.by_key(p.key).unwrap(), p);
        assert!(t.by_id(&"a.html#2".parse().unwrap()).is_none());
        assert!(t.by_id(&"z.html#0".parse().unwrap()).is_none());
        assert_eq!(t.of_document("b.html").count(), 0);
        assert_eq!(t.of_document("a.html").count(), 2);
        let dup = [docs[0].clone(), docs[0].clone()];
        assert!(PassageTable::build(&dup, &PassageConfig::default()).is_err());
    }
}
