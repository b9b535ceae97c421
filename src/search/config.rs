//! The search state (ALGORITHM.md §3, §6, §8): the prunable modules, each module's grid of levels
//! for one round, the per-type grid step, and a configuration (one level per module). The grids
//! are built elsewhere (`prune::grid`) and handed in; this file only validates them and answers
//! the questions mutation asks ("can this module go down one step?") and the budget check: per
//! type in units (the default), or in parameters when a [`ParamBudget`] is attached.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::search::budget::{Move, ParamBudget, check_costs, fewest_moves};
use crate::{Error, Result};

pub use crate::vocab::ModuleKind;

/// One prunable module of the dense model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub kind: ModuleKind,
    pub layer: usize,
    /// `n_m`: units (query heads or FFN channels) in the dense model.
    pub units: u32,
}

/// A module with its grid for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleGrid {
    pub module: Module,
    /// Levels (units removed), strictly ascending, consecutive ones exactly one step apart.
    pub levels: Vec<u32>,
    /// The round's starting level; one of `levels`.
    pub centre: u32,
}

impl ModuleGrid {
    pub fn contains(&self, level: u32) -> bool {
        self.levels.binary_search(&level).is_ok()
    }
}

/// The grid step Δ in units, one per module type (the same for every module of a type within a
/// round, §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    pub attn: u32,
    pub ffn: u32,
}

impl Steps {
    pub fn of(&self, kind: ModuleKind) -> u32 {
        match kind {
            ModuleKind::Attn => self.attn,
            ModuleKind::Ffn => self.ffn,
        }
    }
}

/// One level per module, in the search space's module order: the search state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Configuration {
    pub levels: Vec<u32>,
}

impl Configuration {
    /// Indices of the modules whose level differs from `other`'s (ascending).
    pub fn changed_modules(&self, other: &Configuration) -> Vec<usize> {
        self.levels
            .iter()
            .zip(&other.levels)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect()
    }
}

/// The validated search space of one round: modules, grids, steps and the per-type budgets
/// (Σ of the centres, which every configuration keeps exactly), or a parameter budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSpace {
    grids: Vec<ModuleGrid>,
    steps: Steps,
    budget_attn: u64,
    budget_ffn: u64,
    /// Set: configurations keep this parameter total instead of the per-type unit budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<ParamBudget>,
}

impl SearchSpace {
    /// Checks every grid: non-empty, strictly ascending, at most `units`, consecutive levels
    /// exactly one step of its type apart, centre on the grid; steps ≥ 1; no (kind, layer) twice.
    pub fn new(grids: Vec<ModuleGrid>, steps: Steps) -> Result<Self> {
        let mut seen = BTreeSet::new();
        for g in &grids {
            let m = g.module;
            let bad = |reason: String| Error::SearchGrid {
                layer: m.layer,
                module: m.kind.name(),
                reason,
            };
            let step = steps.of(m.kind);
            if step == 0 {
                return Err(bad("the grid step is 0; it must be at least 1 unit".into()));
            }
            if !seen.insert((m.kind, m.layer)) {
                return Err(bad("this module appears twice in the search space".into()));
            }
            let (Some(&lo), Some(&hi)) = (g.levels.first(), g.levels.last()) else {
                return Err(bad("the grid has no levels".into()));
            };
            if hi > m.units {
                return Err(bad(format!(
                    "level {hi} exceeds the module's {} units",
                    m.units
                )));
            }
            if let Some(w) = g
                .levels
                .windows(2)
                .find(|w| w[1] != w[0].wrapping_add(step))
            {
                return Err(bad(format!(
                    "levels {} and {} are not one step ({step}) apart",
                    w[0], w[1]
                )));
            }
            if !g.contains(g.centre) {
                return Err(bad(format!(
                    "centre {} is not on the grid {lo}..={hi} step {step}",
                    g.centre
                )));
            }
        }
        let sum = |kind| {
            grids
                .iter()
                .filter(|g| g.module.kind == kind)
                .map(|g| u64::from(g.centre))
                .sum()
        };
        Ok(SearchSpace {
            budget_attn: sum(ModuleKind::Attn),
            budget_ffn: sum(ModuleKind::Ffn),
            grids,
            steps,
            params: None,
        })
    }

    /// The same space under a parameter budget: `costs[m][i]` is what module m removes at the
    /// i-th level of its grid.
    pub fn with_param_budget(mut self, budget: ParamBudget) -> Result<Self> {
        let levels: Vec<usize> = self.grids.iter().map(|g| g.levels.len()).collect();
        check_costs(&budget.costs, &levels)?;
        self.params = Some(budget);
        Ok(self)
    }

    pub fn param_budget(&self) -> Option<&ParamBudget> {
        self.params.as_ref()
    }

    /// Parameters module `m` removes at `level` (0 without a parameter budget or off the grid).
    pub fn cost(&self, m: usize, level: u32) -> u64 {
        let Some(p) = &self.params else { return 0 };
        match self.grids[m].levels.binary_search(&level) {
            Ok(i) => p.costs[m][i],
            Err(_) => 0,
        }
    }

    /// Parameters `config` removes, in total and from the modules of `kind`.
    pub fn removed_params(&self, config: &Configuration, kind: Option<ModuleKind>) -> u64 {
        (0..self.grids.len())
            .filter(|&m| kind.is_none_or(|k| self.kind(m) == k))
            .map(|m| self.cost(m, config.levels[m]))
            .sum()
    }

    /// Under a parameter budget: how many parameters `config` removes beyond the budget
    /// (negative: short of it). 0 without one.
    pub fn excess(&self, config: &Configuration) -> i64 {
        match &self.params {
            Some(p) => self.removed_params(config, None) as i64 - p.budget as i64,
            None => 0,
        }
    }

    /// Where the search starts: every module at its centre, and under a parameter budget then
    /// moved, one grid step at a time, until the configuration is within the budget (the
    /// fewest moves; modules in a low-discrepancy order over the layers, so that the moves
    /// spread over the depth). An error when no configuration on the grids comes within it.
    pub fn start(&self) -> Result<Configuration> {
        let mut c = self.centres();
        let Some(p) = &self.params else { return Ok(c) };
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Golden-ratio order of the layers: consecutive picks land far apart.
        let key = |m: &usize| {
            let x = self.grids[*m].module.layer as f64 * 0.618_033_988_749_895;
            ((x - x.floor()) * 1e9) as u64
        };
        order.sort_by_key(|m| (key(m), *m));
        for _ in 0..self.len().max(1) * 64 {
            let e = self.excess(&c);
            let tol = p.tolerance as i64;
            if e.abs() <= tol {
                return Ok(c);
            }
            let options: Vec<Vec<Move>> = order
                .iter()
                .map(|&m| self.step_moves(&c, m, true, true))
                .collect();
            if self.move_within_budget(&mut c, &options) {
                continue;
            }
            // Out of reach in one step per module: take the single move that closes the most.
            let best = options
                .iter()
                .flatten()
                .filter(|m| (e + m.change).abs() < e.abs())
                .min_by_key(|m| (e + m.change).abs());
            match best {
                Some(m) => c.levels[m.module] = m.level,
                None => break,
            }
        }
        Err(Error::SearchConfiguration {
            reason: format!(
                "no configuration on this round's grids removes {} parameters ± {} (the centres \
                 remove {}); widen the grids (`levels-each-side`) or use `budget = \"units\"`",
                p.budget,
                p.tolerance,
                self.removed_params(&self.centres(), None)
            ),
        })
    }

    /// Under a parameter budget: applies to `config` the fewest of `options` (at most one move
    /// per inner list) that bring it within the budget; false, and `config` unchanged, when no
    /// such moves exist (or there is no parameter budget).
    pub fn move_within_budget(&self, config: &mut Configuration, options: &[Vec<Move>]) -> bool {
        let Some(p) = &self.params else { return false };
        let (e, tol) = (self.excess(config), p.tolerance as i64);
        match fewest_moves(options, -e - tol, -e + tol) {
            Some(moves) => {
                for m in moves {
                    config.levels[m.module] = m.level;
                }
                true
            }
            None => false,
        }
    }

    /// The one-step moves of module `m` from its level in `config`: down if `down`, up if
    /// `up`, each with the parameters it removes more.
    pub fn step_moves(&self, config: &Configuration, m: usize, down: bool, up: bool) -> Vec<Move> {
        let level = config.levels[m];
        let now = self.cost(m, level) as i64;
        let mut out = Vec::with_capacity(2);
        if down && self.can_lower(m, level) {
            let l = level - self.step(m);
            out.push(Move {
                module: m,
                level: l,
                change: self.cost(m, l) as i64 - now,
            });
        }
        if up && self.can_raise(m, level) {
            let l = level + self.step(m);
            out.push(Move {
                module: m,
                level: l,
                change: self.cost(m, l) as i64 - now,
            });
        }
        out
    }

    pub fn grids(&self) -> &[ModuleGrid] {
        &self.grids
    }

    pub fn len(&self) -> usize {
        self.grids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grids.is_empty()
    }

    pub fn steps(&self) -> Steps {
        self.steps
    }

    pub fn kind(&self, module: usize) -> ModuleKind {
        self.grids[module].module.kind
    }

    pub fn step(&self, module: usize) -> u32 {
        self.steps.of(self.kind(module))
    }

    /// B_type: the units removed from modules of `kind` in every configuration.
    pub fn budget(&self, kind: ModuleKind) -> u64 {
        match kind {
            ModuleKind::Attn => self.budget_attn,
            ModuleKind::Ffn => self.budget_ffn,
        }
    }

    /// The starting configuration: every module at its centre.
    pub fn centres(&self) -> Configuration {
        Configuration {
            levels: self.grids.iter().map(|g| g.centre).collect(),
        }
    }

    /// Whether module `m` at `level` can go down one step and stay on its grid.
    pub fn can_lower(&self, m: usize, level: u32) -> bool {
        level
            .checked_sub(self.step(m))
            .is_some_and(|l| self.grids[m].contains(l))
    }

    /// Whether module `m` at `level` can go up one step and stay on its grid.
    pub fn can_raise(&self, m: usize, level: u32) -> bool {
        level
            .checked_add(self.step(m))
            .is_some_and(|l| self.grids[m].contains(l))
    }

    /// Σ levels of the modules of `kind` in `config`.
    pub fn removed(&self, config: &Configuration, kind: ModuleKind) -> u64 {
        self.grids
            .iter()
            .zip(&config.levels)
            .filter(|(g, _)| g.module.kind == kind)
            .map(|(_, &l)| u64::from(l))
            .sum()
    }

    /// The lowest layer holding a module whose level differs between `a` and `b` (where an
    /// incremental evaluation of `a` from `b`'s cached hidden states must start); `None` if
    /// they are equal.
    pub fn first_changed_layer(&self, a: &Configuration, b: &Configuration) -> Option<usize> {
        a.changed_modules(b)
            .into_iter()
            .map(|m| self.grids[m].module.layer)
            .min()
    }

    /// Checks that `config` has one on-grid level per module and removes exactly each type's
    /// budget (under a parameter budget: the budget's parameters within its tolerance).
    pub fn check(&self, config: &Configuration) -> Result<()> {
        if config.levels.len() != self.grids.len() {
            return Err(Error::SearchConfiguration {
                reason: format!(
                    "{} levels for {} modules",
                    config.levels.len(),
                    self.grids.len()
                ),
            });
        }
        for (g, &l) in self.grids.iter().zip(&config.levels) {
            if !g.contains(l) {
                return Err(Error::SearchConfiguration {
                    reason: format!(
                        "level {l} of the {} module of layer {} is not on its grid",
                        g.module.kind, g.module.layer
                    ),
                });
            }
        }
        if let Some(p) = &self.params {
            let got = self.removed_params(config, None);
            if got.abs_diff(p.budget) > p.tolerance {
                return Err(Error::SearchConfiguration {
                    reason: format!(
                        "removes {got} parameters, the budget is {} ± {}",
                        p.budget, p.tolerance
                    ),
                });
            }
            return Ok(());
        }
        for kind in ModuleKind::ALL {
            let (got, want) = (self.removed(config, kind), self.budget(kind));
            if got != want {
                return Err(Error::SearchConfiguration {
                    reason: format!("removes {got} {kind} units, the budget is {want}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(
        kind: ModuleKind,
        layer: usize,
        units: u32,
        levels: Vec<u32>,
        centre: u32,
    ) -> ModuleGrid {
        ModuleGrid {
            module: Module { kind, layer, units },
            levels,
            centre,
        }
    }

    #[test]
    fn budgets_are_the_sums_of_the_centres_per_type() {
        let s = SearchSpace::new(
            vec![
                grid(ModuleKind::Attn, 0, 9, vec![3, 4, 5], 4),
                grid(ModuleKind::Ffn, 0, 16, vec![0, 4, 8, 12, 16], 8),
                grid(ModuleKind::Attn, 1, 9, vec![4, 5, 6], 5),
            ],
            Steps { attn: 1, ffn: 4 },
        )
        .unwrap();
        assert_eq!(s.budget(ModuleKind::Attn), 9);
        assert_eq!(s.budget(ModuleKind::Ffn), 8);
        assert!(s.check(&s.centres()).is_ok());
        assert!(s.can_lower(1, 4) && !s.can_lower(1, 0) && !s.can_raise(1, 16));
        let off_budget = Configuration {
            levels: vec![3, 8, 5],
        };
        assert!(s.check(&off_budget).is_err());
    }

    #[test]
    fn grids_with_unequal_steps_or_an_off_grid_centre_are_rejected() {
        let steps = Steps { attn: 1, ffn: 4 };
        let uneven = grid(ModuleKind::Ffn, 0, 16, vec![0, 4, 9], 4);
        assert!(SearchSpace::new(vec![uneven], steps).is_err());
        let off = grid(ModuleKind::Ffn, 0, 16, vec![0, 4, 8], 5);
        assert!(SearchSpace::new(vec![off], steps).is_err());
        let too_big = grid(ModuleKind::Attn, 0, 3, vec![2, 3, 4], 3);
        assert!(SearchSpace::new(vec![too_big], steps).is_err());
    }

    #[test]
    fn first_changed_layer_is_the_lowest_layer_that_differs() {
        let s = SearchSpace::new(
            vec![
                grid(ModuleKind::Attn, 0, 9, vec![3, 4, 5], 4),
                grid(ModuleKind::Ffn, 0, 16, vec![4, 8, 12], 8),
                grid(ModuleKind::Attn, 1, 9, vec![4, 5, 6], 5),
                grid(ModuleKind::Ffn, 1, 16, vec![4, 8, 12], 8),
            ],
            Steps { attn: 1, ffn: 4 },
        )
        .unwrap();
        let a = s.centres();
        let mut b = a.clone();
        b.levels[1] = 4;
        b.levels[3] = 12;
        assert_eq!(s.first_changed_layer(&a, &b), Some(0));
        assert_eq!(s.first_changed_layer(&a, &a), None);
        assert_eq!(a.changed_modules(&b), vec![1, 3]);
    }
}
