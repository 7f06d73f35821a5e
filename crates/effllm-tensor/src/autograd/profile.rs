//! Where a backward sweep spends its time, per op: off by default (one relaxed atomic load per rule); when on,
//! each backward rule is timed with the device synchronised before and after it (so GPU work is attributed to
//! the rule that queued it), and totals accumulate until [`take`]. The forward passes of recorded ops (those whose
//! inputs require gradients) are timed the same way, into totals of their own ([`take_forward`]).
//!
//! ```
//! use effllm_tensor::{Device, Tensor, autograd::profile};
//! # fn main() -> effllm_tensor::Result<()> {
//! profile::set_enabled(true);
//! let w = Tensor::from_vec(vec![1.0f32, 2.0], &[2], &Device::Cpu)?.requires_grad();
//! w.sqr()?.sum_all()?.backward()?;
//! profile::set_enabled(false);
//! let rows = profile::take();
//! assert!(rows.iter().any(|r| r.op == "sqr" || r.op == "mul"));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::{Device, Result, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(false);
type Totals = Mutex<Option<HashMap<&'static str, (u64, f64)>>>;
static TOTALS: Totals = Mutex::new(None);
static FORWARD_TOTALS: Totals = Mutex::new(None);

/// Time spent in one op's backward rules.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// The op's name.
    pub op: &'static str,
    /// Rules run.
    pub calls: u64,
    /// Seconds, device work included.
    pub seconds: f64,
}

/// Turns the per-op timing of backward rules on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The backward totals since the last call, slowest first, and a reset.
pub fn take() -> Vec<OpTime> {
    drain(&TOTALS)
}

/// The forward totals of recorded ops since the last call, slowest first, and a reset.
pub fn take_forward() -> Vec<OpTime> {
    drain(&FORWARD_TOTALS)
}

fn drain(totals: &Totals) -> Vec<OpTime> {
    let map = totals.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut rows: Vec<OpTime> = map.into_iter().map(|(op, (calls, seconds))| OpTime { op, calls, seconds }).collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

fn sync(t: &Tensor) -> Result<()> {
    if let Device::Cuda(n) = t.device() {
        crate::cuda::device(n)?.synchronize()?;
    }
    Ok(())
}

pub(crate) fn start(g: &Tensor) -> Result<Option<Instant>> {
    if !ENABLED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    sync(g)?;
    Ok(Some(Instant::now()))
}

pub(crate) fn stop(timer: Option<Instant>, op: &'static str, g: &Tensor) -> Result<()> {
    record(&TOTALS, timer, op, g)
}

/// Runs `fwd` (the forward of recorded op `op` on `inputs`), timed when profiling is on.
pub(crate) fn forward(op: &'static str, inputs: &[&Tensor], fwd: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    if !ENABLED.load(Ordering::Relaxed) {
        return fwd();
    }
    let Some(first) = inputs.first() else { return fwd() };
    sync(first)?;
    let t0 = Instant::now();
    let out = fwd()?;
    record(&FORWARD_TOTALS, Some(t0), op, &out)?;
    Ok(out)
}

fn record(totals: &Totals, timer: Option<Instant>, op: &'static str, g: &Tensor) -> Result<()> {
    let Some(t0) = timer else { return Ok(()) };
    sync(g)?;
    let dt = t0.elapsed().as_secs_f64();
    let mut guard = totals.lock().unwrap_or_else(|e| e.into_inner());
    let e = guard.get_or_insert_with(HashMap::new).entry(op).or_insert((0, 0.0));
    e.0 += 1;
    e.1 += dt;
    Ok(())
}
