//! The draft tree and its growth by batched best-first search (`specexec.md` §2.7, §2.8).
//!
//! Growth is independent of any model: [`grow_tree`] asks a callback for the draft logits of a batch of frontier
//! nodes (the engine runs the draft model there; tests pass closed-form drafts) and keeps the bookkeeping here.

use std::cmp::Ordering;

use effllm_sampling::{SamplingError, TokenTree};

use crate::config::{FrontierPick, SpecExecConfig};
use crate::error::{Result, SpecError};

/// One node of a [`DraftTree`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DraftNode {
    /// The token.
    pub token: u32,
    /// Parent node (`None` for the root); always a smaller index.
    pub parent: Option<usize>,
    /// Depth (root = 0).
    pub depth: usize,
    /// Cumulative score: `Σ_{path} (ln decay + ln q_draft(token | prefix))`, 0 at the root.
    pub score: f64,
}

/// A draft tree in topological order: node 0 is the root (the last emitted token), every other node's parent has a
/// smaller index.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftTree {
    nodes: Vec<DraftNode>,
}

impl DraftTree {
    /// A tree holding only its root.
    pub fn new(root: u32) -> Self {
        DraftTree { nodes: vec![DraftNode { token: root, parent: None, depth: 0, score: 0.0 }] }
    }

    /// Builds a tree from nodes; node 0 must be a root with score 0 and every other node needs a smaller parent
    /// index and `depth = depth(parent) + 1`.
    pub fn from_nodes(nodes: Vec<DraftNode>) -> Result<Self> {
        let bad = |node: usize, reason: &'static str| SpecError::Sampling(SamplingError::InvalidTree { node, reason });
        match nodes.first() {
            None => return Err(bad(0, "a tree needs a root node")),
            Some(r) if r.parent.is_some() || r.depth != 0 => return Err(bad(0, "node 0 must be a depth-0 root")),
            _ => {}
        }
        for (i, n) in nodes.iter().enumerate().skip(1) {
            match n.parent {
                Some(p) if p < i && nodes[p].depth + 1 == n.depth => {}
                _ => return Err(bad(i, "parent must precede the node and sit one level above it")),
            }
        }
        Ok(DraftTree { nodes })
    }

    fn push(&mut self, node: DraftNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Number of nodes, root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always `false`: a tree has its root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of draft nodes (root excluded).
    pub fn n_draft(&self) -> usize {
        self.nodes.len() - 1
    }

    /// All nodes.
    pub fn nodes(&self) -> &[DraftNode] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &DraftNode {
        &self.nodes[i]
    }

    /// Tokens of all nodes.
    pub fn tokens(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.token).collect()
    }

    /// Parents of all nodes.
    pub fn parents(&self) -> Vec<Option<usize>> {
        self.nodes.iter().map(|n| n.parent).collect()
    }

    /// Deepest node's depth.
    pub fn max_depth(&self) -> usize {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// Children of node `i`, ascending.
    pub fn children(&self, i: usize) -> Vec<usize> {
        (i + 1..self.nodes.len()).filter(|&c| self.nodes[c].parent == Some(i)).collect()
    }

    /// Node indices from the root's child down to `i` (empty for the root).
    pub fn path_to(&self, i: usize) -> Vec<usize> {
        let mut path = Vec::with_capacity(self.nodes[i].depth);
        let mut n = i;
        while let Some(p) = self.nodes[n].parent {
            path.push(n);
            n = p;
        }
        path.reverse();
        path
    }

    /// Tokens from the root's child down to `i`.
    pub fn path_tokens(&self, i: usize) -> Vec<u32> {
        self.path_to(i).into_iter().map(|n| self.nodes[n].token).collect()
    }

    /// Whether `a` is an ancestor of `b` or `b` itself.
    pub fn is_ancestor_or_self(&self, a: usize, b: usize) -> bool {
        let mut n = Some(b);
        while let Some(x) = n {
            if x == a {
                return true;
            }
            if x < a {
                return false;
            }
            n = self.nodes[x].parent;
        }
        false
    }

    /// Row `i` of the tree attention mask over the tree's nodes: `true` at `i`'s ancestors and `i` itself (the
    /// committed prefix, always visible, is not part of the row).
    pub fn mask_row(&self, i: usize) -> Vec<bool> {
        let mut row = vec![false; self.nodes.len()];
        let mut n = Some(i);
        while let Some(x) = n {
            row[x] = true;
            n = self.nodes[x].parent;
        }
        row
    }

    /// `Σ_{draft nodes v} exp(score(v))`: the expected number of accepted tokens if the draft were the target,
    /// with the decay included (the reference's `Tree.get_expected_contrib`).
    pub fn expected_accepted(&self) -> f64 {
        self.nodes.iter().skip(1).map(|n| n.score.exp()).sum()
    }

    /// The tree as the shared verification rules' [`TokenTree`].
    pub fn to_token_tree(&self) -> Result<TokenTree> {
        Ok(TokenTree::new(self.tokens(), self.parents())?)
    }
}

/// What [`grow_tree`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct GrownTree {
    /// The final tree: the root and the best `budget` draft nodes by score, in creation order (topological).
    pub tree: DraftTree,
    /// For each node of `tree`, its index in the working tree the callback saw.
    pub source: Vec<usize>,
    /// Draft forwards (callback calls).
    pub draft_forwards: usize,
    /// Nodes expanded (rows the draft computed).
    pub expanded: usize,
    /// Nodes created during the search, root excluded (before the final top-K cut).
    pub created: usize,
}

/// Total order of nodes: score descending, then creation order ascending (`specexec.md` §4 D6). A parent always
/// precedes its children in it, so every top-K prefix of the order is ancestor-closed.
fn better(a: (f64, usize), b: (f64, usize)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
}

/// Top-`k` children of one draft logits row: `(token, ln q)` by log-probability descending, ties by ascending id,
/// with `q = softmax(logits / temperature)` computed in f64. −∞ logits (masked tokens) are never children. NaN or
/// +∞ logits are an error.
pub fn top_children(row: &[f32], temperature: f32, k: usize, row_index: usize) -> Result<Vec<(u32, f64)>> {
    if row.is_empty() {
        return Err(SpecError::Sampling(SamplingError::Empty { what: "draft logits row" }));
    }
    if let Some((index, &value)) = row.iter().enumerate().find(|(_, v)| v.is_nan() || **v == f32::INFINITY) {
        return Err(SpecError::NonFiniteLogits { model: "draft", row: row_index, index, value });
    }
    let t = temperature as f64;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(SpecError::Sampling(SamplingError::AllMasked));
    }
    let max = max as f64;
    let sum: f64 = row.iter().map(|&l| ((l as f64 - max) / t).exp()).sum();
    let lse = sum.ln();
    let mut idx: Vec<u32> = (0..row.len() as u32).filter(|&i| row[i as usize] != f32::NEG_INFINITY).collect();
    let cmp =
        |a: &u32, b: &u32| row[*b as usize].partial_cmp(&row[*a as usize]).unwrap_or(Ordering::Equal).then(a.cmp(b));
    let k = k.min(idx.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    Ok(idx.into_iter().map(|i| (i, (row[i as usize] as f64 - max) / t - lse)).collect())
}

/// Grows a SpecExec draft tree below `root` by batched best-first search (`specexec.md` §2.8):
///
/// ```text
/// score(root) = 0,   score(child) = score(parent) + ln(decay) + ln q_draft(token | path)
/// repeat:
///   thr  := score of the K-th best draft node so far (none while fewer than K exist)
///   E    := unexpanded nodes u with depth(u) < D and score(u) + ln(decay) > thr   (their children could enter)
///   stop if E is empty (or after `max_draft_forwards` forwards)
///   C    := the best B nodes of E (or the first B, FrontierPick::FirstBySlot)
///   one draft forward over C; each u in C gets its top-k tokens as children (dropping children ≤ thr)
/// keep the root and the best K draft nodes
/// ```
///
/// `expand(tree, nodes)` must return the draft logits of `nodes` (each node's next-token logits given the
/// committed prefix and the node's path), flattened row-major `[nodes.len(), vocab]`. Every node it is asked
/// about has all its ancestors expanded before.
///
/// Without a forward cap the result is exactly the top-K set by score of the (depth ≤ D, k children per node)
/// tree of all draft continuations (ties broken by creation order): a node outside the result that beats the
/// K-th has an expanded-eligible ancestor, which the loop would have expanded. Because scores never increase
/// along a path and parents are created before children, the result is ancestor-closed.
pub fn grow_tree<F>(cfg: &SpecExecConfig, root: u32, vocab: usize, mut expand: F) -> Result<GrownTree>
where
    F: FnMut(&DraftTree, &[usize]) -> Result<Vec<f32>>,
{
    cfg.validate()?;
    let ln_decay = cfg.depth_decay.ln();
    let (k_budget, depth_cap) = (cfg.budget, cfg.max_depth);
    let min_lp = cfg.min_log_prob.unwrap_or(f64::NEG_INFINITY);
    let mut tree = DraftTree::new(root);
    let mut expanded = vec![false];
    let (mut forwards, mut n_expanded) = (0usize, 0usize);
    let mut keys: Vec<(f64, usize)> = Vec::new();
    loop {
        if cfg.max_draft_forwards.is_some_and(|cap| forwards >= cap) {
            break;
        }
        // K-th best score among draft nodes.
        let thr = if tree.n_draft() >= k_budget {
            keys.clear();
            keys.extend(tree.nodes.iter().enumerate().skip(1).map(|(i, n)| (n.score, i)));
            keys.select_nth_unstable_by(k_budget - 1, |a, b| better(*a, *b));
            keys[k_budget - 1].0
        } else {
            f64::NEG_INFINITY
        };
        let bound = if tree.n_draft() >= k_budget { thr } else { f64::NEG_INFINITY };
        let mut eligible: Vec<usize> = (0..tree.len())
            .filter(|&u| {
                let n = &tree.nodes[u];
                let base = n.score + ln_decay;
                !expanded[u] && n.depth < depth_cap && base >= min_lp && (base > bound || bound == f64::NEG_INFINITY)
            })
            .collect();
        if eligible.is_empty() {
            break;
        }
        if eligible.len() > cfg.expand_batch {
            if cfg.frontier == FrontierPick::TopScore {
                eligible.select_nth_unstable_by(cfg.expand_batch - 1, |&a, &b| {
                    better((tree.nodes[a].score, a), (tree.nodes[b].score, b))
                });
                eligible.truncate(cfg.expand_batch);
                eligible.sort_unstable();
            } else {
                eligible.truncate(cfg.expand_batch);
            }
        }
        let logits = expand(&tree, &eligible)?;
        forwards += 1;
        if logits.len() != eligible.len() * vocab {
            return Err(SpecError::LogitsShape {
                model: "draft",
                got: vec![logits.len() / vocab.max(1), vocab],
                rows: eligible.len(),
                vocab,
            });
        }
        for (r, &u) in eligible.iter().enumerate() {
            expanded[u] = true;
            n_expanded += 1;
            let base = tree.nodes[u].score + ln_decay;
            let depth = tree.nodes[u].depth + 1;
            for (token, lp) in
                top_children(&logits[r * vocab..(r + 1) * vocab], cfg.draft_temperature, cfg.max_branch, r)?
            {
                let score = base + lp;
                if score < min_lp || (bound != f64::NEG_INFINITY && score <= bound) {
                    continue;
                }
                tree.push(DraftNode { token, parent: Some(u), depth, score });
                expanded.push(false);
            }
        }
    }
    let created = tree.n_draft();
    // Keep the root and the best K draft nodes, in creation (topological) order.
    let mut order: Vec<usize> = (1..tree.len()).collect();
    if order.len() > k_budget {
        order.select_nth_unstable_by(k_budget - 1, |&a, &b| better((tree.nodes[a].score, a), (tree.nodes[b].score, b)));
        order.truncate(k_budget);
    }
    order.sort_unstable();
    let mut source = Vec::with_capacity(order.len() + 1);
    source.push(0);
    source.extend(order);
    let mut new_index = vec![usize::MAX; tree.len()];
    for (new, &old) in source.iter().enumerate() {
        new_index[old] = new;
    }
    let nodes = source
        .iter()
        .map(|&old| {
            let n = tree.nodes[old];
            DraftNode { parent: n.parent.map(|p| new_index[p]), ..n }
        })
        .collect();
    Ok(GrownTree { tree: DraftTree { nodes }, source, draft_forwards: forwards, expanded: n_expanded, created })
}
