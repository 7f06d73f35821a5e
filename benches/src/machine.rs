//! A description of the machine a report was measured on (Linux `/proc` and `/sys`; "unknown" elsewhere).

use std::fmt::Write as _;

/// What the report says about the machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model name from `/proc/cpuinfo`, with family/model/stepping when known.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// Physical cores (`cpu cores` × sockets) from `/proc/cpuinfo`, when known.
    pub physical_cores: Option<usize>,
    /// SIMD flags of interest present in `/proc/cpuinfo` (avx, avx2, fma, f16c, avx512f, ...).
    pub simd_flags: Vec<String>,
    /// Cache sizes of CPU 0 as "L1d 32K, L2 512K, ..." from `/sys`.
    pub caches: String,
    /// Total memory from `/proc/meminfo`.
    pub memory: String,
    /// Kernel release and architecture.
    pub os: String,
    /// `git rev-parse --short HEAD` plus "-dirty" when the tree has changes, if git is available.
    pub git: Option<String>,
    /// UTC time of the run, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// 1-minute load average when the run started (other processes compete for the cores when it is high).
    pub load_at_start: Option<f64>,
}

/// The 1-minute load average from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    read("/proc/loadavg")?.split_whitespace().next()?.parse().ok()
}

const FLAGS_OF_INTEREST: [&str; 9] =
    ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"];

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// One cache of cpu0 as Linux describes it under `/sys/devices/system/cpu/cpu0/cache`.
pub(crate) struct CacheInfo {
    /// 1, 2, 3, …
    pub level: String,
    /// "Data", "Instruction" or "Unified".
    pub kind: String,
    /// As Linux writes it, e.g. "32K", "480M".
    pub size: String,
}

impl CacheInfo {
    /// The size in bytes, if it parses.
    pub fn bytes(&self) -> Option<usize> {
        let s = self.size.as_str();
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: usize = digits.parse().ok()?;
        Some(match unit {
            "K" => n << 10,
            "M" => n << 20,
            "G" => n << 30,
            _ => n,
        })
    }
}

/// The caches of cpu0 (empty where Linux does not describe them).
pub(crate) fn cpu0_caches() -> Vec<CacheInfo> {
    (0..8)
        .filter_map(|i| {
            let base = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
            let field = |name: &str| read(&format!("{base}/{name}")).map(|v| v.trim().to_string());
            Some(CacheInfo { level: field("level")?, kind: field("type")?, size: field("size")? })
        })
        .collect()
}

fn cpuinfo_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// UTC `YYYY-MM-DD HH:MM` of `secs` since the Unix epoch (Howard Hinnant's civil-from-days).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}")
}

fn git_describe() -> Option<String> {
    let root = crate::workspace_root();
    let out =
        std::process::Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        s.push_str("-dirty");
    }
    Some(s)
}

impl Machine {
    /// Reads the description of this machine.
    pub fn detect() -> Machine {
        let info = read("/proc/cpuinfo").unwrap_or_default();
        let mut cpu = cpuinfo_field(&info, "model name").unwrap_or("unknown CPU").to_string();
        if let (Some(f), Some(m), Some(s)) =
            (cpuinfo_field(&info, "cpu family"), cpuinfo_field(&info, "model"), cpuinfo_field(&info, "stepping"))
        {
            let _ = write!(cpu, " (family {f}, model {m}, stepping {s})");
        }
        let flags: Vec<&str> = cpuinfo_field(&info, "flags").unwrap_or("").split_whitespace().collect();
        let simd_flags = FLAGS_OF_INTEREST.iter().filter(|f| flags.contains(f)).map(|f| f.to_string()).collect();
        let sockets = {
            let mut ids: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "physical id").map(|(_, v)| v.trim()))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len().max(1)
        };
        let physical_cores =
            cpuinfo_field(&info, "cpu cores").and_then(|v| v.parse::<usize>().ok()).map(|c| c * sockets);
        let caches = cpu0_caches()
            .iter()
            .map(|c| {
                let suffix = match c.kind.as_str() {
                    "Data" => "d",
                    "Instruction" => "i",
                    _ => "",
                };
                format!("L{}{suffix} {}", c.level, c.size)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let memory = read("/proc/meminfo")
            .and_then(|m| {
                let kb: f64 =
                    m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".into());
        let os = format!(
            "{} {} ({})",
            std::env::consts::OS,
            read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
            std::env::consts::ARCH
        );
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            physical_cores,
            simd_flags,
            caches: if caches.is_empty() { "unknown".into() } else { caches },
            memory,
            os,
            git: git_describe(),
            date: utc_date(secs),
            load_at_start: load_average(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13");
    }
}
