//! `search` stage: one round's evolutionary search (ALGORITHM.md §8) over the variants its
//! round's `supernet-layer` stages built.
//!
//! Inputs: `model`, `pool` (the calibration pool), `teacher` (a `teacher-topk` stage), `layers`
//! (the round's layer stages, in layer order) and, from round 2 on, `previous` (round t−1's
//! `search`, whose choice centres this round's grids). Params: the round, round 1's grids (from
//! the target; later rounds derive theirs from `previous` with `around`), and the search
//! settings.
//!
//! Output: record `choice` (`supernet::rounds::RoundChoice`), also published as
//! `search/round-{t}.json`; under `budget = "params"` also record `params`
//! (`supernet::rounds::ParamSplit`: the budget and the attention/FFN split of the choice), which
//! the published JSON then carries as `params`. A progress record after every generation lets a
//! killed search resume at its last generation and end with the identical choice. Invalidated by:
//! params, seed, the model, pool, teacher, the layer stages' outputs and the previous round's
//! choice.

use serde::{Deserialize, Serialize};

use super::LayerStages;
use super::model_ref::{ModelRecord, open};
use super::teacher::Shards;
use crate::data::Pool;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::prune::grid::TypeGrid;
use crate::search::{FitnessKind, MutationParams, Search, SearchParams, SearchProgress};
use crate::supernet::rounds::{
    AroundPrevious, ParamSplit, RoundChoice, layer_levels, next_grids, param_budget,
    prunable_params, search_space,
};
use crate::supernet::scorer::{ModelScorer, ScorerInputs, TeacherSource};
use crate::{Error, Result};

/// Round 1's grids, fixed when the pipeline is expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RoundGrids {
    pub attn: TypeGrid,
    pub ffn: TypeGrid,
}

/// The default `search-cache-mib`. On the reference settings (SmolLM2-135M, 32k tokens, top-k
/// 8192, λ = 16) 1024 gave the same generation times as 4096 and 1.25 GB less peak RSS (issue
/// 10's note); larger models' pipelines set more (`pipelines/llama-3.1-8b-50.toml`).
pub const DEFAULT_CACHE_MIB: usize = 1024;

fn d_cache_mib() -> usize {
    DEFAULT_CACHE_MIB
}
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SearchStageParams {
    pub round: usize,
    /// Round 1: the grids. Later rounds: absent (see `around`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grids: Option<RoundGrids>,
    /// Later rounds: how the grids follow from the previous choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub around: Option<AroundPrevious>,
    pub generations: u64,
    pub offspring: usize,
    pub max_swaps: u32,
    /// `[tokens, keep]` per selection stage.
    pub selection: Vec<[usize; 2]>,
    #[serde(default)]
    pub fitness: FitnessKind,
    /// `budget = "params"`: every configuration removes this fraction of the prunable linear
    /// layers' parameters, split between attention and FFN as the search finds best
    /// (ALGORITHM.md §8.1). Absent: the per-type unit budgets of the grids' centres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_target: Option<f64>,
    /// Cache the parent's hidden states for incremental offspring evaluation [true].
    #[serde(default = "d_true")]
    pub incremental: bool,
    /// Memory for the search's hidden states and caches, MiB [`DEFAULT_CACHE_MIB`]
    /// (`supernet::scorer`). Not part of the key: it only decides what is recomputed, never a
    /// result bit.
    #[serde(default = "d_cache_mib", skip_serializing)]
    pub cache_mib: usize,
}

pub struct SearchStage(SearchStageParams);

impl SearchStage {
    fn later_round(&self) -> bool {
        self.0.grids.is_none()
    }
}

impl Stage for SearchStage {
    const KIND: &'static str = "search";
    const VERSION: u32 = 1;
    type Params = SearchStageParams;

    fn new(p: SearchStageParams) -> Result<Self> {
        let bad = |field: &'static str, reason: String| Error::SearchParams { field, reason };
        if p.round == 0 {
            return Err(bad("round", "rounds count from 1".into()));
        }
        match (&p.grids, &p.around, p.round) {
            (Some(_), None, 1) | (None, Some(_), 2..) => {}
            _ => {
                return Err(bad(
                    "grids",
                    "round 1 takes `grids`, later rounds take `around` instead".into(),
                ));
            }
        }
        if p.selection.is_empty() || p.selection.iter().any(|s| s[0] == 0 || s[1] == 0) {
            return Err(bad(
                "selection",
                format!(
                    "{:?}: needs at least one [tokens, keep] pair, each ≥ 1",
                    p.selection
                ),
            ));
        }
        if p.offspring == 0 {
            return Err(bad("offspring", "must be at least 1".into()));
        }
        if let Some(t) = p.param_target
            && !(0.0..1.0).contains(&t)
        {
            return Err(bad(
                "param-target",
                format!("{t} is not a fraction in [0, 1)"),
            ));
        }
        if p.cache_mib > 1 << 24 {
            return Err(bad(
                "cache-mib",
                format!("{} MiB is more than the 16 TiB tyr accepts", p.cache_mib),
            ));
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![
            InputSlot::one("model"),
            InputSlot::one("pool"),
            InputSlot::one("teacher"),
            InputSlot::many("layers"),
        ];
        if self.later_round() {
            v.push(InputSlot::one("previous"));
        }
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let pool: Pool = ctx.input("pool")?.record("pool")?;
        let lens: Vec<usize> = pool.pieces.iter().map(Vec::len).collect();
        let teacher = Shards::open(ctx.input("teacher")?, &lens)?;
        let layers = LayerStages(ctx.inputs("layers")?.to_vec());
        let (attn, ffn) = match (&p.grids, &p.around) {
            (Some(g), _) => (g.attn.clone(), g.ffn.clone()),
            (None, Some(around)) => {
                let prev: RoundChoice = ctx.input("previous")?.record("choice")?;
                next_grids(&prev, around)?
            }
            (None, None) => unreachable!("checked in new"),
        };
        let model = open(&record)?;
        let space = search_space(&attn, &ffn)?;
        let space = match p.param_target {
            Some(t) => {
                let budget = param_budget(&model.config, &space, &layers, t)?;
                space.with_param_budget(budget)?
            }
            None => space,
        };
        let params = SearchParams {
            generations: p.generations,
            mutation: MutationParams {
                max_swaps: p.max_swaps,
                offspring: p.offspring,
            },
            stages: p
                .selection
                .iter()
                .map(|s| crate::search::Stage {
                    tokens: s[0],
                    keep: s[1],
                })
                .collect(),
            seed: ctx.seed(),
            round: p.round as u64,
        };
        let search = Search {
            space: &space,
            params: &params,
            piece_lens: &lens,
        };
        let mut scorer = ModelScorer::new(
            &model.config,
            model.source.as_ref(),
            ScorerInputs {
                space: &space,
                variants: &layers,
                pieces: &pool.pieces,
                teacher: &teacher,
                fitness: p.fitness,
                incremental: p.incremental,
                cache_limit_bytes: p.cache_mib << 20,
                compute: ctx.compute()?,
            },
        )?;
        let resume: Option<SearchProgress> = ctx.load_progress()?;
        if let Some(r) = &resume {
            tracing::info!(
                round = p.round,
                generation = r.generation,
                "resuming the search"
            );
        }
        let generations = p.generations;
        let outcome = search.run(resume, &mut scorer, &mut |progress| {
            ctx.save_progress(progress)?;
            ctx.report(progress.generation, generations);
            Ok(())
        })?;
        let fitness_metric = match p.fitness {
            FitnessKind::TopKKl => format!("top-k KL, k = {}", TeacherSource::k(&teacher)),
            FitnessKind::FullKl => "full-vocabulary KL".to_string(),
        };
        let choice = RoundChoice {
            round: p.round,
            attn,
            ffn,
            levels: layer_levels(&outcome.choice),
            fitness: outcome.fitness,
            fitness_metric,
            history: outcome.history,
        };
        tracing::info!(
            round = p.round,
            fitness = ?choice.fitness,
            layers_forwarded = scorer.layers_forwarded,
            "search done"
        );
        let mut o = Outputs::new();
        if let Some(f) = choice.fitness {
            o.metric("fitness", f);
        }
        o.metric("layers_forwarded", scorer.layers_forwarded as f64);
        o.record("choice", &choice)?;
        let encode = |e: serde_json::Error| Error::msg(format!("encoding the round's choice: {e}"));
        let json = match p.param_target {
            Some(t) => {
                let split =
                    ParamSplit::of(&space, &outcome.choice, t, prunable_params(&model.config));
                tracing::info!(
                    budget = split.budget,
                    removed = split.removed,
                    attn = split.removed_attn,
                    ffn = split.removed_ffn,
                    "parameter split of the choice"
                );
                o.record("params", &split)?;
                let mut v = serde_json::to_value(&choice).map_err(encode)?;
                if let Some(m) = v.as_object_mut() {
                    m.insert(
                        "params".into(),
                        serde_json::to_value(&split).map_err(encode)?,
                    );
                }
                serde_json::to_vec_pretty(&v).map_err(encode)?
            }
            None => serde_json::to_vec_pretty(&choice).map_err(encode)?,
        };
        o.bytes("summary", json)
            .publish(format!("search/round-{}.json", p.round));
        Ok(o)
    }
}
