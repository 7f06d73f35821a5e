//! Shared test support: a toy byte-level BPE vocabulary in an in-memory GGUF, and the real SmolLM2 tokenizer.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use effllm_gguf::{GgufFile, GgufWriter, ReadOptions, Value, ValueType, model_cache};
use effllm_tokenizer::reference::{CharClasses, split_digits, split_gpt2};
use effllm_tokenizer::{GgufTokenizer, PreTokenizerChoice, byte_level};

/// Control tokens of the toy vocabulary (ids 0..4), SmolLM2-like.
pub const TOY_SPECIALS: [&str; 4] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"];

/// Text the toy merges are learned from: English, code, digits, CJK, accents, emoji.
const CORPUS: &str = "The year 2024 had 366 days. Hello world, hello there! I'm you're we'll they'd.
fn main() { let x = 42; println!(\"{x}\"); } def f(x):\n    return x**2\n
日本語のテキスト café naïve résumé 🙂 👍🏽 the the the then there these those this that
    indented\tline\r\n  two  spaces 3.14159 1234567890 x=1+2 <tag attr=\"v\">text</tag>";

/// A tiny BPE trainer (most frequent adjacent pair, ties broken by the smaller pair) over the SmolLM2
/// pre-tokenization of [`CORPUS`]: `n_merges` merges as `"a b"` strings, and the new tokens in order.
fn train(n_merges: usize) -> (Vec<String>, Vec<String>) {
    let classes = CharClasses::new();
    let table = byte_level::byte_to_char_table();
    let mut words: HashMap<Vec<String>, usize> = HashMap::new();
    for chunk in split_digits(CORPUS, &classes) {
        for piece in split_gpt2(chunk, &classes) {
            let syms = byte_level::bytes_to_token(piece.as_bytes(), &table).chars().map(String::from).collect();
            *words.entry(syms).or_default() += 1;
        }
    }
    let mut merges = Vec::new();
    let mut new_tokens = Vec::new();
    for _ in 0..n_merges {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        let Some(best) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0))) else { break };
        let (a, b) = best.0;
        let joined = format!("{a}{b}");
        merges.push(format!("{a} {b}"));
        new_tokens.push(joined.clone());
        words = words
            .into_iter()
            .map(|(w, n)| {
                let mut out: Vec<String> = Vec::with_capacity(w.len());
                for s in w {
                    if out.last() == Some(&a) && s == b {
                        out.pop();
                        out.push(joined.clone());
                    } else {
                        out.push(s);
                    }
                }
                (out, n)
            })
            .fold(HashMap::new(), |mut m, (w, n)| {
                *m.entry(w).or_default() += n;
                m
            });
    }
    (merges, new_tokens)
}

/// The toy vocabulary's metadata: specials (type 3) at ids 0..4, the 256 byte-level characters, then the learned
/// tokens; `tokenizer.ggml.pre = "smollm"`; BOS 1, EOS 2, unknown 0, padding 2; no BOS/EOS insertion; SmolLM2's
/// chat template.
pub fn toy_kvs() -> Vec<(String, Value)> {
    static TRAINED: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
    let (merges, new_tokens) = TRAINED.get_or_init(|| train(300));
    let mut tokens: Vec<String> = TOY_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_level::byte_to_char_table().iter().map(|c| c.to_string()));
    tokens.extend(new_tokens.iter().cloned());
    let mut types = vec![3i32; TOY_SPECIALS.len()];
    types.resize(tokens.len(), 1);
    vec![
        ("general.architecture".into(), "llama".into()),
        ("llama.vocab_size".into(), Value::U32(tokens.len() as u32)),
        ("tokenizer.ggml.model".into(), "gpt2".into()),
        ("tokenizer.ggml.pre".into(), "smollm".into()),
        ("tokenizer.ggml.tokens".into(), Value::string_array(&tokens)),
        ("tokenizer.ggml.token_type".into(), Value::array(ValueType::I32, types)),
        ("tokenizer.ggml.merges".into(), Value::string_array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), SMOLLM2_TEMPLATE.into()),
    ]
}

/// SmolLM2-135M-Instruct's `tokenizer.chat_template` (as in its tokenizer_config.json).
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Replaces (or adds) `key`.
pub fn set(kvs: &mut Vec<(String, Value)>, key: &str, value: impl Into<Value>) {
    let value = value.into();
    match kvs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => kvs.push((key.to_string(), value)),
    }
}

/// Removes `key`.
pub fn remove(kvs: &mut Vec<(String, Value)>, key: &str) {
    kvs.retain(|(k, _)| k != key);
}

/// An in-memory GGUF holding exactly `kvs`.
pub fn gguf(kvs: &[(String, Value)]) -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.add(k.clone(), v.clone());
    }
    let bytes = w.to_bytes().expect("writer");
    GgufFile::parse(&bytes, &ReadOptions::default()).expect("reader")
}

/// The toy tokenizer (built once per test binary).
pub fn toy() -> &'static GgufTokenizer {
    static TOY: OnceLock<GgufTokenizer> = OnceLock::new();
    TOY.get_or_init(|| GgufTokenizer::from_gguf(&gguf(&toy_kvs()), PreTokenizerChoice::FromMetadata).expect("toy"))
}

/// The real SmolLM2 file, or `None` (after printing the skip notice) when it is absent; panics if absent while
/// `EFFLLM_REQUIRE_MODEL=1`.
pub fn smollm2_file() -> Option<&'static GgufFile> {
    static FILE: OnceLock<Option<GgufFile>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        model_cache::smollm2_path()
            .map(|p| GgufFile::open(&p, &ReadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    });
    if file.is_none() {
        assert!(
            !model_cache::require_model(),
            "EFFLLM_REQUIRE_MODEL=1 but the SmolLM2 GGUF was not found (EFFLLM_MODEL={:?}, default directory {:?})",
            std::env::var_os(model_cache::MODEL_ENV),
            model_cache::default_dir()
        );
        println!("{}", model_cache::SKIP_NOTICE);
    }
    file.as_ref()
}

/// The real SmolLM2 tokenizer (built once per test binary), or `None` as [`smollm2_file`].
pub fn smollm2() -> Option<&'static GgufTokenizer> {
    static TOK: OnceLock<Option<GgufTokenizer>> = OnceLock::new();
    let file = smollm2_file()?;
    TOK.get_or_init(|| {
        Some(GgufTokenizer::from_gguf(file, PreTokenizerChoice::FromMetadata).expect("SmolLM2 tokenizer"))
    })
    .as_ref()
}

/// A proptest strategy for strings heavy in digits, white space, punctuation, non-ASCII letters and numerals,
/// emoji, combining marks and special-token fragments.
pub fn tricky_string() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let atoms: Vec<&'static str> = vec![
        "0",
        "1",
        "7",
        "42",
        "2024",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2009}",
        "a",
        "Z",
        "the",
        " the",
        "Hello",
        "'s",
        "'re",
        "'ll",
        "'S",
        "'",
        "\"",
        ".",
        ",",
        "!",
        "?",
        "*",
        "=",
        "+",
        "-",
        "(",
        ")",
        "{",
        "}",
        "<",
        ">",
        "|",
        "_",
        "/",
        "\\",
        "#",
        "é",
        "ï",
        "e\u{301}",
        "\u{308}",
        "ß",
        "日本",
        "語",
        "の",
        "テ",
        "한",
        "ж",
        "Ω",
        "٣",
        "४",
        "²",
        "½",
        "Ⅻ",
        "①",
        "🙂",
        "👍🏽",
        "👨\u{200d}👩\u{200d}👧",
        "\u{fe0f}",
        "\u{200b}",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<repo_name>",
        "<|im_",
        "im_end|>",
        "<|",
        "|>",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\u{feff}",
        "\u{1F600}",
        "𝟘",
        "\u{10FFFF}",
    ];
    prop::collection::vec(prop::sample::select(atoms), 0..24).prop_map(|v| v.concat())
}
