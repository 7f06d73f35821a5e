//! [`TokenizerError`]: every way building or using a tokenizer can fail.

/// Errors from building a tokenizer out of GGUF metadata, encoding, decoding and chat templating.
///
/// Every malformed-metadata case has its own variant naming the key (and index) at fault; nothing in this crate
/// panics on bad metadata.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error("missing metadata key `{key}`")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A metadata key holds a value of the wrong type.
    #[error("metadata key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What this crate expects (gguf-py type names: `STRING`, `BOOL`, `ARRAY of STRING`, ...).
        expected: &'static str,
        /// What the file holds (e.g. `UINT32`, `ARRAY of INT32 (3 elements)`).
        found: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family this crate does not build (only `"gpt2"`, byte-level BPE).
    #[error("unsupported tokenizer model `{model}` (only byte-level BPE, `gpt2`, is supported)")]
    UnsupportedModel {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// `tokenizer.ggml.pre` is absent and no pre-tokenizer was supplied: this crate refuses to guess.
    #[error("`tokenizer.ggml.pre` is missing; pass an explicit pre-tokenizer instead of guessing")]
    MissingPreTokenizer,
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate has no table entry for.
    #[error("unknown pre-tokenizer `{pre}` (known: {known}); pass an explicit pre-tokenizer")]
    UnknownPreTokenizer {
        /// The value of `tokenizer.ggml.pre`.
        pre: String,
        /// The names this crate knows, comma-separated.
        known: String,
    },
    /// `tokenizer.ggml.tokens` is empty.
    #[error("`tokenizer.ggml.tokens` is empty")]
    EmptyVocab,
    /// More tokens than `u32` ids can address.
    #[error("vocabulary of {len} tokens does not fit u32 ids")]
    VocabTooLarge {
        /// Number of tokens.
        len: usize,
    },
    /// The same token string appears at two ids.
    #[error("token {token:?} appears twice in `tokenizer.ggml.tokens`, at ids {first} and {second}")]
    DuplicateToken {
        /// The token string.
        token: String,
        /// Its first id.
        first: u32,
        /// Its second id.
        second: u32,
    },
    /// `tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length.
    #[error("`tokenizer.ggml.token_type` has {token_types} entries but `tokenizer.ggml.tokens` has {tokens}")]
    TokenTypeLength {
        /// Number of tokens.
        tokens: usize,
        /// Number of token types.
        token_types: usize,
    },
    /// `{arch}.vocab_size` disagrees with the number of tokens.
    #[error("`{key}` = {declared} but `tokenizer.ggml.tokens` has {tokens} tokens")]
    VocabSizeMismatch {
        /// The key (e.g. `llama.vocab_size`).
        key: String,
        /// Its value.
        declared: u64,
        /// Number of tokens.
        tokens: usize,
    },
    /// A merge rule has no space separating its two halves.
    #[error("merge {index} ({merge:?}) has no space separating its two halves")]
    MalformedMerge {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge string.
        merge: String,
    },
    /// The same merge rule appears twice (its priority would be ambiguous).
    #[error("merge {index} ({merge:?}) repeats merge {first}")]
    DuplicateMerge {
        /// Position of the repetition in `tokenizer.ggml.merges`.
        index: usize,
        /// Position of the first occurrence.
        first: usize,
        /// The merge string.
        merge: String,
    },
    /// A merge rule's half, or the concatenation of its halves, is not a token of the vocabulary.
    #[error("merge {index} ({merge:?}): {part:?} is not in the vocabulary")]
    MergeNotInVocab {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge string.
        merge: String,
        /// The missing string (left half, right half, or their concatenation).
        part: String,
    },
    /// A special-token id key (`tokenizer.ggml.bos_token_id`, ...) is negative or not below the vocabulary size.
    #[error("`{key}` = {id} is not a token id (vocabulary size {vocab_size})")]
    SpecialIdOutOfRange {
        /// The key.
        key: &'static str,
        /// The value found.
        id: i64,
        /// Number of tokens.
        vocab_size: usize,
    },
    /// BOS (or EOS) insertion was requested but the file defines no BOS (or EOS) id.
    #[error("{which} insertion requested but `{key}` is not set")]
    MissingSpecialId {
        /// `"BOS"` or `"EOS"`.
        which: &'static str,
        /// The key that would define it.
        key: &'static str,
    },
    /// A token id passed to decoding is not below the vocabulary size.
    #[error("token id {id} out of range (vocabulary size {vocab_size})")]
    IdOutOfRange {
        /// The id.
        id: u32,
        /// Number of tokens.
        vocab_size: usize,
    },
    /// The `tokenizers` library reported an error (building the model, encoding or decoding).
    #[error("tokenizers: {0}")]
    Backend(String),
    /// The file has no `tokenizer.chat_template`.
    #[error("the file has no `tokenizer.chat_template`")]
    NoChatTemplate,
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

impl TokenizerError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        TokenizerError::Backend(e.to_string())
    }
}

/// `Result` with [`TokenizerError`].
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
