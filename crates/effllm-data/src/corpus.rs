//! Finding the Rust documentation, listing the pages of the four books, and loading them as [`Document`]s.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::html::{ExtractOptions, HiddenLines, extract_page};
use crate::split::{Split, SplitConfig};

/// Environment variable naming the documentation directory (the one holding `book/`, `reference/`, ...), or a
/// sysroot (then `share/doc/rust/html` below it is used). Overrides `rustc --print sysroot`.
pub const CORPUS_DIR_ENV: &str = "EFFLLM_CORPUS_DIR";

/// Where the docs live below a sysroot.
pub const SYSROOT_DOCS: &str = "share/doc/rust/html";

/// File names that are never documents: mdBook's whole-book page, table of contents and error page.
pub const SKIPPED_FILE_NAMES: &[&str] = &["print.html", "toc.html", "404.html"];

/// The default minimum length of a document's text, in characters: shorter pages are stubs (section title pages
/// such as the Reference's "Appendices" with nothing but a heading).
pub const DEFAULT_MIN_CHARS: usize = 64;

/// One of the four mdBook books of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Book {
    /// *The Rust Programming Language* (`book/`).
    Book,
    /// *The Rustonomicon* (`nomicon/`).
    Nomicon,
    /// *The Rust Reference* (`reference/`).
    Reference,
    /// *Rust by Example* (`rust-by-example/`).
    RustByExample,
}

impl Book {
    /// All four books, in the order of their directory names (which is also their `Ord` order).
    pub const ALL: [Book; 4] = [Book::Book, Book::Nomicon, Book::Reference, Book::RustByExample];

    /// The directory name below the documentation root, which is also the first component of document ids.
    pub fn dir_name(self) -> &'static str {
        match self {
            Book::Book => "book",
            Book::Nomicon => "nomicon",
            Book::Reference => "reference",
            Book::RustByExample => "rust-by-example",
        }
    }

    /// The book's title.
    pub fn title(self) -> &'static str {
        match self {
            Book::Book => "The Rust Programming Language",
            Book::Nomicon => "The Rustonomicon",
            Book::Reference => "The Rust Reference",
            Book::RustByExample => "Rust By Example",
        }
    }

    /// The book whose directory name is `name`.
    pub fn from_dir_name(name: &str) -> Option<Book> {
        Book::ALL.into_iter().find(|b| b.dir_name() == name)
    }
}

impl fmt::Display for Book {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl FromStr for Book {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Book::from_dir_name(s).ok_or_else(|| {
            DataError::InvalidConfig(format!("unknown book `{s}` (expected book, reference, nomicon, rust-by-example)"))
        })
    }
}

/// One page of the corpus as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Document {
    /// Stable id: the page's path relative to the documentation root, with `/` separators, e.g.
    /// `book/ch04-01-what-is-ownership.html`.
    pub id: String,
    /// The book the page belongs to.
    pub book: Book,
    /// The page title (from `<title>` without the ` - Book Title` suffix; else the first heading; else the id).
    pub title: String,
    /// The text (see [`crate::html`] for the conversion rules).
    pub text: String,
}

impl Document {
    /// A document from its parts (for tests and other corpora).
    pub fn new(id: impl Into<String>, book: Book, title: impl Into<String>, text: impl Into<String>) -> Self {
        Document { id: id.into(), book, title: title.into(), text: text.into() }
    }

    /// The number of characters (Unicode scalar values) of the text.
    pub fn chars(&self) -> usize {
        self.text.chars().count()
    }
}

/// Options of [`Corpus::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusOptions {
    /// The books to load (default: all four).
    pub books: Vec<Book>,
    /// Pages with fewer characters of text are skipped as stubs (default [`DEFAULT_MIN_CHARS`]).
    pub min_chars: usize,
    /// Hidden lines of Rust examples (default: dropped).
    pub hidden_lines: HiddenLines,
    /// Keep only pages whose `<html lang>` is English or absent (default `true`): Rust by Example ships Japanese,
    /// Korean, Spanish and Chinese translations below `rust-by-example/{ja,ko,es,zh}/`.
    pub english_only: bool,
    /// Worker threads for reading and converting (0: all available cores).
    pub threads: usize,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            books: Book::ALL.to_vec(),
            min_chars: DEFAULT_MIN_CHARS,
            hidden_lines: HiddenLines::Drop,
            english_only: true,
            threads: 0,
        }
    }
}

/// Why a page found by [`discover_pages`] is not a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No `<main>` element, or a `<meta http-equiv="refresh">`: a redirect left for an old URL.
    Redirect,
    /// A translation (its `<html lang>` is not English).
    Translation,
    /// Fewer than `min_chars` characters of text.
    Stub,
    /// Its text is identical to another page of the same book (mdBook writes the first chapter twice, as itself and
    /// as `index.html`; the `index.html` copy is the one skipped).
    Duplicate,
}

/// A page that was found but not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPage {
    /// The page's id (relative path).
    pub id: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// A page file found by [`discover_pages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFile {
    /// The id: the path relative to the documentation root, `/`-separated.
    pub id: String,
    /// The book.
    pub book: Book,
    /// The file.
    pub path: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The Rust sysroot, from `$RUSTC --print sysroot` (`rustc` when `RUSTC` is unset).
pub fn rustc_sysroot() -> Result<PathBuf, DataError> {
    let rustc = env_path("RUSTC").unwrap_or_else(|| PathBuf::from("rustc"));
    let out = Command::new(&rustc).args(["--print", "sysroot"]).output().map_err(|e| DataError::DocsNotFound {
        reason: format!("cannot run `{} --print sysroot` ({e})", rustc.display()),
    })?;
    if !out.status.success() {
        return Err(DataError::DocsNotFound {
            reason: format!(
                "`{} --print sysroot` failed ({}): {}",
                rustc.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.is_empty() {
        return Err(DataError::DocsNotFound {
            reason: format!("`{} --print sysroot` printed nothing", rustc.display()),
        });
    }
    Ok(PathBuf::from(s))
}

/// A sysroot is accepted where the docs directory is expected: `share/doc/rust/html` below it is used.
fn normalise(dir: PathBuf) -> PathBuf {
    let below = dir.join(SYSROOT_DOCS);
    if below.is_dir() { below } else { dir }
}

/// The documentation directory, in this order: `explicit` if given; else `$EFFLLM_CORPUS_DIR` ([`CORPUS_DIR_ENV`])
/// if set and non-empty; else `$(rustc --print sysroot)/share/doc/rust/html`. A sysroot may be given instead of the
/// docs directory in the first two. The directory must exist; its books are checked by [`discover_pages`]. Errors
/// say to run `rustup component add rust-docs`.
pub fn docs_dir(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let (dir, source) = if let Some(p) = explicit {
        (normalise(p.to_path_buf()), "the path given")
    } else if let Some(p) = env_path(CORPUS_DIR_ENV) {
        (normalise(p), CORPUS_DIR_ENV)
    } else {
        (rustc_sysroot()?.join(SYSROOT_DOCS), "rustc --print sysroot")
    };
    if !dir.is_dir() {
        return Err(DataError::DocsNotFound {
            reason: format!("{} (from {source}) is not a directory", dir.display()),
        });
    }
    Ok(dir)
}

/// Whether a directory below `root` is skipped: the old editions of the book (`book/first-edition`,
/// `book/second-edition`, `book/2018-edition`: one "no longer distributed" stub per old chapter) and mdBook's
/// asset directories.
fn skip_dir(rel: &str) -> bool {
    let mut parts = rel.split('/');
    let (Some(book), Some(sub)) = (parts.next(), parts.next()) else { return false };
    let top_level = parts.next().is_none();
    top_level && ((book == "book" && sub.ends_with("-edition")) || matches!(sub, "theme" | "css" | "fonts" | "img"))
}

fn walk(dir: &Path, rel: &str, book: Book, out: &mut Vec<PageFile>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let path = entry.path();
        let child_rel = format!("{rel}/{name}");
        let ft = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if ft.is_dir() {
            if !skip_dir(&child_rel) {
                walk(&path, &child_rel, book, out)?;
            }
        } else if name.ends_with(".html") && !SKIPPED_FILE_NAMES.contains(&name.as_str()) && path.is_file() {
            // `is_file` follows a symlinked file; symlinked directories are not followed (no cycles).
            out.push(PageFile { id: child_rel, book, path });
        }
    }
    Ok(())
}

/// The HTML pages of `books` below the documentation root `root`, sorted by id (byte order of the relative path).
/// Skips [`SKIPPED_FILE_NAMES`], the old editions of the book and asset directories; pages are filtered further
/// by content in [`Corpus::load`]. Fails with [`DataError::BookMissing`] if a book's directory is absent.
pub fn discover_pages(root: &Path, books: &[Book]) -> Result<Vec<PageFile>, DataError> {
    let mut out = Vec::new();
    for &book in books {
        let dir = root.join(book.dir_name());
        if !dir.is_dir() {
            return Err(DataError::BookMissing { book: book.dir_name(), path: dir });
        }
        walk(&dir, book.dir_name(), book, &mut out)?;
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

fn clean_title(title: Option<&str>, heading: Option<&str>, id: &str) -> String {
    if let Some(t) = title.filter(|t| !t.is_empty()) {
        let t = t.rsplit_once(" - ").map_or(t, |(head, _book)| head).trim();
        if !t.is_empty() {
            return t.to_string();
        }
    }
    heading.filter(|h| !h.is_empty()).unwrap_or(id).to_string()
}

enum Loaded {
    Doc(Document),
    Skipped(SkippedPage),
}

fn load_page(page: &PageFile, opts: &CorpusOptions) -> Result<Loaded, DataError> {
    let bytes = std::fs::read(&page.path).map_err(|e| DataError::io(&page.path, e))?;
    let html = String::from_utf8_lossy(&bytes);
    let p = extract_page(&html, &ExtractOptions { hidden_lines: opts.hidden_lines });
    let skip = |reason| Ok(Loaded::Skipped(SkippedPage { id: page.id.clone(), reason }));
    if !p.has_main || p.redirect {
        return skip(SkipReason::Redirect);
    }
    if opts.english_only
        && let Some(lang) = p.lang.as_deref()
        && !(lang.is_empty() || lang.eq_ignore_ascii_case("en") || lang.to_ascii_lowercase().starts_with("en-"))
    {
        return skip(SkipReason::Translation);
    }
    if p.text.chars().count() < opts.min_chars {
        return skip(SkipReason::Stub);
    }
    let title = clean_title(p.title.as_deref(), p.first_heading.as_deref(), &page.id);
    Ok(Loaded::Doc(Document { id: page.id.clone(), book: page.book, title, text: p.text }))
}

/// The corpus: documents sorted by id.
#[derive(Debug, Clone)]
pub struct Corpus {
    root: Option<PathBuf>,
    documents: Vec<Document>,
    skipped: Vec<SkippedPage>,
    hash: OnceLock<String>,
}

impl Corpus {
    /// Loads the corpus from the default documentation directory ([`docs_dir`]`(None)`) with default options.
    pub fn load_default() -> Result<Corpus, DataError> {
        Corpus::load(docs_dir(None)?, &CorpusOptions::default())
    }

    /// Loads the corpus below the documentation root `root` (the directory holding `book/`, `reference/`, ...;
    /// a sysroot is accepted too): [`discover_pages`], then each page is converted ([`crate::html`]) and kept
    /// unless it is a redirect, a translation (with [`CorpusOptions::english_only`]), a stub (fewer than
    /// [`CorpusOptions::min_chars`] characters) or a duplicate; see [`Corpus::skipped`].
    pub fn load(root: impl AsRef<Path>, opts: &CorpusOptions) -> Result<Corpus, DataError> {
        let root = normalise(root.as_ref().to_path_buf());
        if !root.is_dir() {
            return Err(DataError::DocsNotFound { reason: format!("{} is not a directory", root.display()) });
        }
        let pages = discover_pages(&root, &opts.books)?;
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .clamp(1, pages.len().max(1));
        let next = AtomicUsize::new(0);
        let results: Vec<Vec<(usize, Result<Loaded, DataError>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut local = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(page) = pages.get(i) else { break };
                            local.push((i, load_page(page, opts)));
                        }
                        local
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("corpus worker panicked")).collect()
        });
        let mut all: Vec<_> = results.into_iter().flatten().collect();
        all.sort_by_key(|(i, _)| *i);
        let mut documents = Vec::new();
        let mut skipped = Vec::new();
        for (_, r) in all {
            match r? {
                Loaded::Doc(d) => documents.push(d),
                Loaded::Skipped(s) => skipped.push(s),
            }
        }
        dedupe(&mut documents, &mut skipped);
        skipped.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Corpus { root: Some(root), documents, skipped, hash: OnceLock::new() })
    }

    /// A corpus from documents built elsewhere (tests, other corpora). Sorted by id; of documents sharing an id,
    /// the first is kept.
    pub fn from_documents(mut documents: Vec<Document>) -> Corpus {
        documents.sort_by(|a, b| a.id.cmp(&b.id)); // stable: the first of equal ids stays first
        documents.dedup_by(|later, first| later.id == first.id);
        Corpus { root: None, documents, skipped: Vec::new(), hash: OnceLock::new() }
    }

    /// The documentation root this corpus was loaded from (`None` for [`Corpus::from_documents`]).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// All documents, sorted by id.
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// The number of documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether there are no documents.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// The document with this id.
    pub fn get(&self, id: &str) -> Option<&Document> {
        self.documents.binary_search_by(|d| d.id.as_str().cmp(id)).ok().map(|i| &self.documents[i])
    }

    /// The documents of one book, in id order.
    pub fn book(&self, book: Book) -> impl Iterator<Item = &Document> + '_ {
        self.documents.iter().filter(move |d| d.book == book)
    }

    /// The pages found but not loaded, sorted by id.
    pub fn skipped(&self) -> &[SkippedPage] {
        &self.skipped
    }

    /// The documents of one split, in id order (see [`crate::split`]).
    pub fn split(&self, split: Split, cfg: &SplitConfig) -> Vec<&Document> {
        self.documents.iter().filter(|d| cfg.assign(&d.id) == split).collect()
    }

    /// SHA-256 (lower-case hex) of the documents: ids, books, titles and texts, each length-prefixed, in id order.
    /// Any change of the docs, of the options or of the conversion changes it. Computed once.
    pub fn content_hash(&self) -> &str {
        self.hash.get_or_init(|| documents_hash(self.documents.iter()))
    }

    /// Documents and characters per book and per split.
    pub fn stats(&self, cfg: &SplitConfig) -> CorpusStats {
        let mut books: Vec<Counts<Book>> = Book::ALL.iter().map(|&b| Counts::new(b)).collect();
        let mut splits: Vec<Counts<Split>> = Split::ALL.iter().map(|&s| Counts::new(s)).collect();
        for d in &self.documents {
            let chars = d.chars();
            if let Some(b) = books.iter_mut().find(|b| b.key == d.book) {
                b.add(chars, d.text.len());
            }
            let s = cfg.assign(&d.id);
            if let Some(c) = splits.iter_mut().find(|c| c.key == s) {
                c.add(chars, d.text.len());
            }
        }
        CorpusStats { books, splits, skipped: self.skipped.len() }
    }
}

/// SHA-256 hex of a document sequence (the [`Corpus::content_hash`] scheme).
pub(crate) fn documents_hash<'a>(docs: impl Iterator<Item = &'a Document>) -> String {
    let mut h = Sha256::new();
    h.update(b"effllm-data documents v1\0");
    for d in docs {
        for field in [d.id.as_str(), d.book.dir_name(), d.title.as_str(), d.text.as_str()] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
    }
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Drops pages whose text equals another page's of the same book, preferring to drop `index.html` copies.
fn dedupe(documents: &mut Vec<Document>, skipped: &mut Vec<SkippedPage>) {
    let mut groups: HashMap<(Book, &str), Vec<usize>> = HashMap::new();
    for (i, d) in documents.iter().enumerate() {
        groups.entry((d.book, d.text.as_str())).or_default().push(i);
    }
    let mut drop = vec![false; documents.len()];
    for idx in groups.values().filter(|g| g.len() > 1) {
        let is_index = |i: usize| documents[i].id.ends_with("/index.html");
        let keep = idx.iter().copied().find(|&i| !is_index(i)).unwrap_or(idx[0]);
        for &i in idx {
            if i != keep {
                drop[i] = true;
            }
        }
    }
    let mut i = 0;
    documents.retain(|d| {
        let dropped = drop[i];
        i += 1;
        if dropped {
            skipped.push(SkippedPage { id: d.id.clone(), reason: SkipReason::Duplicate });
        }
        !dropped
    });
}

/// Document, character and byte counts of one book or split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts<K> {
    /// The book or split.
    pub key: K,
    /// Documents.
    pub documents: usize,
    /// Characters (Unicode scalar values) of text.
    pub chars: usize,
    /// UTF-8 bytes of text.
    pub bytes: usize,
}

impl<K> Counts<K> {
    fn new(key: K) -> Self {
        Counts { key, documents: 0, chars: 0, bytes: 0 }
    }

    fn add(&mut self, chars: usize, bytes: usize) {
        self.documents += 1;
        self.chars += chars;
        self.bytes += bytes;
    }
}

/// Corpus statistics ([`Corpus::stats`]); `Display` prints a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusStats {
    /// Per book, in [`Book::ALL`] order.
    pub books: Vec<Counts<Book>>,
    /// Per split, in [`Split::ALL`] order.
    pub splits: Vec<Counts<Split>>,
    /// Pages found but skipped.
    pub skipped: usize,
}

impl fmt::Display for CorpusStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<16} {:>9} {:>12} {:>12}", "book", "documents", "characters", "bytes")?;
        let mut total = Counts::new("total");
        for b in &self.books {
            writeln!(f, "{:<16} {:>9} {:>12} {:>12}", b.key.dir_name(), b.documents, b.chars, b.bytes)?;
            total.documents += b.documents;
            total.chars += b.chars;
            total.bytes += b.bytes;
        }
        writeln!(f, "{:<16} {:>9} {:>12} {:>12}", total.key, total.documents, total.chars, total.bytes)?;
        writeln!(f)?;
        writeln!(f, "{:<16} {:>9} {:>12} {:>12}", "split", "documents", "characters", "bytes")?;
        for s in &self.splits {
            writeln!(f, "{:<16} {:>9} {:>12} {:>12}", s.key.name(), s.documents, s.chars, s.bytes)?;
        }
        write!(f, "skipped pages: {}", self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_dirs() {
        assert!(skip_dir("book/first-edition"));
        assert!(skip_dir("book/2018-edition"));
        assert!(!skip_dir("book/first-edition/x"));
        assert!(!skip_dir("reference/first-edition"));
        assert!(skip_dir("reference/theme"));
        assert!(!skip_dir("reference/items"));
        assert!(!skip_dir("book"));
    }

    #[test]
    fn titles() {
        assert_eq!(clean_title(Some("E - Editions - The Rust Programming Language"), None, "x"), "E - Editions");
        assert_eq!(clean_title(Some("Introduction"), Some("Intro"), "x"), "Introduction");
        assert_eq!(clean_title(None, Some("Heading"), "x"), "Heading");
        assert_eq!(clean_title(Some(""), None, "id.html"), "id.html");
    }

    #[test]
    fn book_names_round_trip() {
        for b in Book::ALL {
            assert_eq!(b.to_string().parse::<Book>().unwrap(), b);
        }
        assert!("books".parse::<Book>().is_err());
    }

    #[test]
    fn from_documents_sorts_and_dedupes() {
        let c = Corpus::from_documents(vec![
            Document::new("b", Book::Book, "B", "two"),
            Document::new("a", Book::Book, "A", "one"),
            Document::new("b", Book::Book, "B2", "dup"),
        ]);
        assert_eq!(c.documents().iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.get("b").unwrap().text, "two");
        assert!(c.get("c").is_none());
        let h = c.content_hash().to_string();
        assert_eq!(h.len(), 64);
        assert_eq!(Corpus::from_documents(c.documents().to_vec()).content_hash(), h);
    }
}
