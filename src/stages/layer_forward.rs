//! `layer-forward` stage: X_{ℓ+1} = decoder layer ℓ with its `o_proj`/`down_proj` replaced by
//! the averaged weights a `supernet-layer` stage output (`expected`), run on X_ℓ. Split from the
//! supernet layer so the transient activations live in their own stage: consumers of the
//! variants never force a layer rebuild when activations were garbage-collected.
//!
//! Inputs: `model`, `x` (X_ℓ), `weights` (the layer's `supernet-layer` stage). Params: `layer`,
//! `activation-dtype`.
//! Output: `x` (transient, chunk k computed from chunk k of X_ℓ). Invalidated by: the layer, model record, X_ℓ, the averaged weights.

use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use crate::Result;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::StorageDtype;
use crate::supernet::layer::{DenseLayer, flat};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LayerForwardParams {
    pub layer: usize,
    /// The dtype X_{ℓ+1} is stored in (`activation-dtype`) [f32].
    #[serde(default, skip_serializing_if = "StorageDtype::is_f32")]
    pub activation_dtype: StorageDtype,
}

pub struct LayerForward(LayerForwardParams);

impl Stage for LayerForward {
    const KIND: &'static str = "layer-forward";
    const VERSION: u32 = 2;
    type Params = LayerForwardParams;

    fn new(p: LayerForwardParams) -> Result<Self> {
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![
            InputSlot::one("model"),
            InputSlot::one("x"),
            InputSlot::one("weights"),
        ]
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let x = acts::Reader::open(ctx.input("x")?, "x")?;
        let w = ctx.input("weights")?.tensors("expected")?;
        let get = |k: &str| {
            w.get(k)
                .ok_or_else(|| crate::Error::msg(format!("`expected` lacks `{k}`")))
                .and_then(flat)
        };
        let (o_bar, d_bar) = (get("o_proj")?, get("down_proj")?);
        let model = open(&record)?;
        let dense = DenseLayer::load_on(
            &model.config,
            self.0.layer,
            model.source.as_ref(),
            &ctx.compute()?,
        )?;
        let block = dense.block_with(&model.config, Some(&o_bar), Some(&d_bar))?;
        let mut o = Outputs::new();
        acts::map_to_output(ctx, &x, &mut o, "x", self.0.activation_dtype, |xb| {
            block.forward(xb)
        })?;
        Ok(o)
    }
}
