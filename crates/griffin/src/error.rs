//! [`GriffinError`]: bad densities, decoding before `finalize`, FFNs GRIFFIN cannot prune, shape mismatches.

use effllm_model::ModelError;

/// Everything that can go wrong selecting experts or running a pruned FFN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GriffinError {
    /// A density outside `[0, 1]` (or `0` where it is not allowed, e.g. for the magnitude baseline).
    #[error("{what}: density {value} is outside {allowed}")]
    InvalidDensity {
        /// Which density (the global one, or `layer N` of the schedule).
        what: String,
        /// The offending value.
        value: f64,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// A per-layer schedule whose length is not the model's number of layers.
    #[error("per-layer density schedule has {found} entries for a {layers}-layer model")]
    ScheduleLength {
        /// Entries in the schedule.
        found: usize,
        /// Layers of the model.
        layers: usize,
    },
    /// A decode step (or anything needing the expert sets) before [`finalize`](crate::GriffinLlama::finalize).
    #[error("{op}: the expert sets are not selected yet: run the prompt, then call finalize before decoding")]
    NotFinalized {
        /// The operation.
        op: &'static str,
    },
    /// A prefill chunk after the expert sets were frozen.
    #[error("{op}: the expert sets are already final; prompt chunks must come before finalize")]
    AlreadyFinalized {
        /// The operation.
        op: &'static str,
    },
    /// `finalize` without any prompt token.
    #[error("{op}: no prompt token has been run through the model (prefill before finalize)")]
    EmptyPrompt {
        /// The operation.
        op: &'static str,
    },
    /// The FFN has no gate (or declares a gated form without one).
    #[error("the FFN is not gated: {msg}")]
    NotGated {
        /// What is missing.
        msg: String,
    },
    /// Operand shapes that do not fit together.
    #[error("{op}: shape mismatch: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// Any other invalid argument (an index out of range, a class-mode input of one token...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Sampling from scores that contain NaN (the reference's `ZeroRowPolicy::Nan` after an all-zero row).
    #[error("{op}: the scores contain NaN, which cannot be sampled from")]
    NanScores {
        /// The operation.
        op: &'static str,
    },
    /// An error of the model crate.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An error of the tensor crate.
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, GriffinError>;

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> GriffinError {
    GriffinError::InvalidArgument { op, msg: msg.into() }
}
