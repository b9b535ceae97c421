//! The search loop (ALGORITHM.md §8): a fixed seed gives a deterministic search, a killed search
//! resumed from its last progress record ends with the identical result, the budget holds in
//! every generation, and the search finds a known optimum of a synthetic fitness.

use tyr::search::{
    Configuration, Module, ModuleGrid, ModuleKind, MutationParams, ScoreRequest, Search,
    SearchOutcome, SearchParams, SearchProgress, SearchSpace, Stage, Steps,
};
use tyr::{Error, Result};

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

fn space() -> SearchSpace {
    let mut grids = Vec::new();
    for layer in 0..5 {
        grids.push(grid(ModuleKind::Attn, layer, 9, 4 + (layer as u32 % 2), 1));
        grids.push(grid(ModuleKind::Ffn, layer, 64, 32, 8));
    }
    SearchSpace::new(grids, Steps { attn: 1, ffn: 8 }).unwrap()
}

/// A budget-feasible optimum: attention levels (2, 7, 3, 6, 4) = 22 = Σ centres, FFN
/// (16, 48, 24, 40, 32) = 160.
fn target() -> Vec<u32> {
    vec![2, 16, 7, 48, 3, 24, 6, 40, 4, 32]
}

/// Squared distance to the target, plus a small deterministic dependence on the minibatch so
/// the stages matter.
fn synthetic(c: &Configuration, r: &ScoreRequest<'_>) -> f64 {
    let d: f64 = c
        .levels
        .iter()
        .zip(target())
        .map(|(&l, t)| (f64::from(l) - f64::from(t)).powi(2))
        .sum();
    let noise = r
        .minibatch
        .slices
        .iter()
        .map(|s| s.piece * 31 + s.len)
        .sum::<usize>()
        % 7;
    d + 0.01 * noise as f64
}

fn params(seed: u64, generations: u64) -> SearchParams {
    SearchParams {
        generations,
        mutation: MutationParams {
            max_swaps: 4,
            offspring: 12,
        },
        stages: vec![
            Stage {
                tokens: 300,
                keep: 4,
            },
            Stage {
                tokens: 900,
                keep: 1,
            },
        ],
        seed,
        round: 1,
    }
}

const PIECES: [usize; 12] = [128, 128, 128, 128, 128, 128, 128, 128, 100, 100, 50, 17];

fn run(
    p: &SearchParams,
    resume: Option<SearchProgress>,
    on_progress: &mut dyn FnMut(&SearchProgress) -> Result<()>,
    log: &mut Vec<Vec<Configuration>>,
) -> Result<SearchOutcome> {
    let s = space();
    let search = Search {
        space: &s,
        params: p,
        piece_lens: &PIECES,
    };
    let mut scorer = |r: &ScoreRequest<'_>| -> Result<Vec<f64>> {
        log.push(r.candidates.to_vec());
        Ok(r.candidates.iter().map(|c| synthetic(c, r)).collect())
    };
    search.run(resume, &mut scorer, on_progress)
}

#[test]
fn search_finds_the_optimum_of_a_synthetic_fitness_within_budget() {
    let s = space();
    let mut budgets_held = true;
    let out = run(
        &params(1, 40),
        None,
        &mut |p| {
            budgets_held &= s.check(&p.parent).is_ok();
            Ok(())
        },
        &mut Vec::new(),
    )
    .unwrap();
    assert!(budgets_held);
    assert_eq!(out.choice.levels, target());
    let best = out.best_fitness();
    assert_eq!(best.len(), 40);
    assert!(best[best.len() - 1] < 0.1);
    // Elitist: the winner is never worse than the re-scored parent on the same batch.
    assert!(out.history.iter().all(|h| h.fitness <= h.parent_fitness));
}

#[test]
fn a_fixed_seed_search_is_deterministic() {
    let (mut log_a, mut log_b, mut log_c) = (Vec::new(), Vec::new(), Vec::new());
    let a = run(&params(7, 8), None, &mut |_| Ok(()), &mut log_a).unwrap();
    let b = run(&params(7, 8), None, &mut |_| Ok(()), &mut log_b).unwrap();
    assert_eq!(a, b);
    assert_eq!(log_a, log_b);
    run(&params(8, 8), None, &mut |_| Ok(()), &mut log_c).unwrap();
    assert_ne!(log_a, log_c, "another seed draws other offspring");
}

/// Runs until `kill_after` generations, "kills" the search there (the progress callback fails,
/// as a crash would leave the last saved record), then resumes from the saved record after a
/// trip through `codec`.
fn killed_and_resumed(kill_after: u64, codec: fn(&SearchProgress) -> SearchProgress) {
    let p = params(3, 10);
    let uninterrupted = run(&p, None, &mut |_| Ok(()), &mut Vec::new()).unwrap();
    let mut saved: Option<SearchProgress> = None;
    let killed = run(
        &p,
        None,
        &mut |prog| {
            if prog.generation > kill_after {
                return Err(Error::msg("killed"));
            }
            saved = Some(codec(prog));
            Ok(())
        },
        &mut Vec::new(),
    );
    assert!(killed.is_err());
    let saved = saved.unwrap();
    assert_eq!(saved.generation, kill_after);
    let mut resumed_log = Vec::new();
    let resumed = run(&p, Some(saved), &mut |_| Ok(()), &mut resumed_log).unwrap();
    assert_eq!(resumed, uninterrupted);
    // Only the remaining generations were scored (two stages each).
    assert_eq!(resumed_log.len() as u64, 2 * (10 - kill_after));
}

#[test]
fn killed_run_resumes_to_identical_result() {
    for k in [1, 4, 9] {
        killed_and_resumed(k, |p| {
            serde_json::from_str(&serde_json::to_string(p).unwrap()).unwrap()
        });
    }
    killed_and_resumed(5, |p| {
        bincode::deserialize(&bincode::serialize(p).unwrap()).unwrap()
    });
}

#[test]
fn a_finished_search_resumes_to_the_same_result_without_scoring() {
    let p = params(3, 3);
    let mut last = None;
    let out = run(
        &p,
        None,
        &mut |prog| {
            last = Some(prog.clone());
            Ok(())
        },
        &mut Vec::new(),
    )
    .unwrap();
    let mut log = Vec::new();
    let again = run(&p, last, &mut |_| Ok(()), &mut log).unwrap();
    assert_eq!(again, out);
    assert!(log.is_empty());
}

#[test]
fn a_progress_record_of_another_search_is_rejected() {
    let mut last = None;
    run(
        &params(3, 3),
        None,
        &mut |prog| {
            last = Some(prog.clone());
            Ok(())
        },
        &mut Vec::new(),
    )
    .unwrap();
    let err = run(&params(4, 3), last, &mut |_| Ok(()), &mut Vec::new());
    assert!(matches!(err, Err(Error::SearchResume { .. })));
}

#[test]
fn infinite_fitness_survives_a_json_round_trip() {
    let s = space();
    let p = params(1, 2);
    let search = Search {
        space: &s,
        params: &p,
        piece_lens: &PIECES,
    };
    let mut last = None;
    let mut scorer =
        |r: &ScoreRequest<'_>| -> Result<Vec<f64>> { Ok(vec![f64::NAN; r.candidates.len()]) };
    search
        .run(None, &mut scorer, &mut |prog| {
            last = Some(prog.clone());
            Ok(())
        })
        .unwrap();
    let last = last.unwrap();
    assert_eq!(last.parent_fitness, Some(f64::INFINITY));
    let json = serde_json::to_string(&last).unwrap();
    let back: SearchProgress = serde_json::from_str(&json).unwrap();
    assert_eq!(back, last);
    assert_eq!(
        back.parent,
        s.centres(),
        "all-NaN offspring never replace the parent"
    );
}

/// The plumbing the model-based scorer will use: minibatch slices → pool rows via
/// `piece_offsets`, student logits per piece, `KlMean` over the teacher's top-k. The stand-in
/// "student" is the teacher's logits plus noise scaled by the squared distance to the target,
/// so the KL is 0 exactly at the target and grows with the distance.
#[test]
fn search_on_top_k_kl_reaches_zero_divergence_at_the_target() {
    use candle_core::{Device, Tensor};
    use tyr::rng::Stream;
    use tyr::search::KlMean;
    use tyr::search::TeacherTopK;
    use tyr::search::fitness::piece_offsets;

    let pieces = [20usize, 20, 13, 7, 20, 9];
    let (total, vocab) = (pieces.iter().sum::<usize>(), 32);
    let mut rng = Stream::new(4, "test-logits", &[]);
    let mut draw = |n| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let teacher_logits =
        Tensor::from_vec(draw(total * vocab), (total, vocab), &Device::Cpu).unwrap();
    let noise = Tensor::from_vec(draw(total * vocab), (total, vocab), &Device::Cpu).unwrap();
    let teacher = TeacherTopK::from_logits(&teacher_logits, 8).unwrap();
    let offsets = piece_offsets(&pieces);

    let s = space();
    let p = SearchParams {
        generations: 30,
        mutation: MutationParams {
            max_swaps: 4,
            offspring: 10,
        },
        stages: vec![
            Stage {
                tokens: 30,
                keep: 3,
            },
            Stage {
                tokens: 60,
                keep: 1,
            },
        ],
        seed: 5,
        round: 2,
    };
    let search = Search {
        space: &s,
        params: &p,
        piece_lens: &pieces,
    };
    let mut scorer = |r: &ScoreRequest<'_>| -> Result<Vec<f64>> {
        r.candidates
            .iter()
            .map(|c| {
                let d: f64 = c
                    .levels
                    .iter()
                    .zip(target())
                    .map(|(&l, t)| (f64::from(l) - f64::from(t)).powi(2))
                    .sum();
                let mut mean = KlMean::default();
                for slice in &r.minibatch.slices {
                    let start = offsets[slice.piece];
                    let student = (teacher_logits.narrow(0, start, slice.len)?
                        + (noise.narrow(0, start, slice.len)? * (d / 100.0))?)?;
                    mean.add_top_k(&student, &teacher, start)?;
                }
                mean.mean()
            })
            .collect()
    };
    let out = search.run(None, &mut scorer, &mut |_| Ok(())).unwrap();
    assert_eq!(out.choice.levels, target());
    assert!(out.fitness.unwrap().abs() < 1e-6);
    let best = out.best_fitness();
    assert!(best[0] > 0.0);
}
