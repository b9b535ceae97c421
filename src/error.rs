//! The crate's one error type. Each variant names its area and carries the context a user needs
//! to find the bad input (path, pipeline field, stage id, layer, tensor key). Areas keep their
//! variants in their own block below, so work on one area does not collide with another.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- general ----------------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),

    // ---- model --------------------------------------------------------------------------------
    #[error("{location}: no tensor named `{tensor}`")]
    MissingTensor { tensor: String, location: String },
    #[error(
        "{location}: tensor `{tensor}` has shape {found:?}, expected {expected:?} from the model config"
    )]
    TensorShape {
        tensor: String,
        location: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{location}: tensor `{tensor}`: {msg}")]
    TensorData {
        tensor: String,
        location: String,
        msg: String,
    },
    #[error(
        "{path}: unsupported architecture `{architecture}` (tyr runs Llama/Mistral-style decoders)"
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("{path}: {msg}")]
    ModelConfig { path: PathBuf, msg: String },
    #[error("layer {layer}: {msg}")]
    LayerDims { layer: usize, msg: String },
    // loaders: GGUF, tokenizer, model detection
    #[error("{path}: {reason}")]
    GgufRead { path: PathBuf, reason: String },
    #[error("{path}: metadata `{key}`: {reason}")]
    ModelMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor `{name}`: {reason}")]
    ModelTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: not a model: {reason}")]
    NotAModel { path: PathBuf, reason: String },

    // ---- data ---------------------------------------------------------------------------------

    // ---- engine -------------------------------------------------------------------------------

    // ---- pipeline -----------------------------------------------------------------------------

    // ---- prune --------------------------------------------------------------------------------

    // ---- search -------------------------------------------------------------------------------

    // ---- export -------------------------------------------------------------------------------
    #[error("layer {layer} {module}: invalid pruning choice: {msg}")]
    ExportChoice {
        layer: usize,
        module: &'static str,
        msg: String,
    },
    #[error("{path}: GGUF export: {msg}")]
    GgufWrite { path: PathBuf, msg: String },

    // ---- eval ---------------------------------------------------------------------------------
    #[error("the text has {tokens} tokens, fewer than one window of --seq-len {seq_len}")]
    TextTooShort { tokens: usize, seq_len: usize },
    #[error("invalid evaluation setting: {0}")]
    EvalSetting(String),
}

impl Error {
    /// An I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}
