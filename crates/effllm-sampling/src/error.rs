//! Typed errors. Every fallible function of the crate returns [`Result`]; no user-reachable path panics.

/// Everything that can go wrong while processing logits, sampling or verifying draft tokens.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SamplingError {
    /// A logits row, probability row or uniform list that must not be empty was empty.
    #[error("{what}: empty input (a vocabulary needs at least one token)")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// A logit was NaN or +∞. (−∞ is allowed: it masks the token, which then has probability exactly 0.)
    #[error("logit {index} is {value} (NaN and +inf are rejected; -inf masks a token)")]
    NonFiniteLogit {
        /// Token id of the offending logit.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Every logit was −∞ (or every token was filtered out), so there is nothing to sample.
    #[error("every logit is -inf: no token can be sampled")]
    AllMasked,
    /// A sampling parameter is out of its domain.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParam {
        /// Parameter name, as in [`SamplingParams`](crate::SamplingParams).
        name: &'static str,
        /// The value given (widened to f64).
        value: f64,
        /// The domain, in words.
        reason: &'static str,
    },
    /// A token id (in the history, in a draft or in a tree) is not below the vocabulary size.
    #[error("{what}: token {token} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange {
        /// Where the token came from.
        what: &'static str,
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A vocabulary larger than `u32::MAX + 1` tokens cannot be indexed by [`Token`](crate::Token).
    #[error("vocabulary of {vocab} tokens exceeds the u32 token-id range")]
    VocabTooLarge {
        /// The vocabulary size.
        vocab: usize,
    },
    /// An entry of a probability row is negative, NaN or infinite.
    #[error("{what}: probability {index} is {value} (must be finite and >= 0)")]
    InvalidProbability {
        /// Which row.
        what: &'static str,
        /// Token id of the entry.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A probability row sums to zero.
    #[error("{what}: the probabilities sum to zero")]
    ZeroMass {
        /// Which row.
        what: &'static str,
    },
    /// Two rows that must share the vocabulary have different lengths.
    #[error("{what}: row has {got} entries, expected {expected} (the vocabulary of the first target row)")]
    VocabMismatch {
        /// Which row.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The number of distribution rows does not fit the number of draft tokens or tree nodes.
    #[error("{what}: got {got} rows, expected {expected}")]
    RowCount {
        /// Which rows.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Actual count.
        got: usize,
    },
    /// A draft token has probability 0 under the draft distribution it was supposedly sampled from. This breaks
    /// the contract of rejection sampling (`q` must be the distribution the token was drawn from).
    #[error(
        "draft token {token} at position {position} has draft probability 0 (q must be the distribution it was sampled from)"
    )]
    ZeroDraftProbability {
        /// Draft position (0-based) or tree node index.
        position: usize,
        /// The token.
        token: u32,
    },
    /// A uniform source produced a value outside `[0, 1)`.
    #[error("uniform source produced {value}, outside [0, 1)")]
    InvalidUniform {
        /// The value.
        value: f64,
    },
    /// An explicit list of uniforms ran out.
    #[error("explicit uniform list exhausted after {consumed} values")]
    UniformsExhausted {
        /// How many values were consumed.
        consumed: usize,
    },
    /// A token tree is malformed.
    #[error("invalid token tree: node {node}: {reason}")]
    InvalidTree {
        /// The offending node.
        node: usize,
        /// What is wrong, in words.
        reason: &'static str,
    },
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, SamplingError>;
