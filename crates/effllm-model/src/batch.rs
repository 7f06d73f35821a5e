//! [`Batch`]: new tokens with explicit positions and an attention mask over cached + new tokens.

use crate::error::{Result, invalid};

/// Which cached and new tokens each new token attends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchMask {
    /// Every cached slot, plus new tokens `j ≤ i` (prefill, chunked prefill, chain drafts).
    Causal,
    /// Every cached slot, plus the new token's ancestors in a token tree and itself: `parents[i]` is the index
    /// (within the batch) of token `i`'s parent, `None` for a child of the cached prefix. Parents precede children.
    Tree {
        /// Parent index within the batch per new token.
        parents: Vec<Option<usize>>,
    },
    /// `T / len` independent sequences of `len` tokens each, one after another (training and evaluation batches):
    /// token `i` attends to the tokens of its own sequence at or before it and to nothing cached. The cache must
    /// be empty; it is neither read nor written. Attention runs as one batched op over the sequences, and every
    /// other layer op over all `T` rows at once.
    Sequences {
        /// Tokens per sequence.
        len: usize,
    },
    /// An explicit row-major u8 mask `[T, L + T]` (non-zero = may attend) over the `L` slots cached in a layer
    /// before this batch, then the `T` new tokens. `L` must equal the layer's cache length when it runs.
    Explicit {
        /// The mask.
        mask: Vec<u8>,
        /// Its number of columns `L + T`.
        cols: usize,
    },
}

/// New tokens for one sequence: ids, absolute positions (RoPE), and the mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Absolute position of each token (RoPE angle); need not be contiguous (tree drafts share depths).
    pub positions: Vec<u32>,
    /// Visibility.
    pub mask: BatchMask,
}

impl Batch {
    /// A causal batch of `tokens` at positions `start, start + 1, ...`.
    pub fn causal(tokens: &[u32], start: usize) -> Batch {
        Batch {
            tokens: tokens.to_vec(),
            positions: (0..tokens.len()).map(|i| (start + i) as u32).collect(),
            mask: BatchMask::Causal,
        }
    }

    /// `tokens.len() / len` independent causal sequences of `len` tokens (packed training rows), each at positions
    /// `0..len`. An error unless `len` divides the number of tokens.
    pub fn sequences(tokens: &[u32], len: usize) -> Result<Batch> {
        let batch = Batch {
            tokens: tokens.to_vec(),
            positions: (0..tokens.len()).map(|i| (i % len.max(1)) as u32).collect(),
            mask: BatchMask::Sequences { len },
        };
        batch.validate()?;
        Ok(batch)
    }

    /// The number of sequences and their length when the mask is [`BatchMask::Sequences`].
    pub fn sequences_shape(&self) -> Option<(usize, usize)> {
        match self.mask {
            BatchMask::Sequences { len } if len > 0 => Some((self.tokens.len() / len, len)),
            _ => None,
        }
    }

    /// A token tree hanging off a prefix of length `start`: token `i` sits at position `start + depth(i)`.
    pub fn tree(tokens: &[u32], parents: &[Option<usize>], start: usize) -> Result<Batch> {
        if parents.len() != tokens.len() {
            return Err(invalid("batch", format!("{} parents for {} tokens", parents.len(), tokens.len())));
        }
        let mut depth = vec![0usize; tokens.len()];
        for (i, p) in parents.iter().enumerate() {
            if let Some(p) = *p {
                if p >= i {
                    return Err(invalid("batch", format!("parent {p} of token {i} does not precede it")));
                }
                depth[i] = depth[p] + 1;
            }
        }
        Ok(Batch {
            tokens: tokens.to_vec(),
            positions: depth.iter().map(|d| (start + d) as u32).collect(),
            mask: BatchMask::Tree { parents: parents.to_vec() },
        })
    }

    /// Number of new tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks lengths and the mask's shape.
    pub fn validate(&self) -> Result<()> {
        let t = self.tokens.len();
        if t == 0 {
            return Err(invalid("batch", "no tokens"));
        }
        if self.positions.len() != t {
            return Err(invalid("batch", format!("{} positions for {t} tokens", self.positions.len())));
        }
        match &self.mask {
            BatchMask::Causal => {}
            BatchMask::Tree { parents } => {
                if parents.len() != t {
                    return Err(invalid("mask", format!("{} tree parents for {t} tokens", parents.len())));
                }
                if let Some((i, p)) =
                    parents.iter().enumerate().find_map(|(i, p)| p.filter(|&p| p >= i).map(|p| (i, p)))
                {
                    return Err(invalid("mask", format!("parent {p} of token {i} does not precede it")));
                }
            }
            BatchMask::Sequences { len } => {
                if *len == 0 || !t.is_multiple_of(*len) {
                    return Err(invalid("mask", format!("{t} tokens are not a whole number of sequences of {len}")));
                }
            }
            BatchMask::Explicit { mask, cols } => {
                if *cols < t || mask.len() != t * cols {
                    return Err(invalid(
                        "mask",
                        format!("explicit mask of {} bytes is not {t} × {cols} (cols ≥ {t})", mask.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The full u8 mask `[T, cached + T]` for a layer holding `cached` slots, or `None` for plain causal masking.
    pub fn dense_mask(&self, cached: usize) -> Result<Option<Vec<u8>>> {
        let t = self.tokens.len();
        let cols = cached + t;
        match &self.mask {
            BatchMask::Causal => Ok(None),
            BatchMask::Tree { parents } => {
                let mut m = vec![0u8; t * cols];
                for i in 0..t {
                    let row = &mut m[i * cols..(i + 1) * cols];
                    row[..cached].fill(1);
                    let mut node = Some(i);
                    while let Some(n) = node {
                        row[cached + n] = 1;
                        node = parents[n];
                    }
                }
                Ok(Some(m))
            }
            BatchMask::Sequences { len } => {
                if cached != 0 {
                    return Err(invalid(
                        "mask",
                        format!("a batch of sequences needs an empty cache, not {cached} slots"),
                    ));
                }
                let len = (*len).max(1);
                Ok(Some((0..t * t).map(|i| u8::from(i / t / len == i % t / len && i % t <= i / t)).collect()))
            }
            BatchMask::Explicit { mask, cols: c } => {
                if *c != cols {
                    return Err(invalid(
                        "mask",
                        format!("explicit mask has {c} columns but the layer holds {cached} cached + {t} new slots"),
                    ));
                }
                Ok(Some(mask.clone()))
            }
        }
    }
}
