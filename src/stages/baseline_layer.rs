//! `baseline-layer` stage: one layer of the `magnitude` or `wanda-sp` baseline (ALGORITHM.md §12)
//! at fixed levels, without refit: the kept units' dense `o_proj`/`down_proj` columns are the
//! variant weight. (`uniform` is a one-level `supernet-layer` chain with `centre` expectation.)
//!
//! Inputs: `model`; `wanda-sp` also `x` (X_ℓ on its own pruned path: `embed` for layer 0, else the
//! previous `wanda-sp` layer). `magnitude` needs no data.
//!
//! `wanda-sp`: H_o on X_ℓ through the dense block picks the heads; H_d is then collected with
//! the attention pruned (its `o_proj` columns zeroed, which equals slicing), picks the channels;
//! X_{ℓ+1} is the output of the pruned layer.
//!
//! Outputs: records `attn-{level}`, `ffn-{level}` (`Variant`s, rel-error NaN: not measured),
//! and for `wanda-sp` the transient `x`. Invalidated by: params, model record, X_ℓ, seed.

use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use super::supernet_layer::variant_name;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::StorageDtype;
use crate::prune::baselines::{
    kept_after_removing_lowest, magnitude_channel_scores, magnitude_head_scores, wanda_sp_scores,
};
use crate::prune::local::Variant;
use crate::prune::slice::{pad_columns, select_column_units};
use crate::prune::{ModuleKind, UnitLayout};
use crate::supernet::layer::{Collect, DenseLayer, collect_stats, unmeasured_metrics};
use crate::{Error, Result};

/// Which data-light baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineMethod {
    Magnitude,
    WandaSp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BaselineLayerParams {
    pub method: BaselineMethod,
    pub layer: usize,
    /// Query heads removed.
    pub attn_level: usize,
    /// FFN channels removed.
    pub ffn_level: usize,
    /// The dtype `wanda-sp`'s X_{ℓ+1} is stored in (`activation-dtype`) [f32].
    #[serde(default, skip_serializing_if = "StorageDtype::is_f32")]
    pub activation_dtype: StorageDtype,
}

pub struct BaselineLayer(BaselineLayerParams);

fn variant(
    level: usize,
    kept: Vec<u32>,
    dense: &[f32],
    d_out: usize,
    l: UnitLayout,
) -> Result<Variant> {
    Ok(Variant {
        level,
        weight: select_column_units(dense, d_out, l, &kept)?,
        kept,
        d_out,
        storage: StorageDtype::F32,
        metrics: unmeasured_metrics(),
    })
}

impl Stage for BaselineLayer {
    const KIND: &'static str = "baseline-layer";
    // 2: wanda-sp writes X as chunks (`acts`). 3: variant records name their weight's dtype.
    const VERSION: u32 = 3;
    type Params = BaselineLayerParams;

    fn new(p: BaselineLayerParams) -> Result<Self> {
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        // Magnitude scores weights only; Wanda-sp runs the block for its activations.
        match self.0.method {
            BaselineMethod::Magnitude => Vec::new(),
            BaselineMethod::WandaSp => crate::model::forward_code_versions(),
        }
    }

    fn inputs(&self) -> Vec<InputSlot> {
        match self.0.method {
            BaselineMethod::Magnitude => vec![InputSlot::one("model")],
            BaselineMethod::WandaSp => vec![InputSlot::one("model"), InputSlot::one("x")],
        }
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let dense = DenseLayer::load_on(cfg, p.layer, model.source.as_ref(), &ctx.compute()?)?;
        let (al, fl, h) = (dense.attn_layout(), dense.ffn_layout(), dense.hidden);
        for (module, level, units) in [
            (ModuleKind::Attn, p.attn_level, al.units),
            (ModuleKind::Ffn, p.ffn_level, fl.units),
        ] {
            if level > units {
                return Err(Error::PruneGrid {
                    module,
                    reason: format!("layer {}: level {level} exceeds {units} units", p.layer),
                });
            }
        }
        let (o0, d0) = (dense.o_proj()?, dense.down_proj()?);
        let mut o = Outputs::new();
        let (attn, ffn) = match p.method {
            BaselineMethod::Magnitude => {
                let q = dense.q_proj()?;
                let (gate, up) = dense.gate_up()?;
                let sa = magnitude_head_scores(&q, &o0, h, al)?;
                let sf = magnitude_channel_scores(&gate, &up, &d0, h, fl.units)?;
                (
                    variant(
                        p.attn_level,
                        kept_after_removing_lowest(&sa, p.attn_level)?,
                        &o0,
                        h,
                        al,
                    )?,
                    variant(
                        p.ffn_level,
                        kept_after_removing_lowest(&sf, p.ffn_level)?,
                        &d0,
                        h,
                        fl,
                    )?,
                )
            }
            BaselineMethod::WandaSp => {
                let x = acts::Reader::open(ctx.input("x")?, "x")?;
                let full = Collect {
                    o_proj: true,
                    down_proj: false,
                };
                let (h_o, _) = collect_stats(&dense.block_with(cfg, None, None)?, &x, full)?;
                let h_o = h_o.ok_or_else(|| Error::msg("no o_proj input observed"))?;
                let sa = wanda_sp_scores(&h_o, &o0, h, al)?;
                let attn = variant(
                    p.attn_level,
                    kept_after_removing_lowest(&sa, p.attn_level)?,
                    &o0,
                    h,
                    al,
                )?;
                let o_masked = pad_columns(&attn.weight, &attn.kept, h, al)?;
                let b = dense.block_with(cfg, Some(&o_masked), None)?;
                let ffn_only = Collect {
                    o_proj: false,
                    down_proj: true,
                };
                let (_, h_d) = collect_stats(&b, &x, ffn_only)?;
                let h_d = h_d.ok_or_else(|| Error::msg("no down_proj input observed"))?;
                let sf = wanda_sp_scores(&h_d, &d0, h, fl)?;
                let ffn = variant(
                    p.ffn_level,
                    kept_after_removing_lowest(&sf, p.ffn_level)?,
                    &d0,
                    h,
                    fl,
                )?;
                let d_masked = pad_columns(&ffn.weight, &ffn.kept, h, fl)?;
                let pruned = dense.block_with(cfg, Some(&o_masked), Some(&d_masked))?;
                acts::map_to_output(ctx, &x, &mut o, "x", p.activation_dtype, |xb| {
                    pruned.forward(xb)
                })?;
                (attn, ffn)
            }
        };
        o.record(variant_name(ModuleKind::Attn, attn.level), &attn)?;
        o.record(variant_name(ModuleKind::Ffn, ffn.level), &ffn)?;
        Ok(o)
    }
}
