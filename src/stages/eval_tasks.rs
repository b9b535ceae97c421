//! `eval-tasks` stage: zero-shot accuracy (`eval::zeroshot`, lm-eval's conventions) of the dense
//! model, or of a pruned model assembled from per-layer variants, on multiple-choice task files.
//!
//! Inputs: `model` and, when `choice` is given or `from-search` is set, `layers` (and `search`),
//! exactly as `eval-ppl` takes them. Params: `label`, the tasks (`KIND` or `KIND:LABEL`, a file
//! path), `limit` (first N examples of each), `batch-tokens`, `add-bos`, `target-delimiter`.
//! The model is read one layer at a time (`eval::zeroshot::LayerByLayer`): each layer is built
//! and run over a group of batches, so the stage holds one layer, the embeddings, the head and
//! a group's hidden states (`eval_ppl::GROUP_BYTES`), with the scores of the whole model.
//!
//! Outputs: record `tasks` (`TasksRecord`), the same as JSON published at `tasks/{label}.json`,
//! metrics `mean_acc` and `decoder_params`. Invalidated by: params, the task files' bytes
//! (fingerprint), the model record and the chosen layer stages' outputs.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::eval_ppl::{GROUP_BYTES, build_block};
use super::model_ref::{ModelRecord, open};
use super::{Chosen, choice_slots};
use crate::data::DataSource;
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::eval::tasks::{TaskKind, TaskReadOptions, TaskSpec, read_task};
use crate::eval::zeroshot::{LayerByLayer, TaskResult, ZeroShotOptions, score_task};
use crate::model::Compute;
use crate::model::{Block, Embeddings, Head, LayerDims};
use crate::vocab::LayerLevels;
use crate::{Error, Result};

fn space() -> String {
    " ".into()
}

fn batch_tokens() -> usize {
    2048
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EvalTasksParams {
    /// Names the published report (`tasks/{label}.json`) and the model in the run report.
    pub label: String,
    /// Per layer `[attn level, ffn level]`; absent = the dense model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<Vec<LayerLevels>>,
    /// Take the choice from input `search` instead [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_search: bool,
    /// The task files, in order (names unique).
    pub tasks: Vec<TaskSpec>,
    /// Score only the first N examples of each task [all].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Padded tokens per forward at most [2048].
    #[serde(default = "batch_tokens")]
    pub batch_tokens: usize,
    /// Put the BOS token before every context [false].
    #[serde(default)]
    pub add_bos: bool,
    /// Between context and answer [" "].
    #[serde(default = "space")]
    pub target_delimiter: String,
}

/// One task's accuracy, as the run report shows it (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub kind: TaskKind,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
    /// LAMBADA: perplexity of the last word.
    pub perplexity: Option<f64>,
}

impl TaskScore {
    fn of(r: &TaskResult) -> Self {
        TaskScore {
            task: r.name.clone(),
            kind: r.kind,
            n: r.n,
            acc: r.acc,
            acc_stderr: r.acc_stderr,
            acc_norm: r.acc_norm,
            acc_norm_stderr: r.acc_norm_stderr,
            perplexity: r.perplexity,
        }
    }
}

/// What `eval-tasks` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TasksRecord {
    pub label: String,
    pub tasks: Vec<TaskScore>,
    /// Mean of `acc` over the tasks.
    pub mean_acc: f64,
    pub decoder_params: usize,
    pub total_params: usize,
    pub choice: Option<Vec<LayerLevels>>,
}

pub struct EvalTasks(EvalTasksParams);

impl Stage for EvalTasks {
    const KIND: &'static str = "eval-tasks";
    const VERSION: u32 = 1;
    type Params = EvalTasksParams;

    fn new(p: EvalTasksParams) -> Result<Self> {
        let bad = |why: String| Err(Error::msg(format!("eval-tasks `{}`: {why}", p.label)));
        if p.choice.is_some() && p.from_search {
            return bad("give `choice` or `from-search`, not both".into());
        }
        if p.tasks.is_empty() {
            return bad("no task".into());
        }
        if p.batch_tokens == 0 {
            return bad("batch-tokens must be at least 1".into());
        }
        if p.limit == Some(0) {
            return bad("limit must be at least 1".into());
        }
        for (i, t) in p.tasks.iter().enumerate() {
            if p.tasks[..i].iter().any(|u| u.name == t.name) {
                return bad(format!("task `{}` named twice", t.name));
            }
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        let mut v = crate::model::forward_code_versions();
        v.push(("zeroshot", crate::eval::zeroshot::ZEROSHOT_VERSION));
        v
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model")];
        v.extend(choice_slots(self.0.choice.is_some(), self.0.from_search));
        v
    }

    /// The task files' bytes, so an edited file re-scores.
    fn fingerprint(&self) -> Result<Option<String>> {
        let mut parts = Vec::with_capacity(self.0.tasks.len());
        for t in &self.0.tasks {
            let d = super::model::source_fingerprint(
                &DataSource::Path {
                    path: t.path.clone(),
                },
                &None,
            )?
            .unwrap_or_default();
            parts.push(format!("{}={d}", t.name));
        }
        Ok(Some(parts.join(",")))
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        // Every task file is read first, so a bad one fails before any weight is loaded.
        let read_opts = TaskReadOptions {
            target_delimiter: p.target_delimiter.clone(),
            limit: p.limit,
        };
        let tasks = p
            .tasks
            .iter()
            .map(|s| read_task(s, &read_opts))
            .collect::<Result<Vec<_>>>()?;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let src = model.source.as_ref();
        let what = format!("eval-tasks `{}`", p.label);
        let chosen = Chosen::resolve(ctx, &what, &p.choice, p.from_search, cfg.n_layers())?;
        // One layer at a time, as eval-ppl does: never the whole model in memory.
        let dims: RefCell<Vec<Option<LayerDims>>> = RefCell::new(vec![None; cfg.n_layers()]);
        let compute = ctx.compute()?;
        let emb = Embeddings::load_on(cfg, src, &compute)?;
        let head = Head::load_on(cfg, src, &emb, &compute)?;
        let model_by_layer = LayerByLayer {
            config: cfg,
            embeddings: &emb,
            head: &head,
            block: |l: usize| -> Result<Block> {
                let b = build_block(cfg, src, chosen.as_ref(), l, &compute)?;
                dims.borrow_mut()[l] = Some(b.dims().clone());
                Ok(b)
            },
            group_bytes: GROUP_BYTES,
        };
        let opts = ZeroShotOptions {
            batch_tokens: p.batch_tokens,
            add_bos: p.add_bos,
        };
        let mut scores = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            let r = score_task(&model_by_layer, &model.codec, task, &opts)?;
            tracing::info!(
                label = %p.label,
                task = %r.name,
                acc = r.acc,
                acc_norm = r.acc_norm.unwrap_or(f64::NAN),
                "zero-shot accuracy"
            );
            scores.push(TaskScore::of(&r));
            ctx.report((i + 1) as u64, tasks.len() as u64);
        }
        // The scored model's widths (a layer no batch reached is built for them).
        let mut pruned = cfg.clone();
        pruned.layers = dims
            .into_inner()
            .into_iter()
            .enumerate()
            .map(|(l, d)| match d {
                Some(d) => Ok(d),
                None => Ok(build_block(cfg, src, chosen.as_ref(), l, &Compute::Packed)?
                    .dims()
                    .clone()),
            })
            .collect::<Result<_>>()?;
        let rec = TasksRecord {
            label: p.label.clone(),
            mean_acc: scores.iter().map(|s| s.acc).sum::<f64>() / scores.len() as f64,
            tasks: scores,
            decoder_params: pruned.decoder_params(),
            total_params: pruned.total_params(),
            choice: chosen.as_ref().map(|c| c.levels().to_vec()),
        };
        let mut o = Outputs::new();
        o.metric("mean_acc", rec.mean_acc);
        o.metric("decoder_params", rec.decoder_params as f64);
        o.record("tasks", &rec)?;
        let json = serde_json::to_vec_pretty(&rec)
            .map_err(|e| Error::msg(format!("encoding the task report: {e}")))?;
        o.bytes("report", json)
            .publish(format!("tasks/{}.json", p.label));
        Ok(o)
    }
}

/// The task list of `[prune] eval-tasks` (`KIND=PATH` or `KIND:LABEL=PATH`, as `tyr eval
/// --tasks` takes them), relative paths against `base`.
pub fn task_specs(items: &[String], base: &std::path::Path) -> Result<Vec<TaskSpec>> {
    let mut specs = crate::eval::tasks::parse_task_specs(items)?;
    for s in &mut specs {
        if s.path.is_relative() {
            s.path = base.join(&s.path);
        }
    }
    Ok(specs)
}
