//! Budgets, centres and grids (ALGORITHM.md §3, §6), checked on the SmolLM2-135M numbers.

use tyr::Error;
use tyr::prune::ModuleKind;
use tyr::prune::grid::{
    GridOptions, Round1Grid, initial_step, levels_around, next_round_grid, next_step, round1_grid,
    spread_centres, unit_budget,
};

const LAYERS: usize = 30;

fn attn() -> Vec<usize> {
    vec![9; LAYERS]
}

fn ffn() -> Vec<usize> {
    vec![1536; LAYERS]
}

#[test]
fn smollm2_budgets_match_the_documented_numbers() {
    assert_eq!(unit_budget(0.5, &attn()).unwrap(), 135);
    assert_eq!(unit_budget(0.25, &attn()).unwrap(), 68); // round(67.5), ties away from zero
    assert_eq!(unit_budget(0.5, &ffn()).unwrap(), 768 * LAYERS);
    assert_eq!(unit_budget(0.0, &ffn()).unwrap(), 0);
}

#[test]
fn leftover_units_go_to_evenly_spread_layers() {
    let c = spread_centres(135, LAYERS);
    assert_eq!(c.iter().sum::<usize>(), 135);
    assert_eq!(c.iter().filter(|&&x| x == 4).count(), 15);
    assert_eq!(c.iter().filter(|&&x| x == 5).count(), 15);
    // R = 15 of L = 30: layers ⌊(i+½)·2⌋ = 1, 3, 5, …
    assert!((0..LAYERS).all(|l| c[l] == if l % 2 == 1 { 5 } else { 4 }));
    // R = 3 of L = 10: layers ⌊(i+½)·10/3⌋ = 1, 5, 8.
    assert_eq!(spread_centres(23, 10), vec![2, 3, 2, 2, 2, 3, 2, 2, 3, 2]);
}

#[test]
fn steps_follow_the_documented_sequence() {
    assert_eq!(initial_step(1536, 0.125), 192);
    assert_eq!(initial_step(9, 0.125), 1);
    assert_eq!(initial_step(3, 0.125), 1); // max(1, round(0.375))
    let mut ffn_steps = vec![192];
    for _ in 0..3 {
        ffn_steps.push(next_step(*ffn_steps.last().unwrap(), 1));
    }
    assert_eq!(ffn_steps, vec![192, 96, 48, 24]);
    assert_eq!(next_step(1, 1), 1);
    assert_eq!(next_step(24, 16), 16);
}

#[test]
fn lattice_round1_grid_is_target_independent() {
    let opts = GridOptions::default();
    let g50 = round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &opts).unwrap();
    let g25 = round1_grid(ModuleKind::Ffn, 0.25, &ffn(), &opts).unwrap();
    let all: Vec<usize> = (0..=8).map(|k| k * 192).collect();
    for g in [&g50, &g25] {
        assert_eq!(g.step, 192);
        assert!(g.modules.iter().all(|m| m.levels == all));
    }
    assert!(g50.modules.iter().all(|m| m.centre == 768));
    assert_eq!(g25.budget, 384 * LAYERS);
    let a25 = round1_grid(ModuleKind::Attn, 0.25, &attn(), &opts).unwrap();
    assert_eq!(a25.budget, 68);
    assert!((a25.achieved_sparsity - 68.0 / 270.0).abs() < 1e-12);
    assert!(
        a25.modules
            .iter()
            .all(|m| m.levels == (0..=9).collect::<Vec<_>>())
    );
    assert_eq!(a25.modules.iter().map(|m| m.centre).sum::<usize>(), 68);
}

#[test]
fn lattice_rounds_the_budget_to_a_multiple_of_the_step() {
    // 0.3·1536·30 = 13824 = 72·192 exactly; 0.31 → 14284.8 → 14285 units → 74.4 steps → 74.
    let g = round1_grid(ModuleKind::Ffn, 0.31, &ffn(), &GridOptions::default()).unwrap();
    assert_eq!(g.budget, 74 * 192);
    assert!(g.modules.iter().all(|m| m.centre % 192 == 0));
    assert_eq!(g.modules.iter().map(|m| m.centre).sum::<usize>(), g.budget);
    assert!((g.achieved_sparsity - (74.0 * 192.0) / (1536.0 * 30.0)).abs() < 1e-12);
}

#[test]
fn centred_grid_drops_out_of_range_points_and_equals_lattice_at_half() {
    let opts = GridOptions {
        round1: Round1Grid::Centred,
        ..GridOptions::default()
    };
    let g = round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &opts).unwrap();
    let lattice = round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &GridOptions::default()).unwrap();
    assert_eq!(g, lattice);
    let g25 = round1_grid(ModuleKind::Ffn, 0.25, &ffn(), &opts).unwrap();
    assert_eq!(
        g25.modules[0].levels,
        vec![0, 192, 384, 576, 768, 960, 1152]
    );
    assert_eq!(levels_around(5, 1, 9, 4), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(levels_around(8, 2, 9, 4), vec![0, 2, 4, 6, 8]);
    assert_eq!(levels_around(1, 3, 9, 2), vec![1, 4, 7]);
}

#[test]
fn later_rounds_recentre_and_halve_the_step() {
    let opts = GridOptions::default();
    let g1 = round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &opts).unwrap();
    let mut chosen = vec![768; LAYERS];
    chosen[0] = 960;
    chosen[1] = 576;
    let g2 = next_round_grid(&g1, &chosen, &opts).unwrap();
    assert_eq!(g2.step, 96);
    assert_eq!(g2.budget, g1.budget);
    assert_eq!(g2.modules[0].centre, 960);
    assert_eq!(
        g2.modules[0].levels,
        (0..9).map(|k| 576 + 96 * k).collect::<Vec<_>>()
    );
    let a1 = round1_grid(ModuleKind::Attn, 0.5, &attn(), &opts).unwrap();
    let a2 = next_round_grid(
        &a1,
        &a1.modules.iter().map(|m| m.centre).collect::<Vec<_>>(),
        &opts,
    )
    .unwrap();
    assert_eq!(a2.step, 1);
}

#[test]
fn bad_targets_and_grids_are_rejected() {
    let opts = GridOptions::default();
    for t in [1.0, -0.1, f64::NAN] {
        assert!(
            matches!(unit_budget(t, &attn()), Err(Error::PruneTarget { .. })),
            "{t}"
        );
        assert!(matches!(
            round1_grid(ModuleKind::Attn, t, &attn(), &opts),
            Err(Error::PruneTarget { .. })
        ));
    }
    let mixed = vec![9, 9, 8];
    assert!(matches!(
        round1_grid(ModuleKind::Attn, 0.5, &mixed, &opts),
        Err(Error::PruneGrid { .. })
    ));
    assert!(matches!(
        round1_grid(ModuleKind::Attn, 0.5, &[], &opts),
        Err(Error::PruneGrid { .. })
    ));
    assert!(matches!(
        round1_grid(ModuleKind::Attn, 0.5, &[0, 0], &opts),
        Err(Error::PruneGrid { .. })
    ));
    // 10 units, Δ₁ = 5 (initial-step 0.5): 0.99 → 10 units → 2 steps of 5 → centre 10 ≤ 10 is fine,
    // but with 7 units and Δ₁ = 4 the lattice tops out below the centre the budget needs.
    let big = GridOptions {
        initial_step: 0.5,
        ..opts
    };
    assert!(round1_grid(ModuleKind::Ffn, 0.99, &[10], &big).is_ok());
    assert!(matches!(
        round1_grid(
            ModuleKind::Ffn,
            0.9,
            &[7],
            &GridOptions {
                initial_step: 0.6,
                ..opts
            }
        ),
        Err(Error::PruneGrid { .. })
    ));
    let g1 = round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &opts).unwrap();
    assert!(matches!(
        next_round_grid(&g1, &vec![768; 29], &opts),
        Err(Error::PruneGrid { .. })
    ));
    assert!(matches!(
        next_round_grid(&g1, &vec![769; 30], &opts),
        Err(Error::PruneGrid { .. })
    ));
    let bad_step = GridOptions {
        initial_step: 0.0,
        ..opts
    };
    assert!(matches!(
        round1_grid(ModuleKind::Ffn, 0.5, &ffn(), &bad_step),
        Err(Error::PruneOption { .. })
    ));
}

mod properties {
    use proptest::prelude::*;
    use tyr::prune::ModuleKind;
    use tyr::prune::grid::{GridOptions, Round1Grid, round1_grid};
    use tyr::prune::local::{RemovalSchedule, pass_sizes};

    proptest! {
        #[test]
        fn round1_centres_meet_the_budget_exactly_and_lie_on_their_grid(
            layers in 1usize..80,
            n in 1usize..3000,
            target in 0.0f64..0.999,
            centred in any::<bool>(),
        ) {
            let round1 = if centred { Round1Grid::Centred } else { Round1Grid::Lattice };
            let opts = GridOptions { round1, ..GridOptions::default() };
            if let Ok(g) = round1_grid(ModuleKind::Ffn, target, &vec![n; layers], &opts) {
                prop_assert_eq!(g.modules.iter().map(|m| m.centre).sum::<usize>(), g.budget);
                for m in &g.modules {
                    prop_assert!(m.levels.contains(&m.centre));
                    prop_assert!(m.levels.windows(2).all(|w| w[1] - w[0] == g.step));
                    prop_assert!(*m.levels.last().unwrap() <= n);
                }
                if !centred {
                    prop_assert_eq!(g.budget % g.step, 0);
                }
                let (lo, hi) = g.modules.iter().fold((usize::MAX, 0), |(a, b), m| (a.min(m.centre), b.max(m.centre)));
                prop_assert!(hi - lo <= g.step);
            }
        }

        #[test]
        fn pass_sizes_sum_to_r_and_differ_by_at_most_one(p in 1usize..40, r in 0usize..2000) {
            let s = pass_sizes(RemovalSchedule::Passes(p), r).unwrap();
            prop_assert_eq!(s.len(), p.min(r));
            prop_assert_eq!(s.iter().sum::<usize>(), r);
            prop_assert!(s.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
        }
    }
}
