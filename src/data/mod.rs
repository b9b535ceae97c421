//! Text sources (`path`, `pip`), readers (plain text, JSONL, parquet), the seeded calibration
//! pool and evaluation windows. Tokenization belongs to the model layer: it comes in as a
//! closure ([`Tokenize`]), so this area does not depend on the model.

pub mod archive;
pub mod digest;
pub mod pool;
pub mod reader;
pub mod source;
pub mod windows;

pub use digest::file_digest;
pub use pool::{
    MixPart, Pool, PoolParams, PoolReport, SourceShare, Tokenize, build_mixed_pool, build_pool,
};
pub use reader::{TextDocuments, TextFormat, read_documents};
pub use source::{DataSource, Fetched, PipClient, fetch, fetch_with};
pub use windows::{EvalWindows, eval_windows, token_stream};
