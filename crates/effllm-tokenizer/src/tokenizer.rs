//! [`GgufTokenizer`]: the `tokenizers`-based tokenizer built from a [`GgufVocab`].

use std::fmt;

use effllm_gguf::GgufFile;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::byte_level::{byte_to_char_table, token_bytes};
use crate::chat::{ChatMessage, render_chat_template};
use crate::error::{Result, TokenizerError};
use crate::pretok::{PreTokenizerChoice, PreTokenizerKind};
use crate::stream::DecodeStream;
use crate::vocab::{GgufVocab, KEY_BOS, KEY_EOS};

/// A byte-level BPE tokenizer built from GGUF metadata (see the [crate docs](crate) for the pipeline).
///
/// Cheap to share across threads (`Send + Sync`); encoding and decoding take `&self`.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Special tokens are matched whole in the input (`parse_special = true`).
    parse: Tokenizer,
    /// The same tokenizer with `encode_special_tokens` on: special tokens are ordinary text.
    plain: Tokenizer,
    vocab: GgufVocab,
    token_bytes: Vec<Box<[u8]>>,
    special: Vec<bool>,
    pre_kind: Option<PreTokenizerKind>,
    add_bos: bool,
    add_eos: bool,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<GgufTokenizer>();
};

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.vocab.merges.len())
            .field("pre", &self.vocab.pre)
            .field("pre_kind", &self.pre_kind)
            .field("special_tokens", &self.special.iter().filter(|&&s| s).count())
            .field("bos_id", &self.vocab.bos_id)
            .field("eos_id", &self.vocab.eos_id)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer of a GGUF file: [`GgufVocab::from_gguf`], then [`from_vocab`](Self::from_vocab).
    pub fn from_gguf(file: &GgufFile, pre: PreTokenizerChoice) -> Result<Self> {
        Self::from_vocab(GgufVocab::from_gguf(file)?, pre)
    }

    /// Builds the tokenizer from validated metadata: BPE over `tokens`/`merges`, the chosen pre-tokenizer, the
    /// ByteLevel decoder, special tokens (types 2..=5 plus BOS/EOS/unknown/padding), BOS/EOS insertion from
    /// `add_bos`/`add_eos` (absent = off).
    pub fn from_vocab(vocab: GgufVocab, pre: PreTokenizerChoice) -> Result<Self> {
        let (pre_tokenizer, pre_kind) = match pre {
            PreTokenizerChoice::FromMetadata => {
                let name = vocab.pre.as_deref().ok_or(TokenizerError::MissingPreTokenizer)?;
                let kind = PreTokenizerKind::from_pre_checked(name)?;
                (kind.build()?, Some(kind))
            }
            PreTokenizerChoice::Kind(kind) => (kind.build()?, Some(kind)),
            PreTokenizerChoice::Override(p) => (p, None),
        };

        // Bytes whose character is not a vocabulary token (SmolLM2 lacks 21 of the 256, among them 0x04 and the
        // UTF-8 lead bytes 0xF1/0xF2 of planes 4-11) are removed after the byte-level mapping, splitting the piece
        // there: as in llama.cpp, such a byte is dropped and its neighbours never merge across it.
        let pre_tokenizer = match missing_byte_class(&vocab) {
            None => pre_tokenizer,
            Some(class) => {
                let split = Split::new(SplitPattern::Regex(class), SplitDelimiterBehavior::Removed, false)
                    .map_err(TokenizerError::backend)?;
                Sequence::new(vec![pre_tokenizer, split.into()]).into()
            }
        };

        let bpe_vocab: Vocab = vocab.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        // No BPE `unk_token` (the removal above leaves nothing unknown), so the unknown id (0, `<|endoftext|>` in
        // SmolLM2) never appears in the middle of user text.
        let bpe = BPE::builder()
            .vocab_and_merges(bpe_vocab, vocab.merges.clone())
            .build()
            .map_err(TokenizerError::backend)?;

        let mut parse = Tokenizer::new(bpe);
        parse.with_pre_tokenizer(Some(pre_tokenizer));
        parse.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let special_ids = vocab.special_ids();
        let added = special_ids
            .iter()
            .map(|&id| &vocab.tokens[id as usize])
            .filter(|t| !t.is_empty())
            .map(|t| AddedToken::from(t.clone(), true));
        parse.add_special_tokens(added).map_err(TokenizerError::backend)?;
        let mut plain = parse.clone();
        plain.set_encode_special_tokens(true);

        let mut special = vec![false; vocab.len()];
        for &id in &special_ids {
            special[id as usize] = true;
        }
        let token_bytes = vocab.tokens.iter().map(|t| token_bytes(t).into_boxed_slice()).collect();
        let add_bos = vocab.add_bos.unwrap_or(false);
        let add_eos = vocab.add_eos.unwrap_or(false);
        let tok = GgufTokenizer { parse, plain, vocab, token_bytes, special, pre_kind, add_bos, add_eos };
        tok.with_add_bos(add_bos)?.with_add_eos(add_eos)
    }

    /// Overrides BOS insertion (default: `tokenizer.ggml.add_bos_token`, absent = off). Turning it on without a
    /// `tokenizer.ggml.bos_token_id` is [`TokenizerError::MissingSpecialId`].
    pub fn with_add_bos(mut self, add_bos: bool) -> Result<Self> {
        if add_bos && self.vocab.bos_id.is_none() {
            return Err(TokenizerError::MissingSpecialId { which: "BOS", key: KEY_BOS });
        }
        self.add_bos = add_bos;
        Ok(self)
    }

    /// Overrides EOS insertion (default: `tokenizer.ggml.add_eos_token`, absent = off). Turning it on without a
    /// `tokenizer.ggml.eos_token_id` is [`TokenizerError::MissingSpecialId`].
    pub fn with_add_eos(mut self, add_eos: bool) -> Result<Self> {
        if add_eos && self.vocab.eos_id.is_none() {
            return Err(TokenizerError::MissingSpecialId { which: "EOS", key: KEY_EOS });
        }
        self.add_eos = add_eos;
        Ok(self)
    }

    /// Whether [`encode`](Self::encode) prepends the BOS id.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`encode`](Self::encode) appends the EOS id.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Token ids of `text`, with BOS/EOS inserted as [`add_bos`](Self::add_bos)/[`add_eos`](Self::add_eos) say.
    ///
    /// `parse_special = true` matches special-token strings (`<|im_start|>`, ...) whole, leftmost-longest, and
    /// gives their ids; use it for rendered chat templates. `parse_special = false` treats them as ordinary text
    /// (`"<|im_end|>"` becomes `<`, `|`, `im`, ... ) and never produces a special id from text; use it for user
    /// input.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special { &self.parse } else { &self.plain };
        let enc = tok.encode_fast(text, false).map_err(TokenizerError::backend)?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if self.add_bos {
            ids.extend(self.vocab.bos_id);
        }
        ids.extend_from_slice(body);
        if self.add_eos {
            ids.extend(self.vocab.eos_id);
        }
        Ok(ids)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab.len()) {
            Some(&id) => Err(TokenizerError::IdOutOfRange { id, vocab_size: self.vocab.len() }),
            None => Ok(()),
        }
    }

    /// The text of `ids`: the tokens' bytes concatenated and read as UTF-8 (invalid sequences become U+FFFD, as
    /// `String::from_utf8_lossy` does). `skip_special` leaves out special tokens. An id outside the vocabulary is
    /// [`TokenizerError::IdOutOfRange`].
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.parse.decode(ids, skip_special).map_err(TokenizerError::backend)
    }

    /// An incremental decoder for generation: feed ids one at a time, get text as soon as it is complete UTF-8.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special)
    }

    /// A stable fingerprint of everything that decides the ids [`encode`](Self::encode) returns: the tokens and
    /// their types, the merges, the pre-tokenizer, the special ids and the BOS/EOS insertion flags, hashed with
    /// SHA-256 (`"gguf-bpe-v1:" + 32 hex digits`). Token caches key on it, so two tokenizers with the same
    /// fingerprint must tokenize identically; a caller-supplied pre-tokenizer
    /// ([`PreTokenizerChoice::Override`](crate::PreTokenizerChoice::Override)) cannot be hashed and is marked
    /// `custom`, so callers using one should add their own tag.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Every variable-length field is length-prefixed, so different field splits never hash alike.
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(b"gguf-bpe-v1");
        put(&(self.vocab.tokens.len() as u64).to_le_bytes());
        for t in &self.vocab.tokens {
            put(t.as_bytes());
        }
        for ty in self.vocab.token_types.iter().flatten() {
            put(&ty.to_le_bytes());
        }
        put(&(self.vocab.merges.len() as u64).to_le_bytes());
        for (a, b) in &self.vocab.merges {
            put(a.as_bytes());
            put(b.as_bytes());
        }
        put(self.pre_kind.map_or_else(|| "custom".to_string(), |k| format!("{k:?}")).as_bytes());
        for id in [self.vocab.bos_id, self.vocab.eos_id, self.vocab.unk_id, self.vocab.pad_id] {
            put(&id.map_or(u64::MAX, u64::from).to_le_bytes());
        }
        for (i, &sp) in self.special.iter().enumerate() {
            if sp {
                put(&(i as u64).to_le_bytes());
            }
        }
        put(&[u8::from(self.add_bos), u8::from(self.add_eos)]);
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("gguf-bpe-v1:{hex}")
    }

    /// Number of tokens (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos_id
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos_id
    }

    /// `tokenizer.ggml.unknown_token_id`.
    pub fn unk_id(&self) -> Option<u32> {
        self.vocab.unk_id
    }

    /// `tokenizer.ggml.padding_token_id`.
    pub fn pad_id(&self) -> Option<u32> {
        self.vocab.pad_id
    }

    /// The id of a vocabulary token string (byte-level form, e.g. `"Ġworld"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.parse.token_to_id(token)
    }

    /// The vocabulary string of an id (byte-level form, e.g. `"Ġworld"`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes token `id` stands for (`"Ġworld"` -> `b" world"`; special tokens: their own text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &**b)
    }

    /// Whether `id` is a special token (types 2..=5, or the BOS/EOS/unknown/padding id).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The known pre-tokenizer in use (`None` for [`PreTokenizerChoice::Override`]).
    pub fn pre_tokenizer_kind(&self) -> Option<PreTokenizerKind> {
        self.pre_kind
    }

    /// The validated metadata this tokenizer was built from.
    pub fn vocab(&self) -> &GgufVocab {
        &self.vocab
    }

    /// The underlying `tokenizers` tokenizer (the one that parses special tokens).
    pub fn inner(&self) -> &Tokenizer {
        &self.parse
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.vocab.chat_template.as_deref()
    }

    /// Renders `messages` with the file's `tokenizer.chat_template` (Jinja, rendered by `minijinja` with
    /// `trim_blocks` and `lstrip_blocks` as Hugging Face does; variables `messages`, `add_generation_prompt`,
    /// `bos_token`, `eos_token`; function `raise_exception`). No template is [`TokenizerError::NoChatTemplate`];
    /// a template that fails to compile or render is [`TokenizerError::ChatTemplate`].
    ///
    /// For SmolLM2 this is ChatML: a default system turn ("You are a helpful AI assistant named SmolLM, trained by
    /// Hugging Face") when the first message is not a system message, `<|im_start|>{role}\n{content}<|im_end|>\n`
    /// per message, and `<|im_start|>assistant\n` when `add_generation_prompt`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        let token = |id: Option<u32>| id.map(|i| self.vocab.tokens[i as usize].as_str());
        render_chat_template(template, messages, add_generation_prompt, token(self.bos_id()), token(self.eos_id()))
    }

    /// [`apply_chat_template`](Self::apply_chat_template), then [`encode`](Self::encode) with
    /// `parse_special = true` (the template's control tokens become their ids).
    ///
    /// Message contents are pasted into the template verbatim, so a control-token string inside user content is
    /// parsed as a control token here; encode untrusted turns yourself with `parse_special = false` if that
    /// matters.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, add_generation_prompt)?, true)
    }
}

/// A regex character class of the byte-level characters that are not vocabulary tokens, if any.
fn missing_byte_class(vocab: &GgufVocab) -> Option<String> {
    let tokens: std::collections::HashSet<&str> = vocab.tokens.iter().map(String::as_str).collect();
    let mut buf = [0u8; 4];
    let missing: Vec<char> =
        byte_to_char_table().into_iter().filter(|c| !tokens.contains(&*c.encode_utf8(&mut buf))).collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!("[{}]", missing.iter().map(|c| format!("\\x{{{:X}}}", *c as u32)).collect::<String>()))
}
