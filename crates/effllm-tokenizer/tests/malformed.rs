//! Every malformed-metadata case gives its own typed error, from small hand-made GGUFs (no model needed); random
//! corruption of valid metadata never panics.

mod common;

use common::{gguf, remove, set, toy_kvs};
use effllm_gguf::{Value, ValueType};
use effllm_tokenizer::{
    ChatMessage, GgufTokenizer, GgufVocab, KEY_BOS, KEY_EOS, KEY_MERGES, KEY_MODEL, KEY_TOKENS, PreTokenizerChoice,
    PreTokenizerKind, TokenizerError,
};
use proptest::prelude::*;

fn build(kvs: &[(String, Value)]) -> Result<GgufTokenizer, TokenizerError> {
    GgufTokenizer::from_gguf(&gguf(kvs), PreTokenizerChoice::FromMetadata)
}

fn err_with(f: impl FnOnce(&mut Vec<(String, Value)>)) -> TokenizerError {
    let mut kvs = toy_kvs();
    f(&mut kvs);
    build(&kvs).expect_err("malformed metadata must be rejected")
}

fn small_vocab(kvs: &mut Vec<(String, Value)>, tokens: &[&str], merges: &[&str]) {
    set(kvs, KEY_TOKENS, Value::string_array(tokens.iter().copied()));
    set(kvs, KEY_MERGES, Value::string_array(merges.iter().copied()));
    remove(kvs, "tokenizer.ggml.token_type");
    remove(kvs, "llama.vocab_size");
    for k in [KEY_BOS, KEY_EOS, "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"] {
        remove(kvs, k);
    }
}

#[test]
fn the_toy_metadata_is_valid() {
    build(&toy_kvs()).unwrap();
}

#[test]
fn model_key() {
    assert_eq!(err_with(|k| remove(k, KEY_MODEL)), TokenizerError::MissingKey { key: KEY_MODEL });
    assert_eq!(err_with(|k| set(k, KEY_MODEL, "llama")), TokenizerError::UnsupportedModel { model: "llama".into() });
    assert!(matches!(
        err_with(|k| set(k, KEY_MODEL, 7u32)),
        TokenizerError::WrongType { key, expected: "STRING", found } if key == KEY_MODEL && found == "UINT32"
    ));
}

#[test]
fn tokens_key() {
    assert_eq!(err_with(|k| remove(k, KEY_TOKENS)), TokenizerError::MissingKey { key: KEY_TOKENS });
    assert!(matches!(
        err_with(|k| set(k, KEY_TOKENS, Value::array(ValueType::U32, [1u32, 2]))),
        TokenizerError::WrongType { key, expected: "ARRAY of STRING", found } if key == KEY_TOKENS && found == "ARRAY of UINT32 (2 elements)"
    ));
    assert!(matches!(err_with(|k| set(k, KEY_TOKENS, "a b c")), TokenizerError::WrongType { .. }));
    assert_eq!(err_with(|k| small_vocab(k, &[], &[])), TokenizerError::EmptyVocab);
    assert_eq!(
        err_with(|k| small_vocab(k, &["a", "b", "a"], &[])),
        TokenizerError::DuplicateToken { token: "a".into(), first: 0, second: 2 }
    );
}

#[test]
fn token_type_key() {
    let n = build(&toy_kvs()).unwrap().vocab_size();
    assert_eq!(
        err_with(|k| set(k, "tokenizer.ggml.token_type", Value::array(ValueType::I32, vec![1i32; n - 1]))),
        TokenizerError::TokenTypeLength { tokens: n, token_types: n - 1 }
    );
    assert!(matches!(
        err_with(|k| set(k, "tokenizer.ggml.token_type", Value::string_array(vec!["1"; n]))),
        TokenizerError::WrongType { key, .. } if key == "tokenizer.ggml.token_type"
    ));
    let mut too_big = vec![1i64; n];
    too_big[5] = i64::from(i32::MAX) + 1;
    assert!(matches!(
        err_with(|k| set(k, "tokenizer.ggml.token_type", Value::array(ValueType::I64, too_big))),
        TokenizerError::WrongType { .. }
    ));
    // Absent token types are allowed: then only the BOS/EOS/unknown/padding ids are special.
    let mut kvs = toy_kvs();
    remove(&mut kvs, "tokenizer.ggml.token_type");
    let tok = build(&kvs).unwrap();
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2) && !tok.is_special(3));
}

#[test]
fn vocab_size_key() {
    let n = build(&toy_kvs()).unwrap().vocab_size();
    assert_eq!(
        err_with(|k| set(k, "llama.vocab_size", Value::U64(n as u64 + 1))),
        TokenizerError::VocabSizeMismatch { key: "llama.vocab_size".into(), declared: n as u64 + 1, tokens: n }
    );
    assert!(matches!(err_with(|k| set(k, "llama.vocab_size", "big")), TokenizerError::WrongType { .. }));
    // Another architecture's key is the one checked.
    let mut kvs = toy_kvs();
    set(&mut kvs, "general.architecture", "qwen2");
    set(&mut kvs, "qwen2.vocab_size", Value::U32(3));
    assert!(matches!(build(&kvs), Err(TokenizerError::VocabSizeMismatch { key, .. }) if key == "qwen2.vocab_size"));
}

#[test]
fn merges_key() {
    assert_eq!(err_with(|k| remove(k, KEY_MERGES)), TokenizerError::MissingKey { key: KEY_MERGES });
    assert!(matches!(
        err_with(|k| set(k, KEY_MERGES, Value::array(ValueType::I8, [1i8]))),
        TokenizerError::WrongType { .. }
    ));
    let tokens = ["a", "b", "c", "ab", "abc"];
    assert_eq!(
        err_with(|k| small_vocab(k, &tokens, &["a b", "abc"])),
        TokenizerError::MalformedMerge { index: 1, merge: "abc".into() }
    );
    assert_eq!(
        err_with(|k| small_vocab(k, &tokens, &["a b", "ab x"])),
        TokenizerError::MergeNotInVocab { index: 1, merge: "ab x".into(), part: "x".into() }
    );
    assert_eq!(
        err_with(|k| small_vocab(k, &tokens, &["x b"])),
        TokenizerError::MergeNotInVocab { index: 0, merge: "x b".into(), part: "x".into() }
    );
    assert_eq!(
        err_with(|k| small_vocab(k, &tokens, &["b c"])),
        TokenizerError::MergeNotInVocab { index: 0, merge: "b c".into(), part: "bc".into() }
    );
    assert_eq!(
        err_with(|k| small_vocab(k, &tokens, &["a b", "ab c", "a b"])),
        TokenizerError::DuplicateMerge { index: 2, first: 0, merge: "a b".into() }
    );
    // Split at the first space: "a b c" is ("a", "b c").
    assert!(matches!(
        err_with(|k| small_vocab(k, &tokens, &["a b c"])),
        TokenizerError::MergeNotInVocab { part, .. } if part == "b c"
    ));
    // A small valid vocabulary builds.
    let mut kvs = toy_kvs();
    small_vocab(&mut kvs, &tokens, &["a b", "ab c"]);
    let v = GgufVocab::from_gguf(&gguf(&kvs)).unwrap();
    assert_eq!(v.merges, [("a".to_string(), "b".to_string()), ("ab".to_string(), "c".to_string())]);
}

#[test]
fn special_id_keys() {
    let n = build(&toy_kvs()).unwrap().vocab_size();
    assert_eq!(
        err_with(|k| set(k, KEY_BOS, Value::U32(n as u32))),
        TokenizerError::SpecialIdOutOfRange { key: KEY_BOS, id: n as i64, vocab_size: n }
    );
    assert_eq!(
        err_with(|k| set(k, KEY_EOS, Value::I32(-1))),
        TokenizerError::SpecialIdOutOfRange { key: KEY_EOS, id: -1, vocab_size: n }
    );
    assert!(matches!(
        err_with(|k| set(k, "tokenizer.ggml.padding_token_id", "2")),
        TokenizerError::WrongType { key, expected: "an integer type", .. } if key == "tokenizer.ggml.padding_token_id"
    ));
    assert!(matches!(
        err_with(|k| set(k, "tokenizer.ggml.unknown_token_id", Value::F32(0.0))),
        TokenizerError::WrongType { .. }
    ));
}

#[test]
fn flags_and_strings_of_the_wrong_type() {
    for key in ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"] {
        assert!(matches!(
            err_with(|k| set(k, key, Value::U8(1))),
            TokenizerError::WrongType { key: k, expected: "BOOL", found } if k == key && found == "UINT8"
        ));
    }
    assert!(matches!(
        err_with(|k| set(k, "tokenizer.chat_template", Value::U32(0))),
        TokenizerError::WrongType { expected: "STRING", .. }
    ));
    assert!(matches!(err_with(|k| set(k, "tokenizer.ggml.pre", Value::Bool(true))), TokenizerError::WrongType { .. }));
    assert!(matches!(err_with(|k| set(k, "general.architecture", Value::U8(1))), TokenizerError::WrongType { .. }));
}

#[test]
fn pre_tokenizer_must_be_known_or_explicit() {
    let mut kvs = toy_kvs();
    remove(&mut kvs, "tokenizer.ggml.pre");
    assert_eq!(build(&kvs).unwrap_err(), TokenizerError::MissingPreTokenizer);
    let file = gguf(&kvs);
    let tok = GgufTokenizer::from_gguf(&file, PreTokenizerChoice::Kind(PreTokenizerKind::DigitsThenGpt2)).unwrap();
    assert_eq!(tok.pre_tokenizer_kind(), Some(PreTokenizerKind::DigitsThenGpt2));

    let e = err_with(|k| set(k, "tokenizer.ggml.pre", "llama-bpe"));
    assert!(
        matches!(&e, TokenizerError::UnknownPreTokenizer { pre, known } if pre == "llama-bpe" && known.contains("smollm"))
    );
    assert!(e.to_string().contains("llama-bpe"));
    for (name, kind) in [
        ("smollm", PreTokenizerKind::DigitsThenGpt2),
        ("starcoder", PreTokenizerKind::DigitsThenGpt2),
        ("gpt-2", PreTokenizerKind::Gpt2),
    ] {
        let mut kvs = toy_kvs();
        set(&mut kvs, "tokenizer.ggml.pre", name);
        assert_eq!(build(&kvs).unwrap().pre_tokenizer_kind(), Some(kind));
    }
}

#[test]
fn bos_eos_insertion_needs_the_ids() {
    let mut kvs = toy_kvs();
    remove(&mut kvs, KEY_BOS);
    set(&mut kvs, "tokenizer.ggml.add_bos_token", true);
    assert_eq!(build(&kvs).unwrap_err(), TokenizerError::MissingSpecialId { which: "BOS", key: KEY_BOS });
    let mut kvs = toy_kvs();
    remove(&mut kvs, KEY_EOS);
    remove(&mut kvs, "tokenizer.ggml.padding_token_id");
    let tok = build(&kvs).unwrap();
    assert_eq!(
        tok.clone().with_add_eos(true).unwrap_err(),
        TokenizerError::MissingSpecialId { which: "EOS", key: KEY_EOS }
    );
    assert!(tok.with_add_eos(false).is_ok());
}

#[test]
fn decoding_rejects_ids_out_of_range() {
    let tok = build(&toy_kvs()).unwrap();
    let n = tok.vocab_size() as u32;
    assert_eq!(tok.decode(&[5, n], false).unwrap_err(), TokenizerError::IdOutOfRange { id: n, vocab_size: n as usize });
    assert_eq!(
        tok.decode(&[u32::MAX], true).unwrap_err(),
        TokenizerError::IdOutOfRange { id: u32::MAX, vocab_size: n as usize }
    );
    let mut stream = tok.decode_stream(false);
    assert_eq!(stream.step(n).unwrap_err(), TokenizerError::IdOutOfRange { id: n, vocab_size: n as usize });
    assert_eq!(tok.id_to_token(n), None);
    assert_eq!(tok.token_bytes(n), None);
    assert!(!tok.is_special(n));
}

#[test]
fn chat_template_errors() {
    let mut kvs = toy_kvs();
    remove(&mut kvs, "tokenizer.chat_template");
    let msgs = [ChatMessage::user("hi")];
    assert_eq!(build(&kvs).unwrap().apply_chat_template(&msgs, true).unwrap_err(), TokenizerError::NoChatTemplate);
    set(&mut kvs, "tokenizer.chat_template", "{% for m in messages %}{{ m.content }");
    assert!(matches!(build(&kvs).unwrap().apply_chat_template(&msgs, true), Err(TokenizerError::ChatTemplate(_))));
    set(
        &mut kvs,
        "tokenizer.chat_template",
        "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}",
    );
    let e = build(&kvs).unwrap().apply_chat_template(&msgs, true).unwrap_err();
    assert!(matches!(&e, TokenizerError::ChatTemplate(m) if m.contains("system first")), "{e}");
}

/// Values of every kind, to swap in for any key.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        any::<bool>().prop_map(Value::Bool),
        ".{0,8}".prop_map(Value::String),
        prop::collection::vec(".{0,3}", 0..6).prop_map(Value::string_array),
        prop::collection::vec(any::<i32>(), 0..6).prop_map(|v| Value::array(ValueType::I32, v)),
        Just(Value::array(ValueType::Array, [Value::string_array(["a"])])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Dropping or replacing any keys gives a tokenizer or a typed error, never a panic.
    #[test]
    fn corrupted_metadata_never_panics(
        edits in prop::collection::vec((0usize..13, prop::option::of(any_value())), 1..4),
        text in ".{0,16}",
    ) {
        let mut kvs = toy_kvs();
        for (i, v) in edits {
            let key = kvs[i % kvs.len()].0.clone();
            match v {
                Some(v) => set(&mut kvs, &key, v),
                None => remove(&mut kvs, &key),
            }
        }
        if let Ok(tok) = build(&kvs) {
            let ids = tok.encode(&text, false).unwrap();
            let _ = tok.decode(&ids, false).unwrap();
            let _ = tok.apply_chat_template(&[ChatMessage::user(text.clone())], true);
        }
    }
}
