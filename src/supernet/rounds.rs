//! What connects the coarse-to-fine rounds (ALGORITHM.md §8–§9): the record a `search` stage
//! outputs (`RoundChoice`: the round's grids, the chosen level of every module, the history), how
//! round t+1's grids follow from it (`next_grids`), and the search space of a round's grids.

use serde::{Deserialize, Serialize};

use crate::prune::grid::{GridOptions, TypeGrid, next_round_grid};
use crate::search::{
    Configuration, GenerationRecord, Module, ModuleGrid, ModuleKind, SearchSpace, Steps,
};
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

/// Round t+1's grids: centred on round t's choice, step halved (not below `min-step`).
pub fn next_grids(prev: &RoundChoice, around: &AroundPrevious) -> Result<(TypeGrid, TypeGrid)> {
    let opts = around.options();
    Ok((
        next_round_grid(&prev.attn, &prev.chosen(ModuleKind::Attn), &opts)?,
        next_round_grid(&prev.ffn, &prev.chosen(ModuleKind::Ffn), &opts)?,
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
