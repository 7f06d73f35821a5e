//! # effllm-data
//!
//! The project's default corpus: the documentation that ships with the Rust toolchain
//! (`$(rustc --print sysroot)/share/doc/rust/html`, installed by `rustup component add rust-docs`) — *The Rust
//! Programming Language* (`book/`), *The Rust Reference* (`reference/`), *The Rustonomicon* (`nomicon/`) and
//! *Rust by Example* (`rust-by-example/`). It is on every machine with a toolchain, needs no network, is
//! permissively licensed (MIT/Apache-2.0), and mixes prose with code.
//!
//! ## Pipeline
//!
//! ```text
//! docs_dir ─► discover_pages ─► extract_page (html) ─► Corpus (Documents, sorted by id)
//!                                                        │
//!             SplitConfig::assign (split) ◄──────────────┤
//!             PassageTable / split_passages (passage) ◄──┤
//!                                                        ▼
//!             TextEncoder ─► TokenCache::load_or_build ─► TokenizedSplit ─► PackedSequences ─► Batches
//!                                                                      └──► perplexity_windows
//! ```
//!
//! 1. **Discovery** ([`docs_dir`], [`discover_pages`]). The docs directory is an explicit path, else
//!    `$EFFLLM_CORPUS_DIR` ([`CORPUS_DIR_ENV`]), else `rustc --print sysroot` + `share/doc/rust/html` (a sysroot is
//!    accepted wherever the docs directory is). Every `*.html` below the four books, sorted by relative path,
//!    except `print.html`, `toc.html`, `404.html`, the old editions of the book (`book/first-edition`,
//!    `book/second-edition`, `book/2018-edition`: one "no longer distributed" stub per chapter) and asset
//!    directories. [`Corpus::load`] then skips redirects (no `<main>`, or a meta refresh), translations (Rust by
//!    Example's `ja`, `ko`, `es`, `zh`; by `<html lang>`), stubs under [`DEFAULT_MIN_CHARS`] characters, and the
//!    `index.html` copy mdBook writes of each book's first chapter; [`Corpus::skipped`] lists them with reasons.
//! 2. **HTML to text** ([`html`]). A hand-written streaming tag scanner (no HTML5 dependency): the text of
//!    `<main>`, scripts, styles, navigation, buttons, SVG and the Reference's rule anchors dropped, named and
//!    numeric references decoded, prose whitespace collapsed, block structure kept as blank lines and newlines,
//!    code blocks verbatim. Hidden lines of Rust examples (`<span class="boring">`) are dropped by default: the
//!    text is what a reader sees ([`HiddenLines`]).
//! 3. **Documents** ([`Document`]): `id` = the relative path (`book/ch04-01-what-is-ownership.html`), the
//!    [`Book`], the title and the text.
//! 4. **Splits** ([`split`]): by SHA-256 of (seed, document id) into 90 / 5 / 5 per mille buckets by default, so
//!    a document's split never depends on the other pages.
//! 5. **Passages** ([`passage`]): paragraphs packed greedily into passages of at most 800 characters by default,
//!    with stable ids `"{document id}#{index}"` and `u64` keys, and byte ranges into the document text (for NEST's
//!    retrieval and attribution); [`PassageTable::tokenize`] gives (and caches) their tokens.
//! 6. **Tokens** ([`cache`]): any [`TextEncoder`] (this crate depends on no tokenizer); token ids are cached on
//!    disk per (documents hash, encoder fingerprint, label) in a checksummed little-endian format, written
//!    atomically and read defensively.
//! 7. **Packing** ([`pack`]): documents joined with an optional separator and cut into fixed-length sequences
//!    (optionally `L + 1` for the input/target shift), shuffled by seed, batched; and sliding windows for
//!    perplexity over each document.
//!
//! Every algorithm has a naive twin in [`reference`](mod@reference); the property tests check one against the other.
//!
//! ## Example
//!
//! ```
//! use effllm_data::{Book, ByteEncoder, Corpus, Document, PackConfig, PassageConfig, PassageTable, Split,
//!                   SplitConfig, TokenizedSplit};
//!
//! # fn main() -> Result<(), effllm_data::DataError> {
//! // The real corpus: `Corpus::load_default()?`. Here, two hand-made documents.
//! let corpus = Corpus::from_documents(vec![
//!     Document::new("book/a.html", Book::Book, "A", "Ownership is a set of rules.\n\nfn main() {}"),
//!     Document::new("nomicon/b.html", Book::Nomicon, "B", "Unsafe Rust is dangerous."),
//! ]);
//! let split = SplitConfig::default();
//! let n: usize = Split::ALL.iter().map(|&s| corpus.split(s, &split).len()).sum();
//! assert_eq!(n, 2);
//!
//! let passages = PassageTable::build(corpus.documents(), &PassageConfig { max_chars: 30 })?;
//! let p = passages.by_id(&"book/a.html#1".parse()?).unwrap();
//! assert_eq!(p.text(), "fn main() {}");
//! assert_eq!(&p.document.text[p.range.clone()], p.text());
//!
//! let docs: Vec<&Document> = corpus.documents().iter().collect();
//! let tokens = TokenizedSplit::encode(&docs, &ByteEncoder)?;
//! let packed = tokens.pack(&PackConfig::new(16).with_target_shift().with_separator(0).with_shuffle(7))?;
//! assert!(packed.iter().all(|s| s.tokens.len() == 17));
//! # Ok(())
//! # }
//! ```
//!
//! The `corpus_stats` example prints documents, characters, splits and passages of the installed docs:
//! `cargo run -p effllm-data --release --example corpus_stats`.

#![deny(missing_docs)]

pub mod cache;
pub mod corpus;
pub mod encode;
mod entities;
pub mod error;
pub mod html;
pub mod pack;
pub mod passage;
pub mod reference;
pub mod split;

pub use cache::{CACHE_DIR_ENV, CacheKey, CacheStatus, TokenCache, TokenizedSplit};
pub use corpus::{
    Book, CORPUS_DIR_ENV, Corpus, CorpusOptions, CorpusStats, Counts, DEFAULT_MIN_CHARS, Document, PageFile,
    SkipReason, SkippedPage, discover_pages, docs_dir, rustc_sysroot,
};
pub use encode::{ByteEncoder, FnEncoder, TextEncoder};
pub use error::{CacheFormatError, DataError, EncodeError};
pub use html::{ExtractOptions, HiddenLines, decode_entities, extract_page, html_to_text};
pub use pack::{
    Batch, Batches, EvalWindow, PackConfig, PackedSequences, Remainder, Sequence, SlidingWindows, permutation,
    sliding_windows,
};
pub use passage::{
    DEFAULT_MAX_PASSAGE_CHARS, Passage, PassageConfig, PassageId, PassageTable, document_key, passage_key,
    split_passages,
};
pub use split::{Split, SplitConfig};
