//! Mutation (ALGORITHM.md §8): an offspring is the parent after n_s = min(U{1..M}, U{1..M})
//! same-type swaps of one grid step, so every type's budget is kept exactly; one generation draws
//! offspring until λ distinct ones (none equal to the parent) or 100·λ attempts. All draws of a
//! generation come from one stream keyed by (seed, "mutation", round, generation), so a resumed
//! generation replays them exactly.

use std::collections::BTreeSet;

use crate::rng::Stream;
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
        let child = mutate(space, parent, params.max_swaps, &mut rng);
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
