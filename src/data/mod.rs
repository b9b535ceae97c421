//! Text sources (`path`, `pip`), readers (plain text, JSONL, parquet), tokenization and seeded
//! fixed-length sampling.
