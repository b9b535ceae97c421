//! The parameter budget (`budget = "params"`, ALGORITHM.md §8.1): every configuration removes
//! `budget` decoder parameters of the prunable linear layers, within one FFN channel's weight,
//! whatever the split between attention and FFN. The costs of a module's levels are handed in
//! (`stages::search` counts them from the variants' kept units, K/V heads included, as the export
//! counts them); this file only adds them up and finds the few one-step moves that bring a
//! configuration back within the budget.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What `target` counts (`[prune] budget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetKind {
    /// `target` of the heads and `target` of the FFN channels, each type on its own (default).
    #[default]
    Units,
    /// `target` of the parameters of the prunable linear layers, split between the types as
    /// the search finds best.
    Params,
}

/// Parameters removed by each module at each level, and the total every configuration keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamBudget {
    /// `costs[m][i]`: parameters module m removes at the i-th level of its grid.
    pub costs: Vec<Vec<u64>>,
    /// Parameters every configuration removes, ± `tolerance`.
    pub budget: u64,
    /// One FFN channel's parameters (gate and up rows, down column).
    pub tolerance: u64,
}

/// A move of one module to another level of its grid, and the parameters it removes more (or,
/// negative, fewer) than before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub module: usize,
    pub level: u32,
    pub change: i64,
}

/// Largest table (modules × sums) the search for moves may fill.
const MAX_CELLS: usize = 64 << 20;

/// The fewest moves, at most one per module, whose changes sum into `[lo, hi]`. `options[k]`
/// lists the moves module k may make (usually one step down and/or up); modules are tried in
/// the order given, and among sets of the same size the one found first is kept, so shuffling
/// `options` randomises the choice. `None` if no such set exists (or the table would be larger
/// than `MAX_CELLS`).
pub fn fewest_moves(options: &[Vec<Move>], lo: i64, hi: i64) -> Option<Vec<Move>> {
    if lo > hi {
        return None;
    }
    if lo <= 0 && 0 <= hi {
        return Some(Vec::new());
    }
    let changes = options.iter().flatten().map(|m| m.change);
    let g = changes
        .clone()
        .fold(0u64, |g, c| gcd(g, c.unsigned_abs()))
        .max(1) as i64;
    // Sums are tracked in units of g within a window that holds the target and one move
    // beyond it in each direction; a set whose partial sums leave it is not searched.
    let reach = changes.map(i64::abs).max().unwrap_or(0);
    let (lo_g, hi_g) = (
        lo.div_euclid(g) + i64::from(lo.rem_euclid(g) != 0),
        hi.div_euclid(g),
    );
    if lo_g > hi_g {
        return None;
    }
    let (min_v, max_v) = (lo_g.min(0) - reach / g, hi_g.max(0) + reach / g);
    let width = usize::try_from(max_v - min_v + 1).ok()?;
    if width.checked_mul(options.len() + 1)? > MAX_CELLS {
        return None;
    }
    const NONE: u16 = u16::MAX;
    // best[v]: fewest moves reaching sum v; choice[k][v]: the option module k took (0 = none).
    let mut best = vec![NONE; width];
    best[(-min_v) as usize] = 0;
    let mut choice: Vec<Vec<u8>> = Vec::with_capacity(options.len());
    for opts in options {
        let mut next = best.clone();
        let mut took = vec![0u8; width];
        for (j, m) in opts.iter().enumerate().take(254) {
            let step = m.change / g;
            for (v, &moves) in best.iter().enumerate() {
                if moves == NONE {
                    continue;
                }
                let Some(t) = (v as i64)
                    .checked_add(step)
                    .filter(|&t| t >= 0 && t < width as i64)
                else {
                    continue;
                };
                let t = t as usize;
                if moves + 1 < next[t] {
                    next[t] = moves + 1;
                    took[t] = j as u8 + 1;
                }
            }
        }
        best = next;
        choice.push(took);
    }
    let target = (lo_g..=hi_g)
        .map(|v| (v - min_v) as usize)
        .filter(|&v| best[v] != NONE)
        .min_by_key(|&v| (best[v], v.abs_diff(((lo_g + hi_g) / 2 - min_v) as usize)))?;
    let mut out = Vec::new();
    let mut v = target;
    for (k, took) in choice.iter().enumerate().rev() {
        let j = took[v];
        if j > 0 {
            let m = options[k][j as usize - 1];
            out.push(m);
            v = (v as i64 - m.change / g) as usize;
        }
    }
    out.reverse();
    Some(out)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Checks the cost table against the grids' level counts.
pub fn check_costs(costs: &[Vec<u64>], levels: &[usize]) -> Result<()> {
    if costs.len() != levels.len() {
        return Err(Error::SearchConfiguration {
            reason: format!(
                "the parameter budget has costs for {} modules, the search space has {}",
                costs.len(),
                levels.len()
            ),
        });
    }
    if let Some((m, (c, n))) = costs
        .iter()
        .zip(levels)
        .enumerate()
        .find(|(_, (c, n))| c.len() != **n)
    {
        return Err(Error::SearchConfiguration {
            reason: format!(
                "module {m} has {} parameter costs for {n} grid levels",
                c.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(module: usize, change: i64) -> Move {
        Move {
            module,
            level: 0,
            change,
        }
    }

    #[test]
    fn the_fewest_moves_that_land_in_the_window_are_found() {
        // Heads of 128, FFN steps of 576: 448 is one FFN step down and one head up.
        let options = vec![
            vec![mv(0, -128), mv(0, 128)],
            vec![mv(1, -576), mv(1, 576)],
            vec![mv(2, -128), mv(2, 128)],
            vec![mv(3, -576), mv(3, 576)],
        ];
        let got = fewest_moves(&options, -451, -445).unwrap();
        assert_eq!(got.iter().map(|m| m.change).sum::<i64>(), -448);
        assert_eq!(got.len(), 2);
        // Already inside: nothing to do.
        assert_eq!(fewest_moves(&options, -3, 3).unwrap(), vec![]);
        // 9 heads are 2 FFN steps; with 4 modules a sum of 64 cannot be made.
        assert!(fewest_moves(&options, 62, 66).is_none());
    }

    #[test]
    fn a_module_moves_at_most_once() {
        let options = vec![vec![mv(0, 5), mv(0, 10)]];
        assert!(fewest_moves(&options, 15, 15).is_none());
        assert_eq!(fewest_moves(&options, 10, 10).unwrap()[0].change, 10);
    }
}
