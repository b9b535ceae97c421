//! `embed` stage: X_0, the token embeddings of every pool piece (ALGORITHM.md §6), written
//! chunk by chunk in batch order (`acts`). Inputs `model`, `pool`; params `chunk-mib` (most
//! bytes of activations per chunk, counted in f32) and `activation-dtype`; output `x`
//! (transient activations). Invalidated by: the model record, the pool and the params.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use crate::data::Pool;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::{Embeddings, StorageDtype};
use crate::supernet::acts::{Batch, chunk_plan};
use crate::{Error, Result};

pub struct Embed(EmbedParams);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EmbedParams {
    #[serde(default = "d_chunk_mib")]
    pub chunk_mib: u64,
    /// The dtype X_0 is stored in [f32].
    #[serde(default, skip_serializing_if = "StorageDtype::is_f32")]
    pub activation_dtype: StorageDtype,
}

fn d_chunk_mib() -> u64 {
    acts::DEFAULT_CHUNK_MIB
}

/// Largest `chunk-mib` accepted (64 GiB).
pub const MAX_CHUNK_MIB: u64 = 1 << 16;

impl Stage for Embed {
    const KIND: &'static str = "embed";
    const VERSION: u32 = 2;
    type Params = EmbedParams;

    fn new(p: EmbedParams) -> Result<Self> {
        if p.chunk_mib == 0 || p.chunk_mib > MAX_CHUNK_MIB {
            return Err(Error::PruneOption {
                field: "chunk-mib",
                reason: format!("{} is not between 1 and {MAX_CHUNK_MIB}", p.chunk_mib),
            });
        }
        Ok(Embed(p))
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
        let lengths: Vec<usize> = pool.pieces.iter().map(Vec::len).collect();
        let n: usize = lengths.iter().sum();
        if n == 0 {
            return Err(Error::msg("the calibration pool is empty"));
        }
        let plan = chunk_plan(&lengths, model.config.hidden_size, self.0.chunk_mib << 20);
        let mut w = ctx.chunk_writer("x")?;
        for (i, chunk) in plan.iter().enumerate().skip(w.written()) {
            let batches = chunk
                .iter()
                .map(|pieces| {
                    let s = lengths[pieces[0]];
                    let ids: Vec<u32> = pieces
                        .iter()
                        .flat_map(|&p| pool.pieces[p].clone())
                        .collect();
                    // [b, s] → [b, s, hidden]
                    let x =
                        emb.forward(&Tensor::from_vec(ids, (pieces.len(), s), &Device::Cpu)?)?;
                    Ok(Batch {
                        pieces: pieces.clone(),
                        x,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            acts::push(&mut w, &batches, self.0.activation_dtype)?;
            ctx.report(i as u64 + 1, plan.len() as u64);
        }
        let mut o = Outputs::new();
        acts::finish(w, &lengths, &mut o, "x")?;
        o.metric("tokens", n as f64);
        Ok(o)
    }
}
