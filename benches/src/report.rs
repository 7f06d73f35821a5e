//! Writes `report.md` and the plots of a `bench-all` run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Ceilings, Machine, Options, Result, ScenarioReport, Table, num, pct};

/// A finished scenario: its registry name, description, the report (or the error it failed with) and its time.
#[derive(Debug)]
pub struct Finished {
    /// Registry name.
    pub name: String,
    /// Registry description.
    pub description: String,
    /// The scenario's report, or its error message.
    pub outcome: std::result::Result<ScenarioReport, String>,
    /// Wall time of the scenario in seconds.
    pub secs: f64,
}

/// The machine and ceilings section, as markdown.
pub fn machine_section(machine: &Machine, ceilings: &Ceilings, end: Option<&Ceilings>, options: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Machine\n");
    let mut t = Table::new("", &["", ""]);
    t.row(vec!["CPU".into(), machine.cpu.clone()]);
    t.row(vec![
        "cores".into(),
        format!(
            "{} logical CPUs{}",
            machine.logical_cpus,
            machine.physical_cores.map(|c| format!(", {c} physical cores")).unwrap_or_default()
        ),
    ]);
    t.row(vec!["threads used".into(), format!("{} (effllm pool)", ceilings.threads)]);
    t.row(vec!["SIMD flags".into(), machine.simd_flags.join(" ")]);
    t.row(vec!["caches (cpu0)".into(), machine.caches.clone()]);
    t.row(vec!["memory".into(), machine.memory.clone()]);
    t.row(vec!["OS".into(), machine.os.clone()]);
    t.row(vec!["commit".into(), machine.git.clone().unwrap_or_else(|| "unknown".into())]);
    t.row(vec!["date (UTC)".into(), machine.date.clone()]);
    let load = |l: Option<f64>| l.map(|v| format!("{v:.2}")).unwrap_or_else(|| "unknown".into());
    t.row(vec![
        "load average (1 min)".into(),
        format!("{} at start, {} at end", load(machine.load_at_start), load(crate::machine::load_average())),
    ]);
    t.row(vec!["mode".into(), if options.full { "--full".into() } else { "default (quick)".into() }]);
    s.push_str(&t.to_markdown());
    let _ = writeln!(s, "\n## Ceilings (measured in this run)\n");
    let n = ceilings.threads;
    let end_col = format!("{n} threads, at the end (check)");
    let mut c = Table::new("", &["ceiling", &format!("{n} threads (used)"), &end_col, "1 thread", "how"]);
    let at_end = |f: fn(&Ceilings) -> f64, unit: &str| end.map(|e| format!("{} {unit}", num(f(e)))).unwrap_or_default();
    c.row(vec![
        "f32 FMA".into(),
        format!("{} GFLOP/s", num(ceilings.fma_gflops)),
        at_end(|c| c.fma_gflops, "GFLOP/s"),
        format!("{} GFLOP/s", num(ceilings.fma_gflops_1t)),
        format!(
            "{} independent {} FMA chains per thread, 2 flops per lane, best of reps",
            crate::ceiling::FMA_CHAINS,
            ceilings.fma_isa.describe()
        ),
    ]);
    c.row(vec![
        "memory copy".into(),
        format!("{} GB/s", num(ceilings.copy_gbs)),
        at_end(|c| c.copy_gbs, "GB/s"),
        "–".into(),
        format!("memcpy of {} MiB, bytes read + bytes written", ceilings.buffer_bytes >> 20),
    ]);
    c.row(vec![
        "memory read".into(),
        format!("{} GB/s", num(ceilings.read_gbs)),
        at_end(|c| c.read_gbs, "GB/s"),
        format!("{} GB/s", num(ceilings.read_gbs_1t)),
        format!("streaming sum over {} MiB, bytes read (the GEMV / attention ceiling)", ceilings.buffer_bytes >> 20),
    ]);
    s.push_str(&c.to_markdown());
    let _ = writeln!(
        s,
        "\nRatios use the ceilings measured at the start. The end-of-run measurement is a check: if it differs \
         much from the start, other processes competed for the cores or the memory during the run."
    );
    s
}

/// Renders the whole report into `dir` (plots included unless `options.no_plots`); returns the path of
/// `report.md`.
pub fn write(
    dir: &Path,
    machine: &Machine,
    ceilings: &Ceilings,
    ceilings_end: Option<&Ceilings>,
    options: &Options,
    finished: &[Finished],
    total_secs: f64,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# effllm benchmark report\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench-all{}` in {:.0} s. Times are medians per call; ratios are against the \
         ceilings measured at the start of the same run.\n",
        if options.full { " --full" } else { "" },
        total_secs
    );
    md.push_str(&machine_section(machine, ceilings, ceilings_end, options));

    let targets: Vec<_> = finished.iter().filter_map(|f| f.outcome.as_ref().ok()).flat_map(|r| &r.targets).collect();
    if !targets.is_empty() {
        let _ = writeln!(md, "\n## Targets\n");
        let mut t = Table::new("", &["target", "achieved", "goal", "status"]);
        for tg in targets {
            t.row(vec![
                tg.what.clone(),
                pct(tg.ratio),
                format!("≥ {}", pct(tg.goal)),
                if tg.met() { "met".into() } else { format!("MISSED by {:.1} points", (tg.goal - tg.ratio) * 100.0) },
            ]);
        }
        md.push_str(&t.to_markdown());
    }

    for f in finished {
        let _ = writeln!(md);
        match &f.outcome {
            Ok(r) => {
                let _ = writeln!(md, "## {} (`{}`)\n", r.title, f.name);
                let _ = writeln!(md, "{} ({:.0} s)\n", f.description, f.secs);
                for n in &r.notes {
                    let _ = writeln!(md, "{n}\n");
                }
                for t in &r.tables {
                    if !t.title.is_empty() {
                        let _ = writeln!(md, "### {}\n", t.title);
                    }
                    md.push_str(&t.to_markdown());
                    md.push('\n');
                }
                if !options.no_plots {
                    for p in &r.plots {
                        match crate::plot::render(p, dir) {
                            Ok(file) => {
                                let _ = writeln!(md, "![{}]({file})\n", p.title);
                            }
                            Err(e) => {
                                let _ = writeln!(md, "(plot {} failed: {e})\n", p.file_stem);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(md, "## `{}` FAILED\n\n```\n{e}\n```", f.name);
            }
        }
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}
