//! tyr — structured pruning of Llama-family language models with Týr-the-Pruner, run as a
//! dataflow of checkpointed, resumable stages. See `ALGORITHM.md` and `ARCHITECTURE.md` in
//! `docs/`.

pub mod atomic_file;
pub mod cli;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod model;
pub mod pipeline;
pub mod prune;
pub mod rng;
pub mod search;
pub mod serde_f64;
pub mod stages;
pub mod supernet;
pub mod vocab;

pub use error::{Error, Result};
