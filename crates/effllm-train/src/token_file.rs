//! A pre-tokenized corpus in one file, for machines without the Rust documentation or the tokenizer (the GPU
//! machine has neither internet nor the docs HTML).
//!
//! The file holds the training and validation token streams exactly as [`TrainData`] packs them (documents in
//! order, each followed by the separator), so loading it and packing with any `seq_len` gives the same rows, the
//! same shuffles and the same unigram baseline as tokenizing the corpus again.
//!
//! ## Layout (version 1, little-endian)
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `EFLMTOK\0` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | vocabulary size `V` (every token is below it) |
//! | 16 | 4 | tokenizer fingerprint length `F` (at most [`MAX_FINGERPRINT_BYTES`]) |
//! | 20 | 8 | training tokens `T` |
//! | 28 | 8 | validation tokens `E` |
//! | 36 | `F` | the tokenizer fingerprint (UTF-8; names the tokenizer and its vocabulary hash) |
//! | 36 + F | 4·T | training tokens (u32) |
//! | 36 + F + 4T | 4·E | validation tokens (u32) |
//!
//! The file length must be exactly `36 + F + 4(T + E)`. [`TokenFile::read`] checks every header field against
//! the file's length *before* allocating anything of the sizes the header claims, so a truncated or hostile file is
//! a [`TokenFileError`], never an out-of-memory abort or a panic.

use std::io::Read;
use std::path::Path;

use effllm_data::TokenizedSplit;

use crate::data::TrainData;
use crate::{Result, TrainError};

/// The first 8 bytes of a token file.
pub const TOKEN_FILE_MAGIC: [u8; 8] = *b"EFLMTOK\0";
/// The layout version this build writes and reads.
pub const TOKEN_FILE_VERSION: u32 = 1;
/// Bytes of the fixed header (before the fingerprint).
pub const HEADER_BYTES: usize = 36;
/// The longest tokenizer fingerprint accepted.
pub const MAX_FINGERPRINT_BYTES: usize = 4096;

/// What is wrong with a token file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// Fewer bytes than the fixed header.
    #[error("{len} bytes: shorter than the {HEADER_BYTES}-byte header")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// Not a token file.
    #[error("bad magic {found:02x?} (expected {TOKEN_FILE_MAGIC:02x?})")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// Another layout version.
    #[error("format version {found} (this build reads {TOKEN_FILE_VERSION})")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// A header field outside its domain.
    #[error("header field `{field}`: {msg}")]
    Header {
        /// The field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The length the header implies differs from the file's.
    #[error("the header implies {expected} bytes, the file has {found} (truncated or trailing data)")]
    Length {
        /// `36 + F + 4(T + E)` in decimal ("more than 2^64" when it overflows).
        expected: String,
        /// The file's length.
        found: u64,
    },
    /// A token id not below the vocabulary size.
    #[error("{split} token {index} is {id}, not below the vocabulary size {vocab}")]
    TokenOutOfRange {
        /// `training` or `validation`.
        split: &'static str,
        /// Its position in the split.
        index: usize,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: u32,
    },
}

/// The fixed header, decoded and checked against the file length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    vocab: u32,
    fingerprint_len: usize,
    train: usize,
    val: usize,
}

/// Decodes the fixed header and checks it against `file_len`; allocates nothing.
fn parse_header(h: &[u8; HEADER_BYTES], file_len: u64) -> std::result::Result<Header, TokenFileError> {
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&h[..8]);
    if magic != TOKEN_FILE_MAGIC {
        return Err(TokenFileError::BadMagic { found: magic });
    }
    let version = u32_at(8);
    if version != TOKEN_FILE_VERSION {
        return Err(TokenFileError::Version { found: version });
    }
    let vocab = u32_at(12);
    if vocab == 0 {
        return Err(TokenFileError::Header { field: "vocab", msg: "must be at least 1".into() });
    }
    let fingerprint_len = u32_at(16) as usize;
    if fingerprint_len > MAX_FINGERPRINT_BYTES {
        return Err(TokenFileError::Header {
            field: "fingerprint_len",
            msg: format!("{fingerprint_len} exceeds {MAX_FINGERPRINT_BYTES}"),
        });
    }
    let (train, val) = (u64_at(20), u64_at(28));
    let expected = train
        .checked_add(val)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| n.checked_add((HEADER_BYTES + fingerprint_len) as u64));
    if expected != Some(file_len) {
        return Err(TokenFileError::Length {
            expected: expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string()),
            found: file_len,
        });
    }
    // The counts fit the file, so they fit `usize` wherever the file could be read.
    let to_usize = |n: u64, field| {
        usize::try_from(n).map_err(|_| TokenFileError::Header { field, msg: format!("{n} does not fit usize") })
    };
    Ok(Header { vocab, fingerprint_len, train: to_usize(train, "train_tokens")?, val: to_usize(val, "val_tokens")? })
}

/// Decodes the body (fingerprint and tokens) after the header and checks every token against the vocabulary.
fn parse_body(h: &Header, body: &[u8]) -> std::result::Result<TokenFile, TokenFileError> {
    let (fp, tokens) = body.split_at(h.fingerprint_len);
    let fingerprint = std::str::from_utf8(fp)
        .map_err(|e| TokenFileError::Header { field: "fingerprint", msg: format!("not UTF-8: {e}") })?
        .to_string();
    let decode = |bytes: &[u8], split: &'static str| -> std::result::Result<Vec<u32>, TokenFileError> {
        let mut out = Vec::with_capacity(bytes.len() / 4);
        for (index, c) in bytes.chunks_exact(4).enumerate() {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if id >= h.vocab {
                return Err(TokenFileError::TokenOutOfRange { split, index, id, vocab: h.vocab });
            }
            out.push(id);
        }
        Ok(out)
    };
    let (train, val) = tokens.split_at(4 * h.train);
    Ok(TokenFile { vocab: h.vocab, fingerprint, train: decode(train, "training")?, val: decode(val, "validation")? })
}

/// A tokenized training/validation split with its tokenizer's identity (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFile {
    /// Vocabulary size: every token is below it.
    pub vocab: u32,
    /// The tokenizer's fingerprint ([`TrainData::fingerprint`]); checkpoints refuse to resume under another.
    pub fingerprint: String,
    /// The training stream (documents and separators).
    pub train: Vec<u32>,
    /// The validation stream.
    pub val: Vec<u32>,
}

impl TokenFile {
    /// The streams of `data` (as packed, before any shuffle).
    pub fn from_data(data: &TrainData) -> Result<TokenFile> {
        let vocab = u32::try_from(data.vocab())
            .map_err(|_| TrainError::Data(format!("vocabulary size {} does not fit u32", data.vocab())))?;
        Ok(TokenFile {
            vocab,
            fingerprint: data.fingerprint().to_string(),
            train: data.train_stream().to_vec(),
            val: data.val_stream().to_vec(),
        })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(TrainError::Data(format!(
                "tokenizer fingerprint of {} bytes exceeds {MAX_FINGERPRINT_BYTES}",
                self.fingerprint.len()
            )));
        }
        let mut out =
            Vec::with_capacity(HEADER_BYTES + self.fingerprint.len() + 4 * (self.train.len() + self.val.len()));
        out.extend_from_slice(&TOKEN_FILE_MAGIC);
        out.extend_from_slice(&TOKEN_FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.vocab.to_le_bytes());
        out.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.train.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.val.len() as u64).to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        for t in self.train.iter().chain(&self.val) {
            out.extend_from_slice(&t.to_le_bytes());
        }
        Ok(out)
    }

    /// Parses a whole file held in memory (what [`TokenFile::read`] does after its length checks; the fuzz
    /// target's entry point).
    pub fn parse(bytes: &[u8]) -> std::result::Result<TokenFile, TokenFileError> {
        let Some((head, body)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
            return Err(TokenFileError::TooShort { len: bytes.len() as u64 });
        };
        let h = parse_header(head, bytes.len() as u64)?;
        parse_body(&h, body)
    }

    /// Writes the file atomically (a temporary file renamed over `path`).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let io =
            |what: &str, e: std::io::Error| TrainError::Io { path: path.to_path_buf(), msg: format!("{what}: {e}") };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot create the directory", e))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| io("cannot write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("cannot move into place", e))
    }

    /// Reads and validates a token file: the header is checked against the file's length before the body is
    /// read, and every token against the vocabulary.
    pub fn read(path: &Path) -> Result<TokenFile> {
        let io =
            |what: &str, e: std::io::Error| TrainError::Io { path: path.to_path_buf(), msg: format!("{what}: {e}") };
        let bad = |e: TokenFileError| TrainError::TokenFile { path: path.to_path_buf(), source: e };
        let mut f = std::fs::File::open(path).map_err(|e| io("cannot open", e))?;
        let len = f.metadata().map_err(|e| io("cannot stat", e))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(bad(TokenFileError::TooShort { len }));
        }
        let mut head = [0u8; HEADER_BYTES];
        f.read_exact(&mut head).map_err(|e| io("cannot read the header", e))?;
        let h = parse_header(&head, len).map_err(bad)?;
        // The header matched the file length, so this allocation is what the file really holds.
        let mut body = vec![0u8; (len - HEADER_BYTES as u64) as usize];
        f.read_exact(&mut body).map_err(|e| io("cannot read the tokens (file changed while reading?)", e))?;
        parse_body(&h, &body).map_err(bad)
    }

    /// Packs the streams into [`TrainData`] with rows of `seq_len + 1` tokens: the same rows as the data the
    /// file was written from, for any `seq_len`.
    pub fn into_train_data(self, seq_len: usize) -> Result<TrainData> {
        let train = TokenizedSplit::from_parts(vec!["train".into()], vec![self.train]);
        let val = TokenizedSplit::from_parts(vec!["validation".into()], vec![self.val]);
        TrainData::from_documents(&train, &val, self.vocab as usize, None, seq_len, self.fingerprint)
    }
}

/// Fuzz body of the `token_file` target: [`TokenFile::parse`] on arbitrary bytes returns a file or a typed error
/// and never panics; an accepted file re-encodes to exactly the input bytes and holds only in-vocabulary tokens.
/// The `cargo fuzz` target and `tests/fuzz_seeds.rs` (over `fuzz/corpus-seeds/token_file/`) call it.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(f) = TokenFile::parse(data) {
        assert!(f.train.iter().chain(&f.val).all(|&t| t < f.vocab), "token outside the vocabulary accepted");
        let again = f.to_bytes().expect("an accepted file re-encodes");
        assert_eq!(again, data, "an accepted file is its own encoding");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> TokenFile {
        TokenFile {
            vocab: 50,
            fingerprint: "gguf:test-tokenizer:0123abcd".into(),
            train: (0..97u32).map(|i| (i * 7 + 3) % 50).collect(),
            val: (0..31u32).map(|i| (i * 11 + 1) % 50).collect(),
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("effllm-token-file-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_written_file_reads_back_and_packs_the_same_rows() {
        let f = sample();
        let path = temp("roundtrip.tokens");
        f.write(&path).unwrap();
        assert_eq!(TokenFile::read(&path).unwrap(), f);
        let data = f.clone().into_train_data(8).unwrap();
        assert_eq!(TokenFile::from_data(&data).unwrap(), f, "the streams survive packing");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn corrupted_files_are_typed_errors() {
        let good = sample().to_bytes().unwrap();
        let with = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            TokenFile::parse(&b).unwrap_err()
        };
        assert!(matches!(with(0, b"GGUF"), TokenFileError::BadMagic { .. }));
        assert_eq!(with(8, &2u32.to_le_bytes()), TokenFileError::Version { found: 2 });
        assert!(matches!(with(12, &0u32.to_le_bytes()), TokenFileError::Header { field: "vocab", .. }));
        assert!(matches!(with(16, &5000u32.to_le_bytes()), TokenFileError::Header { field: "fingerprint_len", .. }));
        // A hostile count: 2^61 tokens would overflow the length; 2^40 would allocate 4 TiB.
        assert!(matches!(with(20, &(1u64 << 61).to_le_bytes()), TokenFileError::Length { .. }));
        assert!(matches!(with(28, &(1u64 << 40).to_le_bytes()), TokenFileError::Length { .. }));
        // A token at or above the vocabulary.
        let fp = sample().fingerprint.len();
        let e = with(HEADER_BYTES + fp + 4 * 3, &50u32.to_le_bytes());
        assert_eq!(e, TokenFileError::TokenOutOfRange { split: "training", index: 3, id: 50, vocab: 50 });
        // Invalid UTF-8 in the fingerprint.
        assert!(matches!(with(HEADER_BYTES, &[0xff]), TokenFileError::Header { field: "fingerprint", .. }));
        // Truncated, and with trailing bytes.
        assert!(matches!(TokenFile::parse(&good[..good.len() - 1]).unwrap_err(), TokenFileError::Length { .. }));
        assert!(matches!(TokenFile::parse(&good[..10]).unwrap_err(), TokenFileError::TooShort { len: 10 }));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(TokenFile::parse(&long).unwrap_err(), TokenFileError::Length { .. }));
        // The same through the file reader, which checks the header before reading the body.
        let path = temp("corrupt.tokens");
        let mut hostile = good.clone();
        hostile[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &hostile).unwrap();
        let e = TokenFile::read(&path).unwrap_err();
        assert!(matches!(e, TrainError::TokenFile { source: TokenFileError::Length { .. }, .. }), "{e}");
        assert!(e.to_string().contains("corrupt.tokens"), "{e}");
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(TokenFile::read(&path).unwrap_err(), TrainError::TokenFile { .. }));
        std::fs::write(&path, &good[..7]).unwrap();
        assert!(matches!(
            TokenFile::read(&path).unwrap_err(),
            TrainError::TokenFile { source: TokenFileError::TooShort { len: 7 }, .. }
        ));
        std::fs::remove_file(&path).ok();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Random streams round-trip; every truncation and every single-byte corruption of the header is an error
        /// or a valid file, never a panic.
        #[test]
        fn round_trips_and_never_panics(
            vocab in 1u32..1000,
            train in proptest::collection::vec(any::<u32>(), 0..64),
            val in proptest::collection::vec(any::<u32>(), 0..32),
            fingerprint in "[a-z0-9:-]{0,40}",
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let f = TokenFile {
                vocab,
                fingerprint,
                train: train.iter().map(|t| t % vocab).collect(),
                val: val.iter().map(|t| t % vocab).collect(),
            };
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(TokenFile::parse(&bytes).unwrap(), f);
            let n = cut.index(bytes.len());
            prop_assert!(TokenFile::parse(&bytes[..n]).is_err());
            let mut b = bytes.clone();
            let at = flip.index(HEADER_BYTES);
            b[at] = byte;
            let _ = TokenFile::parse(&b);
        }
    }
}
