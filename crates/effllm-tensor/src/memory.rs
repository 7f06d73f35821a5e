//! Live tensor memory: bytes held by tensor storages, per kind of device, with a resettable high-water mark.
//!
//! Every storage a [`Tensor`](crate::Tensor) owns is counted when it is created and uncounted when its last
//! view is dropped, so the counters measure what training-memory reports need to tell apart: the bytes that
//! exist before a forward pass (parameters, gradients, optimizer state) and the peak during forward + backward
//! (the difference is the activations the graph keeps alive). Views share their storage and are not counted
//! twice; quantized weight blocks and buffers outside tensors (KV-cache arenas preallocated as tensors are
//! counted, pinned host buffers are not) follow the same rule. The counters are process-wide atomics: the numbers
//! include every thread's tensors.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Byte counters of one kind of device.
struct Counter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl Counter {
    const fn new() -> Counter {
        Counter { live: AtomicUsize::new(0), peak: AtomicUsize::new(0) }
    }

    fn add(&self, bytes: usize) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

static HOST: Counter = Counter::new();
static CUDA: Counter = Counter::new();

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of tensor storage in host memory now.
    pub host_live: usize,
    /// The most host bytes live at once since the last [`reset_peak`].
    pub host_peak: usize,
    /// Bytes of tensor storage on CUDA devices now (all ordinals together).
    pub cuda_live: usize,
    /// The most CUDA bytes live at once since the last [`reset_peak`].
    pub cuda_peak: usize,
}

impl MemoryStats {
    /// Live bytes on the kind of device `device` is.
    pub fn live_on(&self, device: &crate::Device) -> usize {
        if device.is_cpu() { self.host_live } else { self.cuda_live }
    }

    /// Peak bytes on the kind of device `device` is.
    pub fn peak_on(&self, device: &crate::Device) -> usize {
        if device.is_cpu() { self.host_peak } else { self.cuda_peak }
    }
}

/// The counters now.
pub fn stats() -> MemoryStats {
    MemoryStats {
        host_live: HOST.live.load(Ordering::Relaxed),
        host_peak: HOST.peak.load(Ordering::Relaxed),
        cuda_live: CUDA.live.load(Ordering::Relaxed),
        cuda_peak: CUDA.peak.load(Ordering::Relaxed),
    }
}

/// Restarts both high-water marks at the current live bytes.
pub fn reset_peak() {
    for c in [&HOST, &CUDA] {
        c.peak.store(c.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

pub(crate) fn on_alloc(cuda: bool, bytes: usize) {
    if cuda { CUDA.add(bytes) } else { HOST.add(bytes) }
}

pub(crate) fn on_free(cuda: bool, bytes: usize) {
    if cuda { CUDA.sub(bytes) } else { HOST.sub(bytes) }
}
