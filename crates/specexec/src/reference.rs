//! Naive, obviously correct versions of SpecExec's pieces in f64, the oracle of the tests: one-node-at-a-time
//! best-first search (Dijkstra over path scores) for the top-K tree, the tree attention mask by ancestor walks,
//! the lazy verification walk and the expected number of accepted tokens.

/// `ln softmax(logits / temperature)` in f64 (−∞ for masked tokens).
pub fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    z.iter().map(|&x| x - lse).collect()
}

/// The `k` best `(token, log-prob)` pairs: log-prob descending, ties by ascending token, masked tokens excluded.
pub fn top_k(lp: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> =
        lp.iter().enumerate().filter(|(_, x)| x.is_finite()).map(|(i, &x)| (i as u32, x)).collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

/// A node of the reference tree: its tokens below the root and its score.
#[derive(Clone, Debug, PartialEq)]
pub struct RefNode {
    /// Tokens from the root's child down to the node.
    pub path: Vec<u32>,
    /// `Σ (ln decay + ln q)` along the path.
    pub score: f64,
}

/// The top-`budget` nodes by score of the tree in which every node of depth < `max_depth` has as children its
/// `max_branch` most probable draft tokens: pop the best candidate, keep it, push its children, until `budget`
/// nodes are kept. `draft(path)` returns the draft logits after the root and `path`.
pub fn best_first_tree(
    draft: &mut dyn FnMut(&[u32]) -> Vec<f32>,
    budget: usize,
    max_depth: usize,
    max_branch: usize,
    decay: f64,
    temperature: f64,
    min_log_prob: Option<f64>,
) -> Vec<RefNode> {
    let min = min_log_prob.unwrap_or(f64::NEG_INFINITY);
    let children = |draft: &mut dyn FnMut(&[u32]) -> Vec<f32>, node: &RefNode| -> Vec<RefNode> {
        if node.path.len() >= max_depth {
            return Vec::new();
        }
        top_k(&log_softmax(&draft(&node.path), temperature), max_branch)
            .into_iter()
            .map(|(t, lp)| {
                let mut path = node.path.clone();
                path.push(t);
                RefNode { path, score: node.score + decay.ln() + lp }
            })
            .filter(|n| n.score >= min)
            .collect()
    };
    let root = RefNode { path: Vec::new(), score: 0.0 };
    let mut candidates = children(draft, &root);
    let mut kept = Vec::new();
    while kept.len() < budget && !candidates.is_empty() {
        let best = (0..candidates.len())
            .max_by(|&a, &b| candidates[a].score.partial_cmp(&candidates[b].score).unwrap().then(b.cmp(&a)))
            .unwrap();
        let node = candidates.remove(best);
        candidates.extend(children(draft, &node));
        kept.push(node);
    }
    kept
}

/// The tree attention mask by walking ancestors: `mask[i][j]` iff `j` is `i` or an ancestor of `i`
/// (`build_amask_slow` of the reference, without the prefix columns).
pub fn tree_mask(parents: &[Option<usize>]) -> Vec<Vec<bool>> {
    (0..parents.len())
        .map(|i| {
            let mut row = vec![false; parents.len()];
            let mut n = Some(i);
            while let Some(x) = n {
                row[x] = true;
                n = parents[x];
            }
            row
        })
        .collect()
}

/// Inverse-CDF sample: the smallest `i` with `Σ_{j≤i} p_j > u · Σ p`.
pub fn sample(p: &[f64], u: f64) -> u32 {
    let total: f64 = p.iter().sum();
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            cum += x;
            last = i;
            if cum > u * total {
                return i as u32;
            }
        }
    }
    last as u32
}

/// SpecExec's lazy verification walk (`specexec.md` §2.5): at the current node sample `t ~ p[node]` with the
/// next uniform, emit it, descend into the child carrying `t` (the first such child) or stop. Returns the
/// accepted nodes and the emitted tokens.
pub fn walk(tokens: &[u32], parents: &[Option<usize>], p: &[Vec<f64>], uniforms: &[f64]) -> (Vec<usize>, Vec<u32>) {
    let (mut node, mut path, mut out) = (0usize, Vec::new(), Vec::new());
    for &u in uniforms {
        let t = sample(&p[node], u);
        out.push(t);
        match (0..tokens.len()).find(|&c| parents[c] == Some(node) && tokens[c] == t) {
            Some(c) => {
                path.push(c);
                node = c;
            }
            None => break,
        }
    }
    (path, out)
}

/// `E[accepted] = Σ_{draft nodes v} Π_{edges (u→c) on v's path} p[u](token(c))`: the expected number of accepted
/// draft tokens of the walk for target distributions `p` (one row per node).
pub fn expected_accepted(tokens: &[u32], parents: &[Option<usize>], p: &[Vec<f64>]) -> f64 {
    let mut reach = vec![0.0f64; tokens.len()];
    reach[0] = 1.0;
    let mut total = 0.0;
    for v in 1..tokens.len() {
        let u = parents[v].expect("non-root node has a parent");
        let s: f64 = p[u].iter().sum();
        reach[v] = reach[u] * p[u][tokens[v] as usize] / s;
        total += reach[v];
    }
    total
}
