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

    // ---- pipeline -----------------------------------------------------------------------------

    // ---- prune --------------------------------------------------------------------------------

    // ---- search -------------------------------------------------------------------------------
    #[error("search grid of the {module} module of layer {layer}: {reason}")]
    SearchGrid {
        layer: usize,
        module: &'static str,
        reason: String,
    },
    #[error("search configuration: {reason}")]
    SearchConfiguration { reason: String },
    #[error("search parameter `{field}`: {reason}")]
    SearchParams { field: &'static str, reason: String },
    #[error(
        "search scorer, stage {stage}: returned {got} fitness values for {expected} candidates"
    )]
    SearchScorer {
        stage: usize,
        expected: usize,
        got: usize,
    },
    #[error("search progress record does not belong to this search: {reason}")]
    SearchResume { reason: String },
    #[error("calibration pool: {reason}")]
    SearchMinibatch { reason: String },
    #[error("fitness: {reason}")]
    Fitness { reason: String },

    // ---- export -------------------------------------------------------------------------------
}

impl Error {
    /// An I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}
