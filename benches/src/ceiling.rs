//! Roofline ceilings of this machine, measured in the same process as the kernels they judge.
//!
//! * **Compute**: [`fma_parallel`] runs a tight loop of [`FMA_CHAINS`] independent f32 FMA chains per thread on
//!   every thread of effllm's pool, and counts 2 flops per FMA lane, once with 8-lane AVX2 registers and, where the
//!   CPU has AVX-512, once with 16-lane ones; the ceiling is the faster of the two ([`measure_fma`]), since faer's
//!   GEMM uses AVX-512 where it exists (a server core with two 512-bit FMA units doubles the AVX2 rate). Scalar
//!   multiply-add without either. With FMA latency 4 and two FMA pipes (Zen 2/3/4, Skylake and later), 8 chains are
//!   the minimum to fill the pipes; 12 leave headroom and still fit the 16 ymm registers.
//! * **Memory**: over buffers of [`stream_bytes`] (256 MiB each, or twice the L3 where that is larger), a copy
//!   ([`MemBuffers::copy`], glibc `memcpy` per chunk) counted as bytes read + bytes written (the STREAM
//!   convention: write-allocate traffic is not counted), and a read-only streaming sum ([`MemBuffers::read`])
//!   counted as bytes read.
//!
//! The GEMV, attention-decode and quantized-GEMV targets compare against the **read** figure (those kernels only
//! read their weights / KV cache); softmax and RMSNorm, which read one tensor and write another of the same size,
//! compare against the **copy** figure.
//!
//! Ceilings are "best of repetitions" (the peak the machine showed), not medians.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Independent FMA accumulator chains per thread in the compute ceiling.
pub const FMA_CHAINS: usize = 12;
/// f32 lanes of one AVX2 register.
pub const LANES: usize = 8;

/// Flops of one thread's call of the AVX2 FMA kernel with `iters` iterations (2 per FMA lane).
pub fn fma_flops_per_thread(iters: u64) -> u64 {
    fma_flops_per_thread_with(FmaIsa::Avx2, iters)
}

/// The instruction set of an FMA kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FmaIsa {
    /// Scalar multiply-add (no AVX2/FMA).
    Scalar,
    /// 8-lane AVX2 FMA.
    Avx2,
    /// 16-lane AVX-512 FMA.
    Avx512,
}

impl FmaIsa {
    /// f32 lanes per instruction (8 for the scalar kernel, which runs 8 lanes per chain too).
    pub fn lanes(self) -> usize {
        match self {
            FmaIsa::Scalar | FmaIsa::Avx2 => LANES,
            FmaIsa::Avx512 => 2 * LANES,
        }
    }

    /// How the report names it ([`measure_fma`] keeps AVX-512 only where it beat AVX2).
    pub fn describe(self) -> &'static str {
        match self {
            FmaIsa::Scalar => "scalar (no AVX2/FMA)",
            FmaIsa::Avx2 => "8-lane AVX2",
            FmaIsa::Avx512 => "16-lane AVX-512 (faster here than 8-lane AVX2)",
        }
    }

    /// The kernels this CPU runs, in the order [`measure_fma`] tries them.
    pub fn available() -> Vec<FmaIsa> {
        let mut v = vec![if simd_available() { FmaIsa::Avx2 } else { FmaIsa::Scalar }];
        #[cfg(target_arch = "x86_64")]
        if simd_available() && std::is_x86_feature_detected!("avx512f") {
            v.push(FmaIsa::Avx512);
        }
        v
    }
}

/// Flops of one thread's call of the `isa` kernel with `iters` iterations.
pub fn fma_flops_per_thread_with(isa: FmaIsa, iters: u64) -> u64 {
    iters * (FMA_CHAINS * isa.lanes() * 2) as u64
}

/// Whether the AVX2 + FMA kernels run on this machine (run-time detection).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    // acc ← acc·a + b converges to b / (1 − a): no overflow, no denormals, and every FMA depends on the last
    // one of its chain, so nothing can be folded away.
    let a = _mm256_set1_ps(0.999_9);
    let b = _mm256_set1_ps(1e-4 * seed);
    let mut acc = [_mm256_set1_ps(seed); FMA_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = acc[0];
    for v in &acc[1..] {
        s = _mm256_add_ps(s, *v);
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds exactly 8 f32, the unaligned store writes 32 bytes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    // As fma_avx2, 16 lanes per register (32 zmm registers: the 12 chains fit with room to spare).
    let a = _mm512_set1_ps(0.999_9);
    let b = _mm512_set1_ps(1e-4 * seed);
    let mut acc = [_mm512_set1_ps(seed); FMA_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = acc[0];
    for v in &acc[1..] {
        s = _mm512_add_ps(s, *v);
    }
    _mm512_reduce_add_ps(s)
}

fn fma_scalar(iters: u64, seed: f32) -> f32 {
    let (a, b) = (0.999_9f32, 1e-4 * seed);
    let mut acc = [[seed; LANES]; FMA_CHAINS];
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// One thread's FMA kernel: `iters` iterations of [`FMA_CHAINS`] × 8-lane FMAs (AVX2, or scalar without it).
/// Returns a value that depends on every FMA (so the loop cannot be removed).
pub fn fma_kernel(iters: u64) -> f32 {
    fma_kernel_with(if simd_available() { FmaIsa::Avx2 } else { FmaIsa::Scalar }, iters)
}

/// [`fma_kernel`] with the given instruction set (one of [`FmaIsa::available`]; others fall back to scalar).
pub fn fma_kernel_with(isa: FmaIsa, iters: u64) -> f32 {
    let seed = black_box(1.0f32);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: AVX2 and FMA were detected at run time.
        FmaIsa::Avx2 if simd_available() => return unsafe { fma_avx2(iters, seed) },
        // SAFETY: AVX-512F was detected at run time.
        FmaIsa::Avx512 if std::is_x86_feature_detected!("avx512f") => return unsafe { fma_avx512(iters, seed) },
        _ => {}
    }
    let _ = isa;
    fma_scalar(iters, seed)
}

/// Runs [`fma_kernel`] once on every thread of effllm's pool ([`effllm_tensor::threads`]) and returns the wall
/// time and the total flops.
pub fn fma_parallel(iters: u64) -> (Duration, u64) {
    fma_parallel_with(if simd_available() { FmaIsa::Avx2 } else { FmaIsa::Scalar }, iters)
}

/// [`fma_parallel`] with the given instruction set.
pub fn fma_parallel_with(isa: FmaIsa, iters: u64) -> (Duration, u64) {
    effllm_tensor::threads::install(|| {
        let n = rayon::current_num_threads();
        let t = Instant::now();
        let r = rayon::broadcast(|_| fma_kernel_with(isa, iters));
        let dt = t.elapsed();
        black_box(r);
        (dt, fma_flops_per_thread_with(isa, iters) * n as u64)
    })
}

/// Iterations of the `isa` kernel that take about `target` on one thread.
pub fn calibrate_fma(isa: FmaIsa, target: Duration) -> u64 {
    calibrate(target, 1 << 14, 1 << 40, |iters| {
        let t = Instant::now();
        black_box(fma_kernel_with(isa, iters));
        t.elapsed()
    })
}

/// The amount of work (iterations, calls) that takes about `target`: `timed(count)` does `count` units and returns
/// their time; the count grows 4× from `start` until one batch takes an eighth of `target` (or the count reaches
/// `max`), then is scaled to `target`. At least 1.
pub fn calibrate(target: Duration, start: u64, max: u64, mut timed: impl FnMut(u64) -> Duration) -> u64 {
    let mut count = start.max(1);
    loop {
        let dt = timed(count);
        if dt >= target / 8 || count >= max {
            let scale = target.as_secs_f64() / dt.as_secs_f64().max(1e-9);
            return ((count as f64 * scale) as u64).max(1);
        }
        count *= 4;
    }
}

/// The best rate of `reps` runs of `pass`, which returns its time and the work it did (flops, bytes): work per
/// nanosecond, i.e. giga-units per second.
pub fn best_rate(reps: usize, mut pass: impl FnMut() -> (Duration, f64)) -> f64 {
    (0..reps.max(1))
        .map(|_| {
            let (dt, work) = pass();
            work / dt.as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Measured compute ceiling: best GFLOP/s of `reps` runs of about `per_rep` each, over every kernel of
/// [`FmaIsa::available`], and the kernel that reached it.
pub fn measure_fma(reps: usize, per_rep: Duration) -> (f64, FmaIsa) {
    let mut best = (0.0, FmaIsa::Scalar);
    for isa in FmaIsa::available() {
        let iters = calibrate_fma(isa, per_rep);
        let g = best_rate(reps, || {
            let (dt, flops) = fma_parallel_with(isa, iters);
            (dt, flops as f64)
        });
        if g > best.0 {
            best = (g, isa);
        }
    }
    best
}

/// f32 lanes per vector of the register-blocked probe × vectors per depth step (2 × 16 = 32 columns of C).
pub const PROBE_COLUMNS: usize = 32;
/// Broadcast values per depth step of the register-blocked probe (12 rows of C: 24 accumulators of 16 lanes).
pub const PROBE_ROWS: usize = 12;
/// Depth of one probe call, as a GEMM microkernel runs it over one packed panel pair.
pub const PROBE_DEPTH: usize = 256;
/// Broadcast panels the probe cycles through (192 KiB in all: they stream from L2 as a GEMM's packed panels do,
/// while the 32 KiB vector panel stays in L1).
#[cfg(target_arch = "x86_64")]
const PROBE_PANELS: usize = 16;

/// Flops of one call of the register-blocked probe.
pub const PROBE_FLOPS_PER_CALL: usize = 2 * PROBE_DEPTH * PROBE_COLUMNS * PROBE_ROWS;

/// One call of the probe: `c += Σ_d broadcasts[d] ⊗ vectors[d]` over [`PROBE_DEPTH`] steps, with the 12 × 32 block
/// of `c` held in 24 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn probe_call(vectors: &[f32], broadcasts: &[f32], c: &mut [f32; PROBE_ROWS * PROBE_COLUMNS]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; PROBE_ROWS];
    for (v, b) in vectors.chunks_exact(PROBE_COLUMNS).zip(broadcasts.chunks_exact(PROBE_ROWS)) {
        // SAFETY: `v` holds 32 f32, read as two unaligned 16-lane vectors.
        let (v0, v1) = unsafe { (_mm512_loadu_ps(v.as_ptr()), _mm512_loadu_ps(v.as_ptr().add(16))) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(b[r]);
            acc[0] = _mm512_fmadd_ps(x, v0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, v1, acc[1]);
        }
    }
    for (row, acc) in c.chunks_exact_mut(PROBE_COLUMNS).zip(&acc) {
        for (half, a) in row.chunks_exact_mut(16).zip(acc) {
            // SAFETY: `half` holds 16 f32; unaligned load and store.
            unsafe { _mm512_storeu_ps(half.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(half.as_ptr()), *a)) };
        }
    }
}

/// What one thread's FMA units reach in the loop of a GEMM microkernel, with its loads: best GFLOP/s of `reps` runs
/// of about `per_rep`, on the calling thread. The loop is the register blocking of BLIS-style AVX-512 kernels
/// (12 rows × 32 columns of C in 24 registers; per depth step 2 vector loads from a panel in L1 and 12 broadcasts
/// from panels streamed from L2). `None` without AVX-512, where the probe does not apply.
///
/// It bounds what a GEMM kernel of that blocking could reach on this core, below the pure FMA loop of
/// [`measure_fma`] (no loads) and above faer's AVX-512 kernel, whose blocking (6 vectors × 4 broadcasts: 6 vector
/// loads per 24 FMAs) is a different trade.
pub fn register_blocked_probe(reps: usize, per_rep: Duration) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // Values in [0.005, 0.015): the sums grow by ~0.03 per call, far from overflow for any run length.
        let fill = |len: usize, mul: usize| -> Vec<f32> {
            (0..len).map(|i| 0.005 + ((i * mul) % 1000) as f32 * 1e-5).collect()
        };
        let vectors = fill(PROBE_DEPTH * PROBE_COLUMNS, 7919);
        let broadcasts = fill(PROBE_PANELS * PROBE_DEPTH * PROBE_ROWS, 104_729);
        let panel = PROBE_DEPTH * PROBE_ROWS;
        let mut c = [0f32; PROBE_ROWS * PROBE_COLUMNS];
        let mut run = |calls: u64| {
            let t = Instant::now();
            for i in 0..calls as usize {
                let p = (i % PROBE_PANELS) * panel;
                // SAFETY: AVX-512F was detected at run time.
                unsafe { probe_call(&vectors, &broadcasts[p..p + panel], &mut c) };
            }
            t.elapsed()
        };
        let calls = calibrate(per_rep, 64, 1 << 30, &mut run);
        let best = best_rate(reps, || (run(calls), calls as f64 * PROBE_FLOPS_PER_CALL as f64));
        black_box(&c);
        return Some(best);
    }
    let _ = (reps, per_rep);
    None
}

/// Bytes of each memory-ceiling buffer and of the operands a "streamed" benchmark case rotates over:
/// [`MemBuffers::DEFAULT_BYTES`], or twice the L3 where that is larger (some server CPUs report an L3 of
/// hundreds of MiB), at most 2 GiB, so that the passes read DRAM, not cache.
/// Read from `/sys` once per process.
pub fn stream_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let l3 = crate::machine::cpu0_caches().iter().find(|c| c.level == "3").and_then(|c| c.bytes());
        l3.map_or(MemBuffers::DEFAULT_BYTES, |l3| (2 * l3).clamp(MemBuffers::DEFAULT_BYTES, 2 << 30))
    })
}

/// Chunk of a parallel memory pass: big enough that `memcpy` uses streaming stores, small enough to balance.
const CHUNK_BYTES: usize = 16 << 20;

/// Source and destination buffers of the memory ceilings, filled with a non-zero pattern by the pool's threads
/// (so every page is really backed, not the shared zero page).
#[derive(Debug)]
pub struct MemBuffers {
    src: Vec<u64>,
    dst: Vec<u64>,
}

impl MemBuffers {
    /// Default size of each buffer: 256 MiB.
    pub const DEFAULT_BYTES: usize = 256 << 20;

    /// Allocates and fills two buffers of `bytes` bytes each (rounded down to whole chunks of 16 MiB, at least one).
    pub fn new(bytes: usize) -> MemBuffers {
        let words_per_chunk = CHUNK_BYTES / 8;
        let words = (bytes / CHUNK_BYTES).max(1) * words_per_chunk;
        let mut src = vec![0u64; words];
        let mut dst = vec![0u64; words];
        effllm_tensor::threads::install(|| {
            src.par_chunks_mut(words_per_chunk).zip(dst.par_chunks_mut(words_per_chunk)).enumerate().for_each(
                |(c, (s, d))| {
                    for (i, (s, d)) in s.iter_mut().zip(d.iter_mut()).enumerate() {
                        let x = ((c * words_per_chunk + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                        *s = x;
                        *d = !x;
                    }
                },
            )
        });
        MemBuffers { src, dst }
    }

    /// Bytes of one buffer.
    pub fn bytes(&self) -> usize {
        self.src.len() * 8
    }

    /// Copies the source into the destination on the pool's threads. Returns the wall time and the bytes moved
    /// (read + written = 2 × [`MemBuffers::bytes`]).
    pub fn copy(&mut self) -> (Duration, u64) {
        let words = CHUNK_BYTES / 8;
        let (src, dst) = (&self.src, &mut self.dst);
        let dt = effllm_tensor::threads::install(|| {
            let t = Instant::now();
            dst.par_chunks_mut(words).zip(src.par_chunks(words)).for_each(|(d, s)| d.copy_from_slice(s));
            t.elapsed()
        });
        black_box(&self.dst);
        (dt, 2 * self.bytes() as u64)
    }

    /// Sums the source buffer on the pool's threads. Returns the wall time and the bytes read.
    pub fn read(&self) -> (Duration, u64) {
        let words = CHUNK_BYTES / 8;
        let src = &self.src;
        let (dt, sum) = effllm_tensor::threads::install(|| {
            let t = Instant::now();
            let s = src.par_chunks(words).map(read_sum).reduce(|| 0, u64::wrapping_add);
            (t.elapsed(), s)
        });
        black_box(sum);
        (dt, self.bytes() as u64)
    }
}

/// Wrapping sum of a slice, streaming it once (AVX2 with four independent accumulators when available).
pub fn read_sum(x: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { read_sum_avx2(x) };
    }
    let mut acc = [0u64; 4];
    let mut it = x.chunks_exact(4);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    it.remainder().iter().chain(&acc).fold(0, |s, v| s.wrapping_add(*v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn read_sum_avx2(x: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        let p = c.as_ptr() as *const __m256i;
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 16 u64 = 4 × 32 bytes; unaligned loads.
            *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(p.add(j)) });
        }
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s) };
    it.remainder().iter().chain(&lanes).fold(0, |s, v| s.wrapping_add(*v))
}

/// Best GB/s (10⁹ bytes per second) of `reps` runs of `pass`.
pub fn best_gbs(reps: usize, mut pass: impl FnMut() -> (Duration, u64)) -> f64 {
    best_rate(reps, || {
        let (dt, bytes) = pass();
        (dt, bytes as f64)
    })
}

/// The ceilings of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// Threads of effllm's pool during the measurement.
    pub threads: usize,
    /// Peak f32 GFLOP/s on `threads` threads (FMA loop).
    pub fma_gflops: f64,
    /// Peak f32 GFLOP/s of one thread.
    pub fma_gflops_1t: f64,
    /// Copy bandwidth on `threads` threads, GB/s counting bytes read + bytes written.
    pub copy_gbs: f64,
    /// Read-only streaming bandwidth on `threads` threads, GB/s of bytes read. The GEMV targets use this one.
    pub read_gbs: f64,
    /// Read-only streaming bandwidth of one thread.
    pub read_gbs_1t: f64,
    /// Bytes of each buffer of the memory passes.
    pub buffer_bytes: usize,
    /// The FMA kernel that reached [`Ceilings::fma_gflops`] ([`FmaIsa::Scalar`] where AVX2 + FMA are missing).
    pub fma_isa: FmaIsa,
}

/// How long the ceiling measurements run.
#[derive(Clone, Copy, Debug)]
pub struct CeilingConfig {
    /// Repetitions of the FMA measurement (the best one counts).
    pub reps: usize,
    /// Repetitions of each memory measurement (the best one counts; a pass takes only 15-40 ms, and the memory
    /// bandwidth of a shared host fluctuates more than its compute).
    pub mem_reps: usize,
    /// Duration of one FMA repetition.
    pub fma_time: Duration,
    /// Bytes of each memory buffer.
    pub buffer_bytes: usize,
}

impl Default for CeilingConfig {
    fn default() -> Self {
        CeilingConfig { reps: 7, mem_reps: 15, fma_time: Duration::from_millis(150), buffer_bytes: stream_bytes() }
    }
}

/// Measures every ceiling on the current pool (its thread count is `threads`) and on one thread.
pub fn measure(cfg: &CeilingConfig) -> Ceilings {
    let threads = effllm_tensor::threads::num_threads();
    let (fma_gflops, fma_isa) = measure_fma(cfg.reps, cfg.fma_time);
    let fma_gflops_1t =
        effllm_tensor::threads::with_num_threads(1, || measure_fma(cfg.reps.div_ceil(2), cfg.fma_time).0)
            .unwrap_or(f64::NAN);
    let mut bufs = MemBuffers::new(cfg.buffer_bytes);
    // One untimed pass of each to settle page tables and frequency.
    bufs.copy();
    bufs.read();
    let copy_gbs = best_gbs(cfg.reps, || bufs.copy());
    let read_gbs = best_gbs(cfg.reps, || bufs.read());
    let read_gbs_1t = effllm_tensor::threads::with_num_threads(1, || best_gbs(cfg.reps.div_ceil(2), || bufs.read()))
        .unwrap_or(f64::NAN);
    Ceilings {
        threads,
        fma_gflops,
        fma_gflops_1t,
        copy_gbs,
        read_gbs,
        read_gbs_1t,
        buffer_bytes: bufs.bytes(),
        fma_isa,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_scalar() {
        let x: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let want = x.iter().fold(0u64, |s, v| s.wrapping_add(*v));
        assert_eq!(read_sum(&x), want);
        let f = fma_kernel(100);
        let s = fma_scalar(100, 1.0);
        assert!((f - s).abs() <= 1e-3 * s.abs(), "{f} vs {s}");
        // Every kernel this CPU runs sums its lanes: twice the 8-lane sum for AVX-512's 16.
        for isa in FmaIsa::available() {
            let f = fma_kernel_with(isa, 100);
            let want = s * (isa.lanes() / LANES) as f32;
            assert!((f - want).abs() <= 1e-3 * want.abs(), "{isa:?}: {f} vs {want}");
        }
    }

    #[test]
    fn register_blocked_probe_matches_scalar_sums() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            let vectors: Vec<f32> = (0..PROBE_DEPTH * PROBE_COLUMNS).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
            let broadcasts: Vec<f32> = (0..PROBE_DEPTH * PROBE_ROWS).map(|i| (i % 11) as f32 * 0.5 - 2.5).collect();
            let mut c = [1f32; PROBE_ROWS * PROBE_COLUMNS];
            // SAFETY: AVX-512F was detected at run time.
            unsafe { probe_call(&vectors, &broadcasts, &mut c) };
            for r in 0..PROBE_ROWS {
                for j in 0..PROBE_COLUMNS {
                    let want: f64 = 1.0
                        + (0..PROBE_DEPTH)
                            .map(|d| broadcasts[d * PROBE_ROWS + r] as f64 * vectors[d * PROBE_COLUMNS + j] as f64)
                            .sum::<f64>();
                    let got = c[r * PROBE_COLUMNS + j] as f64;
                    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "c[{r}][{j}] = {got}, want {want}");
                }
            }
            assert!(register_blocked_probe(1, Duration::from_millis(2)).is_some_and(|g| g > 0.0));
            return;
        }
        // Without AVX-512 the probe does not apply and says so.
        assert_eq!(register_blocked_probe(1, Duration::from_millis(2)), None);
    }

    #[test]
    fn small_measurements_are_positive() {
        let cfg = CeilingConfig { reps: 1, mem_reps: 1, fma_time: Duration::from_millis(5), buffer_bytes: 16 << 20 };
        let c = measure(&cfg);
        assert!(c.fma_gflops > 0.0 && c.copy_gbs > 0.0 && c.read_gbs > 0.0, "{c:?}");
    }
}
