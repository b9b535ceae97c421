//! Perplexity (the ALGORITHM.md §11 protocol), zero-shot task accuracy (§11.1: task files in
//! `tasks`, scoring in `zeroshot`), generation and the forward speed benchmark.

pub mod bench;
pub mod generate;
pub mod perplexity;
pub mod tasks;
pub mod zeroshot;
