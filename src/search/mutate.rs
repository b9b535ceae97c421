//! Mutation (ALGORITHM.md §8): an offspring is the parent after n_s = min(U{1..M}, U{1..M})
//! same-type swaps of one grid step, so every type's budget is kept exactly; under a parameter
//! budget (§8.1) half of the operations are trades between attention and FFN instead, and a
//! child is mended back within the budget or dropped. One generation draws offspring until λ
//! distinct ones (none equal to the parent) or 100·λ attempts. All draws of a generation come
//! from one stream keyed by (seed, "mutation", round, generation), so a resumed generation
//! replays them exactly.

use std::collections::BTreeSet;

use crate::rng::Stream;
use crate::search::budget::Move;
use crate::search::config::{Configuration, ModuleKind, SearchSpace};

/// Failed draws of module a (no partner b of its type can go up) before a swap is skipped.
pub const SWAP_TRIES: usize = 100;
/// Attempts per wanted offspring before a generation carries on with fewer.
pub const ATTEMPTS_PER_OFFSPRING: usize = 100;

/// The RNG purpose of the mutation stream.
pub const MUTATION_PURPOSE: &str = "mutation";

/// Mutation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MutationParams {
    /// M: n_s = min(U{1..M}, U{1..M}). Paper: 4.
    pub max_swaps: u32,
    /// λ: distinct offspring wanted per generation. Paper: 128.
    pub offspring: usize,
}

/// The offspring of one generation and how many attempts they took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offspring {
    /// Distinct, none equal to the parent, in the order they were drawn.
    pub configs: Vec<Configuration>,
    pub attempts: usize,
}

/// The stream that drives the mutations of one generation.
pub fn mutation_stream(seed: u64, round: u64, generation: u64) -> Stream {
    Stream::new(seed, MUTATION_PURPOSE, &[round, generation])
}

/// n_s = min(U{1..M}, U{1..M}); P(n_s = k) = (2(M−k)+1)/M², so small counts are favoured.
pub fn draw_swap_count(max_swaps: u32, rng: &mut Stream) -> u32 {
    let m = max_swaps.max(1) as usize;
    let a = rng.below(m) + 1;
    let b = rng.below(m) + 1;
    a.min(b) as u32
}

/// One swap in place: lower a uniformly chosen module that can go down one step, raise a
/// uniformly chosen different module of the same type that can go up one step. Returns whether
/// a swap happened (false after `SWAP_TRIES` draws of a without a partner, or when no module can
/// go down at all).
pub fn swap_once(space: &SearchSpace, config: &mut Configuration, rng: &mut Stream) -> bool {
    let lowerable: Vec<usize> = (0..space.len())
        .filter(|&m| space.can_lower(m, config.levels[m]))
        .collect();
    if lowerable.is_empty() {
        return false;
    }
    for _ in 0..SWAP_TRIES {
        let a = lowerable[rng.below(lowerable.len())];
        let kind: ModuleKind = space.kind(a);
        let partners: Vec<usize> = (0..space.len())
            .filter(|&b| b != a && space.kind(b) == kind && space.can_raise(b, config.levels[b]))
            .collect();
        if partners.is_empty() {
            continue;
        }
        let b = partners[rng.below(partners.len())];
        // Same type ⇒ same Δ, so the type's Σ levels is unchanged.
        let step = space.step(a);
        config.levels[a] -= step;
        config.levels[b] += step;
        return true;
    }
    false
}

/// One offspring: the parent after n_s swaps.
pub fn mutate(
    space: &SearchSpace,
    parent: &Configuration,
    max_swaps: u32,
    rng: &mut Stream,
) -> Configuration {
    let mut child = parent.clone();
    let swaps = draw_swap_count(max_swaps, rng);
    for _ in 0..swaps {
        swap_once(space, &mut child, rng);
    }
    debug_assert!(
        ModuleKind::ALL
            .iter()
            .all(|&k| space.removed(&child, k) == space.removed(parent, k)),
        "a mutation changed a type's budget"
    );
    child
}

/// One trade under a parameter budget, in place: a module of a random type goes one step up
/// (removes more), and the fewest one-step moves that lower modules of the other type or raise
/// other modules of its own bring the total back within the budget (so the removed parameters
/// move between the types). Returns whether a trade happened (false when no module can go up or
/// no such moves exist).
pub fn trade_once(space: &SearchSpace, config: &mut Configuration, rng: &mut Stream) -> bool {
    if space.param_budget().is_none() {
        return false;
    }
    let kind = ModuleKind::ALL[rng.below(2)];
    let raisable: Vec<usize> = (0..space.len())
        .filter(|&m| space.kind(m) == kind && space.can_raise(m, config.levels[m]))
        .collect();
    if raisable.is_empty() {
        return false;
    }
    let a = raisable[rng.below(raisable.len())];
    let mut child = config.clone();
    child.levels[a] += space.step(a);
    let mut order: Vec<usize> = (0..space.len()).filter(|&m| m != a).collect();
    rng.shuffle(&mut order);
    let options: Vec<Vec<Move>> = order
        .iter()
        .map(|&m| {
            let same = space.kind(m) == kind;
            space.step_moves(&child, m, !same, same)
        })
        .collect();
    let moved = space.move_within_budget(&mut child, &options);
    if moved {
        *config = child;
    }
    moved
}

/// Under a parameter budget: the fewest one-step moves of any modules that bring `config` within
/// the budget, applied in place; false when none do.
pub fn mend(space: &SearchSpace, config: &mut Configuration, rng: &mut Stream) -> bool {
    let Some(p) = space.param_budget() else {
        return true;
    };
    let (e, tol) = (space.excess(config), p.tolerance as i64);
    if e.abs() <= tol {
        return true;
    }
    let mut order: Vec<usize> = (0..space.len()).collect();
    rng.shuffle(&mut order);
    let options: Vec<Vec<Move>> = order
        .iter()
        .map(|&m| space.step_moves(config, m, true, true))
        .collect();
    space.move_within_budget(config, &options)
}

/// One offspring under a parameter budget: the parent after n_s operations, each a same-type
/// swap or a trade with even odds, then mended within the budget (a swap of heads that empties
/// or refills a K/V group changes the total). `None` when it cannot be mended.
pub fn mutate_params(
    space: &SearchSpace,
    parent: &Configuration,
    max_swaps: u32,
    rng: &mut Stream,
) -> Option<Configuration> {
    let mut child = parent.clone();
    let ops = draw_swap_count(max_swaps, rng);
    for _ in 0..ops {
        if rng.below(2) == 0 {
            swap_once(space, &mut child, rng);
        } else {
            trade_once(space, &mut child, rng);
        }
    }
    mend(space, &mut child, rng).then_some(child)
}

/// The offspring of generation `generation` of round `round`: draw mutants of `parent` until
/// `params.offspring` distinct ones differ from the parent, or 100·λ attempts were made.
pub fn generate_offspring(
    space: &SearchSpace,
    parent: &Configuration,
    params: &MutationParams,
    seed: u64,
    round: u64,
    generation: u64,
) -> Offspring {
    let mut rng = mutation_stream(seed, round, generation);
    let max_attempts = ATTEMPTS_PER_OFFSPRING.saturating_mul(params.offspring);
    let mut seen = BTreeSet::new();
    let mut configs = Vec::with_capacity(params.offspring);
    let mut attempts = 0;
    while configs.len() < params.offspring && attempts < max_attempts {
        attempts += 1;
        let child = if space.param_budget().is_some() {
            match mutate_params(space, parent, params.max_swaps, &mut rng) {
                Some(c) => c,
                None => continue,
            }
        } else {
            mutate(space, parent, params.max_swaps, &mut rng)
        };
        debug_assert!(space.check(&child).is_ok(), "a mutation left the budget");
        if child != *parent && seen.insert(child.clone()) {
            configs.push(child);
        }
    }
    if configs.len() < params.offspring {
        tracing::warn!(
            round,
            generation,
            wanted = params.offspring,
            distinct = configs.len(),
            attempts,
            "fewer distinct offspring than asked for; carrying on with what there is"
        );
    }
    Offspring { configs, attempts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::config::{Module, ModuleGrid, Steps};

    /// Two attention modules frozen at their only level and one FFN pair.
    fn space() -> SearchSpace {
        let g = |kind, layer, levels: Vec<u32>, centre| ModuleGrid {
            module: Module {
                kind,
                layer,
                units: 16,
            },
            levels,
            centre,
        };
        SearchSpace::new(
            vec![
                g(ModuleKind::Attn, 0, vec![4], 4),
                g(ModuleKind::Ffn, 0, vec![0, 8, 16], 8),
                g(ModuleKind::Attn, 1, vec![4], 4),
                g(ModuleKind::Ffn, 1, vec![0, 8, 16], 8),
            ],
            Steps { attn: 1, ffn: 8 },
        )
        .unwrap()
    }

    /// SmolLM2's shapes in units of the hidden size: heads of 128 (q rows and o columns) with a
    /// K/V group of 128 more emptied at 3 and 6 heads removed, FFN channels of 3, steps of one
    /// head and 192 channels, on 12 layers; the budget is half of everything. The smallest trade
    /// is 9 heads for 2 FFN steps (1,152 each), so fewer layers would allow none.
    fn param_space() -> SearchSpace {
        let mut grids = Vec::new();
        let mut costs = Vec::new();
        for layer in 0..12 {
            let levels: Vec<u32> = (0..=9).collect();
            costs.push(
                levels
                    .iter()
                    .map(|&l| 128 * u64::from(l) + 128 * u64::from(l / 3))
                    .collect(),
            );
            grids.push(ModuleGrid {
                module: Module {
                    kind: ModuleKind::Attn,
                    layer,
                    units: 9,
                },
                levels,
                centre: 4 + (layer as u32 % 2),
            });
            let levels: Vec<u32> = (0..=8).map(|k| 192 * k).collect();
            costs.push(levels.iter().map(|&l| 3 * u64::from(l)).collect());
            grids.push(ModuleGrid {
                module: Module {
                    kind: ModuleKind::Ffn,
                    layer,
                    units: 1536,
                },
                levels,
                centre: 768,
            });
        }
        SearchSpace::new(grids, Steps { attn: 1, ffn: 192 })
            .unwrap()
            .with_param_budget(crate::search::ParamBudget {
                costs,
                budget: 12 * (9 * 128 + 3 * 128 + 1536 * 3) / 2,
                tolerance: 3,
            })
            .unwrap()
    }

    #[test]
    fn under_a_parameter_budget_every_offspring_keeps_it_and_some_move_it_between_types() {
        let s = param_space();
        let start = s.start().unwrap();
        s.check(&start).unwrap();
        assert!(s.check(&s.centres()).is_err(), "the centres leave out K/V");
        let params = MutationParams {
            max_swaps: 4,
            offspring: 32,
        };
        let mut parent = start;
        let mut moved = 0;
        for g in 0..6 {
            let off = generate_offspring(&s, &parent, &params, 7, 1, g);
            assert!(off.configs.len() >= 16, "{} offspring", off.configs.len());
            for c in &off.configs {
                s.check(c).unwrap();
                let attn = |c| s.removed_params(c, Some(ModuleKind::Attn));
                moved += usize::from(attn(c) != attn(&parent));
            }
            parent = off.configs[0].clone();
        }
        assert!(moved > 0, "no offspring moved parameters between the types");
        // The same draws give the same offspring.
        let again = generate_offspring(&s, &s.start().unwrap(), &params, 7, 1, 0);
        let first = generate_offspring(&s, &s.start().unwrap(), &params, 7, 1, 0);
        assert_eq!(again, first);
    }

    #[test]
    fn a_parameter_budget_no_configuration_reaches_is_an_error_naming_it() {
        let s = param_space();
        let mut p = s.param_budget().unwrap().clone();
        p.budget *= 3;
        let s = SearchSpace::new(s.grids().to_vec(), s.steps())
            .unwrap()
            .with_param_budget(p.clone())
            .unwrap();
        let e = s.start().unwrap_err().to_string();
        assert!(e.contains(&p.budget.to_string()), "{e}");
        // A cost table of the wrong shape is refused.
        p.costs[0].pop();
        assert!(
            SearchSpace::new(s.grids().to_vec(), s.steps())
                .unwrap()
                .with_param_budget(p)
                .is_err()
        );
    }

    #[test]
    fn a_swap_moves_one_step_between_modules_of_one_type() {
        let s = space();
        let mut c = s.centres();
        let mut rng = Stream::new(3, "t", &[]);
        assert!(swap_once(&s, &mut c, &mut rng));
        assert!(c.levels == vec![4, 0, 4, 16] || c.levels == vec![4, 16, 4, 0]);
    }

    #[test]
    fn a_space_with_two_reachable_neighbours_yields_exactly_those_two_offspring() {
        let s = space();
        let params = MutationParams {
            max_swaps: 4,
            offspring: 8,
        };
        let off = generate_offspring(&s, &s.centres(), &params, 1, 1, 0);
        let mut got: Vec<Vec<u32>> = off.configs.iter().map(|c| c.levels.clone()).collect();
        got.sort();
        assert_eq!(got, vec![vec![4, 0, 4, 16], vec![4, 16, 4, 0]]);
        assert_eq!(off.attempts, 800);
    }
}
