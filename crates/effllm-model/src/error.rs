//! [`ModelError`]: everything that can go wrong loading or running a model.

/// Errors of model loading and inference. Each variant names what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor operation failed (shape, dtype, device or backend error).
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] effllm_gguf::GgufError),
    /// The file describes another architecture.
    #[error("unsupported architecture {found:?}: this decoder loads {expected}")]
    UnsupportedArchitecture {
        /// `general.architecture` (or the config's `model_type`).
        found: String,
        /// What is supported.
        expected: &'static str,
    },
    /// A required metadata key or config field is missing or has the wrong type.
    #[error("missing or invalid hyperparameter `{key}`: {msg}")]
    BadConfig {
        /// The key.
        key: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A weight the architecture needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A weight has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    BadTensorShape {
        /// Tensor name.
        name: String,
        /// Its row-major shape.
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A weight is stored in a format this crate cannot compute with.
    #[error("tensor `{name}` has unsupported type {ty}")]
    UnsupportedWeightType {
        /// Tensor name.
        name: String,
        /// The stored type.
        ty: String,
    },
    /// A safetensors file or its JSON config is malformed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The batch would run past the model's context length.
    #[error("context overflow: {cached} cached + {new} new tokens exceed the context length {context}")]
    ContextOverflow {
        /// Slots already in the cache.
        cached: usize,
        /// Tokens in the batch.
        new: usize,
        /// The model's context length.
        context: usize,
    },
    /// A token id is not in the vocabulary.
    #[error("token id {id} at batch position {index} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Its index in the batch.
        index: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A batch, mask, cache operation or layer range is inconsistent.
    #[error("invalid {what}: {msg}")]
    Invalid {
        /// What was invalid ("batch", "mask", "layer range", "cache compaction", ...).
        what: &'static str,
        /// Details.
        msg: String,
    },
}

/// `Result` with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn invalid(what: &'static str, msg: impl Into<String>) -> ModelError {
    ModelError::Invalid { what, msg: msg.into() }
}
