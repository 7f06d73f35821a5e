//! The fuzz body (`effllm_tokenizer::fuzz_tokenize`) over the committed seeds of the `tokenizer` fuzz target and on
//! proptest inputs, and the generator of those seeds
//! (`cargo test -p effllm-tokenizer --test fuzz_seeds -- --ignored write_fuzz_seeds`).

use std::path::{Path, PathBuf};

use effllm_tokenizer::{fuzz_tokenize, fuzz_vocab_gguf};
use proptest::prelude::*;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus-seeds/tokenizer")
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let text = |s: &str| s.as_bytes().to_vec();
    let mut truncated = fuzz_vocab_gguf();
    truncated.truncate(truncated.len() / 2);
    vec![
        ("empty", Vec::new()),
        ("hello", text("Hello world, the year 2024 had 366 days.")),
        ("chatml", text("<|im_start|>user\nWhat is 12*7?<|im_end|>\n<|im_start|>assistant\n")),
        ("spaces_digits", text("38  463 x =  42 \u{b2} \t\r\n\u{a0}\u{3000}")),
        ("unicode", text("日本語のテキスト café naïve e\u{301} 👨\u{200d}👩\u{200d}👧 🙂 Ⅻ ½ \u{10FFFF}")),
        ("code", text("fn main() {\n    println!(\"{}\", (1..=12).sum::<u32>());\n}\n")),
        ("invalid_utf8", vec![0xF0, 0x9F, 0x99, b'a', 0xC3, 0xFF, 0x80, b'<', b'|']),
        ("vocab_gguf", fuzz_vocab_gguf()),
        ("vocab_gguf_truncated", truncated),
    ]
}

#[test]
fn fuzz_seed_corpus() {
    let dir = seed_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        fuzz_tokenize(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= seeds().len(), "{n} seeds in {}", dir.display());
    for (_, data) in seeds() {
        fuzz_tokenize(&data);
    }
}

#[test]
#[ignore = "writes fuzz/corpus-seeds/tokenizer/"]
fn write_fuzz_seeds() {
    std::fs::create_dir_all(seed_dir()).unwrap();
    for (name, data) in seeds() {
        std::fs::write(seed_dir().join(name), data).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fuzz_body_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzz_tokenize(&data);
    }

    #[test]
    fn fuzz_body_on_mutated_vocabulary(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut data = fuzz_vocab_gguf();
        for (i, b) in flips {
            let i = i.index(data.len());
            data[i] = b;
        }
        fuzz_tokenize(&data);
    }
}
