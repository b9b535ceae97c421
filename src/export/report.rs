//! The run report: every number a pruning run produced, as one serde `Report`, written as a
//! pretty `report.json` and a self-contained `report.html` (see `report_html`).
//!
//! Determinism: the report holds no creation time, no host name and no absolute work
//! directory unless the pipeline puts one in, so the same inputs give byte-identical files. The
//! one part that may differ between otherwise identical runs is `timings` (wall-clock seconds,
//! cached or not); `Report::stable_json` leaves it out for comparisons.
//!
//! Every list is a `Vec` of named entries and everything a run may not do is an `Option` or an
//! empty list, so the pipeline fills what it has and the HTML skips what is missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::search::{Configuration, GenerationRecord, ModuleKind, SearchSpace};
use crate::{Error, Result};

/// The version of this layout; bumped whenever a field is renamed or changes meaning.
pub const REPORT_FORMAT: u32 = 1;

/// Everything a pruning run reports. Field order is the order in `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `REPORT_FORMAT` of the code that wrote it.
    pub format: u32,
    /// The pipeline's name (the `out/<name>/` folder).
    pub pipeline: String,
    /// The pipeline's seed.
    pub seed: u64,
    /// The dense model that was pruned.
    pub source: SourceModel,
    /// The requested unit sparsity, a fraction 0..1 of each type's units.
    #[serde(with = "num")]
    pub target_sparsity: f64,
    /// The unit sparsity actually reached, one entry per unit type (attention heads, FFN
    /// channels); empty when nothing was pruned.
    pub unit_sparsity: Vec<UnitSparsity>,
    /// Parameter counts of the dense and the pruned model.
    pub params: ParamSummary,
    /// Per-layer widths before and after, in layer order.
    pub layers: Vec<LayerReport>,
    /// What the fitness numbers in `rounds` measure (e.g. "top-k KL, k = 8192"); `None` when no
    /// search ran.
    pub fitness_metric: Option<String>,
    /// One entry per coarse-to-fine round, in order: chosen levels and search history.
    pub rounds: Vec<RoundReport>,
    /// Held-out perplexities of every evaluated model on every evaluated text.
    pub perplexities: Vec<Perplexity>,
    /// Zero-shot accuracy of every evaluated model on every task (`[prune] eval-tasks`).
    #[serde(default)]
    pub accuracies: Vec<Accuracy>,
    /// The baselines run beside the main method (their perplexities are in `perplexities`).
    pub baselines: Vec<BaselineReport>,
    /// Where the run wrote its models.
    pub outputs: Outputs,
    /// Wall-clock timings: the only section allowed to differ between identical runs.
    pub timings: Timings,
}

/// The dense model that was pruned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceModel {
    /// A short display name, e.g. "SmolLM2-135M".
    pub name: String,
    /// Where it came from, as the pipeline names it (a path, or `pip:<package>/<member>`).
    pub path: String,
    /// BLAKE3 hex digest of the dense weights, when known.
    pub digest: Option<String>,
}

/// The reached sparsity of one unit type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitSparsity {
    /// `attn` (query heads) or `ffn` (intermediate channels).
    pub kind: ModuleKind,
    /// Units of this type in the dense model, summed over layers.
    pub dense_units: u64,
    /// Units removed.
    pub removed_units: u64,
    /// `removed_units / dense_units` (NaN when there are no units, shown as "n/a").
    #[serde(with = "num")]
    pub achieved: f64,
}

impl UnitSparsity {
    pub fn new(kind: ModuleKind, dense_units: u64, kept_units: u64) -> Self {
        let removed_units = dense_units.saturating_sub(kept_units);
        UnitSparsity {
            kind,
            dense_units,
            removed_units,
            achieved: if dense_units == 0 {
                f64::NAN
            } else {
                removed_units as f64 / dense_units as f64
            },
        }
    }
}

/// Parameter counts of one model (ALGORITHM.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCounts {
    /// All decoder layers (projections, norms, biases).
    pub decoder: u64,
    /// Decoder + embeddings + final norm + an untied `lm_head`.
    pub total: u64,
    /// The prunable linear layers of the attention blocks (q, k, v, o with biases), and of the
    /// FFNs (gate, up, down with biases): how a model splits what pruning can remove.
    /// (Absent where only the totals are known.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<u64>,
}

impl ParamCounts {
    pub fn of(cfg: &ModelConfig) -> Self {
        let (attn, ffn) = cfg.linear_params();
        ParamCounts {
            decoder: cfg.decoder_params() as u64,
            total: cfg.total_params() as u64,
            attn: Some(attn as u64),
            ffn: Some(ffn as u64),
        }
    }
}

/// Parameter counts before and after pruning.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSummary {
    pub dense: Option<ParamCounts>,
    pub pruned: Option<ParamCounts>,
    /// The pruned model as exported for a runtime that needs even GQA groups, after K/V heads
    /// were duplicated (ALGORITHM.md §10); `None` when no duplication was needed.
    pub pruned_kv_duplicated: Option<ParamCounts>,
}

/// The widths of one decoder layer. 0 means the branch is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerWidths {
    pub query_heads: usize,
    pub kv_heads: usize,
    /// Query heads per K/V head, in K/V order (they may differ after pruning).
    pub kv_group_sizes: Vec<usize>,
    pub intermediate_size: usize,
}

impl LayerWidths {
    /// The widths of layer `l` of a resolved model; `None` when it has no such layer.
    pub fn of(cfg: &ModelConfig, l: usize) -> Option<Self> {
        let d = cfg.layers.get(l)?;
        let mut groups = vec![0; d.n_kv];
        for &kv in &d.kv_map {
            if let Some(g) = groups.get_mut(kv) {
                *g += 1;
            }
        }
        Some(LayerWidths {
            query_heads: d.n_q,
            kv_heads: d.n_kv,
            kv_group_sizes: groups,
            intermediate_size: d.d_ff,
        })
    }
}

/// One decoder layer before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerReport {
    pub layer: usize,
    pub dense: LayerWidths,
    pub pruned: Option<LayerWidths>,
    /// K/V heads in the export with even GQA groups, when duplication changed the count.
    pub kv_heads_duplicated: Option<usize>,
}

/// One module's chosen level in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleLevel {
    pub layer: usize,
    pub kind: ModuleKind,
    /// `n_m`: units of the module in the dense model.
    pub units: u32,
    /// Units removed (the level); kept = `units - level`.
    pub level: u32,
}

/// The grid step of one unit type in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStep {
    pub kind: ModuleKind,
    /// Δ in units.
    pub step: u32,
}

/// One generation of a round's search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    /// 0-based generation index within the round.
    pub generation: u64,
    /// The parent's fitness after this generation (lower is better; may be +inf).
    #[serde(with = "num")]
    pub best_fitness: f64,
    /// Distinct offspring evaluated in this generation.
    pub offspring: usize,
}

/// One coarse-to-fine round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// 1-based round number.
    pub round: u32,
    pub steps: Vec<KindStep>,
    /// The level chosen for each module (layer order, attention before FFN within a layer).
    pub levels: Vec<ModuleLevel>,
    /// The search history; empty when the round did not search (e.g. `generations = 0`).
    pub generations: Vec<GenerationSummary>,
}

impl RoundReport {
    /// A round as the search left it: the chosen level of every module of `space` (sorted by
    /// layer, attention first), the round's steps, and each generation's best fitness and
    /// offspring count. Fails when `choice` does not have one level per module.
    pub fn from_search(
        round: u32,
        space: &SearchSpace,
        choice: &Configuration,
        history: &[GenerationRecord],
    ) -> Result<Self> {
        if choice.levels.len() != space.len() {
            return Err(Error::ExportReport {
                reason: format!(
                    "round {round}: the choice has {} levels for {} modules",
                    choice.levels.len(),
                    space.len()
                ),
            });
        }
        let mut levels: Vec<ModuleLevel> = space
            .grids()
            .iter()
            .zip(&choice.levels)
            .map(|(g, &level)| ModuleLevel {
                layer: g.module.layer,
                kind: g.module.kind,
                units: g.module.units,
                level,
            })
            .collect();
        levels.sort_by_key(|m| (m.layer, m.kind));
        Ok(RoundReport {
            round,
            steps: ModuleKind::ALL
                .iter()
                .map(|&kind| KindStep {
                    kind,
                    step: space.steps().of(kind),
                })
                .collect(),
            levels,
            generations: history
                .iter()
                .map(|g| GenerationSummary {
                    generation: g.generation,
                    best_fitness: g.fitness,
                    offspring: g.offspring,
                })
                .collect(),
        })
    }
}

/// Which model a perplexity belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelRole {
    Dense,
    Pruned,
    Baseline,
}

/// One held-out perplexity (ALGORITHM.md §11 protocol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// "dense", "tyr", or the baseline's name.
    pub model: String,
    pub role: ModelRole,
    /// The evaluated text, as the pipeline names it.
    pub text: String,
    pub seq_len: usize,
    /// Tokens scored (whole windows only).
    pub tokens: usize,
    #[serde(with = "num")]
    pub value: f64,
}

/// One model's zero-shot accuracy on one task (lm-eval's `acc` / `acc_norm`, fractions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub model: String,
    pub role: ModelRole,
    /// The task's name (`arc-easy`, or `KIND:LABEL`).
    pub task: String,
    /// Examples scored.
    pub n: usize,
    #[serde(with = "num")]
    pub acc: f64,
    pub acc_norm: Option<f64>,
}

/// A baseline run beside the main method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    /// `uniform`, `magnitude`, `wanda-sp`, …
    pub name: String,
    pub params: Option<ParamCounts>,
    pub unit_sparsity: Vec<UnitSparsity>,
    pub model_dir: Option<String>,
}

/// Where the run wrote its models.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The pruned model folder (safetensors + config.json + tokenizer.json).
    pub model_dir: Option<String>,
    pub gguf: Option<String>,
}

/// Wall-clock timings; allowed to differ between otherwise identical runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// One entry per stage of the plan, in plan order.
    pub stages: Vec<StageTiming>,
}

impl Timings {
    /// Seconds summed over stages that ran (non-finite entries are skipped).
    pub fn total_seconds(&self) -> f64 {
        self.stages
            .iter()
            .filter(|s| s.seconds.is_finite())
            .map(|s| s.seconds)
            .sum()
    }
}

/// One stage's wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage id in the plan, e.g. `round1/layer07`.
    pub stage: String,
    /// The stage kind, e.g. `supernet-layer`.
    pub kind: String,
    #[serde(with = "num")]
    pub seconds: f64,
    /// True when the result came from the store and the stage did not run.
    pub cached: bool,
}

/// The two files `write_report` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub html: PathBuf,
}

impl Report {
    /// A report with only the run's identity filled in; the pipeline adds the rest.
    pub fn new(
        pipeline: impl Into<String>,
        seed: u64,
        source: SourceModel,
        target_sparsity: f64,
    ) -> Self {
        Report {
            format: REPORT_FORMAT,
            pipeline: pipeline.into(),
            seed,
            source,
            target_sparsity,
            unit_sparsity: Vec::new(),
            params: ParamSummary::default(),
            layers: Vec::new(),
            fitness_metric: None,
            rounds: Vec::new(),
            perplexities: Vec::new(),
            accuracies: Vec::new(),
            baselines: Vec::new(),
            outputs: Outputs::default(),
            timings: Timings::default(),
        }
    }

    /// Fill `params`, `layers` and `unit_sparsity` from the dense and the pruned model. Fails
    /// when their layer counts differ.
    pub fn set_models(&mut self, dense: &ModelConfig, pruned: &ModelConfig) -> Result<()> {
        if dense.n_layers() != pruned.n_layers() {
            return Err(Error::ExportReport {
                reason: format!(
                    "the dense model has {} layers but the pruned one {}",
                    dense.n_layers(),
                    pruned.n_layers()
                ),
            });
        }
        self.params.dense = Some(ParamCounts::of(dense));
        self.params.pruned = Some(ParamCounts::of(pruned));
        self.layers = (0..dense.n_layers())
            .filter_map(|l| {
                Some(LayerReport {
                    layer: l,
                    dense: LayerWidths::of(dense, l)?,
                    pruned: LayerWidths::of(pruned, l),
                    kv_heads_duplicated: None,
                })
            })
            .collect();
        self.unit_sparsity = unit_sparsity(dense, pruned);
        Ok(())
    }

    /// `report.json`: pretty, fields in declaration order, non-finite numbers as strings.
    pub fn to_json(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self).map_err(|e| Error::ExportReport {
            reason: format!("cannot encode the report as JSON: {e}"),
        })?;
        s.push('\n');
        Ok(s)
    }

    /// The JSON of everything but `timings`: equal for runs that computed the same results.
    pub fn stable_json(&self) -> Result<String> {
        let mut r = self.clone();
        r.timings = Timings::default();
        r.to_json()
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::ExportReport {
            reason: format!("cannot read a report from JSON: {e}"),
        })
    }

    /// `report.html`: one self-contained page with inline CSS and SVG plots.
    pub fn to_html(&self) -> String {
        super::report_html::render(self)
    }

    /// The dense → pruned perplexity on the first text that has both, with its text name.
    pub fn headline_perplexity(&self) -> Option<(&Perplexity, &Perplexity)> {
        self.perplexities
            .iter()
            .filter(|p| p.role == ModelRole::Dense)
            .find_map(|d| {
                self.perplexities
                    .iter()
                    .find(|p| p.role == ModelRole::Pruned && p.text == d.text)
                    .map(|p| (d, p))
            })
    }
}

/// Removed query heads and FFN channels of `pruned` against `dense`.
pub fn unit_sparsity(dense: &ModelConfig, pruned: &ModelConfig) -> Vec<UnitSparsity> {
    let sum = |c: &ModelConfig, f: fn(&crate::model::config::LayerDims) -> usize| -> u64 {
        c.layers.iter().map(|d| f(d) as u64).sum()
    };
    vec![
        UnitSparsity::new(
            ModuleKind::Attn,
            sum(dense, |d| d.n_q),
            sum(pruned, |d| d.n_q),
        ),
        UnitSparsity::new(
            ModuleKind::Ffn,
            sum(dense, |d| d.d_ff),
            sum(pruned, |d| d.d_ff),
        ),
    ]
}

/// Write `report.json` and `report.html` into `dir` (created if missing), each through a
/// temporary file that is synced and then renamed, so a reader never sees half a report.
pub fn write_report(report: &Report, dir: &Path) -> Result<ReportFiles> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = ReportFiles {
        json: dir.join("report.json"),
        html: dir.join("report.html"),
    };
    crate::atomic_file::write(&files.json, report.to_json()?.as_bytes())?;
    crate::atomic_file::write(&files.html, report.to_html().as_bytes())?;
    tracing::info!(json = %files.json.display(), html = %files.html.display(), "report written");
    Ok(files)
}

/// Numbers in the report: finite values as JSON numbers rounded to 15 significant digits; NaN
/// and ±inf, which JSON cannot hold, as the strings "nan", "inf", "-inf".
///
/// Why 15 digits: serde_json's default reader (we do not enable its `float_roundtrip` feature,
/// which would rebuild candle and tokenizers) is exact for decimal significands below 2^53 with
/// moderate exponents, but can be one ulp off for the 17-digit numbers that full f64 precision
/// needs. With 15 digits a report read back and written again gives the same bytes.
mod num {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        let short = if x.is_finite() {
            format!("{x:.14e}").parse().unwrap_or(*x)
        } else {
            *x
        };
        crate::serde_f64::serialize(&short, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        crate::serde_f64::deserialize(d)
    }
}

/// Puts the run's stage timings into the published `report.json` / `report.html` in `out_dir`
/// (when the pipeline has a report); `stages` in plan order. Returns whether there was one.
pub fn fill_timings(out_dir: &Path, stages: Vec<StageTiming>) -> Result<bool> {
    let json = out_dir.join("report.json");
    let Ok(text) = std::fs::read_to_string(&json) else {
        return Ok(false);
    };
    let mut r = Report::from_json(&text)?;
    r.timings = Timings { stages };
    write_report(&r, out_dir).map_err(|e| {
        Error::msg(format!(
            "adding timings to the report in {}: {e}",
            out_dir.display()
        ))
    })?;
    Ok(true)
}
