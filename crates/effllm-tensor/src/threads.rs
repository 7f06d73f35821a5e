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
