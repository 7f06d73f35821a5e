//! The thread pool every parallel CPU kernel of effllm runs on.
//!
//! effllm keeps its own [`rayon`] pool instead of the global one, so that a benchmark or an application can pick
//! the number of threads at any time (rayon's global pool can be configured only once per process). Kernels call
//! [`install`]; faer's parallel GEMM and decompositions run inside it too, so they use the same threads.
//!
//! ```
//! effllm_tensor::threads::set_num_threads(1).unwrap();
//! assert_eq!(effllm_tensor::threads::num_threads(), 1);
//! let two = effllm_tensor::threads::with_num_threads(2, || effllm_tensor::threads::num_threads()).unwrap();
//! assert_eq!(two, 2);
//! ```
//!
//! # Many small ops in a row: run the loop inside one [`install`]
//!
//! A parallel op called from a thread outside the pool hands its work to the pool and sleeps until it is done: two
//! thread wake-ups per op. On the 2-core VM of `docs/benchmarks.md`, a parallel region of 16 trivial tasks costs
//! 4.6 µs back to back, 20 µs after a 50 µs pause and 84 µs after a 200 µs pause (medians of 2,000): as much as, or
//! more than, the work of a decode-sized GEMV (576 × 576 in Q4_1 is about 200 KiB). Inside [`install`] every op
//! runs inline on a worker and only the other workers are woken, so a decode loop belongs inside one call, as
//! `effllm-model`'s forward pass does:
//!
//! ```
//! use effllm_tensor::{Device, Tensor};
//! let w = Tensor::from_vec((0..576 * 576).map(|i| (i % 7) as f32).collect(), &[576, 576], &Device::Cpu).unwrap();
//! let y = effllm_tensor::threads::install(|| -> effllm_tensor::Result<Tensor> {
//!     let mut x = Tensor::from_vec(vec![1e-3f32; 576], &[1, 576], &Device::Cpu)?;
//!     for _ in 0..8 {
//!         x = x.linear(&w)?.affine(1e-3, 0.0)?; // each op runs inline on a worker
//!     }
//!     Ok(x)
//! })
//! .unwrap();
//! assert_eq!(y.shape(), &[1, 576]);
//! ```

use std::sync::{Arc, OnceLock, RwLock};

use crate::{Error, Result};

fn slot() -> &'static RwLock<Option<Arc<rayon::ThreadPool>>> {
    static POOL: OnceLock<RwLock<Option<Arc<rayon::ThreadPool>>>> = OnceLock::new();
    POOL.get_or_init(|| RwLock::new(None))
}

fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    if n == 0 {
        return Err(Error::InvalidArgument { op: "set_num_threads", msg: "thread count must be at least 1".into() });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("effllm-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::ThreadPool(e.to_string()))
}

/// Default thread count: `EFFLLM_NUM_THREADS` if set and valid, else the number of available cores.
fn default_threads() -> usize {
    std::env::var("EFFLLM_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The current pool, created on first use with `EFFLLM_NUM_THREADS` threads (default: all cores).
pub fn pool() -> Arc<rayon::ThreadPool> {
    if let Some(p) = slot().read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(p);
    }
    let mut guard = slot().write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return Arc::clone(p);
    }
    // A pool of one default-sized thread count; fall back to a single thread if the OS refuses more.
    let p = build(default_threads()).or_else(|_| build(1)).expect("a one-thread rayon pool can always be built");
    *guard = Some(Arc::clone(&p));
    p
}

/// Replaces the pool with one of `n` threads. Work already running finishes on the old pool.
pub fn set_num_threads(n: usize) -> Result<()> {
    let p = build(n)?;
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// Number of threads that parallel work started from here runs on: the enclosing pool's when called on a worker
/// (e.g. inside [`with_num_threads`]), else effllm's pool's.
pub fn num_threads() -> usize {
    if rayon::current_thread_index().is_some() {
        return rayon::current_num_threads();
    }
    pool().current_num_threads()
}

/// Runs `f` inside the current pool (rayon's parallel iterators and faer's `Par::rayon(0)` inside `f` use it), with
/// the caller's autograd grad mode ([`crate::autograd::is_grad_enabled`]).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Already on a worker of some pool (ours, or a `with_num_threads` pool): run inline, so nested kernels use
    // the pool the caller chose and never block on a second install.
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // The closure runs on a pool thread: carry the caller's grad mode (a thread-local) along.
    let grad = crate::autograd::is_grad_enabled();
    pool().install(move || crate::autograd::with_grad_enabled(grad, f))
}

/// Runs `f` on a temporary pool of `n` threads, leaving the process-wide setting untouched.
pub fn with_num_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    let grad = crate::autograd::is_grad_enabled();
    Ok(build(n)?.install(move || crate::autograd::with_grad_enabled(grad, f)))
}
