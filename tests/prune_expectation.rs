//! Expectation weights and the averaged padded weight (ALGORITHM.md §7) on constructed examples.

use tyr::prune::UnitLayout;
use tyr::prune::expectation::{
    CompactWeight, Expectation, ExpectationWeights, averaged_weight, expectation_weights,
};

fn levels(w: ExpectationWeights) -> Vec<f64> {
    match w {
        ExpectationWeights::Levels(v) => v,
        ExpectationWeights::Dense => panic!("expected level weights"),
    }
}

#[test]
fn density_weights_are_proportional_to_kept_fraction() {
    // Grid {0, 2, 4} of 4 units: densities 1, ½, 0 → weights ⅔, ⅓, 0.
    let w = levels(expectation_weights(Expectation::DensityWeighted, &[0, 2, 4], 4, 2).unwrap());
    assert!((w[0] - 2.0 / 3.0).abs() < 1e-15 && (w[1] - 1.0 / 3.0).abs() < 1e-15 && w[2] == 0.0);
    // The full 9-level lattice of 8 steps: Σ(1 − k/8) = 4.5, so w_k = (8 − k)/36.
    let lv: Vec<usize> = (0..=8).map(|k| k * 192).collect();
    let w = levels(expectation_weights(Expectation::DensityWeighted, &lv, 1536, 768).unwrap());
    for (k, x) in w.iter().enumerate() {
        assert!((x - (8 - k) as f64 / 36.0).abs() < 1e-15);
    }
}

#[test]
fn uniform_centre_and_none_give_their_documented_weights() {
    let u = levels(expectation_weights(Expectation::Uniform, &[1, 2, 3, 4], 9, 2).unwrap());
    assert_eq!(u, vec![0.25; 4]);
    let c = levels(expectation_weights(Expectation::Centre, &[1, 2, 3, 4], 9, 3).unwrap());
    assert_eq!(c, vec![0.0, 0.0, 1.0, 0.0]);
    assert_eq!(
        expectation_weights(Expectation::None, &[1, 2], 9, 2).unwrap(),
        ExpectationWeights::Dense
    );
    assert!(expectation_weights(Expectation::Centre, &[1, 2], 9, 5).is_err());
    assert!(expectation_weights(Expectation::Uniform, &[10], 9, 10).is_err());
    let all_empty = levels(expectation_weights(Expectation::DensityWeighted, &[9], 9, 9).unwrap());
    assert_eq!(all_empty, vec![1.0]);
}

#[test]
fn averaged_weight_pads_removed_columns_with_zeros() {
    // 3 units of width 2, d_out 2. Variant A keeps all (level 0), B keeps unit 1 only, C none.
    let layout = UnitLayout::heads(3, 2);
    let a: Vec<f32> = (1..=12).map(|x| x as f32).collect(); // [2, 6]
    let b = vec![10.0f32, 20.0, 30.0, 40.0]; // [2, 2] for unit 1
    let variants = [
        CompactWeight {
            kept: &[0, 1, 2],
            weight: &a,
        },
        CompactWeight {
            kept: &[1],
            weight: &b,
        },
        CompactWeight {
            kept: &[],
            weight: &[],
        },
    ];
    let avg = averaged_weight(&variants, &[0.5, 0.25, 0.25], 2, layout).unwrap();
    let expected = [
        0.5,
        1.0,
        1.5 + 2.5,
        2.0 + 5.0,
        2.5,
        3.0, //
        3.5,
        4.0,
        4.5 + 7.5,
        5.0 + 10.0,
        5.5,
        6.0,
    ];
    assert_eq!(avg, expected);
    assert!(averaged_weight(&variants, &[1.0], 2, layout).is_err());
}
