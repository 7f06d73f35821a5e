//! The reverse sweep, the gradient store and activation checkpointing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{BackwardFn, Node, TensorId, attach, is_grad_enabled, no_grad, with_grad_enabled};
use crate::{Error, Result, Tensor};

/// Gradients of leaves, keyed by [`TensorId`] and accumulated over backward sweeps (gradient accumulation):
/// a sweep adds into what is already stored. Iteration is in id order, so sums over all gradients (norms,
/// clipping) are deterministic.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    grads: BTreeMap<TensorId, Tensor>,
}

impl Gradients {
    /// An empty store.
    pub fn new() -> Gradients {
        Gradients::default()
    }

    /// The gradient of leaf `t` (`None` if untracked or not reached).
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        t.id().and_then(|id| self.grads.get(&id))
    }

    /// The gradient stored for `id`.
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.grads.get(&id)
    }

    /// Removes and returns the gradient of leaf `t` (frees it from the store).
    pub fn take(&mut self, t: &Tensor) -> Option<Tensor> {
        t.id().and_then(|id| self.grads.remove(&id))
    }

    /// Removes and returns the gradient stored for `id`.
    pub fn take_id(&mut self, id: TensorId) -> Option<Tensor> {
        self.grads.remove(&id)
    }

    /// Stores `grad` for `id`, replacing what was there (e.g. after clipping).
    pub fn insert(&mut self, id: TensorId, grad: Tensor) {
        self.grads.insert(id, grad.detach());
    }

    /// Drops every gradient (the "zero_grad" between optimizer steps).
    pub fn clear(&mut self) {
        self.grads.clear();
    }

    /// Number of stored gradients.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no gradient is stored.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Bytes held by the stored gradients (memory accounting).
    pub fn nbytes(&self) -> usize {
        self.grads.values().map(|g| g.elem_count() * g.dtype().size_in_bytes()).sum()
    }

    /// `(id, gradient)` pairs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (TensorId, &Tensor)> {
        self.grads.iter().map(|(&id, g)| (id, g))
    }

    /// Mutable `(id, gradient)` pairs in id order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (TensorId, &mut Tensor)> {
        self.grads.iter_mut().map(|(&id, g)| (id, g))
    }

    /// Ids whose gradient holds NaN or infinity, in id order, with the number of such elements.
    pub fn non_finite(&self) -> Result<Vec<(TensorId, usize)>> {
        let mut bad = Vec::new();
        for (&id, g) in &self.grads {
            let count = g.to_vec_f64()?.iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                bad.push((id, count));
            }
        }
        Ok(bad)
    }

    /// [`Error::NonFiniteGradient`] naming the first (lowest-id) leaf whose gradient holds NaN or infinity.
    pub fn check_finite(&self) -> Result<()> {
        match self.non_finite()?.first() {
            Some(&(id, count)) => Err(Error::NonFiniteGradient { id: id.as_u64(), count }),
            None => Ok(()),
        }
    }

    fn add(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let g = match self.grads.remove(&id) {
            Some(old) => old.add(&grad)?,
            None => grad.contiguous()?,
        };
        self.grads.insert(id, g);
        Ok(())
    }

    /// Backward sweep from the one-element tensor `root` (seed 1), adding each leaf's gradient into the store.
    pub fn accumulate(&mut self, root: &Tensor) -> Result<()> {
        self.accumulate_with(root, None, &mut |_, _| Ok(()))
    }

    /// Backward sweep from `root` with gradient `seed` (required unless `root` has one element), adding into the
    /// store. `on_ready(id, store)` runs once per reached leaf, as soon as that leaf's gradient is final, with the
    /// accumulated gradient already in `store`: it may [`take`](Gradients::take_id) it (update the parameter and
    /// free the gradient at once, as GaLore's layer-wise mode does). An error from `on_ready` stops the sweep.
    pub fn accumulate_with(
        &mut self,
        root: &Tensor,
        seed: Option<&Tensor>,
        on_ready: &mut dyn FnMut(TensorId, &mut Gradients) -> Result<()>,
    ) -> Result<()> {
        let root_node = root.node.clone().ok_or(Error::NotTracked)?;
        let seed = match seed {
            Some(s) => {
                root.check_same_dtype("backward", s)?;
                if s.shape() != root.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "backward",
                        lhs: root.shape().to_vec(),
                        rhs: s.shape().to_vec(),
                    });
                }
                s.detach()
            }
            None if root.elem_count() == 1 => Tensor::ones(root.shape(), root.dtype(), &root.device())?,
            None => return Err(Error::NonScalarRoot { shape: root.shape().to_vec() }),
        };
        no_grad(|| self.sweep(root_node, seed, on_ready))
    }

    fn sweep(
        &mut self,
        root: Arc<Node>,
        seed: Tensor,
        on_ready: &mut dyn FnMut(TensorId, &mut Gradients) -> Result<()>,
    ) -> Result<()> {
        // Consumers of each reachable node, counted over reachable edges.
        let mut consumers: HashMap<TensorId, usize> = HashMap::new();
        let mut stack = vec![Arc::clone(&root)];
        consumers.insert(root.id, 0);
        while let Some(n) = stack.pop() {
            let edges = n.edges.lock().unwrap_or_else(|e| e.into_inner());
            match edges.as_ref() {
                Some(e) => {
                    for p in e.parents.iter().flatten() {
                        let c = consumers.entry(p.id).or_insert(0);
                        *c += 1;
                        if *c == 1 {
                            stack.push(Arc::clone(p));
                        }
                    }
                }
                None if !n.is_leaf() => return Err(Error::GraphConsumed { op: n.op }),
                None => {}
            }
        }
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(root.id, seed);
        let mut ready = vec![root];
        while let Some(n) = ready.pop() {
            let grad = pending.remove(&n.id);
            if n.is_leaf() {
                if let Some(g) = grad {
                    self.add(n.id, g)?;
                    on_ready(n.id, self)?;
                }
                continue;
            }
            let Some(edges) = n.edges.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return Err(Error::GraphConsumed { op: n.op });
            };
            let needs: Vec<bool> = edges.parents.iter().map(Option::is_some).collect();
            let input_grads = match grad {
                Some(g) => {
                    let rule: BackwardFn = edges.backward;
                    let timer = super::profile::start(&g)?;
                    let gs = rule(&g, &needs)?;
                    super::profile::stop(timer, n.op, &g)?;
                    if gs.len() != needs.len() {
                        return Err(Error::Autograd {
                            op: n.op,
                            msg: format!("{} gradients for {} inputs", gs.len(), needs.len()),
                        });
                    }
                    gs
                }
                // Nothing flowed into this node: its inputs get nothing from it, but their counts still drop.
                None => vec![None; needs.len()],
            };
            for (p, g) in edges.parents.iter().zip(input_grads) {
                let Some(p) = p else { continue };
                if let Some(g) = g {
                    let g = fit(n.op, p, g)?;
                    let acc = match pending.remove(&p.id) {
                        Some(old) => old.add(&g)?,
                        None => g,
                    };
                    pending.insert(p.id, acc);
                }
                let c = consumers.get_mut(&p.id).ok_or(Error::Autograd { op: n.op, msg: "unvisited input".into() })?;
                *c -= 1;
                if *c == 0 {
                    ready.push(Arc::clone(p));
                }
            }
        }
        Ok(())
    }
}

/// Checks a rule's gradient against the input node (shape) and converts dtype/device if the rule left them
/// different.
fn fit(op: &'static str, p: &Node, g: Tensor) -> Result<Tensor> {
    if g.shape() != p.shape.as_slice() {
        return Err(Error::Autograd {
            op,
            msg: format!("gradient of shape {:?} for an input of shape {:?}", g.shape(), p.shape),
        });
    }
    g.to_dtype(p.dtype)?.to_device(&p.device)
}

/// Leaves reachable from `node`, without consuming anything.
fn reachable_leaves(node: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![Arc::clone(node)];
    let mut leaves = Vec::new();
    seen.insert(node.id);
    while let Some(n) = stack.pop() {
        if n.is_leaf() {
            leaves.push(Arc::clone(&n));
            continue;
        }
        let edges = n.edges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = edges.as_ref() {
            for p in e.parents.iter().flatten() {
                if seen.insert(p.id) {
                    stack.push(Arc::clone(p));
                }
            }
        }
    }
    leaves.sort_by_key(|n| n.id);
    leaves
}

/// Activation checkpointing: `f(inputs)` whose intermediate values are not kept; the backward sweep recomputes
/// `f` from the saved inputs and differentiates the recomputation.
///
/// `f` must be deterministic (same values from the same inputs). Tensors `f` captures (the block's weights) are
/// found by one recording forward; their gradients flow as if `f` had run without checkpointing, and the
/// gradient-ready callback sees them like any other leaf. Without grad mode, or when nothing inside is tracked,
/// this is just `f(inputs)`.
pub fn checkpoint(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !is_grad_enabled() {
        return f(inputs);
    }
    // Fresh leaves for the inputs, so that the recording forward's graph stops at the block boundary.
    let saved: Vec<Tensor> = inputs.iter().map(Tensor::detach).collect();
    let fresh: Vec<Tensor> = saved.iter().map(|t| t.clone().requires_grad()).collect();
    let fresh_ids: Vec<TensorId> = fresh.iter().filter_map(Tensor::id).collect();
    let out = f(&fresh)?;
    let Some(out_node) = out.node.clone() else { return Ok(out) };
    let captured: Vec<Arc<Node>> =
        reachable_leaves(&out_node).into_iter().filter(|n| !fresh_ids.contains(&n.id)).collect();
    drop(out_node);
    let value = out.detach();
    drop(out); // the block's activations go here
    let param_ids: Vec<TensorId> = captured.iter().map(|n| n.id).collect();
    let n_inputs = inputs.len();
    let rule: BackwardFn = Box::new(move |g, needs| {
        with_grad_enabled(true, || {
            let fresh: Vec<Tensor> = saved.iter().map(|t| t.clone().requires_grad()).collect();
            let out = f(&fresh)?;
            let mut inner = Gradients::new();
            if out.node.is_some() {
                inner.accumulate_with(&out, Some(g), &mut |_, _| Ok(()))?;
            }
            let mut grads = Vec::with_capacity(needs.len());
            for (i, t) in fresh.iter().enumerate() {
                grads.push(if needs[i] { inner.take(t) } else { None });
            }
            for (j, id) in param_ids.iter().enumerate() {
                grads.push(if needs[n_inputs + j] { inner.take_id(*id) } else { None });
            }
            Ok(grads)
        })
    });
    let mut parents: Vec<Option<Arc<Node>>> = inputs.iter().map(|t| t.node.clone()).collect();
    parents.extend(captured.into_iter().map(Some));
    Ok(attach(value, "checkpoint", parents, rule))
}
