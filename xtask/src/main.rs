//! `cargo xtask <command>`: project automation in Rust instead of shell scripts (matklad's xtask pattern; std
//! only, keep it tiny). The alias lives in `.cargo/config.toml`.
//!
//! Commands:
//! * `ci` — runs `.ci/run` with bash, exactly as CI does;
//! * `bench-all [ARGS]` — `cargo run --release -p effllm-benches --bin bench-all -- ARGS` (report under
//!   `target/effllm-report/`; `--list`, `--only NAME`, `--full`, `--help`);
//! * `bench-check` — `cargo bench --workspace --no-run` (benches compile, none runs).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  ci                 run .ci/run (bash), as CI does
  bench-all [ARGS]   run every benchmark scenario and write target/effllm-report/report.md
                     (ARGS go to bench-all: --list, --only NAME, --full, --threads N, --help)
  bench-check        cargo bench --workspace --no-run (check that every bench compiles)
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
