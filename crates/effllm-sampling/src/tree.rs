//! Token trees and their verification: SpecExec's sample-and-descend walk, SpecInfer's multi-round rejection
//! sampling over siblings, and greedy descent.

use crate::Token;
use crate::error::{Result, SamplingError};
use crate::process::{argmax, inverse_cdf, prob_sum, sample_row};
use crate::uniform::{UniformSource, draw};

/// A draft token tree. Node 0 is the root: the last emitted token, whose successor distribution is the first
/// target row; every other node is a draft token with a parent of smaller index (topological order).
///
/// Children of a node are kept in ascending node index. For [`verify_tree_rejection`] that order must be the
/// order in which the siblings were drawn from the draft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenTree {
    tokens: Vec<Token>,
    parents: Vec<Option<usize>>,
    depth: Vec<usize>,
    child_start: Vec<usize>,
    child_list: Vec<usize>,
}

impl TokenTree {
    /// Builds a tree from per-node tokens and parents. `parents[0]` must be `None` and `parents[i] = Some(j)`
    /// with `j < i` for every other node.
    pub fn new(tokens: Vec<Token>, parents: Vec<Option<usize>>) -> Result<Self> {
        if tokens.is_empty() {
            return Err(SamplingError::InvalidTree { node: 0, reason: "a tree needs a root node" });
        }
        if tokens.len() != parents.len() {
            return Err(SamplingError::RowCount {
                what: "tree parents (one per token)",
                expected: tokens.len(),
                got: parents.len(),
            });
        }
        if parents[0].is_some() {
            return Err(SamplingError::InvalidTree { node: 0, reason: "node 0 is the root and has no parent" });
        }
        let n = tokens.len();
        let mut depth = vec![0usize; n];
        let mut count = vec![0usize; n + 1];
        for (i, parent) in parents.iter().enumerate().skip(1) {
            match *parent {
                Some(j) if j < i => {
                    depth[i] = depth[j] + 1;
                    count[j + 1] += 1;
                }
                Some(_) => {
                    return Err(SamplingError::InvalidTree {
                        node: i,
                        reason: "parent index must be smaller than the node's",
                    });
                }
                None => return Err(SamplingError::InvalidTree { node: i, reason: "only node 0 may be a root" }),
            }
        }
        for j in 0..n {
            count[j + 1] += count[j];
        }
        let child_start = count.clone();
        let mut fill = count;
        let mut child_list = vec![0usize; n - 1];
        for (i, parent) in parents.iter().enumerate().skip(1) {
            let j = parent.unwrap_or(0);
            child_list[fill[j]] = i;
            fill[j] += 1;
        }
        Ok(TokenTree { tokens, parents, depth, child_start, child_list })
    }

    /// A one-branch tree: `root` followed by `draft` as a chain.
    pub fn chain(root: Token, draft: &[Token]) -> Self {
        let mut tokens = Vec::with_capacity(draft.len() + 1);
        tokens.push(root);
        tokens.extend_from_slice(draft);
        let n = tokens.len();
        TokenTree {
            tokens,
            parents: (0..n).map(|i| i.checked_sub(1)).collect(),
            depth: (0..n).collect(),
            child_start: (0..=n).map(|j| j.min(n - 1)).collect(),
            child_list: (1..n).collect(),
        }
    }

    /// Number of nodes, root included (≥ 1).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always `false`: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The tokens of all nodes.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The token of node `i` (`None` out of range).
    pub fn token(&self, i: usize) -> Option<Token> {
        self.tokens.get(i).copied()
    }

    /// The parent of node `i` (`None` for the root or out of range).
    pub fn parent(&self, i: usize) -> Option<usize> {
        self.parents.get(i).copied().flatten()
    }

    /// Depth of node `i` (root = 0; `None` out of range).
    pub fn depth(&self, i: usize) -> Option<usize> {
        self.depth.get(i).copied()
    }

    /// The children of node `i` in ascending index (empty out of range).
    pub fn children(&self, i: usize) -> &[usize] {
        match (self.child_start.get(i), self.child_start.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.child_list[a..b],
            _ => &[],
        }
    }

    /// Node indices from the root's child down to node `i` (empty for the root).
    pub fn path_to(&self, i: usize) -> Vec<usize> {
        let mut path = Vec::new();
        let mut node = i;
        while let Some(parent) = self.parent(node) {
            path.push(node);
            node = parent;
        }
        path.reverse();
        path
    }

    fn check_rows<R: AsRef<[f32]>>(&self, what: &'static str, rows: &[R], vocab: Option<usize>) -> Result<usize> {
        if rows.len() != self.len() {
            return Err(SamplingError::RowCount { what, expected: self.len(), got: rows.len() });
        }
        let vocab = vocab.unwrap_or_else(|| rows[0].as_ref().len());
        if vocab == 0 {
            return Err(SamplingError::Empty { what });
        }
        for row in rows {
            let got = row.as_ref().len();
            if got != vocab {
                return Err(SamplingError::VocabMismatch { what, expected: vocab, got });
            }
        }
        for &token in &self.tokens[1..] {
            if token as usize >= vocab {
                return Err(SamplingError::TokenOutOfRange { what: "tree", token, vocab });
            }
        }
        Ok(vocab)
    }

    fn child_with_token(&self, node: usize, token: Token) -> Option<usize> {
        self.children(node).iter().copied().find(|&c| self.tokens[c] == token)
    }
}

/// What a tree verification emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeVerification {
    /// The accepted nodes, root excluded, from the root's child downwards (a root-to-node path of the tree).
    pub path: Vec<usize>,
    /// The emitted tokens: the tokens of `path`, then one token from the target (`tokens.len() == path.len() + 1`).
    pub tokens: Vec<Token>,
}

impl TreeVerification {
    /// Number of accepted draft tokens.
    pub fn accepted(&self) -> usize {
        self.path.len()
    }
}

/// When [`verify_tree_sample_match`] draws its target samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TreeSampling {
    /// Walk from the root and draw one uniform per emitted token, only at the nodes visited (the project's
    /// recommendation, `specexec.md` §2.9). With the same uniform stream the output equals autoregressive
    /// sampling from the target, token for token, for every tree.
    #[default]
    Lazy,
    /// The SpecExec reference's structure (`validate_tree`, §4 D2): one target sample for every node, drawn in
    /// node order before the walk (`tree.len()` uniforms), then follow matching children. Equally exact;
    /// consumes uniforms for nodes never reached.
    EagerPerNode,
}

/// How the siblings at a node were drawn from the draft distribution (for [`verify_tree_rejection`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Replacement {
    /// Siblings are i.i.d. draws from q (duplicates possible).
    With,
    /// Siblings were drawn one after the other from q with the earlier ones removed and renormalised (the
    /// default of the SpecInfer baseline in the SpecExec repository).
    #[default]
    Without,
}

/// Greedy tree verification: descend while the target's argmax (lowest id on ties) is a child; emit the argmax
/// at the node where it is not. Equals greedy target decoding for every tree. Consumes no uniform. `p[i]` is
/// the target row (logits or probabilities) after node i's path.
pub fn verify_tree_greedy<P: AsRef<[f32]>>(tree: &TokenTree, p: &[P]) -> Result<TreeVerification> {
    tree.check_rows("tree target rows p (one per node)", p, None)?;
    descend(tree, |node| argmax(p[node].as_ref()))
}

/// Walks from the root: emits `choose(node)`, follows the child carrying that token, stops where none does.
fn descend(tree: &TokenTree, mut choose: impl FnMut(usize) -> Result<Token>) -> Result<TreeVerification> {
    let (mut node, mut path, mut tokens) = (0usize, Vec::new(), Vec::new());
    loop {
        let t = choose(node)?;
        tokens.push(t);
        match tree.child_with_token(node, t) {
            Some(c) => {
                path.push(c);
                node = c;
            }
            None => return Ok(TreeVerification { path, tokens }),
        }
    }
}

/// SpecExec's verification (`specexec.md` §2.5, §2.9): at the current node draw t ~ p(node) (one uniform,
/// inverse CDF), emit t, and descend into the child carrying t if there is one; stop otherwise.
///
/// **Exact for every tree**, deterministic or sampled, and for every temperature and filter: each emitted token
/// is a fresh sample of the target conditional after the tokens emitted before it, and the tree only decides for
/// how long the target's distributions were precomputed. No draft probability enters, which is why SpecExec can
/// use a deterministic top-k tree (where rejection sampling would be wrong: its acceptance ratio assumes the
/// children were drawn from q). The acceptance probability at a node is the target mass of its children.
///
/// If two siblings carry the same token, the one with the smaller index is followed.
pub fn verify_tree_sample_match<P, U>(
    tree: &TokenTree,
    p: &[P],
    sampling: TreeSampling,
    rng: &mut U,
) -> Result<TreeVerification>
where
    P: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    tree.check_rows("tree target rows p (one per node)", p, None)?;
    let eager = match sampling {
        TreeSampling::Lazy => None,
        TreeSampling::EagerPerNode => {
            Some(p.iter().map(|row| sample_row("tree target row p", row.as_ref(), rng)).collect::<Result<Vec<_>>>()?)
        }
    };
    descend(tree, |node| match &eager {
        Some(samples) => Ok(samples[node]),
        None => sample_row("tree target row p", p[node].as_ref(), rng),
    })
}

/// [`verify_tree_sample_match`] with [`TreeSampling::Lazy`], reading each visited node's target distribution on
/// demand: `row(node)` returns the processed target distribution after node `node`'s path, and is called only for
/// the nodes the walk visits (in walk order), so a verifier over a tree of K nodes processes only
/// `accepted + 1` logits rows instead of K. Same walk, same uniforms (one per emitted token), same output as
/// [`verify_tree_sample_match`] given the same rows.
///
/// The tree's tokens are not range-checked against the vocabulary (a token outside it can never be sampled, so
/// it is never followed).
pub fn verify_tree_sample_match_lazy<F, U>(tree: &TokenTree, mut row: F, rng: &mut U) -> Result<TreeVerification>
where
    F: FnMut(usize) -> Result<Vec<f32>>,
    U: UniformSource + ?Sized,
{
    descend(tree, |node| {
        let p = row(node)?;
        sample_row("tree target row p", &p, rng)
    })
}

/// [`verify_tree_greedy`] reading each visited node's row (logits or probabilities) on demand: `row(node)` is
/// called only for the nodes the walk visits. Consumes no uniform.
pub fn verify_tree_greedy_lazy<F>(tree: &TokenTree, mut row: F) -> Result<TreeVerification>
where
    F: FnMut(usize) -> Result<Vec<f32>>,
{
    descend(tree, |node| argmax(&row(node)?))
}

/// Outcome of multi-round rejection over the siblings at one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiblingVerdict {
    /// Candidate `i` (index into the candidate list) is accepted.
    Accepted(usize),
    /// Every candidate was rejected; this token was sampled from the final residual.
    Rejected(Token),
}

/// SpecInfer's multi-round (recursive) rejection sampling over sibling candidates `c_1..c_m` drawn from `q`
/// (`specexec.md` §2.4):
///
/// ```text
/// p' := p, q' := q
/// for j in 1..=m:
///     accept c_j iff u_j · q'(c_j) < p'(c_j)
///     p' := norm(max(0, p' − q'))              (kept as is if that residual is identically 0)
///     without replacement: q'(c_j) := 0; q' := norm(q')
/// all rejected: emit y ~ p'
/// ```
///
/// Exact when the candidates really were drawn from q in the given order (i.i.d. for [`Replacement::With`],
/// sequentially without replacement for [`Replacement::Without`]). Proof sketch, by induction on the number of
/// remaining candidates: round j is a standard rejection step with target p'_j and proposal q'_j (the law of c_j
/// given the earlier draws), and whatever happens after a rejection yields a sample of p'_{j+1} independently of
/// the rejected value, so the output law is min(p'_j, q'_j) + (1 − Σ min(p'_j, q'_j))·p'_{j+1} = p'_j, using
/// Σ max(0, p'_j − q'_j) = 1 − Σ min(p'_j, q'_j).
///
/// Consumes one uniform per examined candidate plus one when all are rejected.
pub fn verify_siblings<U: UniformSource + ?Sized>(
    p: &[f32],
    q: &[f32],
    candidates: &[Token],
    replacement: Replacement,
    rng: &mut U,
) -> Result<SiblingVerdict> {
    let vocab = p.len();
    if q.len() != vocab {
        return Err(SamplingError::VocabMismatch { what: "draft row q", expected: vocab, got: q.len() });
    }
    for &c in candidates {
        if c as usize >= vocab {
            return Err(SamplingError::TokenOutOfRange { what: "sibling candidates", token: c, vocab });
        }
    }
    siblings(p, q, candidates.iter().copied().enumerate(), replacement, rng)
}

fn siblings<U: UniformSource + ?Sized>(
    p: &[f32],
    q: &[f32],
    candidates: impl Iterator<Item = (usize, Token)>,
    replacement: Replacement,
    rng: &mut U,
) -> Result<SiblingVerdict> {
    let sp = prob_sum("target row p", p)?;
    let sq = prob_sum("draft row q", q)?;
    let mut pp: Vec<f64> = p.iter().map(|&a| a as f64 / sp).collect();
    let mut qq: Vec<f64> = q.iter().map(|&b| b as f64 / sq).collect();
    for (j, c) in candidates {
        let c = c as usize;
        if qq[c] == 0.0 {
            return Err(SamplingError::ZeroDraftProbability { position: j, token: c as Token });
        }
        let u = draw(rng)?;
        if u * qq[c] < pp[c] {
            return Ok(SiblingVerdict::Accepted(j));
        }
        let total: f64 = pp.iter().zip(&qq).map(|(a, b)| (a - b).max(0.0)).sum();
        if total > 0.0 {
            pp.iter_mut().zip(&qq).for_each(|(a, b)| *a = (*a - b).max(0.0) / total);
        }
        if replacement == Replacement::Without {
            qq[c] = 0.0;
            let rest: f64 = qq.iter().sum();
            if rest > 0.0 {
                qq.iter_mut().for_each(|b| *b /= rest);
            }
        }
    }
    let total: f64 = pp.iter().sum();
    let u = draw(rng)?;
    Ok(SiblingVerdict::Rejected(inverse_cdf(pp.iter().copied(), total, u)))
}

/// SpecInfer-style tree verification: at each node run [`verify_siblings`] over its children with the node's
/// target row `p[node]` and draft row `q[node]`; descend into the accepted child, stop with the residual sample
/// when all are rejected, and emit a bonus token ~ p(leaf) when an accepted path reaches a leaf.
///
/// Exact when every node's children were drawn from `q[node]` as `replacement` says (a SpecInfer/sampled tree);
/// **not** exact for deterministic trees such as SpecExec's top-k trees (use [`verify_tree_sample_match`]).
/// `q` needs one row per node; rows of leaves are never read and may be empty.
pub fn verify_tree_rejection<P, Q, U>(
    tree: &TokenTree,
    p: &[P],
    q: &[Q],
    replacement: Replacement,
    rng: &mut U,
) -> Result<TreeVerification>
where
    P: AsRef<[f32]>,
    Q: AsRef<[f32]>,
    U: UniformSource + ?Sized,
{
    let vocab = tree.check_rows("tree target rows p (one per node)", p, None)?;
    if q.len() != tree.len() {
        return Err(SamplingError::RowCount {
            what: "tree draft rows q (one per node)",
            expected: tree.len(),
            got: q.len(),
        });
    }
    for (i, row) in q.iter().enumerate() {
        let got = row.as_ref().len();
        if !tree.children(i).is_empty() && got != vocab {
            return Err(SamplingError::VocabMismatch { what: "tree draft row q", expected: vocab, got });
        }
    }
    let (mut node, mut path, mut tokens) = (0usize, Vec::new(), Vec::new());
    loop {
        let children = tree.children(node);
        if children.is_empty() {
            tokens.push(sample_row("tree target row p", p[node].as_ref(), rng)?);
            return Ok(TreeVerification { path, tokens });
        }
        let cands = children.iter().map(|&c| (c, tree.tokens[c]));
        match siblings(p[node].as_ref(), q[node].as_ref(), cands, replacement, rng)? {
            SiblingVerdict::Accepted(c) => {
                path.push(c);
                tokens.push(tree.tokens[c]);
                node = c;
            }
            SiblingVerdict::Rejected(t) => {
                tokens.push(t);
                return Ok(TreeVerification { path, tokens });
            }
        }
    }
}
