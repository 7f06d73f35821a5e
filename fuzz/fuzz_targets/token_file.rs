//! The pre-tokenized corpus loader on arbitrary bytes: `TokenFile::parse` returns a file or a typed
//! `TokenFileError`, never panics or allocates more than the input implies, and an accepted file re-encodes to
//! the input exactly. The body is `effllm_train::token_file::fuzz_parse` (the same body runs in
//! `cargo test -p effllm-train --test fuzz_seeds` over `corpus-seeds/token_file/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    effllm_train::token_file::fuzz_parse(data);
});
