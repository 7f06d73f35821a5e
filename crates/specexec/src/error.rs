//! Typed errors. Every fallible function of the crate returns [`Result`]; bad input never panics and never makes
//! generation silently sample from a different distribution.

use effllm_model::ModelError;
use effllm_sampling::SamplingError;

/// Everything that can go wrong while drafting, validating or committing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A model forward failed (bad token, context overflow inside the model, backend error).
    #[error("{model} model: {source}")]
    Model {
        /// `"draft"` or `"target"`.
        model: &'static str,
        /// The model's error.
        #[source]
        source: ModelError,
    },
    /// Processing logits, sampling or verification failed.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// Draft and target do not share a vocabulary: acceptance would compare unrelated ids.
    #[error("draft vocabulary has {draft} tokens, target vocabulary has {target}: they must be identical")]
    VocabSizeMismatch {
        /// Draft vocabulary size.
        draft: usize,
        /// Target vocabulary size.
        target: usize,
    },
    /// Draft and target tokenizers map some id to different token strings.
    #[error("draft and target tokenizers differ at id {id}: draft {draft:?}, target {target:?}")]
    TokenizerMismatch {
        /// First differing id.
        id: usize,
        /// The draft's token string (or `<none>` past its end).
        draft: String,
        /// The target's token string (or `<none>` past its end).
        target: String,
    },
    /// A configuration value is outside its domain.
    #[error("invalid configuration {name} = {value}: {reason}")]
    InvalidConfig {
        /// Field name.
        name: &'static str,
        /// The value, widened to f64.
        value: f64,
        /// The domain, in words.
        reason: &'static str,
    },
    /// The prompt is empty (the first target distribution needs at least one token to condition on).
    #[error("empty prompt: speculative decoding needs at least one prompt token")]
    EmptyPrompt,
    /// A prompt token is not in the vocabulary.
    #[error("prompt token {token} at index {index} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// Its index in the prompt.
        index: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A stop token is not in the vocabulary (it could never be emitted: generation would silently ignore it).
    #[error("stop token {token} at index {index} is out of range for a vocabulary of {vocab}")]
    StopTokenOutOfRange {
        /// The token.
        token: u32,
        /// Its index in the stop-token list.
        index: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// [`Session::step`](crate::Session::step) was called after a stop token ended the session.
    #[error("the generation already ended with stop token {token}")]
    Stopped {
        /// The stop token that ended it.
        token: u32,
    },
    /// The draft tree (or chain) would not fit in what is left of a model's context.
    #[error(
        "{model} model: {needed} positions needed ({committed} committed + {speculative} speculative), context is {context}"
    )]
    ContextOverflow {
        /// `"draft"` or `"target"`.
        model: &'static str,
        /// Positions (KV slots) needed.
        needed: usize,
        /// Tokens already committed.
        committed: usize,
        /// Speculative tokens (tree nodes or draft length, plus the root).
        speculative: usize,
        /// The model's context length.
        context: usize,
    },
    /// A model returned NaN or +∞ logits.
    #[error("{model} model returned logit {value} at row {row}, token {index} (NaN and +inf are rejected)")]
    NonFiniteLogits {
        /// `"draft"` or `"target"`.
        model: &'static str,
        /// Row of the forward's output.
        row: usize,
        /// Token id.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A model returned logits of an unexpected shape.
    #[error("{model} model returned logits of shape {got:?}, expected [{rows}, {vocab}]")]
    LogitsShape {
        /// `"draft"` or `"target"`.
        model: &'static str,
        /// The shape received.
        got: Vec<usize>,
        /// Rows expected.
        rows: usize,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, SpecError>;

pub(crate) fn model_err(model: &'static str) -> impl FnOnce(ModelError) -> SpecError {
    move |source| SpecError::Model { model, source }
}

pub(crate) fn config(name: &'static str, value: f64, reason: &'static str) -> SpecError {
    SpecError::InvalidConfig { name, value, reason }
}
