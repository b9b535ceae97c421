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
    #[error(
        "local pruning of layer {layer} {module} at level {level} failed: the damped Hessian is \
         not positive definite even with damping {damping}; raise `damping` or \
         `damping-retries`, or check the calibration statistics for NaN/inf"
    )]
    LocalPruneSingular {
        layer: usize,
        module: crate::prune::ModuleKind,
        level: usize,
        damping: f64,
    },
    #[error("prune: {what}: expected {expected}, got {got}")]
    PruneShape {
        what: String,
        expected: String,
        got: String,
    },
    #[error("prune: layer {layer} {module}: level {level} is more than its {units} units")]
    PruneLevel {
        layer: usize,
        module: crate::prune::ModuleKind,
        level: usize,
        units: usize,
    },
    #[error("prune: target sparsity {target} is outside [0, 1); give a fraction such as 0.5")]
    PruneTarget { target: f64 },
    #[error("prune: {module} grid: {reason}")]
    PruneGrid {
        module: crate::prune::ModuleKind,
        reason: String,
    },
    #[error("prune: option `{field}`: {reason}")]
    PruneOption { field: &'static str, reason: String },
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
