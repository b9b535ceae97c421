//! What connects the coarse-to-fine rounds (ALGORITHM.md §8–§9): the record a `search` stage
//! outputs (`RoundChoice`: the round's grids, the chosen level of every module, the history), how
//! round t+1's grids follow from it (`next_grids`), the search space of a round's grids, and the
//! parameter budget of a round (`param_budget`: what each level removes, counted from its variant).

use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::prune::grid::{GridOptions, TypeGrid, next_round_grid};
use crate::search::{
    BudgetKind, Configuration, GenerationRecord, Module, ModuleGrid, ModuleKind, ParamBudget,
    SearchSpace, Steps,
};
use crate::supernet::scorer::VariantSource;
use crate::vocab::LayerLevels;
use crate::{Error, Result};

/// Record `choice` of a `search` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundChoice {
    /// 1-based round.
    pub round: usize,
    /// The round's grids (their centres are where the search started).
    pub attn: TypeGrid,
    pub ffn: TypeGrid,
    /// Chosen `[attn level, ffn level]` per layer (units removed).
    pub levels: Vec<LayerLevels>,
    /// The choice's fitness in the last generation (`None` when no generation ran).
    #[serde(with = "crate::serde_f64::option")]
    pub fitness: Option<f64>,
    /// What the fitness measures, e.g. "top-k KL, k = 256".
    pub fitness_metric: String,
    pub history: Vec<GenerationRecord>,
}

impl RoundChoice {
    /// The chosen levels of one module type, in layer order.
    pub fn chosen(&self, kind: ModuleKind) -> Vec<usize> {
        let i = match kind {
            ModuleKind::Attn => 0,
            ModuleKind::Ffn => 1,
        };
        self.levels.iter().map(|l| l[i]).collect()
    }
}

/// How a later round's grids are built around the previous choice (pipeline keys
/// `levels-each-side`, `min-step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AroundPrevious {
    pub levels_each_side: usize,
    pub min_step: usize,
    /// Under `params` the previous choice's split between the types is kept as the new per-type
    /// totals (the parameter budget moves units between them); under `units` it must equal the
    /// grids' budgets [units].
    #[serde(default, skip_serializing_if = "is_units")]
    pub budget: BudgetKind,
}

fn is_units(b: &BudgetKind) -> bool {
    *b == BudgetKind::Units
}

impl AroundPrevious {
    fn options(&self) -> GridOptions {
        GridOptions {
            levels_each_side: self.levels_each_side,
            min_step: self.min_step,
            ..GridOptions::default()
        }
    }
}

/// Round t+1's grids: centred on round t's choice, step halved (not below `min-step`); under a
/// parameter budget each type's unit total is the choice's.
pub fn next_grids(prev: &RoundChoice, around: &AroundPrevious) -> Result<(TypeGrid, TypeGrid)> {
    let opts = around.options();
    let grid = |g: &TypeGrid, kind| {
        let chosen = prev.chosen(kind);
        let mut g = g.clone();
        if around.budget == BudgetKind::Params {
            g.budget = chosen.iter().sum();
            let units: usize = g.modules.iter().map(|m| m.units).sum();
            g.achieved_sparsity = g.budget as f64 / units.max(1) as f64;
        }
        next_round_grid(&g, &chosen, &opts)
    };
    Ok((
        grid(&prev.attn, ModuleKind::Attn)?,
        grid(&prev.ffn, ModuleKind::Ffn)?,
    ))
}

/// The search space of a round: modules layer by layer, attention before FFN (so module
/// `2l` is layer l's attention and `2l + 1` its FFN).
pub fn search_space(attn: &TypeGrid, ffn: &TypeGrid) -> Result<SearchSpace> {
    if attn.modules.len() != ffn.modules.len() {
        return Err(Error::msg(format!(
            "the attention grid has {} layers and the FFN grid {}",
            attn.modules.len(),
            ffn.modules.len()
        )));
    }
    let u32_of = |x: usize, what: &str| {
        u32::try_from(x).map_err(|_| Error::msg(format!("{what} {x} does not fit in 32 bits")))
    };
    let mut grids = Vec::with_capacity(2 * attn.modules.len());
    for (layer, (a, f)) in attn.modules.iter().zip(&ffn.modules).enumerate() {
        for (kind, g) in [(ModuleKind::Attn, a), (ModuleKind::Ffn, f)] {
            grids.push(ModuleGrid {
                module: Module {
                    kind,
                    layer,
                    units: u32_of(g.units, "unit count")?,
                },
                levels: g
                    .levels
                    .iter()
                    .map(|&l| u32_of(l, "level"))
                    .collect::<Result<_>>()?,
                centre: u32_of(g.centre, "centre")?,
            });
        }
    }
    SearchSpace::new(
        grids,
        Steps {
            attn: u32_of(attn.step, "step")?,
            ffn: u32_of(ffn.step, "step")?,
        },
    )
}

/// Layer `l`'s `[attn level, ffn level]` in a configuration of `search_space`.
pub fn levels_at(config: &Configuration, l: usize) -> LayerLevels {
    [
        config.levels[2 * l] as usize,
        config.levels[2 * l + 1] as usize,
    ]
}

/// A configuration of `search_space` as `[attn level, ffn level]` per layer.
pub fn layer_levels(config: &Configuration) -> Vec<LayerLevels> {
    config
        .levels
        .chunks(2)
        .map(|c| [c[0] as usize, c[1] as usize])
        .collect()
}

/// The inverse of `layer_levels`: per-layer `[attn, ffn]` levels as a configuration of
/// `search_space`.
pub fn configuration(levels: &[LayerLevels]) -> Configuration {
    Configuration {
        levels: levels
            .iter()
            .flat_map(|l| [l[0] as u32, l[1] as u32])
            .collect(),
    }
}

/// How a configuration splits the parameter budget (record `params` of a `search` stage under
/// `budget = "params"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSplit {
    pub target: f64,
    /// Parameters of the prunable linear layers (q, k, v, o, gate, up, down and their biases).
    pub prunable: u64,
    /// `round(target · prunable)`, and the tolerance every configuration keeps it within.
    pub budget: u64,
    pub tolerance: u64,
    /// What the configuration removes: in all, from attention (K/V heads included), from FFNs.
    pub removed: u64,
    pub removed_attn: u64,
    pub removed_ffn: u64,
}

impl ParamSplit {
    pub fn of(space: &SearchSpace, config: &Configuration, target: f64, prunable: u64) -> Self {
        let (budget, tolerance) = space
            .param_budget()
            .map_or((0, 0), |p| (p.budget, p.tolerance));
        ParamSplit {
            target,
            prunable,
            budget,
            tolerance,
            removed: space.removed_params(config, None),
            removed_attn: space.removed_params(config, Some(ModuleKind::Attn)),
            removed_ffn: space.removed_params(config, Some(ModuleKind::Ffn)),
        }
    }
}

/// Parameters of the prunable linear layers of `cfg`.
pub fn prunable_params(cfg: &ModelConfig) -> u64 {
    let (attn, ffn) = cfg.linear_params();
    (attn + ffn) as u64
}

/// The parameter budget of a round (ALGORITHM.md §8.1): `round(target · prunable)` parameters,
/// within one FFN channel's weight, and what each module removes at each level of its grid.
/// An attention level removes its query heads (q rows, o columns) and every K/V head that its
/// variant's kept heads no longer read, as the export counts them; so the attention variants
/// are read (for their kept heads) once here.
pub fn param_budget(
    cfg: &ModelConfig,
    space: &SearchSpace,
    variants: &dyn VariantSource,
    target: f64,
) -> Result<ParamBudget> {
    if !(0.0..1.0).contains(&target) {
        return Err(Error::PruneTarget { target });
    }
    let mut costs = Vec::with_capacity(space.len());
    for g in space.grids() {
        let l = g.module.layer;
        let d = cfg.layers.get(l).ok_or_else(|| {
            Error::msg(format!(
                "the search space has layer {l}, the model {}",
                cfg.n_layers()
            ))
        })?;
        let mut row = Vec::with_capacity(g.levels.len());
        for &level in &g.levels {
            let removed = match g.module.kind {
                ModuleKind::Attn => {
                    let v = variants.variant(l, ModuleKind::Attn, level as usize)?;
                    let mut kv: Vec<usize> = v
                        .kept
                        .iter()
                        .map(|&h| d.kv_map.get(h as usize).copied())
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            Error::msg(format!(
                                "layer {l}: an attention variant keeps a head past the {} the model has",
                                d.n_q
                            ))
                        })?;
                    kv.sort_unstable();
                    kv.dedup();
                    cfg.attn_params(d.n_q, d.n_kv) - cfg.attn_params(v.kept.len(), kv.len())
                }
                ModuleKind::Ffn => {
                    let kept = d.d_ff.checked_sub(level as usize).ok_or_else(|| {
                        Error::msg(format!(
                            "layer {l}: FFN level {level} is past its {} channels",
                            d.d_ff
                        ))
                    })?;
                    cfg.ffn_params(d.d_ff) - cfg.ffn_params(kept)
                }
            };
            row.push(removed as u64);
        }
        costs.push(row);
    }
    let tolerance = cfg
        .layers
        .iter()
        .filter(|d| d.d_ff > 0)
        .map(|d| (cfg.ffn_params(d.d_ff) - cfg.ffn_params(d.d_ff - 1)) as u64)
        .min()
        .unwrap_or(0);
    Ok(ParamBudget {
        costs,
        budget: (target * prunable_params(cfg) as f64).round() as u64,
        tolerance,
    })
}
