//! The tokenizer on arbitrary bytes: read as a GGUF, building a tokenizer gives a tokenizer or a typed error and
//! never panics; read as text, a toy byte-level vocabulary round-trips it exactly in both special modes, never
//! produces a special id from user text, and agrees with the naive reference oracle; read as ids, the streaming
//! decoder agrees with `decode`. The body is `effllm_tokenizer::fuzz_tokenize` (the same body runs in
//! `cargo test -p effllm-tokenizer --test fuzz_seeds` over `corpus-seeds/tokenizer/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    effllm_tokenizer::fuzz_tokenize(data);
});
