//! bench-all's own timer: warm up, size the batch so one sample takes a few milliseconds, take N samples and
//! report the median time per call (criterion is for the interactive `cargo bench` runs; bench-all wants one
//! number per case, fast).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How a case is timed.
#[derive(Clone, Copy, Debug)]
pub struct TimingConfig {
    /// Samples per case (the median counts).
    pub samples: usize,
    /// Warm-up time before sampling (at least one call).
    pub warmup: Duration,
    /// Target duration of one sample; fast calls are batched to reach it.
    pub sample_time: Duration,
    /// Soft cap on the sampling time of a case: slow cases take fewer samples (never fewer than 3).
    pub max_case_time: Duration,
}

impl TimingConfig {
    /// The default configuration: 21 samples of about 20 ms.
    pub fn quick() -> Self {
        TimingConfig {
            samples: 21,
            warmup: Duration::from_millis(150),
            sample_time: Duration::from_millis(20),
            max_case_time: Duration::from_secs(4),
        }
    }

    /// The `--full` configuration: 51 samples of about 40 ms.
    pub fn full() -> Self {
        TimingConfig {
            samples: 51,
            warmup: Duration::from_millis(400),
            sample_time: Duration::from_millis(40),
            max_case_time: Duration::from_secs(15),
        }
    }
}

/// The result of timing one case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Median time per call.
    pub median: Duration,
    /// Fastest sample, per call.
    pub min: Duration,
    /// Slowest sample, per call.
    pub max: Duration,
    /// Number of samples.
    pub samples: usize,
    /// Calls per sample.
    pub iters: u64,
}

impl Measurement {
    /// Median seconds per call.
    pub fn secs(&self) -> f64 {
        self.median.as_secs_f64()
    }

    /// GFLOP/s at the median, for `flops` per call.
    pub fn gflops(&self, flops: f64) -> f64 {
        flops / self.secs() / 1e9
    }

    /// GB/s (10⁹ bytes per second) at the median, for `bytes` per call.
    pub fn gbs(&self, bytes: f64) -> f64 {
        bytes / self.secs() / 1e9
    }

    /// Spread of the samples, `(max − min) / median`.
    pub fn spread(&self) -> f64 {
        (self.max.as_secs_f64() - self.min.as_secs_f64()) / self.secs()
    }
}

/// Times `f` under `cfg` and returns the median per call.
pub fn measure<R>(cfg: &TimingConfig, mut f: impl FnMut() -> R) -> Measurement {
    let start = Instant::now();
    let mut best = Duration::MAX;
    loop {
        let t = Instant::now();
        black_box(f());
        best = best.min(t.elapsed());
        if start.elapsed() >= cfg.warmup {
            break;
        }
    }
    let best = best.max(Duration::from_nanos(1));
    let iters = (cfg.sample_time.as_secs_f64() / best.as_secs_f64()).ceil().clamp(1.0, 1e9) as u64;
    let per_sample = best.as_secs_f64() * iters as f64;
    let samples = ((cfg.max_case_time.as_secs_f64() / per_sample) as usize).clamp(3, cfg.samples.max(3));
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            t.elapsed() / iters as u32
        })
        .collect();
    times.sort_unstable();
    Measurement { median: times[times.len() / 2], min: times[0], max: times[times.len() - 1], samples, iters }
}

/// Human-readable duration: "850 ns", "12.3 µs", "4.56 ms", "1.23 s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.3} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_something() {
        let cfg = TimingConfig {
            samples: 5,
            warmup: Duration::from_millis(1),
            sample_time: Duration::from_micros(200),
            max_case_time: Duration::from_millis(50),
        };
        let m = measure(&cfg, || (0..1000u64).map(black_box).sum::<u64>());
        assert!(m.min <= m.median && m.median <= m.max && m.samples >= 3);
        assert_eq!(fmt_duration(Duration::from_micros(1500)), "1.500 ms");
    }
}
