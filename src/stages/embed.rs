//! `embed` stage: X_0, the token embeddings of every pool piece (ALGORITHM.md §6). Inputs
//! `model`, `pool`; output `x` (transient activations, see `acts`). Invalidated by: the model
//! record and the pool.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::Embeddings;
use crate::supernet::acts::Acts;
use crate::{Error, Result};

pub struct Embed;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {}

impl Stage for Embed {
    const KIND: &'static str = "embed";
    const VERSION: u32 = 1;
    type Params = EmbedParams;

    fn new(_p: EmbedParams) -> Result<Self> {
        Ok(Embed)
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("model"), InputSlot::one("pool")]
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let pool: Pool = ctx.input("pool")?.record("pool")?;
        let model = open(&record)?;
        let emb = Embeddings::load(&model.config, model.source.as_ref())?;
        let ids: Vec<u32> = pool.pieces.iter().flatten().copied().collect();
        if ids.is_empty() {
            return Err(Error::msg("the calibration pool is empty"));
        }
        let n = ids.len();
        // [tokens] → [1, tokens] → [1, tokens, hidden] → [tokens, hidden]
        let x = emb
            .forward(&Tensor::from_vec(ids, (1, n), &Device::Cpu)?)?
            .squeeze(0)?;
        let acts = Acts {
            x,
            lengths: pool.pieces.iter().map(Vec::len).collect(),
        };
        let mut o = Outputs::new();
        acts::write(&acts, &mut o, "x")?;
        o.metric("tokens", n as f64);
        Ok(o)
    }
}
