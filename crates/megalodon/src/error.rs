//! Typed errors: bad configurations, shapes and states name what is wrong instead of panicking.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MegalodonError {
    /// A tensor op failed (shape, dtype or device problems inside `effllm-tensor`).
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
    /// A configuration that cannot describe a model (dimensions that do not divide, a zero chunk size...).
    #[error("invalid Megalodon config: {0}")]
    Config(String),
    /// An input of the wrong shape.
    #[error("{op}: expected shape {expected}, found {found:?}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What was expected, in words and numbers.
        expected: String,
        /// The shape passed in.
        found: Vec<usize>,
    },
    /// A streaming state that does not belong to this model, layer or batch.
    #[error("{op}: state mismatch: {msg}")]
    State {
        /// The operation.
        op: &'static str,
        /// What does not match.
        msg: String,
    },
    /// An argument outside its domain.
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A tracked (requires-grad) input reached a path that has no backward rule, e.g. the CEMA recurrence, which
    /// exists for decoding: train through the FFT path instead.
    #[error("{op} is not differentiable: {msg}")]
    NotDifferentiable {
        /// The operation.
        op: &'static str,
        /// What to use instead.
        msg: String,
    },
}

/// `Result` with [`MegalodonError`].
pub type Result<T> = std::result::Result<T, MegalodonError>;
