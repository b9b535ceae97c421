//! Mutation under exact per-type budgets (ALGORITHM.md §8): every offspring keeps each type's
//! Σ levels, offspring are distinct and differ from the parent, swap counts follow
//! min(U{1..M}, U{1..M}), and a generation's draws replay exactly.

use proptest::prelude::*;
use tyr::rng::Stream;
use tyr::search::mutate::{draw_swap_count, mutate};
use tyr::search::{
    Module, ModuleGrid, ModuleKind, MutationParams, SearchSpace, Steps, generate_offspring,
};

/// The §6 grid: centre ± k·step, k = −K..K, out-of-range points dropped.
fn grid(kind: ModuleKind, layer: usize, units: u32, centre: u32, step: u32) -> ModuleGrid {
    let levels = (-4i64..=4)
        .map(|k| i64::from(centre) + k * i64::from(step))
        .filter(|&l| (0..=i64::from(units)).contains(&l))
        .map(|l| l as u32)
        .collect();
    ModuleGrid {
        module: Module { kind, layer, units },
        levels,
        centre,
    }
}

/// A space with one attention and one FFN module per layer at the given centres.
fn space(attn: &[u32], ffn: &[u32], steps: Steps) -> SearchSpace {
    let mut grids = Vec::new();
    for (layer, (&a, &f)) in attn.iter().zip(ffn).enumerate() {
        grids.push(grid(ModuleKind::Attn, layer, 9, a, steps.attn));
        grids.push(grid(ModuleKind::Ffn, layer, 64, f, steps.ffn));
    }
    SearchSpace::new(grids, steps).unwrap()
}

fn smol_like() -> SearchSpace {
    space(&[4, 5, 4, 5, 4, 5], &[32; 6], Steps { attn: 1, ffn: 8 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mutation_keeps_each_type_budget_exactly(
        layers in 2usize..7,
        attn_seed in any::<u64>(),
        ffn_step in prop::sample::select(vec![4u32, 8, 16]),
        seed in any::<u64>(),
        generation in 0u64..1000,
        max_swaps in 1u32..7,
    ) {
        let mut rng = Stream::new(attn_seed, "test-centres", &[]);
        let attn: Vec<u32> = (0..layers).map(|_| rng.below(10) as u32).collect();
        let ffn: Vec<u32> = (0..layers).map(|_| rng.below(65 / ffn_step as usize) as u32 * ffn_step).collect();
        let s = space(&attn, &ffn, Steps { attn: 1, ffn: ffn_step });
        let parent = s.centres();
        let params = MutationParams { max_swaps, offspring: 24 };
        let off = generate_offspring(&s, &parent, &params, seed, 1, generation);
        for child in &off.configs {
            prop_assert!(s.check(child).is_ok());
            for kind in ModuleKind::ALL {
                prop_assert_eq!(s.removed(child, kind), s.budget(kind));
            }
        }
        let mut sorted = off.configs.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), off.configs.len());
        prop_assert!(!off.configs.contains(&parent));
    }
}

#[test]
fn offspring_are_distinct_differ_from_the_parent_and_fill_lambda() {
    let s = smol_like();
    let parent = s.centres();
    let params = MutationParams {
        max_swaps: 4,
        offspring: 128,
    };
    let off = generate_offspring(&s, &parent, &params, 7, 1, 3);
    assert_eq!(off.configs.len(), 128);
    assert!(off.attempts >= 128 && off.attempts < 128 * 100);
    let mut sorted = off.configs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 128);
    assert!(off.configs.iter().all(|c| *c != parent));
}

#[test]
fn each_swap_moves_one_grid_step_within_one_type() {
    let s = smol_like();
    let parent = s.centres();
    let mut rng = Stream::new(11, "test", &[]);
    for _ in 0..500 {
        let child = mutate(&s, &parent, 1, &mut rng);
        let changed = child.changed_modules(&parent);
        assert_eq!(changed.len(), 2, "one swap changes exactly two modules");
        let (a, b) = (changed[0], changed[1]);
        assert_eq!(s.kind(a), s.kind(b));
        let step = i64::from(s.step(a));
        let da = i64::from(child.levels[a]) - i64::from(parent.levels[a]);
        let db = i64::from(child.levels[b]) - i64::from(parent.levels[b]);
        assert_eq!(da.abs(), step);
        assert_eq!(da, -db);
    }
}

#[test]
fn swap_count_follows_the_minimum_of_two_uniforms() {
    let mut rng = Stream::new(5, "test", &[]);
    let n = 64_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[draw_swap_count(4, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[0], 0);
    // P(k) = (2(M − k) + 1)/M² = 7/16, 5/16, 3/16, 1/16 for M = 4.
    for (k, want) in [(1, 7.0), (2, 5.0), (3, 3.0), (4, 1.0)] {
        let got = counts[k] as f64 / n as f64;
        assert!((got - want / 16.0).abs() < 0.01, "P({k}) = {got}");
    }
}

#[test]
fn a_generation_replays_identically_and_another_generation_differs() {
    let s = smol_like();
    let parent = s.centres();
    let params = MutationParams {
        max_swaps: 4,
        offspring: 32,
    };
    let a = generate_offspring(&s, &parent, &params, 9, 2, 5);
    let b = generate_offspring(&s, &parent, &params, 9, 2, 5);
    assert_eq!(a, b);
    assert_ne!(
        a.configs,
        generate_offspring(&s, &parent, &params, 9, 2, 6).configs
    );
    assert_ne!(
        a.configs,
        generate_offspring(&s, &parent, &params, 9, 3, 5).configs
    );
    assert_ne!(
        a.configs,
        generate_offspring(&s, &parent, &params, 10, 2, 5).configs
    );
}

#[test]
fn a_module_without_a_same_type_partner_never_moves() {
    // One attention module (no partner of its type) and two FFN modules: only FFN levels move.
    let steps = Steps { attn: 1, ffn: 8 };
    let s = SearchSpace::new(
        vec![
            grid(ModuleKind::Attn, 0, 9, 4, 1),
            grid(ModuleKind::Ffn, 0, 64, 32, 8),
            grid(ModuleKind::Ffn, 1, 64, 32, 8),
        ],
        steps,
    )
    .unwrap();
    let params = MutationParams {
        max_swaps: 4,
        offspring: 16,
    };
    let off = generate_offspring(&s, &s.centres(), &params, 1, 1, 0);
    assert!(!off.configs.is_empty());
    assert!(off.configs.iter().all(|c| c.levels[0] == 4));
}

#[test]
fn a_frozen_space_yields_no_offspring_after_the_attempt_limit() {
    let steps = Steps { attn: 1, ffn: 8 };
    let frozen = |kind, layer| ModuleGrid {
        module: Module {
            kind,
            layer,
            units: 9,
        },
        levels: vec![3],
        centre: 3,
    };
    let s = SearchSpace::new(
        vec![frozen(ModuleKind::Attn, 0), frozen(ModuleKind::Attn, 1)],
        steps,
    )
    .unwrap();
    let params = MutationParams {
        max_swaps: 4,
        offspring: 5,
    };
    let off = generate_offspring(&s, &s.centres(), &params, 1, 1, 0);
    assert!(off.configs.is_empty());
    assert_eq!(off.attempts, 500);
}
