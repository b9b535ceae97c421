//! Local pruning (ALGORITHM.md §5) on small random problems: the OBS path against brute-force
//! least squares, the inverse-Hessian invariant, optimality of the refit, the edge levels,
//! saliency on constructed cases, schedules, damping retries and bad inputs.

use tyr::Error;
use tyr::prune::linalg::{Mat, Op, matmul};
use tyr::prune::local::{
    LocalPruneOptions, ModulePruner, ModuleWeight, PruneContext, RemovalSchedule, local_prune,
    pass_sizes,
};
use tyr::prune::obs::{FirstOrder, ObsState, refit};
use tyr::prune::stats::Hessian;
use tyr::prune::{ModuleKind, UnitLayout};
use tyr::rng::Stream;

const CTX: PruneContext = PruneContext {
    layer: 3,
    module: ModuleKind::Ffn,
};

fn normals(s: &mut Stream, n: usize) -> Vec<f32> {
    (0..n).map(|_| s.normal() as f32).collect()
}

/// H from `tokens` random rows with some correlation between channels, and W0 [d_out, d_in].
fn problem(d_in: usize, d_out: usize, tokens: usize, seed: u64) -> (Hessian, Vec<f32>) {
    let mut s = Stream::new(seed, "prune-local-test", &[d_in as u64, d_out as u64]);
    let mut x = normals(&mut s, tokens * d_in);
    for row in x.chunks_exact_mut(d_in) {
        for i in 1..d_in {
            row[i] += 0.5 * row[i - 1];
        }
    }
    let mut h = Hessian::zeros(d_in);
    h.accumulate_rows(&x).unwrap();
    (h, normals(&mut s, d_out * d_in))
}

/// Gauss–Jordan with partial pivoting: an inverse independent of the Cholesky code.
fn gauss_jordan_inverse(a: &Mat) -> Mat {
    let n = a.rows();
    let mut m = a.clone();
    let mut inv = Mat::identity(n);
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m.get(i, c).abs().total_cmp(&m.get(j, c).abs()))
            .unwrap();
        for j in 0..n {
            let (x, y) = (m.get(c, j), m.get(p, j));
            m.set(c, j, y);
            m.set(p, j, x);
            let (x, y) = (inv.get(c, j), inv.get(p, j));
            inv.set(c, j, y);
            inv.set(p, j, x);
        }
        let d = m.get(c, c);
        for j in 0..n {
            m.set(c, j, m.get(c, j) / d);
            inv.set(c, j, inv.get(c, j) / d);
        }
        for i in 0..n {
            if i != c {
                let f = m.get(i, c);
                for j in 0..n {
                    m.set(i, j, m.get(i, j) - f * m.get(c, j));
                    inv.set(i, j, inv.get(i, j) - f * inv.get(c, j));
                }
            }
        }
    }
    inv
}

fn rel_diff(a: &Mat, b: &Mat) -> f64 {
    let num: f64 = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let den: f64 = b.data().iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// `tr((W0−W)ᵀ·Hλ·(W0−W))` with W (d_in × d_out) a full-shape candidate.
fn objective(h_lambda: &Mat, w0: &Mat, w: &Mat) -> f64 {
    let e = Mat::from_vec(
        w0.rows(),
        w0.cols(),
        w0.data().iter().zip(w.data()).map(|(a, b)| a - b).collect(),
    );
    e.frobenius_dot(&matmul(Op::N(h_lambda), Op::N(&e)))
}

fn channels_of(kept: &[u32], width: usize) -> Vec<usize> {
    kept.iter()
        .flat_map(|&u| u as usize * width..(u as usize + 1) * width)
        .collect()
}

#[test]
fn obs_update_plus_refit_equals_brute_force_least_squares() {
    for (layout, level, schedule) in [
        (UnitLayout::channels(24), 10, RemovalSchedule::Passes(4)),
        (UnitLayout::heads(6, 4), 3, RemovalSchedule::UnitsPerPass(1)),
    ] {
        let d_in = layout.channels_total();
        let (h, w) = problem(d_in, 7, 200, 1);
        let opts = LocalPruneOptions {
            schedule,
            ..LocalPruneOptions::ffn_default()
        };
        let module = ModuleWeight {
            weight: &w,
            d_out: 7,
            layout,
        };
        let v = local_prune(&CTX, &h, &module, level, &opts).unwrap();
        assert_eq!(v.kept.len(), layout.units - level);
        let kept = channels_of(&v.kept, layout.width);
        // Brute force: solve Hλ[K,K]·Ŵ = (Hλ·W0)[K,:] with an independent inverse.
        let (hl, _) = h.damped(v.metrics.damping);
        let w0 = Mat::from_f32(7, d_in, &w).transpose();
        let rhs = matmul(Op::N(&hl), Op::N(&w0)).select_rows(&kept);
        let brute = matmul(
            Op::N(&gauss_jordan_inverse(&hl.select(&kept, &kept))),
            Op::N(&rhs),
        );
        let got = Mat::from_f32(7, kept.len(), &v.weight).transpose();
        assert!(
            rel_diff(&got, &brute) < 1e-6,
            "layout {layout:?}: {}",
            rel_diff(&got, &brute)
        );
    }
}

#[test]
fn inverse_hessian_on_kept_channels_equals_inverse_of_kept_block_after_each_removal() {
    let (h, w) = problem(20, 5, 100, 2);
    let (hl, _) = h.damped(0.01);
    let w0 = Mat::from_f32(5, 20, &w).transpose();
    let mut state = ObsState::new(&hl, w0).unwrap();
    let mut kept: Vec<usize> = (0..20).collect();
    for removal in [vec![3usize], vec![7, 11], vec![0, 19, 12]] {
        state.remove(&removal).unwrap();
        kept.retain(|c| !removal.contains(c));
        let expected = gauss_jordan_inverse(&hl.select(&kept, &kept));
        assert_eq!(state.kept_channels(), &kept[..]);
        assert!(
            rel_diff(state.hinv(), &expected) < 1e-6,
            "after {removal:?}"
        );
        // In exact arithmetic the compensated weight already equals the refit on K.
        let refit_t = refit(&hl, state.g(), &kept).unwrap();
        assert!(
            rel_diff(state.weight(), &refit_t.transpose()) < 1e-6,
            "after {removal:?}"
        );
        assert!(removal.iter().all(|&c| state.is_removed(c)));
    }
}

#[test]
fn inverse_hessian_stays_accurate_through_many_passes_at_realistic_width() {
    let (h, w) = problem(240, 16, 600, 13);
    let (hl, _) = h.damped(0.01);
    let mut state = ObsState::new(&hl, Mat::from_f32(16, 240, &w).transpose()).unwrap();
    let mut s = Stream::new(14, "removal-order", &[]);
    let mut order: Vec<usize> = (0..240).collect();
    s.shuffle(&mut order);
    for chunk in order[..210].chunks(14) {
        state.remove(chunk).unwrap();
    }
    let kept = state.kept_channels().to_vec();
    assert_eq!(kept.len(), 30);
    let expected = gauss_jordan_inverse(&hl.select(&kept, &kept));
    assert!(rel_diff(state.hinv(), &expected) < 1e-6);
    let refit_t = refit(&hl, state.g(), &kept).unwrap();
    assert!(rel_diff(state.weight(), &refit_t.transpose()) < 1e-6);
}

#[test]
fn refit_is_optimal_for_its_kept_set() {
    let layout = UnitLayout::channels(16);
    let (h, w) = problem(16, 6, 120, 3);
    let module = ModuleWeight {
        weight: &w,
        d_out: 6,
        layout,
    };
    let v = local_prune(&CTX, &h, &module, 6, &LocalPruneOptions::ffn_default()).unwrap();
    let (hl, _) = h.damped(v.metrics.damping);
    let w0 = Mat::from_f32(6, 16, &w).transpose();
    let kept = channels_of(&v.kept, 1);
    let mut full = Mat::zeros(16, 6);
    let w_hat = Mat::from_f32(6, kept.len(), &v.weight).transpose();
    for (k, &i) in kept.iter().enumerate() {
        full.row_mut(i).copy_from_slice(w_hat.row(k));
    }
    let best = objective(&hl, &w0, &full);
    let den = w0.frobenius_dot(&matmul(Op::N(&hl), Op::N(&w0)));
    assert!((best / den - v.metrics.rel_error).abs() < 1e-6);
    let mut s = Stream::new(9, "perturb", &[]);
    for _ in 0..20 {
        let mut p = full.clone();
        for &i in &kept {
            for x in p.row_mut(i) {
                *x += 1e-3 * s.normal();
            }
        }
        assert!(objective(&hl, &w0, &p) >= best * (1.0 - 1e-12));
    }
}

#[test]
fn level_zero_is_identity_bit_for_bit() {
    let (h, mut w) = problem(8, 3, 30, 4);
    w[5] = -0.0; // survives f64 round trips, but not `x + 0.0`: the output must be a copy
    let module = ModuleWeight {
        weight: &w,
        d_out: 3,
        layout: UnitLayout::heads(2, 4),
    };
    let v = local_prune(&CTX, &h, &module, 0, &LocalPruneOptions::attn_default()).unwrap();
    assert_eq!(v.kept, vec![0, 1]);
    let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&v.weight), bits(&w));
    assert_eq!(v.metrics.rel_error, 0.0);
}

#[test]
fn full_level_yields_an_empty_weight() {
    let (h, w) = problem(8, 3, 30, 5);
    let module = ModuleWeight {
        weight: &w,
        d_out: 3,
        layout: UnitLayout::heads(2, 4),
    };
    let v = local_prune(&CTX, &h, &module, 2, &LocalPruneOptions::attn_default()).unwrap();
    assert!(v.kept.is_empty());
    assert!(v.weight.is_empty());
    assert_eq!(
        v.padded_weight(UnitLayout::heads(2, 4)).unwrap(),
        vec![0.0; 24]
    );
    assert_eq!(v.metrics.rel_error, 1.0);
}

/// X with independent channels so the first-order cross terms are small.
fn independent_problem(layout: UnitLayout, d_out: usize, seed: u64) -> (Hessian, Vec<f32>) {
    let d_in = layout.channels_total();
    let mut s = Stream::new(seed, "independent", &[]);
    let mut h = Hessian::zeros(d_in);
    h.accumulate_rows(&normals(&mut s, 400 * d_in)).unwrap();
    (h, normals(&mut s, d_out * d_in))
}

#[test]
fn saliency_removes_the_head_whose_output_columns_are_zero() {
    let layout = UnitLayout::heads(5, 4);
    let (h, mut w) = independent_problem(layout, 6, 6);
    for row in w.chunks_exact_mut(20) {
        row[8..12].iter_mut().for_each(|x| *x = 0.0);
    }
    // Free removal takes it without scoring …
    let module = ModuleWeight {
        weight: &w,
        d_out: 6,
        layout,
    };
    let v = local_prune(&CTX, &h, &module, 1, &LocalPruneOptions::attn_default()).unwrap();
    assert_eq!(v.kept, vec![0, 1, 3, 4]);
    assert_eq!(v.metrics.free_units, 1);
    // … and the group-OBS score also ranks it lowest.
    let (hl, _) = h.damped(0.01);
    let state = ObsState::new(&hl, Mat::from_f32(6, 20, &w).transpose()).unwrap();
    let scores = state
        .unit_scores(&layout, &[0, 1, 2, 3, 4], FirstOrder::Signed, true)
        .unwrap();
    assert_eq!(scores[2], 0.0);
    assert!(
        scores.iter().enumerate().all(|(u, &s)| u == 2 || s > 0.0),
        "{scores:?}"
    );
}

#[test]
fn saliency_picks_a_nearly_dead_head_by_score() {
    let layout = UnitLayout::heads(5, 4);
    let (h, mut w) = independent_problem(layout, 6, 7);
    for row in w.chunks_exact_mut(20) {
        row[12..16].iter_mut().for_each(|x| *x *= 1e-4);
    }
    let module = ModuleWeight {
        weight: &w,
        d_out: 6,
        layout,
    };
    for first_order in [FirstOrder::Signed, FirstOrder::Abs, FirstOrder::Off] {
        for second_order in [true, false] {
            if first_order == FirstOrder::Off && !second_order {
                continue;
            }
            let opts = LocalPruneOptions {
                first_order,
                second_order,
                ..LocalPruneOptions::attn_default()
            };
            let v = local_prune(&CTX, &h, &module, 1, &opts).unwrap();
            assert_eq!(v.kept, vec![0, 1, 2, 4], "{first_order:?} {second_order}");
            assert_eq!((v.metrics.free_units, v.metrics.passes), (0, 1));
        }
    }
}

#[test]
fn dead_channels_are_removed_for_free() {
    let layout = UnitLayout::channels(6);
    let mut s = Stream::new(8, "dead", &[]);
    let mut x = normals(&mut s, 50 * 6);
    x.chunks_exact_mut(6).for_each(|r| r[4] = 0.0);
    let mut h = Hessian::zeros(6);
    h.accumulate_rows(&x).unwrap();
    let w = normals(&mut s, 3 * 6);
    let module = ModuleWeight {
        weight: &w,
        d_out: 3,
        layout,
    };
    let v = local_prune(&CTX, &h, &module, 2, &LocalPruneOptions::ffn_default()).unwrap();
    assert_eq!(v.metrics.free_units, 1);
    assert_eq!(v.metrics.passes, 1);
    assert!(!v.kept.contains(&4));
}

#[test]
fn schedule_splits_into_near_equal_passes_larger_first() {
    assert_eq!(
        pass_sizes(RemovalSchedule::Passes(16), 768).unwrap(),
        vec![48; 16]
    );
    assert_eq!(
        pass_sizes(RemovalSchedule::Passes(4), 10).unwrap(),
        vec![3, 3, 2, 2]
    );
    assert_eq!(
        pass_sizes(RemovalSchedule::Passes(5), 3).unwrap(),
        vec![1, 1, 1]
    );
    assert_eq!(
        pass_sizes(RemovalSchedule::Passes(3), 0).unwrap(),
        Vec::<usize>::new()
    );
    assert_eq!(
        pass_sizes(RemovalSchedule::UnitsPerPass(1), 3).unwrap(),
        vec![1, 1, 1]
    );
    assert_eq!(
        pass_sizes(RemovalSchedule::UnitsPerPass(4), 10).unwrap(),
        vec![4, 4, 2]
    );
    assert!(pass_sizes(RemovalSchedule::Passes(0), 3).is_err());
    assert!(pass_sizes(RemovalSchedule::UnitsPerPass(0), 3).is_err());
}

#[test]
fn indefinite_hessian_retries_with_more_damping() {
    // diag(1, 1, 1, −0.05): λ = 0.01·mean fails, 0.1·mean succeeds.
    let mut d = vec![0.0f32; 16];
    for (i, v) in [1.0, 1.0, 1.0, -0.05].into_iter().enumerate() {
        d[i * 4 + i] = v;
    }
    let h = Hessian::from_parts(4, d, 1).unwrap();
    let w = vec![1.0f32, 2.0, 3.0, 4.0];
    let module = ModuleWeight {
        weight: &w,
        d_out: 1,
        layout: UnitLayout::channels(4),
    };
    let v = local_prune(&CTX, &h, &module, 1, &LocalPruneOptions::ffn_default()).unwrap();
    assert_eq!(v.metrics.retries, 1);
    assert!((v.metrics.damping - 0.1).abs() < 1e-12);
}

#[test]
fn hopeless_hessian_fails_naming_layer_module_and_level() {
    let mut data = vec![0.0f32; 16];
    data[5] = f32::NAN;
    let h = Hessian::from_parts(4, data, 1).unwrap();
    let w = vec![1.0f32; 4];
    let module = ModuleWeight {
        weight: &w,
        d_out: 1,
        layout: UnitLayout::channels(4),
    };
    let err = local_prune(&CTX, &h, &module, 2, &LocalPruneOptions::ffn_default()).unwrap_err();
    match err {
        Error::LocalPruneSingular {
            layer: 3,
            module: ModuleKind::Ffn,
            level: 2,
            damping,
        } => {
            assert!((damping - 10.0).abs() < 1e-9, "{damping}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn bad_inputs_are_rejected_with_clear_errors() {
    let (h, w) = problem(8, 3, 30, 10);
    let layout = UnitLayout::channels(8);
    let ok = ModuleWeight {
        weight: &w,
        d_out: 3,
        layout,
    };
    let opts = LocalPruneOptions::ffn_default();
    assert!(matches!(
        local_prune(&CTX, &h, &ok, 9, &opts),
        Err(Error::PruneLevel {
            level: 9,
            units: 8,
            ..
        })
    ));
    let short = ModuleWeight {
        weight: &w[..20],
        ..ok
    };
    assert!(matches!(
        local_prune(&CTX, &h, &short, 1, &opts),
        Err(Error::PruneShape { .. })
    ));
    let wrong_h = Hessian::zeros(7);
    assert!(matches!(
        local_prune(&CTX, &wrong_h, &ok, 1, &opts),
        Err(Error::PruneShape { .. })
    ));
    let bad_sched = LocalPruneOptions {
        schedule: RemovalSchedule::Passes(0),
        ..opts
    };
    assert!(matches!(
        local_prune(&CTX, &h, &ok, 1, &bad_sched),
        Err(Error::PruneOption { .. })
    ));
    let bad_damp = LocalPruneOptions {
        damping: f64::NAN,
        ..opts
    };
    assert!(matches!(
        local_prune(&CTX, &h, &ok, 1, &bad_damp),
        Err(Error::PruneOption { .. })
    ));
}

#[test]
fn pruning_is_deterministic() {
    let (h, w) = problem(32, 8, 100, 11);
    let module = ModuleWeight {
        weight: &w,
        d_out: 8,
        layout: UnitLayout::channels(32),
    };
    let a = local_prune(&CTX, &h, &module, 12, &LocalPruneOptions::ffn_default()).unwrap();
    let b = local_prune(&CTX, &h, &module, 12, &LocalPruneOptions::ffn_default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn module_pruner_levels_equal_separate_local_prunes_bit_for_bit() {
    fn assert_sync<T: Sync>(_: &T) {}
    let (h, w) = problem(24, 5, 80, 12);
    let module = ModuleWeight {
        weight: &w,
        d_out: 5,
        layout: UnitLayout::heads(6, 4),
    };
    let opts = LocalPruneOptions::attn_default();
    let pruner = ModulePruner::new(CTX, &h, module, opts).unwrap();
    assert_sync(&pruner);
    let shared: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..=6)
            .map(|l| {
                s.spawn({
                    let pruner = &pruner;
                    move || pruner.prune(l).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (level, v) in shared.iter().enumerate() {
        assert_eq!(
            v,
            &local_prune(&CTX, &h, &module, level, &opts).unwrap(),
            "level {level}"
        );
        assert_eq!(v.kept.len(), 6 - level);
    }
    assert!(
        shared
            .windows(2)
            .all(|p| p[0].metrics.rel_error <= p[1].metrics.rel_error + 1e-12)
    );
}
