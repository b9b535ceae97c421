//! Selection (ALGORITHM.md §8): (1+λ) elitist with successive halving. Each stage draws a fresh
//! minibatch of exactly N pool tokens (whole pieces, uniformly without replacement, the last one
//! cut short), scores every surviving candidate on it and keeps the best; the parent joins only
//! the last stage and is re-scored there. The best of the last stage becomes the next parent;
//! ties go to the parent, then to the lower offspring index; NaN counts as +∞.
//!
//! Scoring is a callback ([`Scorer`]) so the model-based evaluator plugs in from outside.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::rng::Stream;
use crate::search::config::Configuration;
use crate::{Error, Result};

/// The RNG purpose of the minibatch streams.
pub const MINIBATCH_PURPOSE: &str = "minibatch";

/// One selection stage: score on `tokens` pool tokens, keep the best `keep` for the next stage.
/// The last stage's `keep` is not used: its single best (parent included) wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub tokens: usize,
    pub keep: usize,
}

/// The paper's stages: `[[2048,16],[16384,4],[131072,1]]`.
pub fn paper_stages() -> Vec<Stage> {
    [(2048, 16), (16384, 4), (131072, 1)]
        .into_iter()
        .map(|(tokens, keep)| Stage { tokens, keep })
        .collect()
}

/// A prefix of one pool piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceSlice {
    /// Index of the piece in the calibration pool.
    pub piece: usize,
    /// Tokens taken from its start; the whole piece except possibly for the last slice.
    pub len: usize,
}

/// The pool tokens one stage scores on: distinct pieces, Σ len = the stage's token count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minibatch {
    pub slices: Vec<PieceSlice>,
}

impl Minibatch {
    pub fn tokens(&self) -> usize {
        self.slices.iter().map(|s| s.len).sum()
    }
}

/// The stream for the minibatch of (round, generation, stage).
pub fn minibatch_stream(seed: u64, round: u64, generation: u64, stage: u64) -> Stream {
    Stream::new(seed, MINIBATCH_PURPOSE, &[round, generation, stage])
}

/// Draws pieces of the pool (`piece_lens[i]` tokens each) uniformly without replacement until
/// `tokens` are reached, cutting the last one so the total is exactly `tokens`.
pub fn draw_minibatch(piece_lens: &[usize], tokens: usize, rng: &mut Stream) -> Result<Minibatch> {
    let total: usize = piece_lens.iter().sum();
    if tokens == 0 || tokens > total {
        return Err(Error::SearchMinibatch {
            reason: format!(
                "a stage asks for {tokens} tokens; the pool holds {total} in {} pieces \
                 (lower the stage's tokens or enlarge the pool)",
                piece_lens.len()
            ),
        });
    }
    // Lazy Fisher–Yates: position i receives a uniform pick among the pieces not yet taken.
    let mut order: Vec<usize> = (0..piece_lens.len()).collect();
    let mut slices = Vec::new();
    let mut left = tokens;
    let mut i = 0;
    while left > 0 {
        let j = i + rng.below(order.len() - i);
        order.swap(i, j);
        let piece = order[i];
        i += 1;
        let len = piece_lens[piece].min(left);
        if len > 0 {
            slices.push(PieceSlice { piece, len });
            left -= len;
        }
    }
    Ok(Minibatch { slices })
}

/// What one scorer call sees.
#[derive(Clone, Copy, Debug)]
pub struct ScoreRequest<'a> {
    pub round: u64,
    pub generation: u64,
    pub stage: usize,
    /// The current parent (for incremental evaluation from its cached hidden states).
    pub parent: &'a Configuration,
    /// The configurations to score. In the last stage `candidates[0]` is the parent itself.
    pub candidates: &'a [Configuration],
    /// Whether `candidates[0]` is the parent.
    pub parent_included: bool,
    pub minibatch: &'a Minibatch,
}

/// Scores candidates on a minibatch: one fitness per candidate, in order; lower is better.
pub trait Scorer {
    fn score(&mut self, request: &ScoreRequest<'_>) -> Result<Vec<f64>>;
}

impl<F> Scorer for F
where
    F: FnMut(&ScoreRequest<'_>) -> Result<Vec<f64>>,
{
    fn score(&mut self, request: &ScoreRequest<'_>) -> Result<Vec<f64>> {
        self(request)
    }
}

/// Who won a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Winner {
    Parent,
    /// Index into the generation's offspring.
    Offspring(usize),
}

/// The outcome of one generation's selection.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub winner: Winner,
    /// The winner's fitness on the last stage's minibatch (NaN mapped to +∞).
    pub fitness: f64,
    /// The parent's re-scored fitness on the same minibatch.
    pub parent_fitness: f64,
    /// Offspring indices scored in each stage (the parent not included).
    pub survivors: Vec<Vec<usize>>,
}

/// NaN counts as +∞.
pub fn sanitize(f: f64) -> f64 {
    if f.is_nan() { f64::INFINITY } else { f }
}

/// Checks a stage list: non-empty, every stage with tokens ≥ 1 and keep ≥ 1.
pub fn validate_stages(stages: &[Stage]) -> Result<()> {
    if stages.is_empty() {
        return Err(Error::SearchParams {
            field: "stages",
            reason: "at least one (tokens, keep) stage is needed".into(),
        });
    }
    if let Some(s) = stages.iter().find(|s| s.tokens == 0 || s.keep == 0) {
        return Err(Error::SearchParams {
            field: "stages",
            reason: format!(
                "stage ({}, {}) needs tokens ≥ 1 and keep ≥ 1",
                s.tokens, s.keep
            ),
        });
    }
    Ok(())
}

/// The context of one generation's selection.
#[derive(Clone, Copy, Debug)]
pub struct SelectionContext<'a> {
    pub stages: &'a [Stage],
    /// Token count of every calibration pool piece, in pool order.
    pub piece_lens: &'a [usize],
    pub seed: u64,
    pub round: u64,
    pub generation: u64,
}

/// Runs successive halving over `offspring`, with `parent` in the last stage.
pub fn select(
    ctx: &SelectionContext<'_>,
    parent: &Configuration,
    offspring: &[Configuration],
    scorer: &mut dyn Scorer,
) -> Result<Selection> {
    validate_stages(ctx.stages)?;
    let last = ctx.stages.len() - 1;
    let mut alive: Vec<usize> = (0..offspring.len()).collect();
    let mut survivors = Vec::with_capacity(ctx.stages.len());
    for (s, stage) in ctx.stages[..last].iter().enumerate() {
        survivors.push(alive.clone());
        let candidates: Vec<Configuration> = alive.iter().map(|&i| offspring[i].clone()).collect();
        let scores = score_stage(ctx, s, parent, &candidates, false, scorer)?;
        // Keep the best `keep`: by fitness, ties to the lower offspring index.
        let mut ranked: Vec<(f64, usize)> = scores.into_iter().zip(alive.iter().copied()).collect();
        ranked.sort_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        });
        ranked.truncate(stage.keep);
        alive = ranked.into_iter().map(|(_, i)| i).collect();
        alive.sort_unstable();
    }
    survivors.push(alive.clone());
    let mut candidates = Vec::with_capacity(alive.len() + 1);
    candidates.push(parent.clone());
    candidates.extend(alive.iter().map(|&i| offspring[i].clone()));
    let scores = score_stage(ctx, last, parent, &candidates, true, scorer)?;
    Ok(pick_winner(&alive, &scores, survivors))
}

/// Draws stage `s`'s minibatch and scores `candidates` on it (NaN mapped to +∞).
fn score_stage(
    ctx: &SelectionContext<'_>,
    s: usize,
    parent: &Configuration,
    candidates: &[Configuration],
    parent_included: bool,
    scorer: &mut dyn Scorer,
) -> Result<Vec<f64>> {
    let mut rng = minibatch_stream(ctx.seed, ctx.round, ctx.generation, s as u64);
    let minibatch = draw_minibatch(ctx.piece_lens, ctx.stages[s].tokens, &mut rng)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let request = ScoreRequest {
        round: ctx.round,
        generation: ctx.generation,
        stage: s,
        parent,
        candidates,
        parent_included,
        minibatch: &minibatch,
    };
    let scores = scorer.score(&request)?;
    if scores.len() != candidates.len() {
        return Err(Error::SearchScorer {
            stage: s,
            expected: candidates.len(),
            got: scores.len(),
        });
    }
    Ok(scores.into_iter().map(sanitize).collect())
}

/// The last stage's best: `scores[0]` is the parent, `scores[1..]` belong to `alive`.
fn pick_winner(alive: &[usize], scores: &[f64], survivors: Vec<Vec<usize>>) -> Selection {
    let parent_fitness = scores[0];
    let mut winner = Winner::Parent;
    let mut best = parent_fitness;
    // `alive` is ascending, so a strict improvement is needed to beat an earlier candidate:
    // ties go to the parent, then to the lower index.
    for (&i, &f) in alive.iter().zip(&scores[1..]) {
        if f < best {
            best = f;
            winner = Winner::Offspring(i);
        }
    }
    Selection {
        winner,
        fitness: best,
        parent_fitness,
        survivors,
    }
}
