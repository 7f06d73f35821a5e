//! Tokenized documents ([`TokenizedSplit`]) and their on-disk cache ([`TokenCache`]).
//!
//! # Cache layout
//!
//! One file per (documents, encoder, label) — or per (`(id, text)` items, encoder, label) for passages and other
//! texts ([`CacheKey::for_texts`]):
//!
//! ```text
//! <cache dir>/<label>-<first 24 hex digits of the key>.tok
//!
//! key = SHA-256("effllm-data token cache v1\0" || docs hash || fingerprint || label)   (each length-prefixed)
//! docs hash = SHA-256 of the documents' ids, books, titles and texts (Corpus::content_hash's scheme)
//! ```
//!
//! The cache directory is, in this order: the one given to [`TokenCache::new`]; `$EFFLLM_CORPUS_CACHE`
//! ([`CACHE_DIR_ENV`]); `$XDG_CACHE_HOME/effllm/corpus` if `XDG_CACHE_HOME` is absolute; `$HOME/.cache/effllm/corpus`.
//!
//! # File format (version 1, all integers little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  magic "EFFLLMTK"
//!      8     4  version = 1
//!     12     4  reserved = 0
//!     16    32  key (SHA-256, as above)
//!     48     8  n_docs
//!     56     8  n_tokens
//!     64     8  id_bytes: size of the document-id section
//!     72    32  checksum: SHA-256 of bytes 0..72 followed by the payload
//!    104        payload:
//!               document ids   n_docs × (len: u32, UTF-8 bytes[len])        = id_bytes bytes
//!               token counts   n_docs × u64
//!               tokens         n_tokens × u32
//! ```
//!
//! Reading ([`TokenizedSplit::from_bytes`]) checks, before allocating anything, that the header's counts add up
//! to exactly the bytes present (checked arithmetic), then the checksum (which covers the header too, so any
//! corrupted byte is detected), then every id length against
//! its section and the counts' sum against `n_tokens`. Any failure is a typed [`CacheFormatError`], never a panic;
//! memory is bounded by the file's size. [`TokenCache::load_or_build`] rebuilds a bad file and says so
//! ([`CacheStatus::Rebuilt`]). Writes go to a temporary file in the same directory, are synced, then renamed over
//! the final name, so readers see either the old file or the complete new one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::corpus::{Corpus, Document, documents_hash, hex};
use crate::encode::TextEncoder;
use crate::error::{CacheFormatError, DataError};
use crate::pack::{EvalWindow, PackConfig, PackedSequences, sliding_windows};
use crate::split::{Split, SplitConfig};

/// Environment variable naming the token cache directory.
pub const CACHE_DIR_ENV: &str = "EFFLLM_CORPUS_CACHE";
/// The file magic.
pub const MAGIC: [u8; 8] = *b"EFFLLMTK";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 104;

/// Offset of the checksum field in the header.
const CHECKSUM_AT: usize = 72;

/// SHA-256 of the header before the checksum field and the payload.
fn checksum(header: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&header[..CHECKSUM_AT]);
    h.update(payload);
    h.finalize().into()
}

/// The token ids of a list of documents, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedSplit {
    doc_ids: Vec<String>,
    /// `offsets[i]..offsets[i + 1]` are document `i`'s tokens; `offsets.len() == doc_ids.len() + 1`.
    offsets: Vec<usize>,
    tokens: Vec<u32>,
}

impl Default for TokenizedSplit {
    /// No documents.
    fn default() -> Self {
        TokenizedSplit { doc_ids: Vec::new(), offsets: vec![0], tokens: Vec::new() }
    }
}

impl TokenizedSplit {
    /// From per-document token lists. Panics if the lengths differ.
    pub fn from_parts(doc_ids: Vec<String>, per_doc: Vec<Vec<u32>>) -> Self {
        assert_eq!(doc_ids.len(), per_doc.len(), "one token list per document id");
        let mut offsets = Vec::with_capacity(per_doc.len() + 1);
        offsets.push(0);
        let mut tokens = Vec::with_capacity(per_doc.iter().map(Vec::len).sum());
        for t in per_doc {
            tokens.extend_from_slice(&t);
            offsets.push(tokens.len());
        }
        TokenizedSplit { doc_ids, offsets, tokens }
    }

    /// Encodes the documents' texts, in parallel over all cores, keeping the order.
    pub fn encode<E: TextEncoder + Sync + ?Sized>(docs: &[&Document], encoder: &E) -> Result<Self, DataError> {
        let items: Vec<(&str, &str)> = docs.iter().map(|d| (d.id.as_str(), d.text.as_str())).collect();
        Self::encode_texts(&items, encoder)
    }

    /// Encodes `(id, text)` items (passages, prompts, any texts), in parallel over all cores, keeping the order.
    /// On failure the error names the first failing item's id.
    pub fn encode_texts<E: TextEncoder + Sync + ?Sized>(
        items: &[(&str, &str)],
        encoder: &E,
    ) -> Result<Self, DataError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, items.len().max(1));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let mut results: Vec<(usize, Result<Vec<u32>, DataError>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut local = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(id, text)) = items.get(i) else { break };
                            let r = encoder.encode(text).map_err(|source| DataError::Encode {
                                fingerprint: encoder.fingerprint(),
                                document: id.to_string(),
                                source,
                            });
                            if r.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            local.push((i, r));
                        }
                        local
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("encoder thread panicked")).collect()
        });
        results.sort_by_key(|(i, _)| *i);
        let mut per_item = Vec::with_capacity(items.len());
        for (_, r) in results {
            per_item.push(r?);
        }
        // Without an error every index was claimed and encoded exactly once.
        debug_assert_eq!(per_item.len(), items.len());
        Ok(Self::from_parts(items.iter().map(|(id, _)| id.to_string()).collect(), per_item))
    }

    /// Number of documents.
    pub fn num_documents(&self) -> usize {
        self.doc_ids.len()
    }

    /// Total number of tokens.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The id of document `i`.
    pub fn doc_id(&self, i: usize) -> &str {
        &self.doc_ids[i]
    }

    /// The document ids, in order.
    pub fn doc_ids(&self) -> &[String] {
        &self.doc_ids
    }

    /// The tokens of document `i`.
    pub fn document(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    /// `(document id, tokens)` in order.
    pub fn documents(&self) -> impl ExactSizeIterator<Item = (&str, &[u32])> + '_ {
        (0..self.doc_ids.len()).map(move |i| (self.doc_ids[i].as_str(), self.document(i)))
    }

    /// All tokens, documents concatenated without separators.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Packs the documents into fixed-length sequences ([`PackedSequences::new`]).
    pub fn pack(&self, cfg: &PackConfig) -> Result<PackedSequences, DataError> {
        PackedSequences::new((0..self.num_documents()).map(|i| self.document(i)), cfg)
    }

    /// Sliding perplexity windows over every document ([`sliding_windows`]): `(document index, window)`.
    pub fn perplexity_windows(
        &self,
        max_len: usize,
        stride: usize,
    ) -> Result<impl Iterator<Item = (usize, EvalWindow<'_>)> + '_, DataError> {
        sliding_windows(&[], max_len, stride)?; // validate once
        Ok((0..self.num_documents()).flat_map(move |i| {
            sliding_windows(self.document(i), max_len, stride).expect("validated").map(move |w| (i, w))
        }))
    }

    /// The cache file bytes (see the module docs) for `key`.
    pub fn to_bytes(&self, key: &CacheKey) -> Vec<u8> {
        let id_bytes: usize = self.doc_ids.iter().map(|s| 4 + s.len()).sum();
        let mut payload = Vec::with_capacity(id_bytes + 8 * self.doc_ids.len() + 4 * self.tokens.len());
        for id in &self.doc_ids {
            let len = u32::try_from(id.len()).expect("document id shorter than 4 GiB");
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(id.as_bytes());
        }
        for w in self.offsets.windows(2) {
            payload.extend_from_slice(&((w[1] - w[0]) as u64).to_le_bytes());
        }
        for &t in &self.tokens {
            payload.extend_from_slice(&t.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&key.digest);
        out.extend_from_slice(&(self.doc_ids.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        out.extend_from_slice(&(id_bytes as u64).to_le_bytes());
        let checksum = checksum(&out, &payload);
        out.extend_from_slice(&checksum);
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&payload);
        out
    }

    /// Parses cache file bytes, checking the key when `expected` is given. Never panics; allocates at most
    /// about the input's size.
    pub fn from_bytes(bytes: &[u8], expected: Option<&CacheKey>) -> Result<Self, CacheFormatError> {
        if bytes.len() < HEADER_LEN {
            return Err(CacheFormatError::TruncatedHeader { len: bytes.len(), needed: HEADER_LEN });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let magic: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(CacheFormatError::BadMagic { found: magic });
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(CacheFormatError::UnsupportedVersion { found: version, supported: VERSION });
        }
        let reserved = u32_at(12);
        if reserved != 0 {
            return Err(CacheFormatError::Reserved(reserved));
        }
        if let Some(k) = expected
            && bytes[16..48] != k.digest
        {
            return Err(CacheFormatError::KeyMismatch);
        }
        let (n_docs, n_tokens, id_bytes) = (u64_at(48), u64_at(56), u64_at(64));
        let payload = &bytes[HEADER_LEN..];
        let actual = payload.len() as u64;
        let needed = n_docs
            .checked_mul(8)
            .and_then(|c| c.checked_add(id_bytes))
            .and_then(|c| n_tokens.checked_mul(4).and_then(|t| t.checked_add(c)))
            .unwrap_or(u64::MAX);
        if needed != actual {
            return Err(CacheFormatError::SizeMismatch { n_docs, id_bytes, n_tokens, needed, actual });
        }
        if checksum(&bytes[..CHECKSUM_AT], payload)[..] != bytes[CHECKSUM_AT..HEADER_LEN] {
            return Err(CacheFormatError::ChecksumMismatch);
        }
        // From here every count is bounded by the payload's length, which is in memory.
        let (id_bytes, n_docs, n_tokens) = (id_bytes as usize, n_docs as usize, n_tokens as usize);
        if n_docs > id_bytes / 4 {
            return Err(CacheFormatError::BadIds(format!("{n_docs} ids cannot fit {id_bytes} bytes")));
        }
        let mut ids_section = &payload[..id_bytes];
        let mut doc_ids = Vec::with_capacity(n_docs);
        for index in 0..n_docs {
            let Some((len, rest)) = ids_section.split_first_chunk::<4>() else {
                return Err(CacheFormatError::BadIds(format!("id {index}: length runs past the section")));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > rest.len() {
                return Err(CacheFormatError::BadIds(format!("id {index}: {len} bytes, {} left", rest.len())));
            }
            let (id, rest) = rest.split_at(len);
            let id = std::str::from_utf8(id).map_err(|_| CacheFormatError::IdNotUtf8 { index })?;
            doc_ids.push(id.to_string());
            ids_section = rest;
        }
        if !ids_section.is_empty() {
            return Err(CacheFormatError::BadIds(format!("{} bytes left after the ids", ids_section.len())));
        }
        let counts = &payload[id_bytes..id_bytes + 8 * n_docs];
        let mut offsets = Vec::with_capacity(n_docs + 1);
        offsets.push(0usize);
        let mut sum: u64 = 0;
        for c in counts.chunks_exact(8) {
            sum = sum.saturating_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
            if sum > n_tokens as u64 {
                return Err(CacheFormatError::CountSum { sum, n_tokens: n_tokens as u64 });
            }
            offsets.push(sum as usize);
        }
        if sum != n_tokens as u64 {
            return Err(CacheFormatError::CountSum { sum, n_tokens: n_tokens as u64 });
        }
        let tokens = payload[id_bytes + 8 * n_docs..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(TokenizedSplit { doc_ids, offsets, tokens })
    }
}

/// A token cache key: SHA-256 of (documents hash, encoder fingerprint, label), and the label for file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The SHA-256 digest.
    pub digest: [u8; 32],
    /// The label (sanitised to `[A-Za-z0-9._-]`, at most 64 bytes).
    pub label: String,
}

impl CacheKey {
    /// The key of (documents hash, fingerprint, label); see the module docs.
    pub fn new(docs_hash: &str, fingerprint: &str, label: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"effllm-data token cache v1\0");
        for field in [docs_hash, fingerprint, label] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
            .take(64)
            .collect();
        CacheKey { digest: h.finalize().into(), label }
    }

    /// The key of a document list, encoder and label.
    pub fn for_documents(docs: &[&Document], encoder: &(impl TextEncoder + ?Sized), label: &str) -> Self {
        CacheKey::new(&documents_hash(docs.iter().copied()), &encoder.fingerprint(), label)
    }

    /// The key of `(id, text)` items, encoder and label (the items hash is SHA-256 of
    /// `"effllm-data texts v1\0"` and each id and text, length-prefixed).
    pub fn for_texts(items: &[(&str, &str)], encoder: &(impl TextEncoder + ?Sized), label: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"effllm-data texts v1\0");
        for (id, text) in items {
            for field in [id, text] {
                h.update((field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
        }
        CacheKey::new(&hex(&h.finalize()), &encoder.fingerprint(), label)
    }

    /// The file name: `<label>-<24 hex digits>.tok`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.tok", self.label, &hex(&self.digest)[..24])
    }
}

/// How [`TokenCache::load_or_build`] got its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from a valid cache file.
    Hit,
    /// No cache file: encoded and written.
    Built,
    /// The cache file was bad (the error says how): encoded and rewritten.
    Rebuilt(CacheFormatError),
}

/// A directory of token cache files (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCache {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TokenCache {
    /// A cache in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TokenCache { dir: dir.into() }
    }

    /// The default directory: `$EFFLLM_CORPUS_CACHE`, else `$XDG_CACHE_HOME/effllm/corpus` (absolute
    /// `XDG_CACHE_HOME` only), else `$HOME/.cache/effllm/corpus`.
    pub fn default_dir() -> Result<PathBuf, DataError> {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(d) = var(CACHE_DIR_ENV) {
            return Ok(d);
        }
        let base = var("XDG_CACHE_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .ok_or(DataError::NoCacheDir)?;
        Ok(base.join("effllm").join("corpus"))
    }

    /// A cache in [`TokenCache::default_dir`].
    pub fn at_default() -> Result<Self, DataError> {
        Ok(TokenCache::new(Self::default_dir()?))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a key.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Reads the file of `key`: `Ok(None)` if there is none, an error if it is unreadable or bad.
    pub fn load(&self, key: &CacheKey) -> Result<Option<TokenizedSplit>, DataError> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DataError::io(path, e)),
        };
        TokenizedSplit::from_bytes(&bytes, Some(key)).map(Some).map_err(|source| DataError::Cache { path, source })
    }

    /// Writes the file of `key` atomically (temporary file, sync, rename); returns its path.
    pub fn store(&self, key: &CacheKey, data: &TokenizedSplit) -> Result<PathBuf, DataError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        let path = self.path(key);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.{}.tmp",
            key.file_name(),
            std::process::id(),
            nanos,
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data.to_bytes(key))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DataError::io(&path, e)
        })?;
        Ok(path)
    }

    /// The tokens of `docs` under `encoder`: from the cache if its file is valid, else encoded and written (a bad
    /// file is replaced and reported as [`CacheStatus::Rebuilt`]). I/O errors other than a missing file are
    /// returned.
    pub fn load_or_build<E: TextEncoder + Sync + ?Sized>(
        &self,
        docs: &[&Document],
        label: &str,
        encoder: &E,
    ) -> Result<(TokenizedSplit, CacheStatus), DataError> {
        let key = CacheKey::for_documents(docs, encoder, label);
        self.load_or_build_key(&key, encoder, |e| TokenizedSplit::encode(docs, e))
    }

    /// [`TokenCache::load_or_build`] for `(id, text)` items, such as passages
    /// ([`PassageTable::tokenize`](crate::PassageTable::tokenize)).
    pub fn load_or_build_texts<E: TextEncoder + Sync + ?Sized>(
        &self,
        items: &[(&str, &str)],
        label: &str,
        encoder: &E,
    ) -> Result<(TokenizedSplit, CacheStatus), DataError> {
        let key = CacheKey::for_texts(items, encoder, label);
        self.load_or_build_key(&key, encoder, |e| TokenizedSplit::encode_texts(items, e))
    }

    fn load_or_build_key<E: TextEncoder + Sync + ?Sized>(
        &self,
        key: &CacheKey,
        encoder: &E,
        build: impl FnOnce(&E) -> Result<TokenizedSplit, DataError>,
    ) -> Result<(TokenizedSplit, CacheStatus), DataError> {
        let status = match self.load(key) {
            Ok(Some(t)) => return Ok((t, CacheStatus::Hit)),
            Ok(None) => CacheStatus::Built,
            Err(DataError::Cache { source, .. }) => CacheStatus::Rebuilt(source),
            Err(e) => return Err(e),
        };
        let data = build(encoder)?;
        self.store(key, &data)?;
        Ok((data, status))
    }

    /// The tokens of one split of `corpus` ([`TokenCache::load_or_build`] with the label `<split>`).
    pub fn split<E: TextEncoder + Sync + ?Sized>(
        &self,
        corpus: &Corpus,
        split: Split,
        cfg: &SplitConfig,
        encoder: &E,
    ) -> Result<(TokenizedSplit, CacheStatus), DataError> {
        cfg.validate()?;
        self.load_or_build(&corpus.split(split, cfg), split.name(), encoder)
    }
}
