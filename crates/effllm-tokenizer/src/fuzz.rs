//! The body of the `tokenizer` fuzz target, shared with the test suite.

use std::sync::OnceLock;

use effllm_gguf::{GgufFile, GgufWriter, ReadOptions, Value, ValueType};

use crate::byte_level::byte_to_char_table;
use crate::reference::ReferenceBpe;
use crate::{GgufTokenizer, PreTokenizerChoice, PreTokenizerKind};

/// Merges of the fuzz vocabulary (byte-level strings; `Ġ` is the space, `Ċ` the newline).
const MERGES: &[&str] = &[
    "Ġ t",
    "h e",
    "Ġt he",
    "i n",
    "Ġ Ġ",
    "ĠĠ ĠĠ",
    "e r",
    "Ġ a",
    "o n",
    "r e",
    "Ċ Ċ",
    "( )",
    "Ã ©",
    "ð Ł",
    "' s",
    "Ġ 2",
    "1 2",
    "< |",
    "| >",
    "i m",
    "_ s",
    "Ġ (",
    "* *",
    "= =",
    "== =",
];

/// A small SmolLM2-like GGUF (no tensors): three control tokens, the 256 byte-level characters, the tokens of
/// [`MERGES`]; `pre = "smollm"`, BOS 1, EOS 2, unknown 0.
#[doc(hidden)]
pub fn fuzz_vocab_gguf() -> Vec<u8> {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_to_char_table().iter().map(|c| c.to_string()));
    for m in MERGES {
        let joined = m.replacen(' ', "", 1);
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
    }
    let mut types = vec![3i32; 3];
    types.resize(tokens.len(), 1);
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", "gpt2")
        .add("tokenizer.ggml.pre", "smollm")
        .add("tokenizer.ggml.tokens", Value::string_array(&tokens))
        .add("tokenizer.ggml.token_type", Value::array(ValueType::I32, types))
        .add("tokenizer.ggml.merges", Value::string_array(MERGES.iter().copied()))
        .add("tokenizer.ggml.bos_token_id", 1u32)
        .add("tokenizer.ggml.eos_token_id", 2u32)
        .add("tokenizer.ggml.unknown_token_id", 0u32)
        .add(
            "tokenizer.chat_template",
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        );
    w.to_bytes().expect("the fuzz vocabulary is a valid GGUF")
}

fn fuzz_tokenizer() -> &'static (GgufTokenizer, ReferenceBpe) {
    static TOK: OnceLock<(GgufTokenizer, ReferenceBpe)> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::parse(&fuzz_vocab_gguf(), &ReadOptions::default()).expect("fuzz vocabulary parses");
        let tok = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::FromMetadata).expect("fuzz tokenizer");
        let oracle = ReferenceBpe::new(tok.vocab(), PreTokenizerKind::DigitsThenGpt2);
        (tok, oracle)
    })
}

/// Fuzz body; must never panic. `data` is used three ways:
///
/// 1. as a GGUF file: building a tokenizer from it gives a tokenizer or a typed error; a built tokenizer encodes,
///    decodes, streams and renders its chat template without panicking;
/// 2. as text (UTF-8, lossily): with a fixed toy vocabulary, `decode(encode(text)) == text` in both special modes,
///    `parse_special = false` yields no special id, and both modes equal the [`reference`](crate::reference)
///    oracle;
/// 3. as token ids (little-endian `u16`s modulo the vocabulary size): the [`DecodeStream`](crate::DecodeStream)
///    pieces concatenate to `decode`, with and without special tokens.
///
/// An assertion failure here is a tokenizer bug; the `cargo fuzz` target `tokenizer` and the test suite (over
/// `fuzz/corpus-seeds/tokenizer/`) call it.
#[doc(hidden)]
pub fn fuzz_tokenize(data: &[u8]) {
    if let Ok(file) = GgufFile::parse(data, &ReadOptions::default())
        && let Ok(tok) = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::FromMetadata)
    {
        for special in [false, true] {
            if let Ok(ids) = tok.encode("Hello 42 <|im_end|>\n", special) {
                let _ = tok.decode(&ids, false);
            }
        }
        let _ = tok.apply_chat_template(&[crate::ChatMessage::user("hi")], true);
    }

    let (tok, oracle) = fuzz_tokenizer();
    let text = String::from_utf8_lossy(data);
    for special in [false, true] {
        let ids = tok.encode(&text, special).expect("encode");
        assert_eq!(tok.decode(&ids, false).expect("decode"), text, "round trip (parse_special = {special})");
        assert_eq!(ids, oracle.encode(&text, special), "oracle (parse_special = {special})");
        if !special {
            assert!(ids.iter().all(|&id| !tok.is_special(id)), "special id from user text");
        }
    }

    let n = tok.vocab_size() as u32;
    let ids: Vec<u32> = data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % n).collect();
    for skip in [false, true] {
        let mut stream = tok.decode_stream(skip);
        let mut out = String::new();
        for &id in &ids {
            out.extend(stream.step(id).expect("in-range id"));
        }
        out.push_str(&stream.finish());
        assert_eq!(out, tok.decode(&ids, skip).expect("decode"), "stream vs decode (skip_special = {skip})");
    }
}
