//! Successive-halving selection (ALGORITHM.md §8): exact-size minibatches of distinct pieces,
//! one minibatch per stage shared by its candidates, the parent only in the last stage, the best
//! by fitness wins with ties to the parent then the lower index, and NaN counts as +∞.

use tyr::Result;
use tyr::rng::Stream;
use tyr::search::select::{SelectionContext, draw_minibatch, minibatch_stream};
use tyr::search::{Configuration, Minibatch, ScoreRequest, Stage, Winner, select};

fn cfg(levels: &[u32]) -> Configuration {
    Configuration {
        levels: levels.to_vec(),
    }
}

/// Offspring i has the single level i + 1; the parent has level 0.
fn offspring(n: u32) -> Vec<Configuration> {
    (1..=n).map(|i| cfg(&[i])).collect()
}

fn stages(list: &[(usize, usize)]) -> Vec<Stage> {
    list.iter()
        .map(|&(tokens, keep)| Stage { tokens, keep })
        .collect()
}

const PIECES: [usize; 8] = [64, 64, 64, 64, 64, 64, 64, 30];

fn context<'a>(stages: &'a [Stage]) -> SelectionContext<'a> {
    SelectionContext {
        stages,
        piece_lens: &PIECES,
        seed: 3,
        round: 1,
        generation: 4,
    }
}

#[test]
fn minibatch_has_exactly_the_asked_tokens_and_no_piece_twice() {
    let lens: Vec<usize> = (0..40).map(|i| 10 + (i * 7) % 23).collect();
    let total: usize = lens.iter().sum();
    for (i, tokens) in [1, 9, 10, 11, 100, 257, total - 1, total]
        .into_iter()
        .enumerate()
    {
        let mut rng = Stream::new(1, "test", &[i as u64]);
        let mb = draw_minibatch(&lens, tokens, &mut rng).unwrap();
        assert_eq!(mb.tokens(), tokens);
        let mut pieces: Vec<usize> = mb.slices.iter().map(|s| s.piece).collect();
        pieces.sort_unstable();
        pieces.dedup();
        assert_eq!(pieces.len(), mb.slices.len(), "a piece was reused");
        // Only the last slice may be cut short.
        let (last, whole) = mb.slices.split_last().unwrap();
        assert!(whole.iter().all(|s| s.len == lens[s.piece]));
        assert!(last.len >= 1 && last.len <= lens[last.piece]);
    }
}

#[test]
fn minibatch_larger_than_the_pool_is_an_error() {
    let mut rng = Stream::new(1, "test", &[]);
    assert!(draw_minibatch(&[4, 4], 9, &mut rng).is_err());
    assert!(draw_minibatch(&[4, 4], 0, &mut rng).is_err());
}

#[test]
fn minibatch_pieces_are_drawn_uniformly() {
    let lens = [5usize; 10];
    let mut first = [0usize; 10];
    for g in 0..20_000 {
        let mb = draw_minibatch(&lens, 5, &mut minibatch_stream(2, 1, g, 0)).unwrap();
        first[mb.slices[0].piece] += 1;
    }
    assert!(
        first.iter().all(|&c| (1700..2300).contains(&c)),
        "{first:?}"
    );
}

/// Records every request; fitness is looked up from `f` (by the configuration's level).
struct Recorder<F> {
    f: F,
    calls: Vec<(usize, Vec<Configuration>, bool, Minibatch)>,
}

impl<F: FnMut(&Configuration) -> f64> Recorder<F> {
    fn new(f: F) -> Self {
        Recorder {
            f,
            calls: Vec::new(),
        }
    }

    fn score(&mut self, r: &ScoreRequest<'_>) -> Result<Vec<f64>> {
        self.calls.push((
            r.stage,
            r.candidates.to_vec(),
            r.parent_included,
            r.minibatch.clone(),
        ));
        Ok(r.candidates.iter().map(|c| (self.f)(c)).collect())
    }
}

#[test]
fn selection_returns_the_best_by_fitness_and_halves_as_asked() {
    let st = stages(&[(100, 4), (200, 2), (300, 1)]);
    // Fitness |level − 6|: offspring index 5 (level 6) is best.
    let mut rec = Recorder::new(|c: &Configuration| (f64::from(c.levels[0]) - 6.0).abs());
    let parent = cfg(&[0]);
    let sel = select(
        &context(&st),
        &parent,
        &offspring(10),
        &mut |r: &ScoreRequest<'_>| rec.score(r),
    )
    .unwrap();
    assert_eq!(sel.winner, Winner::Offspring(5));
    assert_eq!(sel.fitness, 0.0);
    assert_eq!(sel.parent_fitness, 6.0);
    // Stage sizes 10, 4, 2 (+ parent in the last), one call per stage, parent only at the end.
    let sizes: Vec<usize> = rec.calls.iter().map(|c| c.1.len()).collect();
    assert_eq!(sizes, vec![10, 4, 3]);
    let with_parent: Vec<bool> = rec.calls.iter().map(|c| c.2).collect();
    assert_eq!(with_parent, vec![false, false, true]);
    assert_eq!(rec.calls[2].1[0], parent);
    assert!(rec.calls[..2].iter().all(|c| !c.1.contains(&parent)));
    let tokens: Vec<usize> = rec.calls.iter().map(|c| c.3.tokens()).collect();
    assert_eq!(tokens, vec![100, 200, 300]);
    // Survivors of stage 1 are the 4 best of stage 0: levels 4..=7 (indices 3..=6; |5−6| ties
    // |7−6|, both kept).
    assert_eq!(sel.survivors[1], vec![3, 4, 5, 6]);
    assert_eq!(sel.survivors[2], vec![4, 5]);
}

#[test]
fn stages_draw_fresh_minibatches_and_replay_them_for_the_same_generation() {
    let st = stages(&[(100, 4), (100, 2), (100, 1)]);
    let run = || {
        let mut rec = Recorder::new(|c: &Configuration| f64::from(c.levels[0]));
        select(
            &context(&st),
            &cfg(&[0]),
            &offspring(6),
            &mut |r: &ScoreRequest<'_>| rec.score(r),
        )
        .unwrap();
        rec.calls.into_iter().map(|c| c.3).collect::<Vec<_>>()
    };
    let a = run();
    assert_ne!(a[0], a[1]);
    assert_ne!(a[1], a[2]);
    assert_eq!(a, run());
}

#[test]
fn ties_go_to_the_parent() {
    let st = stages(&[(50, 2), (50, 1)]);
    let sel = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(5),
        &mut |r: &ScoreRequest<'_>| Ok(vec![1.5; r.candidates.len()]),
    )
    .unwrap();
    assert_eq!(sel.winner, Winner::Parent);
}

#[test]
fn ties_among_offspring_go_to_the_lower_index() {
    let st = stages(&[(50, 3), (50, 1)]);
    // Stage 0 keeps indices 1, 2, 4 (fitness 0); in the last stage they tie below the parent.
    let f = |c: &Configuration| match c.levels[0] {
        0 => 9.0,
        2 | 3 | 5 => 0.0,
        _ => 5.0,
    };
    let sel = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(5),
        &mut |r: &ScoreRequest<'_>| Ok(r.candidates.iter().map(f).collect()),
    )
    .unwrap();
    assert_eq!(sel.survivors[1], vec![1, 2, 4]);
    assert_eq!(sel.winner, Winner::Offspring(1));
}

#[test]
fn nan_counts_as_infinity() {
    let st = stages(&[(50, 2), (50, 1)]);
    // The parent is NaN, offspring huge but finite: an offspring wins.
    let sel = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(3),
        &mut |r: &ScoreRequest<'_>| {
            Ok(r.candidates
                .iter()
                .map(|c| if c.levels[0] == 0 { f64::NAN } else { 1e300 })
                .collect())
        },
    )
    .unwrap();
    assert_eq!(sel.winner, Winner::Offspring(0));
    assert_eq!(sel.parent_fitness, f64::INFINITY);
    // Every offspring NaN, parent finite: the parent stays; NaN never survives over a number.
    let sel = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(3),
        &mut |r: &ScoreRequest<'_>| {
            Ok(r.candidates
                .iter()
                .map(|c| if c.levels[0] == 0 { 1e300 } else { f64::NAN })
                .collect())
        },
    )
    .unwrap();
    assert_eq!(sel.winner, Winner::Parent);
    let sel = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(3),
        &mut |r: &ScoreRequest<'_>| {
            Ok(r.candidates
                .iter()
                .map(|c| if c.levels[0] == 2 { f64::NAN } else { 1.0 })
                .collect())
        },
    )
    .unwrap();
    assert_eq!(sel.survivors[1], vec![0, 2]);
}

#[test]
fn without_offspring_the_parent_is_scored_and_kept() {
    let st = stages(&[(50, 2), (50, 1)]);
    let mut calls = 0;
    let sel = select(&context(&st), &cfg(&[0]), &[], &mut |r: &ScoreRequest<
        '_,
    >| {
        calls += 1;
        Ok(vec![2.0; r.candidates.len()])
    })
    .unwrap();
    assert_eq!((sel.winner, sel.fitness, calls), (Winner::Parent, 2.0, 1));
}

#[test]
fn a_scorer_returning_the_wrong_count_is_an_error() {
    let st = stages(&[(50, 2), (50, 1)]);
    let err = select(
        &context(&st),
        &cfg(&[0]),
        &offspring(3),
        &mut |_: &ScoreRequest<'_>| Ok(vec![1.0]),
    );
    assert!(err.is_err());
}
