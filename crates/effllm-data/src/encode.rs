//! [`TextEncoder`]: the one thing this crate needs from a tokenizer, so that it depends on none.

use std::sync::Arc;

use crate::error::EncodeError;

/// Turns text into token ids. Implement it for a tokenizer (or wrap a closure in [`FnEncoder`]).
///
/// `fingerprint` must change whenever `encode` could give different ids for the same text (another vocabulary,
/// merges, normalisation or special-token handling): it is part of the token cache key, so a stale fingerprint
/// means stale cached tokens. A hash of the tokenizer's files plus its options is a good fingerprint.
pub trait TextEncoder {
    /// The token ids of `text` (no BOS/EOS added unless the encoder always adds them).
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError>;

    /// A string identifying the encoder and everything that affects its output.
    fn fingerprint(&self) -> String;
}

impl<T: TextEncoder + ?Sized> TextEncoder for &T {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        (**self).encode(text)
    }

    fn fingerprint(&self) -> String {
        (**self).fingerprint()
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Box<T> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        (**self).encode(text)
    }

    fn fingerprint(&self) -> String {
        (**self).fingerprint()
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Arc<T> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        (**self).encode(text)
    }

    fn fingerprint(&self) -> String {
        (**self).fingerprint()
    }
}

/// A closure as a [`TextEncoder`], with the fingerprint given explicitly.
///
/// ```
/// use effllm_data::{FnEncoder, TextEncoder};
/// let words = FnEncoder::new("word-lengths-v1", |t: &str| Ok(t.split_whitespace().map(|w| w.len() as u32).collect()));
/// assert_eq!(words.encode("a bb ccc").unwrap(), [1, 2, 3]);
/// assert_eq!(words.fingerprint(), "word-lengths-v1");
/// ```
#[derive(Clone)]
pub struct FnEncoder<F> {
    fingerprint: String,
    f: F,
}

impl<F> std::fmt::Debug for FnEncoder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnEncoder").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl<F> FnEncoder<F>
where
    F: Fn(&str) -> Result<Vec<u32>, EncodeError>,
{
    /// Wraps `f` with the fingerprint `fingerprint`.
    pub fn new(fingerprint: impl Into<String>, f: F) -> Self {
        FnEncoder { fingerprint: fingerprint.into(), f }
    }
}

impl<F> TextEncoder for FnEncoder<F>
where
    F: Fn(&str) -> Result<Vec<u32>, EncodeError>,
{
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        (self.f)(text)
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// The UTF-8 bytes of the text as ids 0–255: a tokenizer-free encoder for tests, examples and byte-level models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteEncoder;

impl TextEncoder for ByteEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn fingerprint(&self) -> String {
        "effllm-data/utf8-bytes-v1".to_string()
    }
}
