//! The `[prune]` table as typed settings: every key, its default, and the checks that run
//! before anything is built (each error names its `prune.<key>`); round 1's grids follow from
//! the settings and the model's unit counts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sources::{CalibEntry, EvalEntry, Sources};
use crate::data::{TextFormat, reader::TextDocuments};
use crate::export::{GgufDtype, ZeroWidth};
use crate::model::{ModelConfig, StorageDtype};
use crate::prune::ModuleKind;
use crate::prune::expectation::Expectation;
use crate::prune::grid::{GridOptions, Round1Grid, TypeGrid, round1_grid};
use crate::prune::local::{LocalPruneOptions, RemovalSchedule};
use crate::prune::obs::FirstOrder;
use crate::search::{BudgetKind, FitnessKind};
use crate::stages::model_ref::ModelSpec;
use crate::stages::supernet_layer::FfnStats;
use crate::stages::supernet_part::MAX_SHARES;
use crate::{Error, Result};

/// A baseline run beside the main method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    Uniform,
    Magnitude,
    WandaSp,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Uniform => "uniform",
            Baseline::Magnitude => "magnitude",
            Baseline::WandaSp => "wanda-sp",
        }
    }
}

fn d_seq_len() -> usize {
    4096
}
fn d_calib_tokens() -> usize {
    4_194_304
}
fn d_target() -> f64 {
    0.5
}
fn d_calib_format() -> TextFormat {
    TextFormat::Text {
        documents: TextDocuments::BlankLines,
    }
}
fn d_eval_format() -> TextFormat {
    TextFormat::Text {
        documents: TextDocuments::Whole,
    }
}
fn d_true() -> bool {
    true
}
fn d_expectation() -> Expectation {
    Expectation::DensityWeighted
}
fn d_first_order() -> FirstOrder {
    FirstOrder::Signed
}
fn d_attn_removal() -> RemovalSchedule {
    RemovalSchedule::UnitsPerPass(1)
}
fn d_ffn_removal() -> RemovalSchedule {
    RemovalSchedule::Passes(16)
}
fn d_rounds() -> usize {
    4
}
fn d_generations() -> u64 {
    50
}
fn d_offspring() -> usize {
    128
}
fn d_max_swaps() -> u32 {
    4
}
fn d_selection() -> Vec<[usize; 2]> {
    vec![[2048, 16], [16384, 4], [131072, 1]]
}
fn d_top_k() -> usize {
    8192
}
fn d_search_cache_mib() -> u64 {
    crate::stages::search::DEFAULT_CACHE_MIB as u64
}
fn d_chunk_mib() -> u64 {
    crate::stages::acts::DEFAULT_CHUNK_MIB
}

/// The `[prune]` table, typed (see the module docs for every key and default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PruneConfig {
    pub model: ModelSpec,
    pub calib: Sources<CalibEntry>,
    #[serde(default = "d_calib_format")]
    pub calib_format: TextFormat,
    #[serde(default)]
    pub eval: Option<Sources<EvalEntry>>,
    #[serde(default = "d_eval_format")]
    pub eval_format: TextFormat,
    #[serde(default = "d_seq_len")]
    pub seq_len: usize,
    #[serde(default = "d_calib_tokens")]
    pub calib_tokens: usize,
    #[serde(default)]
    pub eval_seq_len: Option<usize>,
    #[serde(default)]
    pub eval_max_tokens: Option<usize>,
    /// Zero-shot task files scored on every evaluated model (`KIND=PATH` or `KIND:LABEL=PATH`,
    /// as `tyr eval --tasks`; relative to the pipeline file) [none].
    #[serde(default)]
    pub eval_tasks: Vec<String>,
    /// Score only the first N examples of each task [all].
    #[serde(default)]
    pub eval_tasks_limit: Option<usize>,
    #[serde(default = "d_target")]
    pub target: f64,
    /// What `target` counts: `units` (that fraction of the heads and of the FFN channels) or
    /// `params` (that fraction of the prunable linear parameters, split as the search finds best)
    /// [units].
    #[serde(default)]
    pub budget: BudgetKind,
    #[serde(default)]
    pub initial_step: Option<f64>,
    #[serde(default)]
    pub levels_each_side: Option<usize>,
    #[serde(default)]
    pub round1_grid: Option<Round1Grid>,
    #[serde(default = "d_expectation")]
    pub expectation: Expectation,
    #[serde(default)]
    pub ffn_stats: FfnStats,
    /// One layer's supernet as several stages (`module`: attention and FFN apart; `level`:
    /// each module's levels in `split-groups` shares), joined before the expectation [none].
    #[serde(default)]
    pub supernet_split: SupernetSplit,
    /// Shares per module under `supernet-split = "level"` (1–64) [4].
    #[serde(default)]
    pub split_groups: Option<usize>,
    #[serde(default)]
    pub damping: Option<f64>,
    #[serde(default)]
    pub damping_retries: Option<u32>,
    #[serde(default = "d_first_order")]
    pub first_order: FirstOrder,
    #[serde(default = "d_true")]
    pub second_order: bool,
    #[serde(default = "d_attn_removal")]
    pub attn_removal: RemovalSchedule,
    #[serde(default = "d_ffn_removal")]
    pub ffn_removal: RemovalSchedule,
    #[serde(default)]
    pub baselines: Vec<Baseline>,
    #[serde(default)]
    pub min_step: Option<usize>,
    #[serde(default = "d_true")]
    pub supernet: bool,
    #[serde(default = "d_rounds")]
    pub rounds: usize,
    #[serde(default = "d_generations")]
    pub generations: u64,
    #[serde(default = "d_offspring")]
    pub offspring: usize,
    #[serde(default = "d_max_swaps")]
    pub max_swaps: u32,
    #[serde(default = "d_selection")]
    pub selection: Vec<[usize; 2]>,
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub fitness: FitnessKind,
    #[serde(default = "d_true")]
    pub incremental_search: bool,
    #[serde(default = "d_search_cache_mib")]
    pub search_cache_mib: u64,
    #[serde(default = "d_chunk_mib")]
    pub chunk_mib: u64,
    #[serde(default)]
    pub activation_dtype: StorageDtype,
    #[serde(default)]
    pub variant_dtype: StorageDtype,
    #[serde(default)]
    pub final_refit: bool,
    #[serde(default = "d_true")]
    pub export: bool,
    #[serde(default)]
    pub export_baselines: Option<Vec<Baseline>>,
    #[serde(default = "d_true")]
    pub gguf: bool,
    #[serde(default)]
    pub gguf_dtype: GgufDtype,
    #[serde(default)]
    pub zero_width: ZeroWidth,
    #[serde(default = "d_true")]
    pub eval_dense: bool,
    #[serde(default)]
    pub eval_supernet_centre: Option<bool>,
    #[serde(default = "d_true")]
    pub report: bool,
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// How one layer's supernet is split into stages (`[prune] supernet-split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SupernetSplit {
    /// One `supernet-layer` stage per layer.
    #[default]
    None,
    /// A `supernet-part` stage per module, joined by the layer's `supernet-layer`.
    Module,
    /// `split-groups` parts per module, each a contiguous share of its levels.
    Level,
}

/// Shares per module under `supernet-split = "level"` when `split-groups` is not given.
pub const DEFAULT_SPLIT_GROUPS: usize = 4;

impl PruneConfig {
    /// Parts per module: `None` when the layer is built whole.
    pub fn supernet_shares(&self) -> Option<usize> {
        match self.supernet_split {
            SupernetSplit::None => None,
            SupernetSplit::Module => Some(1),
            SupernetSplit::Level => Some(self.split_groups.unwrap_or(DEFAULT_SPLIT_GROUPS)),
        }
    }

    /// Parses and validates the section (field errors name `prune.<key>`).
    pub fn parse(table: &toml::Table) -> Result<Self> {
        let c: PruneConfig = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| {
                // Name the key when serde knows it (`prune.fitness: unknown variant …`).
                let path = e.path().to_string();
                let msg = e.inner().message().trim().to_string();
                if path.is_empty() || path == "." || path == "?" {
                    Error::msg(format!("`prune`: {msg}"))
                } else {
                    Error::msg(format!("`prune.{path}`: {msg}"))
                }
            })?;
        c.check_counts()?;
        if !(0.0..1.0).contains(&c.target) {
            return Err(field("target", format!("{} is outside [0, 1)", c.target)));
        }
        if c.seq_len == 0 {
            return Err(field("seq-len", "must be at least 1".into()));
        }
        if c.calib_tokens == 0 {
            return Err(field("calib-tokens", "must be at least 1".into()));
        }
        for (i, e) in c.calib.0.iter().enumerate() {
            if let Some(w) = e.weight
                && !(w > 0.0 && w.is_finite())
            {
                return Err(field(
                    "calib",
                    format!("source {}: weight {w} must be a positive number", i + 1),
                ));
            }
        }
        let names: Vec<String> = c.eval_texts().iter().map(|e| e.name()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(field(
                    "eval",
                    format!("two texts are named `{n}`: give each a distinct `name`"),
                ));
            }
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(field(
                    "eval",
                    format!(
                        "text {}: name `{n}` must be letters, digits, `-`, `_`",
                        i + 1
                    ),
                ));
            }
        }
        match (c.supernet_split, c.split_groups) {
            (SupernetSplit::Level, Some(g)) if g == 0 || g > MAX_SHARES => {
                return Err(field(
                    "split-groups",
                    format!("{g} is outside 1–{MAX_SHARES}"),
                ));
            }
            (SupernetSplit::None | SupernetSplit::Module, Some(_)) => {
                return Err(field(
                    "split-groups",
                    "only applies with `supernet-split = \"level\"`".into(),
                ));
            }
            _ => {}
        }
        if c.eval_seq_len.is_some_and(|s| s < 2) {
            return Err(field("eval-seq-len", "must be at least 2".into()));
        }
        if let Some(d) = c.damping
            && !(d > 0.0 && d.is_finite())
        {
            return Err(field("damping", format!("{d} must be positive")));
        }
        for (name, s) in [
            ("attn-removal", c.attn_removal),
            ("ffn-removal", c.ffn_removal),
        ] {
            if matches!(
                s,
                RemovalSchedule::Passes(0) | RemovalSchedule::UnitsPerPass(0)
            ) {
                return Err(field(
                    name,
                    "passes / units-per-pass must be at least 1".into(),
                ));
            }
        }
        if c.min_step == Some(0) {
            return Err(field("min-step", "must be at least 1".into()));
        }
        if c.searching() {
            if c.offspring == 0 {
                return Err(field("offspring", "must be at least 1".into()));
            }
            if c.max_swaps == 0 {
                return Err(field("max-swaps", "must be at least 1".into()));
            }
            if c.top_k == 0 {
                return Err(field("top-k", "must be at least 1".into()));
            }
            if c.selection.is_empty() {
                return Err(field(
                    "selection",
                    "needs at least one [tokens, keep] stage".into(),
                ));
            }
            for (i, [tokens, keep]) in c.selection.iter().enumerate() {
                if *tokens == 0 || *keep == 0 {
                    return Err(field(
                        "selection",
                        format!("stage {}: tokens and keep must be at least 1", i + 1),
                    ));
                }
                if *tokens > c.calib_tokens {
                    return Err(field(
                        "selection",
                        format!(
                            "stage {} scores {tokens} tokens but the pool holds at most \
                             {} (`calib-tokens`)",
                            i + 1,
                            c.calib_tokens
                        ),
                    ));
                }
            }
        }
        if !c.eval_tasks.is_empty() {
            crate::eval::tasks::parse_task_specs(&c.eval_tasks)
                .map_err(|e| field("eval-tasks", e.to_string()))?;
        }
        if c.eval_tasks_limit == Some(0) {
            return Err(field("eval-tasks-limit", "must be at least 1".into()));
        }
        for b in c.export_baselines.iter().flatten() {
            if !c.baselines.contains(b) {
                return Err(field(
                    "export-baselines",
                    format!("`{}` is not one of `baselines`", b.name()),
                ));
            }
        }
        Ok(c)
    }

    /// Every count that sizes work or memory, against a ceiling far above any real run
    /// (the paper's settings sit orders of magnitude below each), so a typo such as
    /// `rounds = 1000000000000` is an error naming the key before anything is allocated.
    fn check_counts(&self) -> Result<()> {
        let counts: [(&str, u64, u64, &str); 13] = [
            (
                "rounds",
                self.rounds as u64,
                MAX_ROUNDS,
                "rounds of supernet and search",
            ),
            (
                "generations",
                self.generations,
                MAX_GENERATIONS,
                "generations per round",
            ),
            (
                "offspring",
                self.offspring as u64,
                MAX_OFFSPRING,
                "offspring per generation",
            ),
            (
                "max-swaps",
                u64::from(self.max_swaps),
                MAX_SWAPS,
                "swaps per mutation",
            ),
            (
                "levels-each-side",
                self.levels_each_side.unwrap_or(0) as u64,
                MAX_LEVELS_EACH_SIDE,
                "levels on each side of a grid's centre",
            ),
            (
                "seq-len",
                self.seq_len as u64,
                MAX_SEQ_LEN,
                "tokens per piece",
            ),
            (
                "calib-tokens",
                self.calib_tokens as u64,
                MAX_TOKENS,
                "calibration tokens",
            ),
            (
                "eval-seq-len",
                self.eval_seq_len.unwrap_or(0) as u64,
                MAX_SEQ_LEN,
                "tokens per evaluation window",
            ),
            (
                "eval-max-tokens",
                self.eval_max_tokens.unwrap_or(0) as u64,
                MAX_TOKENS,
                "evaluation tokens",
            ),
            (
                "top-k",
                self.top_k as u64,
                MAX_TOP_K,
                "teacher logits per position",
            ),
            (
                "min-step",
                self.min_step.unwrap_or(0) as u64,
                MAX_UNITS,
                "units",
            ),
            (
                "search-cache-mib",
                self.search_cache_mib,
                MAX_CACHE_MIB,
                "MiB",
            ),
            (
                "chunk-mib",
                self.chunk_mib,
                crate::stages::embed::MAX_CHUNK_MIB,
                "MiB",
            ),
        ];
        for (key, value, max, what) in counts {
            if value > max {
                return Err(field(
                    key,
                    format!("{value} is more than the {max} {what} tyr accepts"),
                ));
            }
        }
        if self.selection.len() as u64 > MAX_SELECTION_STAGES {
            return Err(field(
                "selection",
                format!(
                    "{} stages is more than the {MAX_SELECTION_STAGES} tyr accepts",
                    self.selection.len()
                ),
            ));
        }
        Ok(())
    }

    /// The baselines exported: as given, else `uniform` when it runs.
    pub fn exported_baselines(&self) -> Vec<Baseline> {
        self.export_baselines.clone().unwrap_or_else(|| {
            self.baselines
                .iter()
                .copied()
                .filter(|&b| b == Baseline::Uniform)
                .collect()
        })
    }

    /// The held-out texts (none without `eval`).
    pub fn eval_texts(&self) -> &[EvalEntry] {
        self.eval.as_ref().map(|e| e.0.as_slice()).unwrap_or(&[])
    }

    /// Whether a search runs (a supernet and at least one round).
    pub fn searching(&self) -> bool {
        self.supernet && self.rounds > 0
    }

    pub fn grid_options(&self) -> GridOptions {
        let d = GridOptions::default();
        GridOptions {
            levels_each_side: self.levels_each_side.unwrap_or(d.levels_each_side),
            initial_step: self.initial_step.unwrap_or(d.initial_step),
            min_step: self.min_step.unwrap_or(d.min_step),
            round1: self.round1_grid.unwrap_or(d.round1),
        }
    }

    pub fn local(&self, schedule: RemovalSchedule) -> LocalPruneOptions {
        let d = LocalPruneOptions::attn_default();
        LocalPruneOptions {
            damping: self.damping.unwrap_or(d.damping),
            damping_retries: self.damping_retries.unwrap_or(d.damping_retries),
            first_order: self.first_order,
            second_order: self.second_order,
            schedule,
        }
    }
}

// Ceilings of the counts in `[prune]` (see `PruneConfig::check_counts`).
const MAX_ROUNDS: u64 = 64;
const MAX_GENERATIONS: u64 = 1_000_000;
const MAX_OFFSPRING: u64 = 1 << 16;
const MAX_SWAPS: u64 = 1 << 16;
const MAX_LEVELS_EACH_SIDE: u64 = 1 << 10;
const MAX_SEQ_LEN: u64 = 1 << 20;
const MAX_TOKENS: u64 = 1 << 34;
const MAX_TOP_K: u64 = 1 << 20;
const MAX_UNITS: u64 = 1 << 20;
const MAX_SELECTION_STAGES: u64 = 64;
const MAX_CACHE_MIB: u64 = 1 << 24;

pub(super) fn field(key: &str, message: String) -> Error {
    Error::msg(format!("`prune.{key}`: {message}"))
}

/// Round 1's grids (attention, FFN) for `cfg` under the section's target and grid options.
pub fn round1_grids(c: &PruneConfig, cfg: &ModelConfig) -> Result<(TypeGrid, TypeGrid)> {
    grids_with(c, cfg, c.grid_options())
}

pub fn grids_with(
    c: &PruneConfig,
    cfg: &ModelConfig,
    g: GridOptions,
) -> Result<(TypeGrid, TypeGrid)> {
    let attn: Vec<usize> = cfg.layers.iter().map(|d| d.n_q).collect();
    let ffn: Vec<usize> = cfg.layers.iter().map(|d| d.d_ff).collect();
    let wrap = |e: Error| match e {
        Error::PruneOption { field: f, reason } => field(f, reason),
        Error::PruneTarget { target } => field("target", format!("{target} is outside [0, 1)")),
        other => field(
            "initial-step",
            format!("the grid does not fit the model's unit counts: {other}"),
        ),
    };
    Ok((
        round1_grid(ModuleKind::Attn, c.target, &attn, &g).map_err(wrap)?,
        round1_grid(ModuleKind::Ffn, c.target, &ffn, &g).map_err(wrap)?,
    ))
}

impl PruneConfig {
    /// Where pip downloads go: `cache-dir` under `base` (the pipeline file's folder), else
    /// `.tyr-cache` beside the pipeline file.
    pub fn cache_dir_under(&self, base: &std::path::Path) -> PathBuf {
        match &self.cache_dir {
            Some(p) => base.join(p),
            None => base.join(".tyr-cache"),
        }
    }

    /// The model with a relative path anchored at `base`.
    pub fn model_under(&self, base: &std::path::Path) -> ModelSpec {
        match &self.model {
            ModelSpec::Path { path } => ModelSpec::Path {
                path: base.join(path),
            },
            m => m.clone(),
        }
    }
}
