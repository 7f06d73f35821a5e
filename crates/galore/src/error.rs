//! The crate's error type.

use effllm_optim::OptimError;
use effllm_tensor::TensorId;

/// Everything that can go wrong in `galore`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum GaLoreError {
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] effllm_tensor::Error),
    /// An error of the inner optimizer's checks (hyperparameters, gradient shape, checkpoint state).
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// A GaLore setting outside its domain (a rank of 0, a refresh gap of 0, a non-finite scale, ...).
    #[error("GaLore: invalid {name} = {value}: {expected}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The domain, in words.
        expected: &'static str,
    },
    /// A parameter that cannot be projected as declared: not 2-D and no matrix view declared, or a declared matrix
    /// view whose element count differs from the parameter's.
    #[error("GaLore: parameter of shape {shape:?} cannot be projected: {msg}")]
    NotAMatrix {
        /// The parameter's shape.
        shape: Vec<usize>,
        /// What is wrong.
        msg: String,
    },
    /// The rank asked for exceeds `min(m, n)` and strict rank checking is on (otherwise the rank is capped and the
    /// cap recorded, see [`GaLore::rank_notices`](crate::GaLore::rank_notices)).
    #[error("GaLore: rank {requested} exceeds min(m, n) = {max} of a {m}x{n} matrix")]
    RankTooLarge {
        /// The rank asked for.
        requested: usize,
        /// `min(m, n)`.
        max: usize,
        /// Rows.
        m: usize,
        /// Columns.
        n: usize,
    },
    /// A basis that does not fit the projector (wrong side, shape, rank or device).
    #[error("GaLore: bad basis: {0}")]
    BadBasis(String),
    /// A [`Replay`](crate::Replay) basis source has no basis for the requested parameter and refresh.
    #[error("GaLore: the replay source has no basis for parameter {param} at refresh {refresh}")]
    ReplayExhausted {
        /// The parameter.
        param: TensorId,
        /// The 0-based refresh number.
        refresh: u64,
    },
    /// Projector state in a checkpoint that does not match the parameter or the configuration.
    #[error("GaLore: bad projector state: {0}")]
    BadState(String),
}

/// `Result` with [`GaLoreError`].
pub type Result<T> = std::result::Result<T, GaLoreError>;

impl From<GaLoreError> for OptimError {
    /// The [`Optimizer`](effllm_optim::Optimizer) trait speaks [`OptimError`]: tensor and optimizer errors pass
    /// through; GaLore's own become [`OptimError::BadState`] with the message, or
    /// [`OptimError::InvalidHyperparameter`] for settings.
    fn from(e: GaLoreError) -> OptimError {
        match e {
            GaLoreError::Tensor(t) => OptimError::Tensor(t),
            GaLoreError::Optim(o) => o,
            GaLoreError::InvalidSetting { name, value, expected } => {
                OptimError::InvalidHyperparameter { optimizer: "GaLore", name, value, expected }
            }
            other => OptimError::BadState { optimizer: "GaLore", msg: other.to_string() },
        }
    }
}
