//! The exit codes of `tyr`, in one place. `main` alone turns an error into a code through
//! `classify`; the README's command table and docs/ENGINE.md list them. A scheduler or script
//! can tell "fix your input" from "another run holds the work directory", "a stage failed" and
//! "stopped by a signal, requeue me".

use crate::Error;

/// What a `tyr` process ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Everything asked for is done.
    Success,
    /// Anything not covered below (an I/O error, a damaged store, a bug).
    Failure,
    /// Bad input or settings: a pipeline file, a flag, a value out of range. Same code clap
    /// uses for a malformed command line.
    BadInput,
    /// The work directory is locked by another run.
    Locked,
    /// At least one stage failed (its dependents were skipped; the rest completed).
    StageFailed,
    /// Stopped by SIGTERM or SIGINT before finishing; the store is consistent, run again.
    Interrupted,
}

impl ExitKind {
    pub const ALL: [ExitKind; 6] = [
        ExitKind::Success,
        ExitKind::Failure,
        ExitKind::BadInput,
        ExitKind::Locked,
        ExitKind::StageFailed,
        ExitKind::Interrupted,
    ];

    pub fn code(self) -> u8 {
        match self {
            ExitKind::Success => 0,
            ExitKind::Failure => 1,
            ExitKind::BadInput => 2,
            ExitKind::Locked => 3,
            ExitKind::StageFailed => 4,
            ExitKind::Interrupted => 5,
        }
    }
}

/// Marks an error as the user's input being wrong (e.g. everything loading a pipeline file
/// reports), whatever its variant.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadInput(#[from] pub Error);

/// The exit kind for an error: the first cause in the chain that says what it is.
pub fn classify(e: &anyhow::Error) -> ExitKind {
    for cause in e.chain() {
        if cause.downcast_ref::<BadInput>().is_some() {
            return ExitKind::BadInput;
        }
        if let Some(err) = cause.downcast_ref::<Error>() {
            return classify_error(err);
        }
    }
    ExitKind::Failure
}

fn classify_error(e: &Error) -> ExitKind {
    match e {
        Error::EngineLocked { .. } => ExitKind::Locked,
        Error::EngineRunFailed { .. } => ExitKind::StageFailed,
        Error::EngineInterrupted { .. } => ExitKind::Interrupted,
        Error::Pipeline { .. }
        | Error::EngineUnknownKind { .. }
        | Error::CpuKernel { .. }
        | Error::DataParam { .. }
        | Error::PruneTarget { .. }
        | Error::PruneOption { .. }
        | Error::SearchParams { .. }
        | Error::SearchConfiguration { .. }
        | Error::EvalSetting(_)
        | Error::EvalTaskName { .. }
        | Error::TextTooShort { .. }
        | Error::NotAModel { .. }
        | Error::UnsupportedArchitecture { .. } => ExitKind::BadInput,
        _ => ExitKind::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_success_is_zero() {
        let codes: std::collections::BTreeSet<u8> =
            ExitKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ExitKind::ALL.len());
        assert_eq!(ExitKind::Success.code(), 0);
    }

    #[test]
    fn a_wrapped_engine_error_keeps_its_kind_through_context() {
        let e = anyhow::Error::from(Error::EngineLocked {
            workdir: "w".into(),
            holder: "pid 1".into(),
        })
        .context("running");
        assert_eq!(classify(&e), ExitKind::Locked);
        let io = anyhow::Error::from(BadInput(Error::io(
            "p.toml",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )));
        assert_eq!(classify(&io), ExitKind::BadInput);
        assert_eq!(classify(&anyhow::anyhow!("other")), ExitKind::Failure);
    }
}
