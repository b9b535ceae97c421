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

    // ---- data ---------------------------------------------------------------------------------

    // ---- engine -------------------------------------------------------------------------------
    #[error("stage `{stage}`: {message}")]
    EngineStage { stage: String, message: String },
    #[error("stage `{stage}` output `{output}`: {message}")]
    EngineArtifact {
        stage: String,
        output: String,
        message: String,
    },
    #[error("unknown stage kind `{kind}` (available: {available})")]
    EngineUnknownKind { kind: String, available: String },
    #[error("work directory {} is in use by {holder}; wait for that run to finish or stop it", workdir.display())]
    EngineLocked { workdir: PathBuf, holder: String },
    #[error("store {}: {message}", path.display())]
    EngineStore { path: PathBuf, message: String },
    #[error("{} stage(s) failed: {}", failed.len(), failed.join("; "))]
    EngineRunFailed { failed: Vec<String> },

    // ---- pipeline -----------------------------------------------------------------------------
    #[error("{}{}: {field}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Pipeline {
        file: PathBuf,
        line: Option<usize>,
        field: String,
        message: String,
    },
    // ---- prune --------------------------------------------------------------------------------

    // ---- search -------------------------------------------------------------------------------

    // ---- export -------------------------------------------------------------------------------
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
