//! The search loop of one round (ALGORITHM.md §8): start at all centres (under a parameter
//! budget, moved within it, §8.1), then for each
//! generation mutate (λ distinct offspring), select by successive halving, and let the winner be
//! the next parent. After every generation a [`SearchProgress`] record goes to a callback; a search
//! resumed from that record replays the same draws (every stream is keyed by round and
//! generation) and so ends with the identical choice as an uninterrupted run, given a
//! deterministic scorer.

use serde::{Deserialize, Serialize};

use crate::search::config::{Configuration, SearchSpace};
use crate::search::mutate::{MutationParams, generate_offspring};
use crate::search::select::{
    Scorer, SelectionContext, Stage, Winner, paper_stages, select, validate_stages,
};
use crate::{Error, Result};

/// Everything that steers one round's search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchParams {
    /// Generations in this round; no early stopping. Paper: 50.
    pub generations: u64,
    pub mutation: MutationParams,
    /// Successive-halving stages. Paper: `[[2048,16],[16384,4],[131072,1]]`.
    pub stages: Vec<Stage>,
    pub seed: u64,
    /// The round index t (part of every stream key).
    pub round: u64,
}

impl SearchParams {
    /// The paper's settings (ALGORITHM.md §8): 50 generations, λ = 128, M = 4, stages
    /// `[[2048,16],[16384,4],[131072,1]]`.
    pub fn paper(seed: u64, round: u64) -> Self {
        SearchParams {
            generations: 50,
            mutation: MutationParams {
                max_swaps: 4,
                offspring: 128,
            },
            stages: paper_stages(),
            seed,
            round,
        }
    }
}

/// What happened in one generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub winner: Winner,
    /// The new parent's fitness on the last stage's minibatch (+∞ for NaN).
    #[serde(with = "crate::serde_f64")]
    pub fitness: f64,
    /// The old parent's re-scored fitness on that minibatch.
    #[serde(with = "crate::serde_f64")]
    pub parent_fitness: f64,
    /// Distinct offspring drawn, and the mutation attempts it took.
    pub offspring: usize,
    pub attempts: usize,
    /// Modules whose level the winner changed relative to the old parent.
    pub changed_modules: usize,
}

/// The resumable state of a search, saved after every generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchProgress {
    /// BLAKE3 of the search space and parameters; a record only resumes the search it came from.
    pub fingerprint: String,
    /// Generations completed; the next one to run has this index.
    pub generation: u64,
    pub parent: Configuration,
    /// The parent's fitness in the last generation; `None` before the first.
    #[serde(with = "crate::serde_f64::option")]
    pub parent_fitness: Option<f64>,
    /// One record per completed generation.
    pub history: Vec<GenerationRecord>,
}

/// The result of a round's search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOutcome {
    pub choice: Configuration,
    /// The choice's fitness in the last generation; `None` when no generation ran.
    pub fitness: Option<f64>,
    pub history: Vec<GenerationRecord>,
}

impl SearchOutcome {
    /// The best (parent) fitness after each generation.
    pub fn best_fitness(&self) -> Vec<f64> {
        self.history.iter().map(|r| r.fitness).collect()
    }
}

/// One round's search: the space, the parameters and the calibration pool's piece lengths.
#[derive(Clone, Copy, Debug)]
pub struct Search<'a> {
    pub space: &'a SearchSpace,
    pub params: &'a SearchParams,
    /// Token count of every calibration pool piece, in pool order.
    pub piece_lens: &'a [usize],
}

impl Search<'_> {
    /// BLAKE3 (hex) over the space and parameters.
    pub fn fingerprint(&self) -> Result<String> {
        let bytes = serde_json::to_vec(&(self.space, self.params, self.piece_lens))
            .map_err(|e| Error::msg(format!("encoding the search fingerprint: {e}")))?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }

    /// The record of a search that has not started: the space's start, no history.
    pub fn start(&self) -> Result<SearchProgress> {
        Ok(SearchProgress {
            fingerprint: self.fingerprint()?,
            generation: 0,
            parent: self.space.start()?,
            parent_fitness: None,
            history: Vec::new(),
        })
    }

    /// Runs the remaining generations from `resume` (or from the start), calling `on_progress`
    /// after each; an error from it stops the search and is returned.
    pub fn run(
        &self,
        resume: Option<SearchProgress>,
        scorer: &mut dyn Scorer,
        on_progress: &mut dyn FnMut(&SearchProgress) -> Result<()>,
    ) -> Result<SearchOutcome> {
        validate_stages(&self.params.stages)?;
        if self.params.mutation.max_swaps == 0 {
            return Err(Error::SearchParams {
                field: "max-swaps",
                reason: "must be at least 1 (the paper uses 4)".into(),
            });
        }
        let mut progress = match resume {
            Some(p) => self.check_resume(p)?,
            None => self.start()?,
        };
        let p = self.params;
        for g in progress.generation..p.generations {
            let span = tracing::info_span!("generation", round = p.round, generation = g);
            let _enter = span.enter();
            let parent = progress.parent.clone();
            let offspring =
                generate_offspring(self.space, &parent, &p.mutation, p.seed, p.round, g);
            let ctx = SelectionContext {
                stages: &p.stages,
                piece_lens: self.piece_lens,
                seed: p.seed,
                round: p.round,
                generation: g,
            };
            let sel = select(&ctx, &parent, &offspring.configs, scorer)?;
            let next = match sel.winner {
                Winner::Parent => parent.clone(),
                Winner::Offspring(i) => offspring.configs[i].clone(),
            };
            debug_assert!(self.space.check(&next).is_ok(), "the budget drifted");
            let record = GenerationRecord {
                generation: g,
                winner: sel.winner,
                fitness: sel.fitness,
                parent_fitness: sel.parent_fitness,
                offspring: offspring.configs.len(),
                attempts: offspring.attempts,
                changed_modules: next.changed_modules(&parent).len(),
            };
            tracing::info!(
                fitness = record.fitness,
                parent_fitness = record.parent_fitness,
                winner = ?record.winner,
                changed_modules = record.changed_modules,
                "generation done"
            );
            progress.generation = g + 1;
            progress.parent = next;
            progress.parent_fitness = Some(sel.fitness);
            progress.history.push(record);
            on_progress(&progress)?;
        }
        Ok(SearchOutcome {
            choice: progress.parent,
            fitness: progress.parent_fitness,
            history: progress.history,
        })
    }

    fn check_resume(&self, p: SearchProgress) -> Result<SearchProgress> {
        let bad = |reason: String| Err(Error::SearchResume { reason });
        if p.fingerprint != self.fingerprint()? {
            return bad("its search space or parameters differ from this search's".into());
        }
        if p.generation > self.params.generations || p.history.len() as u64 != p.generation {
            return bad(format!(
                "it has {} generations done and {} history records, of {} generations",
                p.generation,
                p.history.len(),
                self.params.generations
            ));
        }
        self.space.check(&p.parent)?;
        Ok(p)
    }
}
