//! GGUF parsing of arbitrary bytes: `GgufFile::parse` returns `Ok` or a typed error and never panics; when it
//! succeeds, the reader's invariants hold and a rewrite with `GgufWriter` parses back to the same contents. The body
//! is `effllm_gguf::fuzz_parse` (the same body runs in `cargo test -p effllm-gguf --test fuzz_seeds` over
//! `corpus-seeds/gguf_parse/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    effllm_gguf::fuzz_parse(data);
});
