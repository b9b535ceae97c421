//! One layer of one round's supernet (ALGORITHM.md §6–§7), as a plain function.
//!
//! Build order: collect H_o (and H_d under `ffn-stats = dense-attention`) on X_ℓ; prune the
//! attention at every level (`ModulePruner`, levels in parallel); o_proj := expectation; under
//! `expected-attention` collect H_d now with that o_proj; prune the FFN at every level;
//! down_proj := expectation. X_{ℓ+1} is the block with both averaged weights (computed apart:
//! the `layer-forward` stage). A `BuildCheckpoint` gets progress and the attention variants as
//! soon as they exist, so a caller can resume a killed build after them.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::acts::ActSource;
use super::layer::{Collect, DenseLayer, collect_stats};
use crate::model::{ModelConfig, StorageDtype};
use crate::prune::expectation::{
    Expectation, ExpectationWeights, averaged_weight, expectation_weights,
};
use crate::prune::local::{LocalPruneOptions, ModulePruner, ModuleWeight, PruneContext, Variant};
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

/// One module's grid in one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModuleLevels {
    /// Levels (units removed), ascending, each ≤ the unit count.
    pub levels: Vec<usize>,
    /// The centre; required (and only allowed) with `expectation = centre`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<usize>,
}

impl ModuleLevels {
    /// Checks the grid on its own (`field` names it in the error): non-empty, strictly
    /// ascending, and a centre among the levels where `expectation` needs one.
    pub fn check(&self, field: &'static str, expectation: Expectation) -> Result<()> {
        let bad = |reason: String| Error::PruneOption { field, reason };
        if self.levels.is_empty() || self.levels.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(format!(
                "{:?} must be non-empty and strictly ascending",
                self.levels
            )));
        }
        match (expectation, self.centre) {
            (Expectation::Centre, None) => {
                Err(bad("expectation `centre` needs the module's centre".into()))
            }
            (Expectation::Centre, Some(c)) if !self.levels.contains(&c) => {
                Err(bad(format!("the centre {c} is not one of the levels")))
            }
            _ => Ok(()),
        }
    }
}

/// How a layer is pruned and averaged, besides its grids.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub expectation: Expectation,
    pub ffn_stats: FfnStats,
    pub attn_pruning: LocalPruneOptions,
    pub ffn_pruning: LocalPruneOptions,
    /// Most levels pruned at once (0: as many as the thread pool runs), so a layer's OBS
    /// working sets fit the memory budget. Changes no result.
    pub parallel_levels: usize,
    /// The dtype the variants are stored in (`variant-dtype`); their weights are rounded to it
    /// as they are made.
    pub variant_dtype: StorageDtype,
}

/// What `build_layer` tells its caller while it works.
pub trait BuildCheckpoint {
    /// `done` of `total` steps.
    fn report(&mut self, done: u64, total: u64);
    /// The attention variants an earlier, interrupted build saved, if any.
    fn resumed_attn(&mut self) -> Result<Option<Vec<Variant>>>;
    /// The attention variants are built (saved so a resumed build can skip them).
    fn attn_built(&mut self, attn: &[Variant]) -> Result<()>;
}

/// A checkpoint that keeps nothing (tests, one-shot builds).
pub struct NoCheckpoint;

impl BuildCheckpoint for NoCheckpoint {
    fn report(&mut self, _: u64, _: u64) {}
    fn resumed_attn(&mut self) -> Result<Option<Vec<Variant>>> {
        Ok(None)
    }
    fn attn_built(&mut self, _: &[Variant]) -> Result<()> {
        Ok(())
    }
}

/// What one layer's build made and averaged (record `layer` of a `supernet-layer` stage).
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

/// One layer's supernet.
pub struct LayerBuild {
    /// Attention variants, in grid order.
    pub attn: Vec<Variant>,
    /// FFN variants, in grid order.
    pub ffn: Vec<Variant>,
    /// The averaged `o_proj` ([hidden, q channels], flat f32) and `down_proj` ([hidden, d_ff]).
    pub o_bar: Vec<f32>,
    pub d_bar: Vec<f32>,
    pub summary: LayerSupernet,
}

/// Builds `dense`'s variants at every level of its grids on `x` and the expected weights the
/// next layer is calibrated with. Deterministic: levels run in parallel but each is independent.
#[allow(clippy::too_many_arguments)]
pub fn build_layer(
    cfg: &ModelConfig,
    dense: &DenseLayer,
    x: &dyn ActSource,
    round: usize,
    attn_grid: &ModuleLevels,
    ffn_grid: &ModuleLevels,
    opts: &BuildOptions,
    ck: &mut dyn BuildCheckpoint,
) -> Result<LayerBuild> {
    let layer = dense.layer;
    let (attn_layout, ffn_layout) = (dense.attn_layout(), dense.ffn_layout());
    check_levels(
        layer,
        ModuleKind::Attn,
        &attn_grid.levels,
        attn_layout.units,
    )?;
    check_levels(layer, ModuleKind::Ffn, &ffn_grid.levels, ffn_layout.units)?;

    // Phase times, logged at the end (device runs report statistics and OBS separately).
    let t0 = std::time::Instant::now();
    let dense_block = dense.block_with(cfg, None, None)?;
    let early_ffn = opts.ffn_stats == FfnStats::DenseAttention;
    let (h_o, h_d_dense) = collect_stats(
        &dense_block,
        x,
        Collect {
            o_proj: true,
            down_proj: early_ffn,
        },
    )?;
    let h_o = h_o.ok_or_else(|| missing_taps(layer))?;
    ck.report(1, 4);
    let stats_s = t0.elapsed().as_secs_f64();

    let t1 = std::time::Instant::now();
    let o0 = dense.o_proj()?;
    let attn = match ck.resumed_attn()? {
        Some(v)
            if v.iter()
                .map(|v| v.level)
                .eq(attn_grid.levels.iter().copied()) =>
        {
            tracing::info!(layer, "resuming after the attention variants");
            v
        }
        _ => {
            let v = build_variants(
                PruneContext {
                    layer,
                    module: ModuleKind::Attn,
                },
                &h_o,
                &o0,
                dense.hidden,
                attn_layout,
                &attn_grid.levels,
                &opts.attn_pruning,
                opts.parallel_levels,
                opts.variant_dtype,
            )?;
            ck.attn_built(&v)?;
            v
        }
    };
    ck.report(2, 4);
    let (o_bar, attn_w) =
        module_expectation(dense, ModuleKind::Attn, attn_grid, &attn, opts.expectation)?;
    let attn_obs_s = t1.elapsed().as_secs_f64();

    let t2 = std::time::Instant::now();
    let h_d = match h_d_dense {
        Some(h) => h,
        None => {
            let b = dense.block_with(cfg, Some(&o_bar), None)?;
            let (_, h) = collect_stats(
                &b,
                x,
                Collect {
                    o_proj: false,
                    down_proj: true,
                },
            )?;
            h.ok_or_else(|| missing_taps(layer))?
        }
    };
    let ffn_stats_s = t2.elapsed().as_secs_f64();
    let t3 = std::time::Instant::now();
    let ffn = build_variants(
        PruneContext {
            layer,
            module: ModuleKind::Ffn,
        },
        &h_d,
        &dense.down_proj()?,
        dense.hidden,
        ffn_layout,
        &ffn_grid.levels,
        &opts.ffn_pruning,
        opts.parallel_levels,
        opts.variant_dtype,
    )?;
    ck.report(3, 4);
    let (d_bar, ffn_w) =
        module_expectation(dense, ModuleKind::Ffn, ffn_grid, &ffn, opts.expectation)?;
    ck.report(4, 4);
    tracing::info!(
        layer,
        stats_s,
        attn_obs_s,
        ffn_stats_s,
        ffn_obs_s = t3.elapsed().as_secs_f64(),
        "supernet layer phases (seconds)"
    );

    let summary = LayerSupernet {
        round,
        layer,
        attn: module_summary(attn_layout.units, &attn, attn_w, digest_hex(&h_o)),
        ffn: module_summary(ffn_layout.units, &ffn, ffn_w, digest_hex(&h_d)),
        tokens: h_o.tokens(),
    };
    Ok(LayerBuild {
        attn,
        ffn,
        o_bar,
        d_bar,
        summary,
    })
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

/// Every level of one module, up to `parallel` levels at once (each is independent and
/// deterministic; 0: as many as the thread pool runs).
#[allow(clippy::too_many_arguments)]
fn build_variants(
    ctx: PruneContext,
    h: &Hessian,
    weight: &[f32],
    d_out: usize,
    layout: UnitLayout,
    levels: &[usize],
    opts: &LocalPruneOptions,
    parallel: usize,
    storage: StorageDtype,
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
    let at_once = if parallel == 0 {
        levels.len()
    } else {
        parallel
    };
    let mut out = Vec::with_capacity(levels.len());
    for group in levels.chunks(at_once.max(1)) {
        let built: Vec<Variant> = group
            .par_iter()
            .map(|&l| Ok(pruner.prune(l)?.in_storage(storage)))
            .collect::<Result<_>>()?;
        out.extend(built);
    }
    Ok(out)
}

fn digest_hex(h: &Hessian) -> String {
    h.digest().to_hex().to_string()
}

fn module_summary(
    units: usize,
    vs: &[Variant],
    weights: Vec<f64>,
    digest: String,
) -> ModuleSummary {
    ModuleSummary {
        units,
        levels: vs.iter().map(|v| v.level).collect(),
        weights,
        stats_digest: digest,
        rel_errors: vs.iter().map(|v| v.metrics.rel_error).collect(),
    }
}

/// The weight the next layer is calibrated with (§7) for one module — the expectation of its
/// variants (`variants`, in `grid` order) or its dense weight — and the expectation weights used
/// (empty for the dense weight).
pub fn module_expectation(
    dense: &DenseLayer,
    module: ModuleKind,
    grid: &ModuleLevels,
    variants: &[Variant],
    mode: Expectation,
) -> Result<(Vec<f32>, Vec<f64>)> {
    let (weight, layout) = match module {
        ModuleKind::Attn => (dense.o_proj()?, dense.attn_layout()),
        ModuleKind::Ffn => (dense.down_proj()?, dense.ffn_layout()),
    };
    let centre = grid.centre.unwrap_or(grid.levels[0]);
    match expectation_weights(mode, &grid.levels, layout.units, centre)? {
        ExpectationWeights::Dense => Ok((weight, Vec::new())),
        ExpectationWeights::Levels(w) => {
            let compact: Vec<_> = variants.iter().map(Variant::compact).collect();
            Ok((averaged_weight(&compact, &w, dense.hidden, layout)?, w))
        }
    }
}

// ---- One layer built in parts (`supernet-split`, docs/ENGINE.md) ----
//
// A part builds one module's variants at a share of its levels, with its own statistics pass on
// X_ℓ; `join_layer` puts the parts of both modules together into exactly what `build_layer`
// returns. Each level's variant is a function of (H, dense weight, level) alone, and H of (the
// block, X_ℓ) alone, so the parts repeat the pass and give the same bits.

/// Share `g` (0-based) of `groups` of a grid's levels: contiguous and in grid order; the shares
/// cover the grid exactly once, and some are empty when there are more shares than levels.
pub fn level_share(levels: &[usize], g: usize, groups: usize) -> Result<&[usize]> {
    if groups == 0 || g >= groups {
        return Err(Error::msg(format!(
            "level share {g} of {groups}: shares count from 0 below their number"
        )));
    }
    let n = levels.len();
    Ok(&levels[g * n / groups..(g + 1) * n / groups])
}

/// What a part's statistics pass saw: the BLAKE3 (hex) of its H and the tokens in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStats {
    pub digest: String,
    pub tokens: u64,
}

/// One module's variants at a share of its levels (record `part` of a `supernet-part` stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModulePart {
    pub module: ModuleKind,
    /// In grid order.
    pub variants: Vec<Variant>,
    /// `None` for an empty share, which runs no pass.
    pub stats: Option<PartStats>,
}

/// Builds `module`'s variants at `levels` (a share of its grid) on `x`. The FFN's statistics
/// pass runs with `o_proj` := `ffn_o_proj` when given (the attention's expectation, under
/// `ffn-stats = expected-attention`), else with the dense `o_proj`; attention takes none.
#[allow(clippy::too_many_arguments)]
pub fn build_module_part(
    cfg: &ModelConfig,
    dense: &DenseLayer,
    x: &dyn ActSource,
    module: ModuleKind,
    levels: &[usize],
    ffn_o_proj: Option<&[f32]>,
    opts: &LocalPruneOptions,
    parallel_levels: usize,
    variant_dtype: StorageDtype,
) -> Result<ModulePart> {
    let layer = dense.layer;
    let (layout, weight) = match module {
        ModuleKind::Attn => (dense.attn_layout(), dense.o_proj()?),
        ModuleKind::Ffn => (dense.ffn_layout(), dense.down_proj()?),
    };
    check_levels(layer, module, levels, layout.units)?;
    if module == ModuleKind::Attn && ffn_o_proj.is_some() {
        return Err(Error::msg(
            "an attention part's statistics run on the dense block: give no o_proj",
        ));
    }
    if levels.is_empty() {
        return Ok(ModulePart {
            module,
            variants: Vec::new(),
            stats: None,
        });
    }
    let block = dense.block_with(cfg, ffn_o_proj, None)?;
    let what = Collect {
        o_proj: module == ModuleKind::Attn,
        down_proj: module == ModuleKind::Ffn,
    };
    let (h_o, h_d) = collect_stats(&block, x, what)?;
    let h = match module {
        ModuleKind::Attn => h_o,
        ModuleKind::Ffn => h_d,
    }
    .ok_or_else(|| missing_taps(layer))?;
    let variants = build_variants(
        PruneContext { layer, module },
        &h,
        &weight,
        dense.hidden,
        layout,
        levels,
        opts,
        parallel_levels,
        variant_dtype,
    )?;
    Ok(ModulePart {
        module,
        variants,
        stats: Some(PartStats {
            digest: digest_hex(&h),
            tokens: h.tokens(),
        }),
    })
}

/// One module's variants from its parts, in grid order, and the statistics they share. Refused
/// unless the parts are of `module`, their levels are exactly the grid's in order, and every
/// non-empty part saw the same H.
pub fn join_parts(
    layer: usize,
    module: ModuleKind,
    grid: &ModuleLevels,
    parts: Vec<ModulePart>,
) -> Result<(Vec<Variant>, PartStats)> {
    let bad = |reason: String| Error::PruneGrid {
        module,
        reason: format!("layer {layer}: joining its parts: {reason}"),
    };
    if let Some(p) = parts.iter().find(|p| p.module != module) {
        return Err(bad(format!("a part holds {} variants", p.module)));
    }
    let levels = || {
        parts
            .iter()
            .flat_map(|p| p.variants.iter().map(|v| v.level))
    };
    if !levels().eq(grid.levels.iter().copied()) {
        return Err(bad(format!(
            "the parts hold levels {:?}, the grid is {:?}",
            levels().collect::<Vec<_>>(),
            grid.levels
        )));
    }
    let mut stats = parts.iter().filter_map(|p| p.stats.as_ref());
    let first = stats
        .next()
        .ok_or_else(|| bad("no part ran a statistics pass".into()))?
        .clone();
    if stats.any(|s| *s != first) {
        return Err(bad("the parts saw different statistics".into()));
    }
    // Moved out of the parts, not copied: one module's variants can be gigabytes.
    let variants = parts.into_iter().flat_map(|p| p.variants).collect();
    Ok((variants, first))
}

/// `build_layer`'s result from the parts of both modules (each list in share order).
pub fn join_layer(
    dense: &DenseLayer,
    round: usize,
    attn_grid: &ModuleLevels,
    ffn_grid: &ModuleLevels,
    attn_parts: Vec<ModulePart>,
    ffn_parts: Vec<ModulePart>,
    expectation: Expectation,
) -> Result<LayerBuild> {
    let layer = dense.layer;
    let (attn, sa) = join_parts(layer, ModuleKind::Attn, attn_grid, attn_parts)?;
    let (ffn, sf) = join_parts(layer, ModuleKind::Ffn, ffn_grid, ffn_parts)?;
    let (o_bar, attn_w) =
        module_expectation(dense, ModuleKind::Attn, attn_grid, &attn, expectation)?;
    let (d_bar, ffn_w) = module_expectation(dense, ModuleKind::Ffn, ffn_grid, &ffn, expectation)?;
    let summary = LayerSupernet {
        round,
        layer,
        attn: module_summary(dense.attn_layout().units, &attn, attn_w, sa.digest),
        ffn: module_summary(dense.ffn_layout().units, &ffn, ffn_w, sf.digest),
        tokens: sa.tokens,
    };
    Ok(LayerBuild {
        attn,
        ffn,
        o_bar,
        d_bar,
        summary,
    })
}
