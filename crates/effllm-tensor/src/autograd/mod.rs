//! Reverse-mode automatic differentiation over [`Tensor`] ops.
//!
//! A tensor is *tracked* when it is a leaf marked with [`Tensor::requires_grad`] or was produced, with grad mode
//! on, by an op one of whose inputs was tracked. A tracked tensor carries a graph node: a unique [`TensorId`],
//! the op's backward rule (a closure holding exactly what the rule needs, e.g. the softmax output) and the nodes of
//! its inputs. An untracked tensor carries `None`, and an op whose inputs are all untracked pays one `None` check
//! per input: inference never touches the graph machinery.
//!
//! [`Gradients::accumulate`] (or [`Tensor::backward`]) runs the reverse sweep from a root: it counts, for every
//! node reachable from the root, how many reachable nodes consume it, then processes nodes in an order where a
//! node runs only after all its consumers have contributed (Kahn's algorithm on the reversed graph). A leaf's
//! gradient is therefore final the moment the leaf is reached, which is when the *gradient-ready callback* of
//! [`Gradients::accumulate_with`] fires (GaLore's layer-wise update frees each gradient right there). Backward
//! rules are written with `Tensor` ops, so they run on whatever device the forward ran on; they run with grad
//! mode off (no higher-order gradients). Each rule runs once: the sweep consumes the graph and frees the saved
//! tensors as it goes, and a second sweep over the same graph is [`Error::GraphConsumed`].
//!
//! Grad mode is per thread: [`no_grad`] turns it off for a closure. [`threads::install`](crate::threads::install)
//! and [`threads::with_num_threads`](crate::threads::with_num_threads) carry the caller's mode onto the pool
//! thread that runs the closure; code that spawns its own rayon work that calls ops should wrap it in
//! [`with_grad_enabled`] with the mode read by [`is_grad_enabled`] on the spawning thread.
//!
//! [`checkpoint`] trades compute for memory: it keeps only a block's inputs and recomputes the block's forward
//! during the backward sweep.
//!
//! ```
//! use effllm_tensor::{Device, Tensor};
//! # fn main() -> effllm_tensor::Result<()> {
//! let w = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], &Device::Cpu)?.requires_grad();
//! let x = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], &[3], &Device::Cpu)?;
//! let loss = w.mul(&x)?.sqr()?.sum_all()?; // Σ (wᵢxᵢ)²
//! let grads = loss.backward()?;
//! let g = grads.get(&w).unwrap().to_vec::<f64>()?; // 2 wᵢ xᵢ²
//! assert_eq!(g, vec![0.5, 4.0, 24.0]);
//! # Ok(()) }
//! ```

mod engine;
pub(crate) mod kernels;
pub mod profile;
pub(crate) mod rules;

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use engine::{Gradients, checkpoint};

use crate::{DType, Device, Error, Result, Tensor};

/// The identity of a tracked tensor's graph node: stable across clones, unique within the process. Gradients are
/// keyed by the id of the leaf they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw number (for logs and maps keyed by integers).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A backward rule: given the gradient of the op's output and which inputs need a gradient, returns one optional
/// gradient per input (same shape, dtype and device as that input).
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// The inputs and rule of a non-leaf node; taken (and dropped) when the sweep runs the rule.
pub(crate) struct Edges {
    pub(crate) parents: Vec<Option<Arc<Node>>>,
    pub(crate) backward: BackwardFn,
}

/// A node of the graph: one per tracked tensor (shared by its clones and views of the same value).
pub(crate) struct Node {
    pub(crate) id: TensorId,
    pub(crate) op: &'static str,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// `None` for a leaf, and for a non-leaf whose rule has already run.
    pub(crate) edges: Mutex<Option<Edges>>,
}

impl Node {
    pub(crate) fn is_leaf(&self) -> bool {
        self.op == LEAF
    }
}

impl Drop for Node {
    /// Drops the graph behind this node iteratively: a long chain of ops (thousands of nodes, e.g. a graph built
    /// and then discarded without a backward) would otherwise recurse once per node and could overflow a thread's
    /// stack.
    fn drop(&mut self) {
        let edges = self.edges.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let mut stack: Vec<Arc<Node>> = edges.map(|e| e.parents.into_iter().flatten().collect()).unwrap_or_default();
        while let Some(p) = stack.pop() {
            // Only the last owner unlinks the node's inputs; `node` then drops with no edges left.
            if let Ok(mut node) = Arc::try_unwrap(p)
                && let Some(e) = node.edges.get_mut().unwrap_or_else(|e| e.into_inner()).take()
            {
                stack.extend(e.parents.into_iter().flatten());
            }
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("op", &self.op).finish_non_exhaustive()
    }
}

const LEAF: &str = "leaf";

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph (on unless inside [`no_grad`]).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Runs `f` with grad mode set to `enabled` on this thread, restoring the previous mode afterwards (also when `f`
/// panics).
pub fn with_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// Runs `f` without recording: ops inside return untracked tensors even from tracked inputs (evaluation,
/// optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_enabled(false, f)
}

impl Tensor {
    /// This tensor as a leaf that requires a gradient: same storage, a fresh [`TensorId`]. A tracked non-leaf
    /// becomes a new leaf cut from its graph.
    pub fn requires_grad(self) -> Tensor {
        let node = Node {
            id: TensorId::fresh(),
            op: LEAF,
            shape: self.shape().to_vec(),
            dtype: self.dtype(),
            device: self.device(),
            edges: Mutex::new(None),
        };
        Tensor { node: Some(Arc::new(node)), ..self }
    }

    /// The same values without a graph node (shares the storage).
    pub fn detach(&self) -> Tensor {
        Tensor { storage: Arc::clone(&self.storage), layout: self.layout.clone(), node: None }
    }

    /// Whether this tensor carries a graph node (a requires-grad leaf or a value computed from one).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }

    /// Whether this is a leaf that requires a gradient.
    pub fn is_leaf(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.is_leaf())
    }

    /// The id of this tensor's graph node (`None` when untracked). Clones share it.
    pub fn id(&self) -> Option<TensorId> {
        self.node.as_ref().map(|n| n.id)
    }

    /// Reverse sweep from this scalar (one-element) tensor: the gradient of every leaf it depends on.
    pub fn backward(&self) -> Result<Gradients> {
        let mut g = Gradients::new();
        g.accumulate(self)?;
        Ok(g)
    }

    /// Replaces the values with `data`'s (same shape, dtype and device), keeping this tensor's graph identity:
    /// the update step of an optimizer. `data` is taken as a detached value.
    pub fn replace_data(&mut self, data: &Tensor) -> Result<()> {
        const OP: &str = "replace_data";
        self.check_same_dtype(OP, data)?;
        if self.shape() != data.shape() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: data.shape().to_vec() });
        }
        self.storage = Arc::clone(&data.storage);
        self.layout = data.layout.clone();
        Ok(())
    }
}

/// Whether an op over `inputs` must record: an input is tracked and grad mode is on. The `None` checks come first,
/// so untracked inputs never read the thread-local.
#[inline]
pub(crate) fn tracking(inputs: &[&Tensor]) -> bool {
    inputs.iter().any(|t| t.node.is_some()) && is_grad_enabled()
}

/// Runs an op: `fwd` computes the value; when an input is tracked (and grad mode is on) the value is computed with
/// grad mode off and gets a node whose rule `bwd(&value)` builds (the value passed in is detached).
#[inline]
pub(crate) fn op(
    name: &'static str,
    inputs: &[&Tensor],
    fwd: impl FnOnce() -> Result<Tensor>,
    bwd: impl FnOnce(&Tensor) -> Result<BackwardFn>,
) -> Result<Tensor> {
    if !tracking(inputs) {
        return fwd();
    }
    let out = no_grad(|| profile::forward(name, inputs, fwd))?.detach();
    let rule = bwd(&out)?;
    Ok(attach(out, name, inputs.iter().map(|t| t.node.clone()).collect(), rule))
}

/// Gives `out` (detached) a node with `parents` and `backward`.
pub(crate) fn attach(out: Tensor, name: &'static str, parents: Vec<Option<Arc<Node>>>, backward: BackwardFn) -> Tensor {
    let node = Node {
        id: TensorId::fresh(),
        op: name,
        shape: out.shape().to_vec(),
        dtype: out.dtype(),
        device: out.device(),
        edges: Mutex::new(Some(Edges { parents, backward })),
    };
    Tensor { node: Some(Arc::new(node)), ..out }
}

/// Error for an op without a backward rule applied to a tracked input.
pub(crate) fn not_differentiable(op: &'static str, inputs: &[&Tensor]) -> Result<()> {
    if tracking(inputs) {
        return Err(Error::NotDifferentiable { op, reason: "the op has no backward rule".into() });
    }
    Ok(())
}

/// [`Tensor::linear_q`] that records a gradient for `x`: `dx = dy · W` with `W` dequantized to f32 in the backward
/// (on the host, then moved to `x`'s device). The quantized weight itself gets no gradient: ggml blocks are not a
/// trainable representation (train dense weights and quantize afterwards).
pub fn linear_q(x: &Tensor, w: &crate::quant::QWeight) -> Result<Tensor> {
    let (n, k) = (w.n_rows(), w.n_cols());
    let matrix = w.matrix().clone();
    op(
        "linear_q",
        &[x],
        || x.linear_q(w),
        |_| {
            let dtype = x.dtype();
            Ok(Box::new(move |g: &Tensor, _: &[bool]| {
                let wd = Tensor::from_vec(matrix.dequantize(), &[n, k], &Device::Cpu)?.to_device(&g.device())?;
                let gx = g.to_dtype(DType::F32)?.matmul_2d_any(&wd)?.to_dtype(dtype)?;
                Ok(vec![Some(gx)])
            }) as BackwardFn)
        },
    )
}

impl Tensor {
    /// `[.., n] × [n, k] → [.., k]` (the leading dimensions flattened for the product).
    fn matmul_2d_any(&self, w: &Tensor) -> Result<Tensor> {
        let n = w.shape()[0];
        let rows = self.elem_count() / n.max(1);
        let mut shape = self.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = w.shape()[1];
        self.reshape(&[rows, n])?.matmul(w)?.reshape(&shape)
    }
}

/// The backward rule of a [`custom_op`]: given the gradient of the op's output and, per input, whether that input
/// needs a gradient, returns one optional gradient per input (the input's shape; dtype and device are converted
/// to the input's if they differ). It runs with grad mode off.
pub type CustomBackward = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// Records an op defined outside this crate, with its own backward rule: how technique crates add a differentiable
/// primitive (an FFT convolution, a fused normalisation) without editing this crate's own backward rules.
///
/// `forward` computes the value. When an input is tracked and grad mode is on, `forward` runs with grad mode off,
/// and `backward(&value)` (the value detached, for rules that reuse it) builds the rule that the reverse sweep
/// calls once. Otherwise nothing is recorded and `backward` is never called. The sweep checks that each returned
/// gradient has its input's shape ([`Error::Autograd`] otherwise).
///
/// ```
/// use effllm_tensor::autograd::{CustomBackward, custom_op};
/// use effllm_tensor::{Device, Tensor};
/// # fn main() -> effllm_tensor::Result<()> {
/// let x = Tensor::from_vec(vec![1.0f64, -2.0], &[2], &Device::Cpu)?.requires_grad();
/// // y = x³ with the hand-written rule dy/dx = 3x².
/// let y = custom_op("cube", &[&x], || x.powf(3.0), |_| {
///     let x = x.detach();
///     Ok(Box::new(move |g: &Tensor, _: &[bool]| Ok(vec![Some(g.mul(&x.sqr()?.affine(3.0, 0.0)?)?)]))
///         as CustomBackward)
/// })?;
/// let grads = y.sum_all()?.backward()?;
/// assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![3.0, 12.0]);
/// # Ok(()) }
/// ```
pub fn custom_op(
    name: &'static str,
    inputs: &[&Tensor],
    forward: impl FnOnce() -> Result<Tensor>,
    backward: impl FnOnce(&Tensor) -> Result<CustomBackward>,
) -> Result<Tensor> {
    op(name, inputs, forward, backward)
}
