//! [`DecodeStream`]: incremental decoding for generation.

use crate::error::{Result, TokenizerError};
use crate::tokenizer::GgufTokenizer;

/// Decodes ids one at a time, emitting text only when the bytes so far form complete UTF-8.
///
/// Byte-level tokens can end inside a multi-byte character (an emoji is often two or three tokens), so printing
/// each token's text on its own shows U+FFFD garbage. The stream keeps the bytes of an incomplete character until
/// the tokens that complete it arrive. A byte sequence that can never become valid UTF-8 is emitted as U+FFFD at
/// once, as `String::from_utf8_lossy` would; [`finish`](Self::finish) flushes a trailing incomplete character the
/// same way. The concatenation of all [`step`](Self::step) outputs and `finish` equals
/// [`GgufTokenizer::decode`] of the same ids.
///
/// ```
/// # fn run(tok: &effllm_tokenizer::GgufTokenizer, ids: &[u32]) -> Result<(), effllm_tokenizer::TokenizerError> {
/// let mut stream = tok.decode_stream(true);
/// for &id in ids {
///     if let Some(text) = stream.step(id)? {
///         print!("{text}");
///     }
/// }
/// print!("{}", stream.finish());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DecodeStream<'a> {
    tok: &'a GgufTokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl<'a> DecodeStream<'a> {
    pub(crate) fn new(tok: &'a GgufTokenizer, skip_special: bool) -> Self {
        DecodeStream { tok, skip_special, pending: Vec::new() }
    }

    /// Feeds one id; returns the text it completes, if any. An id outside the vocabulary is
    /// [`TokenizerError::IdOutOfRange`] and leaves the stream unchanged.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        let bytes =
            self.tok.token_bytes(id).ok_or(TokenizerError::IdOutOfRange { id, vocab_size: self.tok.vocab_size() })?;
        if self.skip_special && self.tok.is_special(id) {
            return Ok(None);
        }
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes are UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..start + valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok((!out.is_empty()).then_some(out))
    }

    /// The bytes held back as an incomplete character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: the held-back bytes as text (U+FFFD for an incomplete character; empty if none).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
