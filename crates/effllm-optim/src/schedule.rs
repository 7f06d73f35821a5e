//! Learning-rate schedules.

use crate::{Result, check};

/// Linear warmup then cosine decay:
///
/// - `s < warmup`: `lr(s) = peak · (s + 1) / warmup` (the first step already moves; `peak` at `s = warmup − 1`);
/// - `warmup ≤ s ≤ total`: `lr(s) = min + ½ (peak − min)(1 + cos(π (s − warmup) / (total − warmup)))`;
/// - `s > total`: `min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// The learning rate at the end of warmup.
    pub peak: f64,
    /// The floor the cosine decays to.
    pub min: f64,
    /// Warmup steps (0 = start at `peak`).
    pub warmup: u64,
    /// The step at which the decay reaches `min` (`> warmup`).
    pub total: u64,
}

impl WarmupCosine {
    /// A schedule after checking `0 ≤ min ≤ peak` (finite) and `warmup < total`.
    pub fn new(peak: f64, min: f64, warmup: u64, total: u64) -> Result<WarmupCosine> {
        const O: &str = "WarmupCosine";
        check(O, "peak", peak, peak.is_finite() && peak >= 0.0, "a finite value >= 0")?;
        check(O, "min", min, min.is_finite() && (0.0..=peak).contains(&min), "in [0, peak]")?;
        check(O, "warmup", warmup as f64, warmup < total, "< total")?;
        Ok(WarmupCosine { peak, min, warmup, total })
    }

    /// The learning rate of step `s` (0-based).
    pub fn lr(&self, s: u64) -> f64 {
        if s < self.warmup {
            return self.peak * (s + 1) as f64 / self.warmup as f64;
        }
        if s >= self.total {
            return self.min;
        }
        let progress = (s - self.warmup) as f64 / (self.total - self.warmup) as f64;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
