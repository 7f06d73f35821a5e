//! Pre-tokenizers: the explicit table from `tokenizer.ggml.pre` values to split rules.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Result, TokenizerError};

/// GPT-2's pre-tokenizer regex (as in `tokenizers`' ByteLevel): contractions, optional space + letters,
/// optional space + numbers, optional space + other symbols, whitespace not followed by non-whitespace, whitespace.
///
/// The `\s+(?!\S)` look-ahead needs `fancy-regex`; the `regex` crate cannot express it.
pub const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The digit-isolating split that runs before [`GPT2_REGEX`] for `smollm` (and `starcoder`): every `\p{N}`
/// character (any Unicode number, not only ASCII digits) becomes its own piece.
pub const DIGIT_REGEX: &str = r"\p{N}";

/// A pre-tokenizer this crate knows by name (the table of [`PreTokenizerKind::from_pre`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreTokenizerKind {
    /// `Sequence[Split(GPT2_REGEX, Isolated), ByteLevel(add_prefix_space = false, use_regex = false)]`:
    /// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`.
    Gpt2,
    /// `Sequence[Split(\p{N}, Isolated), Split(GPT2_REGEX, Isolated), ByteLevel(add_prefix_space = false,
    /// use_regex = false)]`: llama.cpp's `LLAMA_VOCAB_PRE_TYPE_SMOLLM` / `STARCODER`, whose regex list is
    /// `["\p{N}", GPT-2 regex]`.
    DigitsThenGpt2,
}

/// `tokenizer.ggml.pre` values this crate maps, and what they map to. Anything else is
/// [`TokenizerError::UnknownPreTokenizer`].
pub const PRE_TOKENIZER_TABLE: &[(&str, PreTokenizerKind)] = &[
    ("smollm", PreTokenizerKind::DigitsThenGpt2),
    ("starcoder", PreTokenizerKind::DigitsThenGpt2),
    ("gpt-2", PreTokenizerKind::Gpt2),
];

impl PreTokenizerKind {
    /// The table entry for a `tokenizer.ggml.pre` value ([`PRE_TOKENIZER_TABLE`]).
    pub fn from_pre(pre: &str) -> Option<Self> {
        PRE_TOKENIZER_TABLE.iter().find(|(name, _)| *name == pre).map(|&(_, kind)| kind)
    }

    /// Like [`from_pre`](Self::from_pre), with [`TokenizerError::UnknownPreTokenizer`] for unknown names.
    pub fn from_pre_checked(pre: &str) -> Result<Self> {
        Self::from_pre(pre).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
            pre: pre.to_string(),
            known: PRE_TOKENIZER_TABLE.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })
    }

    /// The split regexes applied in order, each with the `Isolated` behaviour (every match and every gap
    /// between matches becomes a piece; later regexes split the pieces of earlier ones).
    pub fn split_regexes(self) -> &'static [&'static str] {
        match self {
            PreTokenizerKind::Gpt2 => &[GPT2_REGEX],
            PreTokenizerKind::DigitsThenGpt2 => &[DIGIT_REGEX, GPT2_REGEX],
        }
    }

    /// The `tokenizers` pre-tokenizer: the [`split_regexes`](Self::split_regexes) then the byte-level mapping.
    pub fn build(self) -> Result<PreTokenizerWrapper> {
        let mut seq: Vec<PreTokenizerWrapper> = Vec::with_capacity(3);
        for re in self.split_regexes() {
            let split = Split::new(SplitPattern::Regex((*re).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(TokenizerError::backend)?;
            seq.push(split.into());
        }
        seq.push(ByteLevel::new(false, false, false).into());
        Ok(Sequence::new(seq).into())
    }
}

/// Which pre-tokenizer [`GgufTokenizer::from_gguf`](crate::GgufTokenizer::from_gguf) uses.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum PreTokenizerChoice {
    /// Look up `tokenizer.ggml.pre` in [`PRE_TOKENIZER_TABLE`]; missing or unknown is an error.
    #[default]
    FromMetadata,
    /// A known kind, whatever the metadata says.
    Kind(PreTokenizerKind),
    /// A caller-built `tokenizers` pre-tokenizer (it must do the byte-level mapping itself, e.g. end with
    /// `ByteLevel(add_prefix_space = false, use_regex = false)`, since the vocabulary is byte-level).
    Override(PreTokenizerWrapper),
}
