//! Perplexity (the ALGORITHM.md §11 protocol), generation and the forward speed benchmark.

pub mod bench;
pub mod generate;
pub mod perplexity;
