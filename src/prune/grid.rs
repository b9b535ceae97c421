//! Budgets, centres and level grids (ALGORITHM.md §3 and §6). All counts are in units (heads or
//! channels); one call handles one module type, since budget never moves between types.

use serde::{Deserialize, Serialize};

use super::ModuleKind;
use crate::{Error, Result};

/// The round-1 grid (`round1-grid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Round1Grid {
    /// Every multiple of Δ₁ in [0, n]; target-independent (default).
    Lattice,
    /// ±`levels-each-side` steps around each centre, as the reference implementation.
    Centred,
}

/// Grid options with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GridOptions {
    /// K: levels on each side of the centre [4].
    pub levels_each_side: usize,
    /// Δ₁ as a fraction of the unit count [0.125].
    pub initial_step: f64,
    /// Smallest step in later rounds [1].
    pub min_step: usize,
    /// [lattice]
    pub round1: Round1Grid,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            levels_each_side: 4,
            initial_step: 0.125,
            min_step: 1,
            round1: Round1Grid::Lattice,
        }
    }
}

/// One module's grid in one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleGrid {
    /// Dense unit count n_m.
    pub units: usize,
    /// The search starts here; it is one of `levels`.
    pub centre: usize,
    /// Levels (units removed), ascending.
    pub levels: Vec<usize>,
}

/// The grids of every module of one type in one round, in layer order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeGrid {
    pub module: ModuleKind,
    /// Δ of this round, in units.
    pub step: usize,
    /// Σ levels of every configuration, in units.
    pub budget: usize,
    /// `budget / Σ n_m`, the unit sparsity actually achieved.
    pub achieved_sparsity: f64,
    pub modules: Vec<ModuleGrid>,
}

/// `B = round(target · Σ n_m)` with `f64::round` (ties away from zero); 0 ≤ target < 1.
pub fn unit_budget(target: f64, units: &[usize]) -> Result<usize> {
    if !(0.0..1.0).contains(&target) {
        return Err(Error::PruneTarget { target });
    }
    let total: usize = units.iter().sum();
    Ok((target * total as f64).round() as usize)
}

/// Spreads `total` over `layers`: each gets ⌊total/L⌋ and the leftover R goes one each to
/// layers ⌊(i+½)·L/R⌋, i = 0..R−1 (computed exactly as ⌊(2i+1)·L / 2R⌋).
pub fn spread_centres(total: usize, layers: usize) -> Vec<usize> {
    if layers == 0 {
        return Vec::new();
    }
    let base = total / layers;
    let rest = total - base * layers;
    let mut c = vec![base; layers];
    for i in 0..rest {
        c[(2 * i + 1) * layers / (2 * rest)] += 1;
    }
    c
}

/// `Δ₁ = max(1, round(initial_step · n))`.
pub fn initial_step(n: usize, initial_step: f64) -> usize {
    ((initial_step * n as f64).round() as usize).max(1)
}

/// `Δ_t = max(min_step, ⌊Δ_{t−1}/2⌋)`.
pub fn next_step(prev: usize, min_step: usize) -> usize {
    (prev / 2).max(min_step)
}

/// `{c + k·Δ : k = −K..K, 0 ≤ c + k·Δ ≤ n}`, ascending; out-of-range points are dropped.
pub fn levels_around(centre: usize, step: usize, units: usize, each_side: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(2 * each_side + 1);
    for k in (1..=each_side).rev() {
        if let Some(l) = centre.checked_sub(k * step) {
            v.push(l);
        }
    }
    for k in 0..=each_side {
        let l = centre + k * step;
        if l <= units {
            v.push(l);
        }
    }
    v
}

/// Every multiple of `step` in [0, units].
pub fn lattice_levels(step: usize, units: usize) -> Vec<usize> {
    (0..=units / step).map(|k| k * step).collect()
}

fn check_options(opts: &GridOptions) -> Result<()> {
    if !(opts.initial_step > 0.0 && opts.initial_step <= 1.0) {
        return Err(Error::PruneOption {
            field: "initial-step",
            reason: format!("{} is not in (0, 1]", opts.initial_step),
        });
    }
    if opts.min_step == 0 {
        return Err(Error::PruneOption {
            field: "min-step",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The round-1 grids of one module type (§3, §6). All modules of a type must have the same unit
/// count n > 0. `lattice` rounds B to a multiple of Δ₁ and puts every centre on the lattice.
pub fn round1_grid(
    module: ModuleKind,
    target: f64,
    units: &[usize],
    opts: &GridOptions,
) -> Result<TypeGrid> {
    check_options(opts)?;
    let grid_err = |reason: String| Error::PruneGrid { module, reason };
    let n = match units.first() {
        Some(&n) if n > 0 => n,
        Some(_) => {
            return Err(grid_err(
                "a module has 0 units; nothing can be pruned".into(),
            ));
        }
        None => return Err(grid_err("there are no modules of this type".into())),
    };
    if units.iter().any(|&m| m != n) {
        return Err(grid_err(format!(
            "round 1 needs one unit count for every module of a type, got {units:?}"
        )));
    }
    let budget = unit_budget(target, units)?;
    let step = initial_step(n, opts.initial_step);
    let layers = units.len();
    let (budget, centres) = match opts.round1 {
        Round1Grid::Centred => (budget, spread_centres(budget, layers)),
        Round1Grid::Lattice => {
            let steps = (budget as f64 / step as f64).round() as usize;
            let c = spread_centres(steps, layers)
                .into_iter()
                .map(|s| s * step)
                .collect();
            (steps * step, c)
        }
    };
    if let Some(&c) = centres.iter().find(|&&c| c > n) {
        return Err(grid_err(format!(
            "a centre of {c} units exceeds the {n} units of a module (budget {budget}, step {step})"
        )));
    }
    let modules = centres
        .into_iter()
        .map(|centre| {
            let levels = match opts.round1 {
                Round1Grid::Lattice => lattice_levels(step, n),
                Round1Grid::Centred => levels_around(centre, step, n, opts.levels_each_side),
            };
            ModuleGrid {
                units: n,
                centre,
                levels,
            }
        })
        .collect();
    let achieved_sparsity = budget as f64 / (n * layers) as f64;
    Ok(TypeGrid {
        module,
        step,
        budget,
        achieved_sparsity,
        modules,
    })
}

/// The grids of round t > 1: centred on the levels chosen in round t−1, with the step halved
/// (not below `min-step`). The budget carries over exactly.
pub fn next_round_grid(prev: &TypeGrid, chosen: &[usize], opts: &GridOptions) -> Result<TypeGrid> {
    check_options(opts)?;
    let grid_err = |reason: String| Error::PruneGrid {
        module: prev.module,
        reason,
    };
    if chosen.len() != prev.modules.len() {
        return Err(grid_err(format!(
            "{} chosen levels for {} modules",
            chosen.len(),
            prev.modules.len()
        )));
    }
    if let Some((m, (&c, g))) = chosen
        .iter()
        .zip(&prev.modules)
        .enumerate()
        .find(|(_, (c, g))| **c > g.units)
    {
        return Err(grid_err(format!(
            "module {m}: chosen level {c} exceeds its {} units",
            g.units
        )));
    }
    let total: usize = chosen.iter().sum();
    if total != prev.budget {
        return Err(grid_err(format!(
            "chosen levels sum to {total}, the budget is {}",
            prev.budget
        )));
    }
    let step = next_step(prev.step, opts.min_step);
    let modules = chosen
        .iter()
        .zip(&prev.modules)
        .map(|(&centre, g)| ModuleGrid {
            units: g.units,
            centre,
            levels: levels_around(centre, step, g.units, opts.levels_each_side),
        })
        .collect();
    Ok(TypeGrid {
        step,
        modules,
        ..prev.clone()
    })
}
