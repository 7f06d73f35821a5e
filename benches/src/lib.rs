//! # effllm-benches
//!
//! Benchmarks of effllm, in two forms over the same inputs ([`inputs`]) and the same roofline ceilings
//! ([`ceiling`]):
//!
//! * **criterion benches** under `benches/benches/*.rs` for interactive work (`cargo bench -p effllm-benches
//!   --bench gemm`); they never run in CI, `cargo bench --no-run` (`cargo xtask bench-check`) keeps them compiling;
//! * **`bench-all`** (`cargo xtask bench-all [--full] [--only NAME] [--list]`), which measures the ceilings, runs
//!   every registered [`Scenario`] with its own median-of-N timer ([`timing`]), shows a progress bar and writes
//!   `target/effllm-report/report.md` plus one PNG (and SVG) plot per scenario.
//!
//! ## Adding a scenario
//!
//! Implement [`Scenario`] (a name, a description, the number of timed cases for the progress bar, and
//! `run(&mut Context) -> Result<ScenarioReport>`) and add it to [`registry`], the one place that lists them.
//! Inside `run`, time each case with [`Context::time`], compare against [`Context::ceilings`], and return
//! [`Table`]s, [`plot::PlotSpec`]s and, where the project has a goal, [`Target`]s.

#![deny(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub mod ceiling;
pub mod inputs;
pub mod machine;
pub mod plot;
pub mod report;
pub mod scenarios;
pub mod timing;

pub use ceiling::Ceilings;
pub use machine::Machine;
pub use plot::PlotSpec;
pub use timing::{Measurement, TimingConfig};

/// Boxed error of the bench harness.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result of the bench harness.
pub type Result<T> = std::result::Result<T, Error>;

/// Every scenario of `bench-all`, in report order. Later crates register theirs here.
pub fn registry() -> Vec<Box<dyn Scenario>> {
    use scenarios::tensor;
    vec![
        Box::new(tensor::Gemm),
        Box::new(tensor::Gemv),
        Box::new(tensor::Softmax),
        Box::new(tensor::RmsNorm),
        Box::new(tensor::AttentionDecode),
        Box::new(scenarios::model::SmolLm2),
        Box::new(scenarios::griffin::Griffin),
        Box::new(scenarios::specexec::SpecExec),
        Box::new(scenarios::train::Train),
        Box::new(scenarios::galore::GaloreScenario),
        Box::new(scenarios::megalodon::MegalodonVsLlama),
    ]
}

/// One benchmark scenario of `bench-all`: a family of timed cases that share a table and a plot.
pub trait Scenario {
    /// Short unique name, used by `--only` (lowercase, `-` or `_` separated).
    fn name(&self) -> &'static str;
    /// One line for `--list` and the report.
    fn description(&self) -> &'static str;
    /// Number of [`Context::time`] calls `run` will make under `options` (for the progress bar).
    fn cases(&self, options: &Options) -> usize;
    /// Runs every case and returns the tables and plots.
    fn run(&self, ctx: &mut Context) -> Result<ScenarioReport>;
}

/// Command-line options of `bench-all`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longer timings and larger shapes.
    pub full: bool,
    /// Threads of effllm's pool (default: all available cores).
    pub threads: usize,
    /// Only the scenarios with these names (all if empty).
    pub only: Vec<String>,
    /// Where the report goes (default `target/effllm-report`).
    pub out_dir: PathBuf,
    /// Skip the plots (tables only).
    pub no_plots: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            full: false,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            only: Vec::new(),
            out_dir: target_dir().join("effllm-report"),
            no_plots: false,
        }
    }
}

impl Options {
    /// The timer configuration these options call for.
    pub fn timing(&self) -> TimingConfig {
        if self.full { TimingConfig::full() } else { TimingConfig::quick() }
    }

    /// The ceiling-measurement configuration these options call for.
    pub fn ceiling_config(&self) -> ceiling::CeilingConfig {
        let mut c = ceiling::CeilingConfig::default();
        if self.full {
            c.reps = 15;
            c.mem_reps = 31;
            c.fma_time = Duration::from_millis(300);
        }
        c
    }
}

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The training corpus of the training scenarios: a pre-tokenized file from `EFFLLM_TOKENS` (written by `effllm
/// train --save-tokens`, for machines without the Rust docs, e.g. the GPU machines), else the Rust docs tokenized
/// here. `tag` prefixes the log lines.
pub fn training_corpus(cfg: &effllm_train::TrainConfig, ctx: &Context, tag: &str) -> Result<effllm_train::TrainData> {
    match std::env::var_os("EFFLLM_TOKENS") {
        Some(path) => {
            ctx.log(format!("{tag}: reading tokens from {}", path.to_string_lossy()));
            let file = effllm_train::TokenFile::read(std::path::Path::new(&path))?;
            Ok(file.into_train_data(cfg.data.seq_len)?)
        }
        None => Ok(effllm_train::rust_docs(cfg, &mut |l| ctx.log(format!("{tag}: {l}")))?),
    }
}

/// Environment variable naming the device of the scenarios that can run on a GPU (`cuda:0`, ...; default `cpu`).
pub const DEVICE_ENV: &str = "EFFLLM_DEVICE";

/// Environment variable naming a token-cache file (`effllm-data`'s `.tok` format) that holds the corpus test split
/// tokenized with the SmolLM2 tokenizer: the prompts of the `specexec` and `griffin` scenarios on machines without
/// the Rust docs. [`corpus_test_split`] logs where the file lies on a machine that has the docs.
pub const TEST_SPLIT_ENV: &str = "EFFLLM_TEST_SPLIT";

/// With `EFFLLM_GPU_ONLY=1` the scenarios that have a GPU part (`specexec`, `griffin`) run only that part: GPU
/// machines are lent by the minute, and the CPU sweeps take minutes there too.
pub const GPU_ONLY_ENV: &str = "EFFLLM_GPU_ONLY";

/// Whether [`GPU_ONLY_ENV`] asks to skip the CPU parts; an error when it does but the bench device is the CPU.
pub fn gpu_only(device: effllm_tensor::Device) -> Result<bool> {
    parse_gpu_only(std::env::var(GPU_ONLY_ENV).ok().as_deref(), device)
}

/// [`gpu_only`] for a given value of the variable (`None`: unset): only `"1"` turns it on.
pub fn parse_gpu_only(value: Option<&str>, device: effllm_tensor::Device) -> Result<bool> {
    let on = value == Some("1");
    if on && device.is_cpu() {
        return Err(
            format!("{GPU_ONLY_ENV}=1 needs {DEVICE_ENV}=cuda:N (there is no GPU part to run on the CPU)").into()
        );
    }
    Ok(on)
}

/// The device name of the scenarios that can run on a GPU (the training scenarios, `specexec`'s offloaded
/// comparison, `griffin`'s GPU decode): `EFFLLM_DEVICE` ([`DEVICE_ENV`], e.g. `cuda:0`, needs the `cuda` feature),
/// else `"cpu"`.
pub fn bench_device_name() -> String {
    std::env::var(DEVICE_ENV).unwrap_or_else(|_| "cpu".into())
}

/// [`bench_device_name`] parsed, with a clear error when it asks for CUDA and `bench-all` was built without its
/// `cuda` feature.
pub fn bench_device() -> Result<effllm_tensor::Device> {
    parse_bench_device(&bench_device_name())
}

/// Parses a device name for the scenarios: `cpu`, `cuda` or `cuda:N`. A CUDA device is an error unless this crate
/// was built with its `cuda` feature (the scenario would otherwise fail deep inside a model load).
pub fn parse_bench_device(name: &str) -> Result<effllm_tensor::Device> {
    let device = effllm_tensor::Device::parse(name).map_err(|e| format!("{DEVICE_ENV}={name:?}: {e}"))?;
    if matches!(device, effllm_tensor::Device::Cuda(_)) && !cfg!(feature = "cuda") {
        return Err(format!(
            "{DEVICE_ENV}={name} asks for a CUDA device, but bench-all was built without the `cuda` feature of \
             effllm-benches: build it with `cargo build --release -p effllm-benches --features cuda --bin bench-all`"
        )
        .into());
    }
    Ok(device)
}

/// The corpus test split tokenized with `tok` (the SmolLM2 tokenizer): read from the file named by
/// `EFFLLM_TEST_SPLIT` ([`TEST_SPLIT_ENV`]) if set, else the Rust docs (`effllm_data::Corpus::load_default`, which
/// honours `EFFLLM_CORPUS_DIR`) through the token cache, logging the cache file's path so it can be copied to a
/// machine without the docs. Every token is checked against the tokenizer's vocabulary. `tag` prefixes the logs.
pub fn corpus_test_split(
    ctx: &Context,
    tok: &effllm_tokenizer::GgufTokenizer,
    tag: &str,
) -> Result<effllm_data::TokenizedSplit> {
    use effllm_data::{CacheKey, Corpus, FnEncoder, Split, SplitConfig, TokenCache, TokenizedSplit};
    let data = match std::env::var_os(TEST_SPLIT_ENV) {
        Some(path) => {
            ctx.log(format!("{tag}: reading the test split tokens from {}", path.to_string_lossy()));
            let bytes =
                std::fs::read(&path).map_err(|e| format!("{TEST_SPLIT_ENV}={}: {e}", path.to_string_lossy()))?;
            TokenizedSplit::from_bytes(&bytes, None)
                .map_err(|e| format!("{TEST_SPLIT_ENV}={}: not a token-cache file: {e}", path.to_string_lossy()))?
        }
        None => {
            let encoder = FnEncoder::new(format!("gguf-bpe:{}:{}", tok.vocab_size(), "smollm2-q4_1"), |t: &str| {
                tok.encode(t, false).map_err(|e| Box::new(e) as effllm_data::EncodeError)
            });
            ctx.status(format!("{tag}: loading and tokenizing the corpus test split"));
            let corpus = Corpus::load_default()?;
            let cache = TokenCache::at_default()?;
            let cfg = SplitConfig::default();
            let (data, _) = cache.split(&corpus, Split::Test, &cfg, &encoder)?;
            let key = CacheKey::for_documents(&corpus.split(Split::Test, &cfg), &encoder, Split::Test.name());
            ctx.log(format!(
                "{tag}: test split tokens cached in {} (set {TEST_SPLIT_ENV} to a copy of it where the Rust docs are \
                 missing)",
                cache.path(&key).display()
            ));
            data
        }
    };
    let vocab = tok.vocab_size();
    if let Some(&bad) = data.tokens().iter().find(|&&t| t as usize >= vocab) {
        return Err(format!("{tag}: the test split holds token {bad}, outside the tokenizer's {vocab} ids").into());
    }
    Ok(data)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// What a scenario sees while it runs.
#[derive(Debug)]
pub struct Context {
    /// The run's options.
    pub options: Options,
    /// Ceilings measured at the start of this run.
    pub ceilings: Ceilings,
    /// The machine.
    pub machine: Machine,
    timing: TimingConfig,
    progress: ProgressBar,
}

impl Context {
    /// A context with already measured ceilings and a progress bar of `total_cases` steps (hidden when stderr is
    /// not a terminal).
    pub fn new(options: Options, ceilings: Ceilings, machine: Machine, total_cases: usize) -> Context {
        let progress = ProgressBar::with_draw_target(Some(total_cases as u64), ProgressDrawTarget::stderr());
        progress.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let timing = options.timing();
        Context { options, ceilings, machine, timing, progress }
    }

    /// Times one case (median of N, see [`timing::measure`]) and advances the progress bar.
    pub fn time<R>(&mut self, label: &str, f: impl FnMut() -> R) -> Measurement {
        self.progress.set_message(label.to_string());
        let m = timing::measure(&self.timing, f);
        self.progress.inc(1);
        m
    }

    /// Prints a line above the progress bar.
    pub fn log(&self, msg: impl AsRef<str>) {
        self.progress.println(msg);
    }

    /// Sets the progress message without timing anything (e.g. while preparing inputs).
    pub fn status(&self, msg: impl Into<String>) {
        self.progress.set_message(msg.into());
    }

    /// Clears the progress bar.
    pub fn finish(&self) {
        self.progress.finish_and_clear();
    }
}

/// A markdown table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Heading above the table.
    pub title: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows of cells (each as many as `columns`).
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these headers.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table { title: title.into(), columns: columns.iter().map(|c| c.to_string()).collect(), rows: Vec::new() }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// GitHub-flavoured markdown; `|` in cells is escaped; numeric columns are right-aligned.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = String::new();
        out.push_str(&format!("| {} |\n", self.columns.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        // Right-align columns whose cells all start with a digit (numbers, times, percentages).
        let numeric = |i: usize| {
            !self.rows.is_empty()
                && self
                    .rows
                    .iter()
                    .all(|r| r.get(i).is_some_and(|c| c.trim_start().starts_with(|ch: char| ch.is_ascii_digit())))
        };
        let align: Vec<&str> = (0..self.columns.len()).map(|i| if numeric(i) { "---:" } else { "---" }).collect();
        out.push_str(&format!("| {} |\n", align.join(" | ")));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        }
        out
    }
}

/// A stated performance goal and how this run did against it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// What is measured, e.g. "f32 GEMM 1024² vs FMA ceiling".
    pub what: String,
    /// Achieved fraction of the ceiling.
    pub ratio: f64,
    /// Required fraction.
    pub goal: f64,
}

impl Target {
    /// Whether the goal was met.
    pub fn met(&self) -> bool {
        self.ratio >= self.goal
    }
}

/// What a scenario hands back: tables, plots, notes and targets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScenarioReport {
    /// Section heading in the report.
    pub title: String,
    /// Paragraphs printed under the heading (how throughput is counted, which ceiling, caveats).
    pub notes: Vec<String>,
    /// Tables.
    pub tables: Vec<Table>,
    /// Plots (rendered by the report writer).
    pub plots: Vec<PlotSpec>,
    /// Goals checked by this scenario.
    pub targets: Vec<Target>,
}

/// "73.4%".
pub fn pct(ratio: f64) -> String {
    if ratio.is_finite() { format!("{:.1}%", ratio * 100.0) } else { "n/a".into() }
}

/// Three significant-ish digits: "1234", "123.4", "12.34", "1.234".
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_markdown() {
        let mut t = Table::new("t", &["a", "b|c"]);
        t.row(vec!["1".into(), "2".into()]);
        t.row(vec!["x".into(), "3 ms".into()]);
        assert_eq!(t.to_markdown(), "| a | b\\|c |\n| --- | ---: |\n| 1 | 2 |\n| x | 3 ms |\n");
    }

    #[test]
    fn registry_names_are_unique() {
        let mut names: Vec<_> = registry().iter().map(|s| s.name()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn gpu_only_needs_a_gpu_device() {
        use effllm_tensor::Device;
        assert!(!parse_gpu_only(None, Device::Cpu).unwrap());
        assert!(!parse_gpu_only(Some("0"), Device::Cuda(0)).unwrap());
        assert!(parse_gpu_only(Some("1"), Device::Cuda(0)).unwrap());
        assert!(parse_gpu_only(Some("1"), Device::Cpu).unwrap_err().to_string().contains("EFFLLM_DEVICE"));
    }

    #[test]
    fn bench_device_names() {
        assert_eq!(parse_bench_device("cpu").unwrap(), effllm_tensor::Device::Cpu);
        assert!(parse_bench_device("tpu").unwrap_err().to_string().contains("EFFLLM_DEVICE"));
        let cuda = parse_bench_device("cuda:0");
        if cfg!(feature = "cuda") {
            assert_eq!(cuda.unwrap(), effllm_tensor::Device::Cuda(0));
        } else {
            assert!(cuda.unwrap_err().to_string().contains("`cuda` feature"));
        }
    }
}
