//! `supernet-layer` stage: one layer of one round's supernet (ALGORITHM.md §6–§7).
//!
//! Inputs: `model` (the `model` record) and `x` (X_ℓ: the `embed` stage for layer 0, else the
//! previous layer stage). Params: round, layer, each module's grid levels (and its centre, only
//! when `expectation = centre` needs it), `expectation`, `ffn-stats`, local-pruning options.
//!
//! Build order: collect H_o (and H_d under `ffn-stats = dense-attention`) on X_ℓ; prune the
//! attention at every level (`ModulePruner`, levels in parallel); o_proj := expectation; under
//! `expected-attention` collect H_d now with that o_proj; prune the FFN at every level;
//! down_proj := expectation. (X_{ℓ+1} = the block with both averaged weights: `layer-forward`.)
//!
//! Outputs: one record per variant, `attn-{level}` / `ffn-{level}` (`prune::local::Variant`:
//! kept unit indices u32, compact refit weight [hidden, kept·width] f32, metrics) — the search
//! reads these by name; record `layer` (`LayerSupernet`: grids, expectation weights, statistics
//! digests); `expected` = the averaged `o_proj` and `down_proj` (full shape, f32), from which a
//! `layer-forward` stage computes X_{ℓ+1}. X_{ℓ+1} is not an output here on purpose: it is
//! transient, and a consumer of the variants (an eval, the search) must not force a rebuild of
//! the layer just because its activations were collected. After the attention variants a
//! progress record is saved, so a run killed while building the FFN variants resumes there.
//!
//! Invalidated by: the params (not the target: a round-1 `lattice` grid lists every lattice
//! level and no centre, so one round-1 supernet serves every target), the model record, X_ℓ,
//! the seed, the stage version (which includes `LOCAL_PRUNE_VERSION`).

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::acts::Acts;
use super::layer_ops::{Collect, DenseLayer, collect_stats, variant_name};
use super::model_ref::{ModelRecord, open};
use super::rounds::{AroundPrevious, RoundChoice, next_grids};
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::prune::expectation::{
    Expectation, ExpectationWeights, averaged_weight, expectation_weights,
};
use crate::prune::local::{
    LOCAL_PRUNE_VERSION, LocalPruneOptions, ModulePruner, ModuleWeight, PruneContext, Variant,
};
use crate::prune::stats::Hessian;
use crate::prune::{ModuleKind, UnitLayout};
use crate::{Error, Result};

/// Where the FFN statistics come from (`ffn-stats`, ALGORITHM.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FfnStats {
    /// H_d from the same dense pass as H_o (the reference; default until measured).
    #[default]
    DenseAttention,
    /// H_d collected after o_proj is set to its expectation.
    ExpectedAttention,
}

/// One module's grid in this layer stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModuleLevels {
    /// Levels (units removed), ascending, each ≤ the unit count.
    pub levels: Vec<usize>,
    /// The centre; required (and only allowed) with `expectation = centre`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<usize>,
}

fn round_one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SupernetLayerParams {
    /// Round t (1-based) [1].
    #[serde(default = "round_one")]
    pub round: usize,
    pub layer: usize,
    /// Round 1: each module's levels. Later rounds leave them out and take `around`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn: Option<ModuleLevels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<ModuleLevels>,
    /// Later rounds: the grid is centred on the previous round's choice (input `previous`, a
    /// `search` stage) with the step halved, as `rounds::next_grids` computes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub around: Option<AroundPrevious>,
    /// [density-weighted]
    #[serde(default = "density_weighted")]
    pub expectation: Expectation,
    /// [dense-attention]
    #[serde(default)]
    pub ffn_stats: FfnStats,
    /// Local pruning of heads [1 head per pass, damping 0.01, signed first order, OBS term].
    #[serde(default = "LocalPruneOptions::attn_default")]
    pub attn_pruning: LocalPruneOptions,
    /// Local pruning of FFN channels [16 passes, otherwise as heads].
    #[serde(default = "LocalPruneOptions::ffn_default")]
    pub ffn_pruning: LocalPruneOptions,
}

fn density_weighted() -> Expectation {
    Expectation::DensityWeighted
}

/// Record `layer`: what this layer stage built and averaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSupernet {
    pub round: usize,
    pub layer: usize,
    pub attn: ModuleSummary,
    pub ffn: ModuleSummary,
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleSummary {
    pub units: usize,
    pub levels: Vec<usize>,
    /// Expectation weight of each level; empty when the dense module was propagated.
    pub weights: Vec<f64>,
    /// BLAKE3 (hex) of the module's H.
    pub stats_digest: String,
    pub rel_errors: Vec<f64>,
}

/// Saved after the attention variants, so a resumed run skips them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    attn: Vec<Variant>,
}

pub struct SupernetLayer(SupernetLayerParams);

impl Stage for SupernetLayer {
    const KIND: &'static str = "supernet-layer";
    const VERSION: u32 = 100 + LOCAL_PRUNE_VERSION;
    type Params = SupernetLayerParams;

    fn new(p: SupernetLayerParams) -> Result<Self> {
        match (&p.attn, &p.ffn, &p.around) {
            (Some(a), Some(f), None) => {
                check_grid("attn.levels", a, p.expectation)?;
                check_grid("ffn.levels", f, p.expectation)?;
            }
            (None, None, Some(_)) if p.round > 1 => {}
            _ => {
                return Err(Error::PruneOption {
                    field: "attn.levels",
                    reason: "give `attn` and `ffn` levels (round 1) or `around` (later rounds)"
                        .into(),
                });
            }
        }
        if p.round == 0 {
            return Err(Error::PruneOption {
                field: "round",
                reason: "rounds count from 1".into(),
            });
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model"), InputSlot::one("x")];
        if self.0.around.is_some() {
            v.push(InputSlot::one("previous"));
        }
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let (attn_grid, ffn_grid) = self.grids(ctx)?;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let x = Acts::read(ctx.input("x")?, "x")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let dense = DenseLayer::load(cfg, p.layer, model.source.as_ref())?;
        let (attn_layout, ffn_layout) = (dense.attn_layout(), dense.ffn_layout());
        check_levels(
            p.layer,
            ModuleKind::Attn,
            &attn_grid.levels,
            attn_layout.units,
        )?;
        check_levels(p.layer, ModuleKind::Ffn, &ffn_grid.levels, ffn_layout.units)?;
        let span = tracing::info_span!("supernet-layer", round = p.round, layer = p.layer);
        let _g = span.enter();

        let dense_block = dense.block_with(cfg, None, None)?;
        let early_ffn = p.ffn_stats == FfnStats::DenseAttention;
        let (h_o, h_d_dense) = collect_stats(
            &dense_block,
            &x,
            Collect {
                o_proj: true,
                down_proj: early_ffn,
            },
        )?;
        let h_o = h_o.ok_or_else(|| missing_taps(p.layer))?;
        ctx.report(1, 4);

        let o0 = dense.o_proj()?;
        let resumed: Option<Progress> = ctx.load_progress()?;
        let attn = match resumed {
            Some(pr)
                if pr
                    .attn
                    .iter()
                    .map(|v| v.level)
                    .eq(attn_grid.levels.iter().copied()) =>
            {
                tracing::info!(layer = p.layer, "resuming after the attention variants");
                pr.attn
            }
            _ => {
                let v = build_variants(
                    PruneContext {
                        layer: p.layer,
                        module: ModuleKind::Attn,
                    },
                    &h_o,
                    &o0,
                    dense.hidden,
                    attn_layout,
                    &attn_grid.levels,
                    &p.attn_pruning,
                )?;
                ctx.save_progress(&Progress { attn: v.clone() })?;
                v
            }
        };
        ctx.report(2, 4);
        let (o_bar, attn_w) = expected(
            p.expectation,
            &attn,
            &attn_grid,
            &o0,
            dense.hidden,
            attn_layout,
        )?;

        let h_d = match h_d_dense {
            Some(h) => h,
            None => {
                let b = dense.block_with(cfg, Some(&o_bar), None)?;
                let (_, h) = collect_stats(
                    &b,
                    &x,
                    Collect {
                        o_proj: false,
                        down_proj: true,
                    },
                )?;
                h.ok_or_else(|| missing_taps(p.layer))?
            }
        };
        let d0 = dense.down_proj()?;
        let ffn = build_variants(
            PruneContext {
                layer: p.layer,
                module: ModuleKind::Ffn,
            },
            &h_d,
            &d0,
            dense.hidden,
            ffn_layout,
            &ffn_grid.levels,
            &p.ffn_pruning,
        )?;
        ctx.report(3, 4);
        let (d_bar, ffn_w) = expected(
            p.expectation,
            &ffn,
            &ffn_grid,
            &d0,
            dense.hidden,
            ffn_layout,
        )?;

        ctx.report(4, 4);

        let mut o = Outputs::new();
        let summary =
            |units: usize, vs: &[Variant], weights: Vec<f64>, h: &Hessian| ModuleSummary {
                units,
                levels: vs.iter().map(|v| v.level).collect(),
                weights,
                stats_digest: h.digest().to_hex().to_string(),
                rel_errors: vs.iter().map(|v| v.metrics.rel_error).collect(),
            };
        let layer = LayerSupernet {
            round: p.round,
            layer: p.layer,
            attn: summary(attn_layout.units, &attn, attn_w, &h_o),
            ffn: summary(ffn_layout.units, &ffn, ffn_w, &h_d),
            tokens: h_o.tokens(),
        };
        for (kind, vs) in [(ModuleKind::Attn, &attn), (ModuleKind::Ffn, &ffn)] {
            for v in vs.iter() {
                let name = variant_name(kind, v.level);
                o.metric(format!("{name}-rel-error"), v.metrics.rel_error);
                o.record(name, v)?;
            }
        }
        o.record("layer", &layer)?;
        let (h, q) = (dense.hidden, attn_layout.channels_total());
        let expected = std::collections::BTreeMap::from([
            (
                "o_proj".to_string(),
                Tensor::from_vec(o_bar, (h, q), &Device::Cpu)?,
            ),
            (
                "down_proj".to_string(),
                Tensor::from_vec(d_bar, (h, ffn_layout.units), &Device::Cpu)?,
            ),
        ]);
        o.tensors("expected", expected);
        Ok(o)
    }
}

impl SupernetLayer {
    /// This layer's grids: from the params (round 1) or around the previous round's choice.
    fn grids(&self, ctx: &StageContext<'_>) -> Result<(ModuleLevels, ModuleLevels)> {
        let p = &self.0;
        match (&p.attn, &p.ffn, &p.around) {
            (Some(a), Some(f), _) => Ok((a.clone(), f.clone())),
            (_, _, Some(around)) => {
                let prev: RoundChoice = ctx.input("previous")?.record("choice")?;
                let (ga, gf) = next_grids(&prev, around)?;
                let module = |g: &crate::prune::grid::TypeGrid| -> Result<ModuleLevels> {
                    let m = g.modules.get(p.layer).ok_or_else(|| Error::LayerDims {
                        layer: p.layer,
                        msg: format!(
                            "the previous round chose levels for {} layers",
                            g.modules.len()
                        ),
                    })?;
                    Ok(ModuleLevels {
                        levels: m.levels.clone(),
                        centre: Some(m.centre),
                    })
                };
                Ok((module(&ga)?, module(&gf)?))
            }
            _ => Err(Error::msg("supernet-layer: no grid (checked in new)")),
        }
    }
}

fn check_grid(field: &'static str, m: &ModuleLevels, expectation: Expectation) -> Result<()> {
    let bad = |reason: String| Error::PruneOption { field, reason };
    if m.levels.is_empty() || m.levels.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(format!(
            "{:?} must be non-empty and strictly ascending",
            m.levels
        )));
    }
    match (expectation, m.centre) {
        (Expectation::Centre, None) => {
            Err(bad("expectation `centre` needs the module's centre".into()))
        }
        (Expectation::Centre, Some(c)) if !m.levels.contains(&c) => {
            Err(bad(format!("the centre {c} is not one of the levels")))
        }
        _ => Ok(()),
    }
}

fn missing_taps(layer: usize) -> Error {
    Error::LayerDims {
        layer,
        msg: "the block produced no o_proj/down_proj input".into(),
    }
}

fn check_levels(layer: usize, module: ModuleKind, levels: &[usize], units: usize) -> Result<()> {
    if let Some(&l) = levels.iter().find(|&&l| l > units) {
        return Err(Error::PruneGrid {
            module,
            reason: format!("layer {layer}: level {l} exceeds the module's {units} units"),
        });
    }
    Ok(())
}

/// Every level of one module, levels in parallel (each is independent and deterministic).
fn build_variants(
    ctx: PruneContext,
    h: &Hessian,
    weight: &[f32],
    d_out: usize,
    layout: UnitLayout,
    levels: &[usize],
    opts: &LocalPruneOptions,
) -> Result<Vec<Variant>> {
    let pruner = ModulePruner::new(
        ctx,
        h,
        ModuleWeight {
            weight,
            d_out,
            layout,
        },
        *opts,
    )?;
    levels.par_iter().map(|&l| pruner.prune(l)).collect()
}

/// The weight the next layer is calibrated with (§7), and the expectation weights used.
fn expected(
    mode: Expectation,
    variants: &[Variant],
    grid: &ModuleLevels,
    dense: &[f32],
    d_out: usize,
    layout: UnitLayout,
) -> Result<(Vec<f32>, Vec<f64>)> {
    let centre = grid.centre.unwrap_or(grid.levels[0]);
    match expectation_weights(mode, &grid.levels, layout.units, centre)? {
        ExpectationWeights::Dense => Ok((dense.to_vec(), Vec::new())),
        ExpectationWeights::Levels(w) => {
            let compact: Vec<_> = variants.iter().map(Variant::compact).collect();
            Ok((averaged_weight(&compact, &w, d_out, layout)?, w))
        }
    }
}
