//! `bench-all`: measures the roofline ceilings, runs every registered scenario and writes
//! `target/effllm-report/report.md` with one plot per scenario. Usually started as `cargo xtask bench-all`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use effllm_benches::report::{self, Finished};
use effllm_benches::{Context, Machine, Options, Scenario, ceiling, num, registry};

const USAGE: &str = "\
usage: cargo xtask bench-all [OPTIONS]

Measures the FMA and memory ceilings, runs every scenario and writes target/effllm-report/report.md plus plots.

options:
  --list            list the scenarios and exit
  --only NAME       run only this scenario (repeatable, or comma-separated)
  --full            more samples and larger shapes (several times longer)
  --threads N       threads of effllm's pool (default: all cores)
  --out DIR         report directory (default: target/effllm-report)
  --no-plots        tables only
  -h, --help        this help";

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<(Options, bool)>, String> {
    let mut o = Options::default();
    let mut list = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--list" => list = true,
            "--full" => o.full = true,
            "--no-plots" => o.no_plots = true,
            "--only" => o.only.extend(value("--only")?.split(',').filter(|s| !s.is_empty()).map(String::from)),
            "--threads" => {
                let v = value("--threads")?;
                o.threads = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("bad thread count {v:?}"))?;
            }
            "--out" => o.out_dir = PathBuf::from(value("--out")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some((o, list)))
}

fn main() -> ExitCode {
    let (options, list) = match parse(std::env::args().skip(1)) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-all: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let all = registry();
    if list {
        for s in &all {
            println!("{:<12} {}", s.name(), s.description());
        }
        return ExitCode::SUCCESS;
    }
    for name in &options.only {
        if !all.iter().any(|s| s.name() == name) {
            let names: Vec<_> = all.iter().map(|s| s.name()).collect();
            eprintln!("bench-all: no scenario {name:?} (have: {})", names.join(", "));
            return ExitCode::from(2);
        }
    }
    let chosen: Vec<&dyn Scenario> = all
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| options.only.is_empty() || options.only.iter().any(|n| n == s.name()))
        .collect();
    if cfg!(debug_assertions) {
        eprintln!("bench-all: warning: this is a debug build; numbers are meaningless (use --release)");
    }
    if let Err(e) = effllm_tensor::threads::set_num_threads(options.threads) {
        eprintln!("bench-all: {e}");
        return ExitCode::FAILURE;
    }

    let start = Instant::now();
    let machine = Machine::detect();
    eprintln!("bench-all: {} | {} threads | measuring ceilings ...", machine.cpu, options.threads);
    if let Some(load) = machine.load_at_start.filter(|&l| l > 0.5) {
        eprintln!("bench-all: warning: load average {load:.2}: other processes are using the CPU; numbers will be low");
    }
    let ceilings = ceiling::measure(&options.ceiling_config());
    eprintln!(
        "bench-all: ceilings: FMA {} GFLOP/s ({} on 1 thread), copy {} GB/s, read {} GB/s ({} on 1 thread)",
        num(ceilings.fma_gflops),
        num(ceilings.fma_gflops_1t),
        num(ceilings.copy_gbs),
        num(ceilings.read_gbs),
        num(ceilings.read_gbs_1t)
    );
    let total = chosen.iter().map(|s| s.cases(&options)).sum();
    let mut ctx = Context::new(options.clone(), ceilings, machine.clone(), total);
    let mut finished = Vec::new();
    for s in &chosen {
        let t = Instant::now();
        let outcome = s.run(&mut ctx).map_err(|e| e.to_string());
        let secs = t.elapsed().as_secs_f64();
        match &outcome {
            Ok(_) => ctx.log(format!("bench-all: {} done in {secs:.1} s", s.name())),
            Err(e) => ctx.log(format!("bench-all: {} FAILED: {e}", s.name())),
        }
        finished.push(Finished { name: s.name().into(), description: s.description().into(), outcome, secs });
    }
    ctx.finish();
    let ceilings_end = (!chosen.is_empty()).then(|| {
        eprintln!("bench-all: measuring the ceilings again (stability check) ...");
        ceiling::measure(&options.ceiling_config())
    });
    if let Some(e) = &ceilings_end {
        eprintln!(
            "bench-all: ceilings at the end: FMA {} GFLOP/s, copy {} GB/s, read {} GB/s",
            num(e.fma_gflops),
            num(e.copy_gbs),
            num(e.read_gbs)
        );
    }
    let failed = finished.iter().any(|f| f.outcome.is_err());
    for f in &finished {
        if let Ok(r) = &f.outcome {
            for t in &r.targets {
                eprintln!(
                    "bench-all: target {}: {} (goal {}): {}",
                    t.what,
                    effllm_benches::pct(t.ratio),
                    effllm_benches::pct(t.goal),
                    if t.met() { "met" } else { "MISSED" }
                );
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    match report::write(&options.out_dir, &machine, &ceilings, ceilings_end.as_ref(), &options, &finished, elapsed) {
        Ok(path) => {
            println!("bench-all: report written to {} ({:.0} s)", path.display(), start.elapsed().as_secs_f64());
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("bench-all: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses() {
        let (o, list) = parse(args("--full --only gemm,gemv --only=softmax --threads 3")).unwrap().unwrap();
        assert!(o.full && !list);
        assert_eq!(o.only, ["gemm", "gemv", "softmax"]);
        assert_eq!(o.threads, 3);
        assert!(parse(args("--list")).unwrap().unwrap().1);
        assert!(parse(args("--help")).unwrap().is_none());
        assert!(parse(args("--bogus")).is_err());
        assert!(parse(args("--threads 0")).is_err());
    }
}
