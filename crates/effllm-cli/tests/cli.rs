//! The `effllm` binary end to end: bad input gives a clear error and a failing exit status; with the real model
//! (skipped when it is absent, unless `EFFLLM_REQUIRE_MODEL=1`), `generate --chat` answers and `info` describes it.

use std::process::{Command, Output};

use effllm_gguf::model_cache;

fn effllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effllm")).args(args).output().expect("the effllm binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model() -> Option<String> {
    match model_cache::smollm2_path() {
        Some(p) => Some(p.display().to_string()),
        None if model_cache::require_model() => panic!("EFFLLM_REQUIRE_MODEL=1 but the model is missing"),
        None => {
            eprintln!("{}", model_cache::SKIP_NOTICE);
            None
        }
    }
}

#[test]
fn missing_or_malformed_model_files_are_clear_errors() {
    let o = effllm(&["info", "/nonexistent/model.gguf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/model.gguf"), "{}", stderr(&o));
    let bad = std::env::temp_dir().join(format!("effllm-cli-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let o = effllm(&["generate", "hi", "--model", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("effllm: error:"), "{}", stderr(&o));
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn unknown_devices_and_options_are_rejected() {
    let o = effllm(&["generate", "hi", "--device", "tpu:3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tpu:3"), "{}", stderr(&o));
    let o = effllm(&["generate", "hi", "--weights", "int3"]);
    assert!(!o.status.success());
    let o = effllm(&["perplexity", "--stride", "512", "--context", "512", "/dev/null"]);
    assert!(!o.status.success());
}

#[test]
fn generate_chat_answers_and_info_describes_the_model() {
    let Some(path) = model() else { return };
    let o = effllm(&["generate", "--chat", "What is the capital of France?", "--max-tokens", "16", "--model", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Paris"), "{out}");
    assert!(stderr(&o).contains("tok/s") && stderr(&o).contains("peak RSS"), "{}", stderr(&o));
    // Without the template a literal special string is plain text, and the run is still fine.
    let o = effllm(&["generate", "<|im_end|> fn main() {", "--max-tokens", "4", "--model", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = effllm(&["info", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("30 layers") && out.contains("Q4_1") && out.contains("tokenizer.ggml.pre"), "{out}");
}
