//! The `tokenizers` path against the naive reference oracle and invariants 34-36, on a toy byte-level vocabulary
//! (300 merges learned from a small corpus) in an in-memory GGUF: no model needed.

mod common;

use common::{SMOLLM2_TEMPLATE, TOY_SPECIALS, gguf, remove, set, toy, toy_kvs, tricky_string};
use effllm_gguf::Value;
use effllm_tokenizer::reference::{CharClasses, ReferenceBpe, split_digits, split_gpt2};
use effllm_tokenizer::tokenizers::pre_tokenizers::byte_level::ByteLevel;
use effllm_tokenizer::{ChatMessage, GgufTokenizer, PreTokenizerChoice, PreTokenizerKind, byte_level};
use proptest::prelude::*;

fn oracle(kind: PreTokenizerKind) -> ReferenceBpe {
    ReferenceBpe::new(toy().vocab(), kind)
}

fn toy_with(kind: PreTokenizerChoice) -> GgufTokenizer {
    GgufTokenizer::from_gguf(&gguf(&toy_kvs()), kind).unwrap()
}

fn id(tok: &GgufTokenizer, token: &str) -> u32 {
    tok.token_to_id(token).unwrap_or_else(|| panic!("{token:?} not in the toy vocabulary"))
}

#[test]
fn pre_tokenizer_scanner_examples() {
    let c = CharClasses::new();
    fn gpt2(s: &str) -> Vec<&str> {
        split_gpt2(s, &CharClasses::new())
    }
    assert_eq!(gpt2("I'm you're"), ["I", "'m", " you", "'re"]);
    assert_eq!(gpt2("a  b"), ["a", " ", " b"]);
    assert_eq!(gpt2("a   "), ["a", "   "]);
    assert_eq!(gpt2("x =  42"), ["x", " =", " ", " 42"]);
    assert_eq!(gpt2("\n\nx"), ["\n", "\n", "x"]);
    assert_eq!(gpt2("'S 'll"), ["'", "S", " '", "ll"]);
    assert_eq!(gpt2("12*7?"), ["12", "*", "7", "?"]);
    assert_eq!(gpt2(" ²"), [" ²"]);
    assert_eq!(split_digits("x =  42", &c), ["x =  ", "4", "2"]);
    assert_eq!(split_digits(" ² ½Ⅻ", &c), [" ", "²", " ", "½", "Ⅻ"]);
    fn both(s: &str) -> Vec<&str> {
        let c = CharClasses::new();
        split_digits(s, &c).into_iter().flat_map(|p| split_gpt2(p, &c)).collect()
    }
    assert_eq!(both("38  463"), ["3", "8", "  ", "4", "6", "3"]);
    assert_eq!(both(" ²"), [" ", "²"]);
}

#[test]
fn digit_split_changes_ids_as_in_the_spec() {
    // With the digit split "  4" is "  " + "4"; GPT-2 alone gives " " + " 4" (then " ", "4" by BPE).
    let smol = toy();
    let gpt2 = toy_with(PreTokenizerChoice::Kind(PreTokenizerKind::Gpt2));
    let (sp, four) = (id(smol, "Ġ"), id(smol, "4"));
    let ids = smol.encode("  4", false).unwrap();
    assert_eq!(ids, [id(smol, "ĠĠ"), four]);
    assert_eq!(gpt2.encode("  4", false).unwrap(), [sp, sp, four]);
    assert_eq!(smol.encode(" 2024", false).unwrap(), [sp, id(smol, "2"), id(smol, "0"), id(smol, "2"), four]);
}

#[test]
fn special_tokens_parse_only_when_asked() {
    let tok = toy();
    for (i, s) in TOY_SPECIALS.iter().enumerate() {
        assert_eq!(tok.encode(s, true).unwrap(), [i as u32]);
        let plain = tok.encode(s, false).unwrap();
        assert!(plain.iter().all(|&id| id >= TOY_SPECIALS.len() as u32), "{s}: {plain:?}");
        assert_eq!(tok.decode(&plain, false).unwrap(), *s);
        assert!(tok.is_special(i as u32));
    }
    let text = "<|im_start|>user\nhi<|im_end|>\n";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 2]), (1, 2));
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi\n");
}

#[test]
fn bos_eos_insertion_follows_metadata_with_override() {
    let hi = toy().encode("hi", false).unwrap();
    let on = toy().clone().with_add_bos(true).unwrap().with_add_eos(true).unwrap();
    assert!(on.add_bos() && on.add_eos());
    assert_eq!(on.encode("hi", false).unwrap(), [vec![1], hi.clone(), vec![2]].concat());
    assert_eq!(on.encode("", true).unwrap(), [1, 2]);
    let mut kvs = toy_kvs();
    set(&mut kvs, "tokenizer.ggml.add_bos_token", true);
    let from_meta = GgufTokenizer::from_gguf(&gguf(&kvs), PreTokenizerChoice::FromMetadata).unwrap();
    assert!(from_meta.add_bos() && !from_meta.add_eos());
    assert_eq!(from_meta.encode("hi", false).unwrap(), [vec![1], hi.clone()].concat());
    assert_eq!(from_meta.with_add_bos(false).unwrap().encode("hi", false).unwrap(), hi);
    // The oracle follows the metadata too.
    let meta_oracle = ReferenceBpe::new(
        &effllm_tokenizer::GgufVocab::from_gguf(&gguf(&kvs)).unwrap(),
        PreTokenizerKind::DigitsThenGpt2,
    );
    assert_eq!(meta_oracle.encode("hi", false), [vec![1], hi].concat());
}

#[test]
fn accessors() {
    let tok = toy();
    assert_eq!(tok.vocab_size(), tok.vocab().tokens.len());
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id()), (Some(1), Some(2), Some(0), Some(2)));
    for id in 0..tok.vocab_size() as u32 {
        let t = tok.id_to_token(id).unwrap();
        assert_eq!(tok.token_to_id(t), Some(id));
        assert_eq!(tok.token_bytes(id).unwrap(), byte_level::token_bytes(t));
        assert_eq!(tok.is_special(id), id < 4);
    }
    assert_eq!(tok.token_bytes(id(tok, "Ġthe")).unwrap(), b" the");
    assert_eq!(tok.inner().get_vocab_size(true), tok.vocab_size());
    let dbg = format!("{tok:?}");
    assert!(dbg.contains("GgufTokenizer") && dbg.contains("vocab_size"), "{dbg}");
}

#[test]
fn chat_template_smollm2_and_others() {
    let tok = toy();
    assert_eq!(tok.chat_template(), Some(SMOLLM2_TEMPLATE));
    let msgs = [ChatMessage::user("What is 12*7?"), ChatMessage::assistant("84"), ChatMessage::new("user", "Thanks")];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 12*7?<|im_end|>\n<|im_start|>assistant\n84<|im_end|>\n\
         <|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode_chat(&msgs[..1], false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);

    // Any Jinja template: bos/eos tokens, loops, trim_blocks/lstrip_blocks as Hugging Face renders them.
    let mut kvs = toy_kvs();
    set(
        &mut kvs,
        "tokenizer.chat_template",
        "{{ bos_token }}\n{% for m in messages %}\n  {{ m['role'] | upper }}: {{ m.content }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    );
    let custom = GgufTokenizer::from_gguf(&gguf(&kvs), PreTokenizerChoice::FromMetadata).unwrap();
    assert_eq!(
        custom.apply_chat_template(&msgs[..2], true).unwrap(),
        "<|im_start|>\n  USER: What is 12*7?<|im_end|>\n  ASSISTANT: 84<|im_end|>\nASSISTANT:"
    );
    remove(&mut kvs, "tokenizer.ggml.bos_token_id");
    set(&mut kvs, "tokenizer.chat_template", "{{ bos_token is defined }}");
    let no_bos = GgufTokenizer::from_gguf(&gguf(&kvs), PreTokenizerChoice::FromMetadata).unwrap();
    assert_eq!(no_bos.apply_chat_template(&[], false).unwrap(), "False"); // as Jinja prints it
}

#[test]
fn missing_byte_tokens_are_dropped_and_block_merges() {
    // Drop the token of byte 0x04 ('Ą'); it is in no merge of the toy vocabulary.
    let mut kvs = toy_kvs();
    let tokens: Vec<String> = toy().vocab().tokens.iter().filter(|t| *t != "Ą").cloned().collect();
    set(&mut kvs, "tokenizer.ggml.tokens", Value::string_array(&tokens));
    remove(&mut kvs, "tokenizer.ggml.token_type");
    set(&mut kvs, "llama.vocab_size", Value::U32(tokens.len() as u32));
    let tok = GgufTokenizer::from_gguf(&gguf(&kvs), PreTokenizerChoice::FromMetadata).unwrap();
    let oracle = ReferenceBpe::new(tok.vocab(), PreTokenizerKind::DigitsThenGpt2);
    // "th\x04e": without the barrier "th"+"e" could merge across the dropped byte.
    for text in ["th\u{4}e", "\u{4}", "a\u{4}\u{4}b", " the\u{4} the", "<|im_end|>\u{4}<|im_end|>"] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, oracle.encode(text, true), "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text.replace('\u{4}', ""), "{text:?}");
        assert!(!ids.contains(&0), "{text:?}: the unknown id must not appear");
    }
    // A merge of two punctuation characters (one pre-tokenizer piece): the dropped byte between them blocks it.
    let c = CharClasses::new();
    let single_other = |t: &str| t.len() == 1 && t.chars().all(|ch| c.is_other(ch));
    let (a, b) =
        tok.vocab().merges.iter().find(|(a, b)| single_other(a) && single_other(b)).expect("a punctuation merge");
    assert_eq!(tok.encode(&format!("{a}{b}"), false).unwrap(), [id(&tok, &format!("{a}{b}"))]);
    assert_eq!(tok.encode(&format!("{a}\u{4}{b}"), false).unwrap(), [id(&tok, a), id(&tok, b)]);
    assert_eq!(oracle.encode(&format!("{a}\u{4}{b}"), false), [id(&tok, a), id(&tok, b)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The `tokenizers` path equals the naive oracle, both special modes, both known pre-tokenizers.
    #[test]
    fn matches_reference_oracle(s in tricky_string()) {
        let smol = oracle(PreTokenizerKind::DigitsThenGpt2);
        prop_assert_eq!(toy().encode(&s, false).unwrap(), smol.encode(&s, false));
        prop_assert_eq!(toy().encode(&s, true).unwrap(), smol.encode(&s, true));
        let gpt2 = toy_with(PreTokenizerChoice::Kind(PreTokenizerKind::Gpt2));
        prop_assert_eq!(gpt2.encode(&s, true).unwrap(), oracle(PreTokenizerKind::Gpt2).encode(&s, true));
    }

    #[test]
    fn matches_reference_oracle_on_any_string(s in any::<String>()) {
        prop_assert_eq!(toy().encode(&s, true).unwrap(), oracle(PreTokenizerKind::DigitsThenGpt2).encode(&s, true));
    }

    /// A caller-supplied pre-tokenizer is used as given: ByteLevel with its own GPT-2 regex equals `Gpt2`.
    #[test]
    fn override_pre_tokenizer(s in tricky_string()) {
        let custom = toy_with(PreTokenizerChoice::Override(ByteLevel::new(false, false, true).into()));
        prop_assert_eq!(custom.pre_tokenizer_kind(), None);
        prop_assert_eq!(custom.encode(&s, false).unwrap(), oracle(PreTokenizerKind::Gpt2).encode(&s, false));
    }

    /// Invariant 34: lossless round trip (the toy vocabulary has all 256 bytes).
    #[test]
    fn round_trip(s in any::<String>(), t in tricky_string()) {
        for text in [&s, &t] {
            prop_assert_eq!(&toy().decode(&toy().encode(text, false).unwrap(), false).unwrap(), text);
            prop_assert_eq!(&toy().decode(&toy().encode(text, true).unwrap(), false).unwrap(), text);
        }
    }

    /// Invariant 35: a token overlapping a `\p{N}` character lies within it.
    #[test]
    fn digits_isolated(s in tricky_string()) {
        let classes = CharClasses::new();
        let mut pos = 0;
        for id in toy().encode(&s, false).unwrap() {
            let end = pos + toy().token_bytes(id).unwrap().len();
            for (i, c) in s.char_indices() {
                let ce = i + c.len_utf8();
                if classes.is_number(c) && i < end && pos < ce {
                    prop_assert!(i <= pos && end <= ce, "token {} overlaps {:?} in {:?}", id, c, s);
                }
            }
            pos = end;
        }
        prop_assert_eq!(pos, s.len());
    }

    /// Invariant 36 (second half): no special id from text with `parse_special = false`.
    #[test]
    fn no_special_ids_from_user_text(s in tricky_string()) {
        prop_assert!(toy().encode(&s, false).unwrap().iter().all(|&id| !toy().is_special(id)));
    }

    /// The stream's pieces concatenate to `decode`, for arbitrary id sequences (broken UTF-8 included), and a
    /// piece is emitted only when complete.
    #[test]
    fn stream_equals_decode(ids in prop::collection::vec(0u32..600, 0..40), skip in any::<bool>()) {
        let tok = toy();
        let ids: Vec<u32> = ids.into_iter().map(|i| i % tok.vocab_size() as u32).collect();
        let mut stream = tok.decode_stream(skip);
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                prop_assert!(!piece.is_empty());
                out.push_str(&piece);
            }
            prop_assert!(stream.pending_bytes().len() < 4);
        }
        out.push_str(&stream.finish());
        prop_assert!(stream.pending_bytes().is_empty());
        prop_assert_eq!(out, tok.decode(&ids, skip).unwrap());
    }

    /// Streaming the encoding of valid text emits no U+FFFD and rebuilds the text.
    #[test]
    fn stream_valid_text(s in tricky_string()) {
        let tok = toy();
        let mut stream = tok.decode_stream(false);
        let mut out = String::new();
        for id in tok.encode(&s, true).unwrap() {
            out.extend(stream.step(id).unwrap());
        }
        prop_assert_eq!(stream.finish(), "");
        let replacement = char::REPLACEMENT_CHARACTER;
        prop_assert!(!out.contains(replacement) || s.contains(replacement));
        prop_assert_eq!(out, s);
    }
}

/// The token-cache key: equal for equal tokenizers, different when anything that changes the ids changes.
#[test]
fn fingerprint_tracks_everything_that_changes_ids() {
    let base = toy_with(PreTokenizerChoice::FromMetadata);
    let f = base.fingerprint();
    assert!(f.starts_with("gguf-bpe-v1:") && f.len() == "gguf-bpe-v1:".len() + 32, "{f}");
    assert_eq!(f, toy_with(PreTokenizerChoice::FromMetadata).fingerprint());
    // BOS insertion changes the ids of every text.
    let bos = base.clone().with_add_bos(!base.add_bos()).unwrap();
    assert_ne!(bos.fingerprint(), f);
    // Another pre-tokenizer.
    assert_ne!(toy_with(PreTokenizerChoice::Kind(PreTokenizerKind::Gpt2)).fingerprint(), f);
    // One merge fewer.
    let mut kvs = toy_kvs();
    let merges = kvs.iter().find(|(k, _)| k == "tokenizer.ggml.merges").unwrap().1.clone();
    if let Value::Array(mut items) = merges {
        items.values.pop();
        set(&mut kvs, "tokenizer.ggml.merges", Value::Array(items));
    } else {
        panic!("merges are an array");
    }
    assert_ne!(GgufTokenizer::from_gguf(&gguf(&kvs), PreTokenizerChoice::FromMetadata).unwrap().fingerprint(), f);
}
