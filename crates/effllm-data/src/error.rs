//! [`DataError`] and [`CacheFormatError`]: everything that can go wrong finding, reading, tokenizing, caching and
//! packing the corpus.

use std::path::PathBuf;

/// The error a [`TextEncoder`](crate::TextEncoder) returns: any error type, boxed.
pub type EncodeError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The Rust documentation directory was not found (or `rustc --print sysroot` could not be run). The message
    /// always names the fix: `rustup component add rust-docs`, or pointing `EFFLLM_CORPUS_DIR` at a copy.
    #[error(
        "Rust documentation not found: {reason}. Install it with `rustup component add rust-docs`, \
         or set EFFLLM_CORPUS_DIR to a directory holding book/, reference/, nomicon/ and rust-by-example/"
    )]
    DocsNotFound {
        /// What was looked for and where.
        reason: String,
    },
    /// One of the requested books has no directory under the documentation root.
    #[error("book `{book}` missing: {path} is not a directory. Install the docs with `rustup component add rust-docs`")]
    BookMissing {
        /// The book's directory name.
        book: &'static str,
        /// The directory that was expected.
        path: PathBuf,
    },
    /// A file or directory could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The encoder failed on a document.
    #[error("encoder `{fingerprint}` failed on document `{document}`: {source}")]
    Encode {
        /// The encoder's fingerprint.
        fingerprint: String,
        /// The id of the document being encoded.
        document: String,
        /// The encoder's error.
        #[source]
        source: EncodeError,
    },
    /// A token cache file is corrupt, truncated, of another version, or belongs to another key.
    #[error("token cache file {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CacheFormatError,
    },
    /// No cache directory: neither an explicit one, `EFFLLM_CORPUS_CACHE`, an absolute `XDG_CACHE_HOME` nor `HOME`.
    #[error("no cache directory: set EFFLLM_CORPUS_CACHE, XDG_CACHE_HOME or HOME, or pass a directory explicitly")]
    NoCacheDir,
    /// A configuration value is out of range (the message says which and why).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Two passages of a [`PassageTable`](crate::PassageTable) map to the same `u64` key (a 40-bit document hash
    /// collision), or a document has more passages than the key can index.
    #[error("passage key problem: {0}")]
    PassageKey(String),
}

/// What is wrong with the bytes of a token cache file. Reading never panics and never allocates more than the
/// file's own size: every count is checked against the bytes present before it is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheFormatError {
    /// The file is shorter than the fixed header.
    #[error("truncated: {len} bytes, the header alone needs {needed}")]
    TruncatedHeader {
        /// The file's length.
        len: usize,
        /// The header length.
        needed: usize,
    },
    /// The first 8 bytes are not the cache magic.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// A format version this build does not read.
    #[error("unsupported version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// The reserved header field is not zero.
    #[error("reserved header field is {0}, expected 0")]
    Reserved(u32),
    /// The file was written for another key (other documents, encoder or split).
    #[error("key mismatch: the file belongs to another corpus, encoder or split")]
    KeyMismatch,
    /// The header's counts do not add up to the file's length.
    #[error(
        "counts do not match the file: {n_docs} documents, {id_bytes} id bytes and {n_tokens} tokens need {needed} \
         payload bytes, the file has {actual}"
    )]
    SizeMismatch {
        /// Declared number of documents.
        n_docs: u64,
        /// Declared size of the document-id section.
        id_bytes: u64,
        /// Declared number of tokens.
        n_tokens: u64,
        /// Payload bytes those counts need (saturated at `u64::MAX` on overflow).
        needed: u64,
        /// Payload bytes present.
        actual: u64,
    },
    /// The checksum (SHA-256 of the header fields and the payload) does not match.
    #[error("checksum mismatch: the file is corrupt")]
    ChecksumMismatch,
    /// The document-id section is malformed (a length runs past the section, or bytes are left over).
    #[error("malformed document-id section: {0}")]
    BadIds(String),
    /// A document id is not UTF-8.
    #[error("document id {index} is not UTF-8")]
    IdNotUtf8 {
        /// The document's position.
        index: usize,
    },
    /// The per-document token counts do not sum to the token count.
    #[error("per-document token counts sum to {sum}, the header says {n_tokens}")]
    CountSum {
        /// The sum (saturated at `u64::MAX`).
        sum: u64,
        /// The header's token count.
        n_tokens: u64,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}
