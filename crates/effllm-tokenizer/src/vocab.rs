//! [`GgufVocab`]: the tokenizer metadata of a GGUF file, read and validated.

use std::collections::HashMap;

use effllm_gguf::{GgufFile, Value};

use crate::error::{Result, TokenizerError};

/// `tokenizer.ggml.model`.
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`.
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`.
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`.
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`.
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
/// `tokenizer.ggml.bos_token_id`.
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id`.
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.unknown_token_id`.
pub const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
/// `tokenizer.ggml.padding_token_id`.
pub const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
/// `tokenizer.ggml.add_bos_token`.
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// `tokenizer.ggml.add_eos_token`.
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// `tokenizer.chat_template`.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// GGUF token types (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// 0: undefined.
    Undefined,
    /// 1: an ordinary vocabulary token.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token (`<|im_start|>`, ...).
    Control,
    /// 4: a user-defined token.
    UserDefined,
    /// 5: an unused slot.
    Unused,
    /// 6: a byte token (`<0x0A>`; SentencePiece vocabularies).
    Byte,
    /// Any other value.
    Other(i32),
}

impl TokenType {
    /// The type of a raw `token_type` value.
    pub fn from_raw(v: i32) -> Self {
        match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            other => TokenType::Other(other),
        }
    }

    /// Whether tokens of this type are special (types 2..=5: unknown, control, user-defined, unused; candle's
    /// rule). Special tokens are matched whole in text only when `parse_special` is on, and skipped by decoding
    /// with `skip_special`.
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Unknown | TokenType::Control | TokenType::UserDefined | TokenType::Unused)
    }
}

/// The tokenizer metadata of a GGUF file (`tokenizer.ggml.model == "gpt2"`), validated.
///
/// [`GgufVocab::from_gguf`] guarantees: at least one token, ids fit `u32`, no token string twice,
/// `token_types` (if present) as long as `tokens`, `{arch}.vocab_size` (if present) equal to the number of tokens,
/// every merge split at its first space into two vocabulary tokens whose concatenation is a vocabulary token, no
/// merge listed twice, and special ids below the vocabulary size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.tokens`: token `i` has id `i`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (one per token), if present.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` split at the first space, in priority order (first = merged first).
    pub merges: Vec<(String, String)>,
    /// `tokenizer.ggml.pre`, if present.
    pub pre: Option<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("ARRAY of {} ({} elements)", a.elem_type.name(), a.len()),
        other => other.value_type().name().to_string(),
    }
}

fn wrong(key: &str, expected: &'static str, v: &Value) -> TokenizerError {
    TokenizerError::WrongType { key: key.to_string(), expected, found: describe(v) }
}

fn opt_str<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a str>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| wrong(key, "STRING", v)),
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong(key, "BOOL", v)),
    }
}

fn str_array<'a>(f: &'a GgufFile, key: &'static str) -> Result<Option<Vec<&'a str>>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().and_then(|a| a.as_strs()).map(Some).ok_or_else(|| wrong(key, "ARRAY of STRING", v)),
    }
}

fn special_id(f: &GgufFile, key: &'static str, vocab_size: usize) -> Result<Option<u32>> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let id = v.as_i64().ok_or_else(|| wrong(key, "an integer type", v))?;
    match usize::try_from(id) {
        Ok(i) if i < vocab_size => Ok(Some(i as u32)),
        _ => Err(TokenizerError::SpecialIdOutOfRange { key, id, vocab_size }),
    }
}

impl GgufVocab {
    /// Reads and validates the tokenizer metadata of `f`. Each malformed case is its own [`TokenizerError`].
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = opt_str(f, KEY_MODEL)?.ok_or(TokenizerError::MissingKey { key: KEY_MODEL })?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { model: model.to_string() });
        }
        let tokens = str_array(f, KEY_TOKENS)?.ok_or(TokenizerError::MissingKey { key: KEY_TOKENS })?;
        if tokens.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::VocabTooLarge { len: tokens.len() });
        }
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = index.insert(t, i as u32) {
                return Err(TokenizerError::DuplicateToken { token: t.to_string(), first, second: i as u32 });
            }
        }

        let token_types = match f.get(KEY_TOKEN_TYPE) {
            None => None,
            Some(v) => {
                let raw =
                    v.as_array().and_then(|a| a.as_i64s()).ok_or_else(|| wrong(KEY_TOKEN_TYPE, "ARRAY of INT32", v))?;
                if raw.len() != tokens.len() {
                    return Err(TokenizerError::TokenTypeLength { tokens: tokens.len(), token_types: raw.len() });
                }
                let types = raw.iter().map(|&t| i32::try_from(t)).collect::<Result<Vec<i32>, _>>();
                Some(types.map_err(|_| wrong(KEY_TOKEN_TYPE, "ARRAY of INT32", v))?)
            }
        };

        if let Some(arch) = opt_str(f, "general.architecture")? {
            let key = format!("{arch}.vocab_size");
            if let Some(v) = f.get(&key) {
                let declared = v.as_u64().ok_or_else(|| wrong(&key, "an unsigned integer type", v))?;
                if declared != tokens.len() as u64 {
                    return Err(TokenizerError::VocabSizeMismatch { key, declared, tokens: tokens.len() });
                }
            }
        }

        let raw_merges = str_array(f, KEY_MERGES)?.ok_or(TokenizerError::MissingKey { key: KEY_MERGES })?;
        let mut merges = Vec::with_capacity(raw_merges.len());
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(raw_merges.len());
        let mut joined = String::new();
        for (i, m) in raw_merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(TokenizerError::MalformedMerge { index: i, merge: m.to_string() });
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            for part in [a, b, joined.as_str()] {
                if !index.contains_key(part) {
                    return Err(TokenizerError::MergeNotInVocab {
                        index: i,
                        merge: m.to_string(),
                        part: part.to_string(),
                    });
                }
            }
            if let Some(first) = seen.insert(m, i) {
                return Err(TokenizerError::DuplicateMerge { index: i, first, merge: m.to_string() });
            }
            merges.push((a.to_string(), b.to_string()));
        }

        let n = tokens.len();
        Ok(GgufVocab {
            pre: opt_str(f, KEY_PRE)?.map(str::to_string),
            bos_id: special_id(f, KEY_BOS, n)?,
            eos_id: special_id(f, KEY_EOS, n)?,
            unk_id: special_id(f, KEY_UNK, n)?,
            pad_id: special_id(f, KEY_PAD, n)?,
            add_bos: opt_bool(f, KEY_ADD_BOS)?,
            add_eos: opt_bool(f, KEY_ADD_EOS)?,
            chat_template: opt_str(f, KEY_CHAT_TEMPLATE)?.map(str::to_string),
            tokens: tokens.into_iter().map(str::to_string).collect(),
            token_types,
            merges,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens (never true for a validated vocabulary).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The type of token `id` ([`TokenType::Normal`] when the file has no `token_type`).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let i = usize::try_from(id).ok().filter(|&i| i < self.tokens.len())?;
        Some(match &self.token_types {
            Some(t) => TokenType::from_raw(t[i]),
            None => TokenType::Normal,
        })
    }

    /// Ids of the special tokens, ascending: types 2..=5 ([`TokenType::is_special`]) plus the BOS, EOS, unknown
    /// and padding ids.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = match &self.token_types {
            Some(t) => (0..t.len() as u32).filter(|&i| TokenType::from_raw(t[i as usize]).is_special()).collect(),
            None => Vec::new(),
        };
        ids.extend([self.bos_id, self.eos_id, self.unk_id, self.pad_id].into_iter().flatten());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
