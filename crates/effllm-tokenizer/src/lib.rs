//! # effllm-tokenizer
//!
//! Byte-level BPE tokenizers built from the metadata of a GGUF file, on the pure-Rust `tokenizers` crate (0.23,
//! `fancy-regex` backend): ids identical to llama.cpp's for SmolLM2-135M-Instruct, plus incremental decoding for
//! generation and chat templates.
//!
//! ## Pipeline (`tokenizer.ggml.model == "gpt2"`)
//!
//! 1. **Vocabulary**: `tokenizer.ggml.tokens[i]` has id `i`. **Merges**: `tokenizer.ggml.merges`, each split at
//!    its first space into a pair; priority = position in the list.
//! 2. **Pre-tokenizer** from `tokenizer.ggml.pre`, through an explicit table ([`PRE_TOKENIZER_TABLE`]):
//!    `"smollm"` (and `"starcoder"`) is
//!    `Sequence[Split(\p{N}, Isolated), Split(GPT2_REGEX, Isolated), ByteLevel(add_prefix_space = false,
//!    use_regex = false)]` with [`GPT2_REGEX`] =
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`; `"gpt-2"` is the same without
//!    the digit split. A missing or unknown `pre` is an error ([`TokenizerError::MissingPreTokenizer`],
//!    [`TokenizerError::UnknownPreTokenizer`]): this crate does not guess. Callers can pick a known kind or supply
//!    their own `tokenizers` pre-tokenizer ([`PreTokenizerChoice`]).
//!    After the byte-level mapping, bytes whose character is not a vocabulary token are removed and split the
//!    piece there (SmolLM2 has no token for 21 byte values: `0x04`, `0x06`, `0x13`, `0x14`, `0x16`, `0x1D`, the
//!    never-valid `0xC0`/`0xC1`/`0xF5..=0xFF`, and `0xF1`/`0xF2`, the UTF-8 lead bytes of planes 4-11). This is
//!    llama.cpp's behaviour: such a byte is dropped and its neighbours never merge across it. The BPE model has
//!    no unknown token, so the unknown id (0, `<|endoftext|>` in SmolLM2) never appears in the middle of user text.
//!    Text with such bytes cannot round-trip; all other text does.
//! 3. **Decoder**: ByteLevel (tokens' characters mapped back to bytes, read as UTF-8).
//! 4. **Special tokens**: `tokenizer.ggml.token_type` 2..=5 (unknown, control, user-defined, unused) plus the ids
//!    of `bos_token_id`, `eos_token_id`, `unknown_token_id` and `padding_token_id`.
//! 5. **BOS/EOS insertion** follows `tokenizer.ggml.add_bos_token` / `add_eos_token` (absent = off), with an
//!    explicit override ([`GgufTokenizer::with_add_bos`], [`GgufTokenizer::with_add_eos`]). SmolLM2 sets
//!    `add_bos_token = false`, so `encode("Hi")` is `[26843]`, as llama.cpp gives even when asked for a BOS.
//!
//! All metadata is validated first ([`GgufVocab::from_gguf`]): every malformed case (missing tokens, wrong value
//! types, `token_type` of the wrong length, a merge whose halves or concatenation are not tokens, special ids out of
//! range, ...) is its own [`TokenizerError`] variant naming the key; nothing panics.
//!
//! ## Why the digit split matters
//!
//! candle's GGUF tokenizer maps unknown `pre` values, `"smollm"` included, to plain GPT-2 byte-level
//! pre-tokenization. SmolLM2's vocabulary has no multi-character token containing a digit, so plain ASCII digit
//! runs come out the same either way, but the split also decides where white space ends:
//!
//! | text | llama.cpp and this crate | GPT-2 only |
//! |---|---|---|
//! | `"38  463"` | `35, 40, 256, 36, 38, 35` | `35, 40, 216, 216, 36, 38, 35` |
//! | `"x =  42"` | `104, 446, 256, 36, 34` | `104, 446, 216, 216, 36, 34` |
//! | `" ²"` | `216, 19133` | `3351, 127` |
//!
//! With the split, `"  4"` is pre-tokenized as `"  "` + `"4"` (the double space is one token, 256); without it,
//! GPT-2's `\s+(?!\S)` leaves one space to join `" 4"`, which is then BPE'd into `" "` + `"4"`. And `\p{N}` covers
//! every Unicode number, so the superscript `²` is split from its space too. About 7.6% of short random strings over
//! a digit- and space-heavy alphabet differ.
//!
//! ## Special-token policy
//!
//! [`GgufTokenizer::encode`] takes `parse_special`. Use `false` for untrusted user text: a literal `<|im_end|>`
//! typed by a user becomes ordinary bytes (`"<|im_start|>user"` encodes to `[44, 108, 306, 79, 3738, 108, 46,
//! 4093]`), so no special id is ever produced from text. Use `true` for rendered chat templates, whose control
//! tokens must become their ids ([`GgufTokenizer::encode_chat`] does this). With `true`, special-token strings
//! are matched whole, leftmost-longest. (llama.cpp also parses user-defined tokens when asked not to parse
//! special tokens; here `false` means no special token at all. SmolLM2 has no user-defined tokens.)
//!
//! ## Generation and chat
//!
//! [`DecodeStream`] ([`GgufTokenizer::decode_stream`]) turns ids into text one at a time, holding back the bytes of
//! a character split across tokens. [`GgufTokenizer::apply_chat_template`] renders the file's
//! `tokenizer.chat_template` (Jinja, via `minijinja`); for SmolLM2 that is ChatML with a default system turn.
//!
//! ## Testing oracle
//!
//! [`mod@reference`] is a naive byte-level BPE encoder (hand-written pre-tokenizer scanner, quadratic lowest-rank
//! merge loop) that the property tests compare with the `tokenizers` path on random strings. The committed fixture
//! `tests/fixtures/smollm2_tokens.json` holds llama.cpp's ids (`scripts/fixtures/smollm2_tokens.py`): the spec's
//! table, more curated strings and 300 random ones. Of 20,000 random strings, llama.cpp and the Python
//! `tokenizers` build of this pipeline agree on 19,999; the one difference is a Unicode 16 letter that llama.cpp's
//! older tables call unassigned, and this crate sides with `tokenizers` there.
//!
//! ## Example
//!
//! A toy vocabulary in an in-memory GGUF: the 256 byte-level characters, two control tokens and three merges.
//!
//! ```
//! use effllm_gguf::{GgufFile, GgufWriter, ReadOptions, Value, ValueType};
//! use effllm_tokenizer::{ChatMessage, GgufTokenizer, PreTokenizerChoice, byte_level};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut tokens = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
//! tokens.extend(byte_level::byte_to_char_table().iter().map(|c| c.to_string()));
//! tokens.extend(["Ġt", "Ġth", "Ġthe"].map(String::from)); // 'Ġ' stands for the space byte
//! let mut types = vec![3i32, 3]; // control
//! types.resize(tokens.len(), 1); // normal
//!
//! let mut writer = GgufWriter::new();
//! writer
//!     .add("general.architecture", "llama")
//!     .add("llama.vocab_size", tokens.len() as u32)
//!     .add("tokenizer.ggml.model", "gpt2")
//!     .add("tokenizer.ggml.pre", "smollm")
//!     .add("tokenizer.ggml.tokens", Value::string_array(&tokens))
//!     .add("tokenizer.ggml.token_type", Value::array(ValueType::I32, types))
//!     .add("tokenizer.ggml.merges", Value::string_array(["Ġ t", "Ġt h", "Ġth e"]))
//!     .add("tokenizer.ggml.bos_token_id", 0u32)
//!     .add("tokenizer.ggml.eos_token_id", 1u32)
//!     .add("tokenizer.ggml.add_bos_token", false)
//!     .add(
//!         "tokenizer.chat_template",
//!         "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
//!     );
//! let bytes = writer.to_bytes()?;
//! let file = GgufFile::parse(&bytes, &ReadOptions::default())?;
//! let tok = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::FromMetadata)?;
//!
//! let the = tok.token_to_id("Ġthe").unwrap();
//! let (space, four, two) = (tok.token_to_id("Ġ").unwrap(), tok.token_to_id("4").unwrap(), tok.token_to_id("2").unwrap());
//! let ids = tok.encode(" the 42", false)?;
//! assert_eq!(ids, [the, space, four, two]); // digits isolated, even from their space
//! assert_eq!(tok.decode(&ids, false)?, " the 42");
//!
//! // User text never yields control ids; rendered templates do.
//! assert!(tok.encode("<|im_end|>", false)?.iter().all(|&id| !tok.is_special(id)));
//! assert_eq!(tok.encode("<|im_end|>", true)?, [1]);
//!
//! let prompt = tok.apply_chat_template(&[ChatMessage::user("hi")], false)?;
//! assert_eq!(prompt, "<|im_start|>user\nhi<|im_end|>\n");
//!
//! // Streaming: text appears once a character is complete ("é" is two bytes, two byte-level tokens here).
//! let mut stream = tok.decode_stream(true);
//! let e_acute = tok.encode("é", false)?;
//! assert_eq!(e_acute.len(), 2);
//! assert_eq!(stream.step(e_acute[0])?, None);
//! assert_eq!(stream.step(e_acute[1])?.as_deref(), Some("é"));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod byte_level;
mod chat;
mod error;
mod fuzz;
mod pretok;
pub mod reference;
mod stream;
mod tokenizer;
mod vocab;

pub use chat::{ChatMessage, render_chat_template};
pub use error::{Result, TokenizerError};
#[doc(hidden)]
pub use fuzz::{fuzz_tokenize, fuzz_vocab_gguf};
pub use pretok::{DIGIT_REGEX, GPT2_REGEX, PRE_TOKENIZER_TABLE, PreTokenizerChoice, PreTokenizerKind};
pub use stream::DecodeStream;
pub use tokenizer::GgufTokenizer;
pub use vocab::{
    GgufVocab, KEY_ADD_BOS, KEY_ADD_EOS, KEY_BOS, KEY_CHAT_TEMPLATE, KEY_EOS, KEY_MERGES, KEY_MODEL, KEY_PAD, KEY_PRE,
    KEY_TOKEN_TYPE, KEY_TOKENS, KEY_UNK, TokenType,
};

/// The `tokenizers` crate this one is built on (for [`PreTokenizerChoice::Override`] and [`GgufTokenizer::inner`]).
pub use tokenizers;
