//! Perplexity (the ALGORITHM.md §11 protocol), generation and the forward speed benchmark.

pub mod bench;
