//! `EFFLLM_CORPUS_DIR` and `EFFLLM_CORPUS_CACHE`. The only test of this binary, because it changes the process
//! environment (no other thread may read it meanwhile).

mod common;

use common::TempDir;
use effllm_data::{CACHE_DIR_ENV, CORPUS_DIR_ENV, DataError, TokenCache, docs_dir};

#[test]
fn environment_overrides() {
    let t = TempDir::new("env");
    let docs = t.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    // SAFETY: this binary has a single test, so no other thread reads or writes the environment concurrently.
    unsafe {
        std::env::set_var(CORPUS_DIR_ENV, &docs);
        std::env::set_var(CACHE_DIR_ENV, t.path().join("cache"));
    }
    assert_eq!(docs_dir(None).unwrap(), docs);
    // An explicit path still wins.
    let other = t.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    assert_eq!(docs_dir(Some(&other)).unwrap(), other);
    assert_eq!(TokenCache::default_dir().unwrap(), t.path().join("cache"));

    // A variable naming a missing directory is an error that says how to install the docs (no silent fallback).
    unsafe { std::env::set_var(CORPUS_DIR_ENV, t.path().join("missing")) };
    let err = docs_dir(None).unwrap_err();
    assert!(matches!(err, DataError::DocsNotFound { .. }));
    assert!(err.to_string().contains("rustup component add rust-docs") && err.to_string().contains(CORPUS_DIR_ENV));

    // Without the cache variable: XDG_CACHE_HOME (absolute only), then HOME.
    unsafe {
        std::env::remove_var(CACHE_DIR_ENV);
        std::env::set_var("XDG_CACHE_HOME", t.path().join("xdg"));
    }
    assert_eq!(TokenCache::default_dir().unwrap(), t.path().join("xdg/effllm/corpus"));
    unsafe {
        std::env::set_var("XDG_CACHE_HOME", "relative/path");
        std::env::set_var("HOME", t.path());
    }
    assert_eq!(TokenCache::default_dir().unwrap(), t.path().join(".cache/effllm/corpus"));
    unsafe {
        std::env::remove_var("XDG_CACHE_HOME");
        std::env::remove_var("HOME");
    }
    assert!(matches!(TokenCache::default_dir(), Err(DataError::NoCacheDir)));
}
