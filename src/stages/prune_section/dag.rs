//! The Týr DAG of a `[prune]` section: which stages exist, what each reads, its params and its
//! memory estimate. Stage ids are named in one place (`ids`), stage kinds by their `KIND`
//! constants. Building it needs the model's shapes (`ModelConfig`), which the caller reads;
//! nothing here touches a file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::config::{Baseline, PruneConfig, grids_with, round1_grids};
use super::sources::EvalEntry;
use crate::data::DataSource;
use crate::engine::{InputRef, Stage, StageSpec};
use crate::model::ModelConfig;
use crate::prune::expectation::Expectation;
use crate::prune::grid::{GridOptions, Round1Grid, TypeGrid};
use crate::search::BudgetKind;
use crate::stages::baseline_layer::{BaselineLayer, BaselineLayerParams, BaselineMethod};
use crate::stages::calib_pool::{CalibPool, CalibPoolParams, CalibSource};
use crate::stages::embed::{Embed, EmbedParams};
use crate::stages::estimate::Shapes;
use crate::stages::eval_ppl::{EvalPpl, EvalPplParams};
use crate::stages::eval_tasks::{EvalTasks, EvalTasksParams, task_specs};
use crate::stages::eval_text::{EvalText, EvalTextParams};
use crate::stages::export::{ExportParams, ExportStage};
use crate::stages::layer_forward::{LayerForward, LayerForwardParams};
use crate::stages::model::{ModelParams, ModelStage};
use crate::stages::model_ref::ModelSpec;
use crate::stages::report::{ReportParams, ReportStage};
use crate::stages::search::{RoundGrids, SearchStage, SearchStageParams};
use crate::stages::supernet_layer::{FfnStats, ModuleLevels, SupernetLayer, SupernetLayerParams};
use crate::stages::supernet_part::{SupernetPart, SupernetPartParams};
use crate::stages::teacher::{TeacherParams, TeacherStage};
use crate::supernet::rounds::AroundPrevious;
use crate::vocab::{LayerLevels, ModuleKind};
use crate::{Error, Result};

/// Every stage id the section generates.
pub mod ids {
    pub const MODEL: &str = "model";
    pub const CALIB_POOL: &str = "calib-pool";
    pub const EMBED: &str = "embed";
    pub const TEACHER: &str = "teacher";
    pub const EVAL_TEXT: &str = "eval-text";
    /// The searched model's export (→ `out/<name>/model/`).
    pub const EXPORT: &str = "export";
    pub const REPORT: &str = "report";

    /// Round t's supernet stage of layer l.
    pub fn layer(t: usize, l: usize) -> String {
        format!("r{t}-layer-{l:02}")
    }
    /// Round t's X_{l+1}.
    pub fn forward(t: usize, l: usize) -> String {
        format!("r{t}-forward-{l:02}")
    }
    pub fn search(t: usize) -> String {
        format!("r{t}-search")
    }
    /// A `supernet-part` of layer stage `layer`: `<layer>-attn`, or `<layer>-attn-<share>` when
    /// the module's levels are split in shares.
    pub fn part(layer: &str, module: crate::vocab::ModuleKind, share: Option<usize>) -> String {
        match share {
            Some(g) => format!("{layer}-{module}-{g}"),
            None => format!("{layer}-{module}"),
        }
    }
    /// Layer l of the final re-fit.
    pub fn refit_layer(l: usize) -> String {
        format!("refit-layer-{l:02}")
    }
    pub fn refit_forward(l: usize) -> String {
        format!("refit-forward-{l:02}")
    }
    pub fn baseline_layer(baseline: &str, l: usize) -> String {
        format!("{baseline}-layer-{l:02}")
    }
    pub fn baseline_forward(baseline: &str, l: usize) -> String {
        format!("{baseline}-forward-{l:02}")
    }
    pub fn export_baseline(baseline: &str) -> String {
        format!("export-{baseline}")
    }
    pub fn eval(label: &str) -> String {
        format!("eval-{label}")
    }
    /// The zero-shot evaluation of one model.
    pub fn eval_tasks(label: &str) -> String {
        format!("tasks-{label}")
    }
    /// `eval-<label>` on the one held-out text, `eval-<label>-<text>` when there are several.
    pub fn eval_on(label: &str, text: Option<&str>) -> String {
        match text {
            Some(t) => format!("eval-{label}-{t}"),
            None => eval(label),
        }
    }
    pub fn eval_text(text: Option<&str>) -> String {
        match text {
            Some(t) => format!("{EVAL_TEXT}-{t}"),
            None => EVAL_TEXT.to_string(),
        }
    }
}

/// The pipeline-level facts the DAG needs besides the section.
pub struct Where<'a> {
    /// The pipeline file's folder (relative data paths are anchored here).
    pub base: &'a Path,
    /// Where pip downloads go.
    pub cache: &'a Path,
    /// The pipeline's name (for the report).
    pub pipeline: &'a str,
    /// The model, relative paths anchored.
    pub model: ModelSpec,
    /// The run's memory budget: a layer builds as many levels at once as fit in it.
    pub mem_budget_bytes: u64,
}

/// The stages of section `c` for a model of shapes `cfg`, in a fixed order.
pub fn build(c: &PruneConfig, cfg: &ModelConfig, at: Where<'_>) -> Result<Vec<StageSpec>> {
    let (ga, gf) = round1_grids(c, cfg)?;
    let mut b = Builder {
        c,
        n: cfg.n_layers(),
        shapes: Shapes {
            cfg,
            tokens: c.calib_tokens as u64,
            top_k: c.top_k as u64,
            eval_seq_len: c.eval_seq_len.unwrap_or(c.seq_len) as u64,
            chunk_bytes: c.chunk_mib << 20,
        },
        base: at.base,
        cache: at.cache.to_path_buf(),
        mem_budget: at.mem_budget_bytes,
        out: Vec::new(),
    };
    b.sources(at.model)?;

    // The supernets: round 1 (explicit, target-independent grids), then rounds 2..T centred on
    // the previous round's search, each with its own expectation chain from X_0.
    let rounds = if c.supernet { c.rounds.max(1) } else { 0 };
    if c.searching() {
        b.push(
            ids::TEACHER,
            TeacherStage::KIND,
            &TeacherParams {
                top_k: c.top_k,
                shard_tokens: None,
            },
            &[
                (ids::MODEL, one(ids::MODEL)),
                ("pool", one(ids::CALIB_POOL)),
            ],
            Some(b.shapes.teacher()),
        )?;
    }
    let mut last_search: Option<String> = None;
    for t in 1..=rounds {
        let layers = b.supernet_round(t, &ga, &gf, last_search.as_deref())?;
        if !c.searching() {
            break;
        }
        last_search = Some(b.search_round(t, &ga, &gf, layers, last_search.as_deref())?);
    }
    let final_layers: Vec<String> = (0..b.n).map(|l| ids::layer(rounds, l)).collect();

    let mut evals: Vec<EvalSpec> = Vec::new();
    let mut exports: Vec<String> = Vec::new();
    if let Some(search) = &last_search {
        // The model tyr delivers: the searched layers, or their re-fit on its own activations.
        let tyr_layers = if c.final_refit {
            evals.push(EvalSpec {
                label: "searched".into(),
                choice: Choice::Search(search.clone()),
                layers: final_layers.clone(),
            });
            b.refit_chain(search)?
        } else {
            final_layers.clone()
        };
        evals.push(EvalSpec {
            label: "tyr".into(),
            choice: Choice::Search(search.clone()),
            layers: tyr_layers.clone(),
        });
        if c.export {
            b.export(
                ids::EXPORT,
                "tyr",
                "model",
                Choice::Search(search.clone()),
                &tyr_layers,
            )?;
            exports.push(ids::EXPORT.into());
        }
    }
    if c.supernet && c.eval_supernet_centre.unwrap_or(!c.searching()) {
        let choice = (0..b.n)
            .map(|l| [ga.modules[l].centre, gf.modules[l].centre])
            .collect();
        evals.push(EvalSpec {
            label: "r1-centre".into(),
            choice: Choice::Fixed(choice),
            layers: (0..b.n).map(|l| ids::layer(1, l)).collect(),
        });
    }

    // Baselines sit at the §3 centres (the budget exactly, not rounded to the lattice).
    let exact = GridOptions {
        round1: Round1Grid::Centred,
        ..c.grid_options()
    };
    let (ba, bf) = grids_with(c, cfg, exact)?;
    for &baseline in &c.baselines {
        let (eval, export) = b.baseline(baseline, &ba, &bf)?;
        exports.extend(export);
        evals.push(eval);
    }

    let (eval_ids, task_ids) = b.evals(evals)?;
    if c.report && (last_search.is_some() || !eval_ids.is_empty() || !task_ids.is_empty()) {
        let rp = ReportParams {
            pipeline: at.pipeline.to_string(),
            target: c.target,
            source: describe_model(&c.model),
            eval_text: describe_texts(c.eval_texts()),
            baselines: c.baselines.iter().map(|b| b.name().to_string()).collect(),
        };
        let searches: Vec<String> = if c.searching() {
            (1..=rounds).map(ids::search).collect()
        } else {
            Vec::new()
        };
        b.push(
            ids::REPORT,
            ReportStage::KIND,
            &rp,
            &[
                (ids::MODEL, one(ids::MODEL)),
                ("searches", InputRef::Many(searches)),
                ("evals", InputRef::Many(eval_ids)),
                ("tasks", InputRef::Many(task_ids)),
                ("exports", InputRef::Many(exports)),
            ],
            None,
        )?;
    }
    Ok(b.out)
}

/// Where an `eval-ppl` or `export` gets its per-layer levels.
#[derive(Clone)]
enum Choice {
    Dense,
    Fixed(Vec<LayerLevels>),
    /// From the named `search` stage.
    Search(String),
}

impl Choice {
    /// The params pair (`choice`, `from-search`) of an `eval-ppl` / `export`; a search choice
    /// also adds the `search` input.
    fn bind(self, inputs: &mut Vec<(&str, InputRef)>) -> (Option<Vec<LayerLevels>>, bool) {
        match self {
            Choice::Dense => (None, false),
            Choice::Fixed(v) => (Some(v), false),
            Choice::Search(s) => {
                inputs.push(("search", one(&s)));
                (None, true)
            }
        }
    }
}

/// One `eval-ppl` to generate.
struct EvalSpec {
    label: String,
    choice: Choice,
    /// The layer stages whose variants it reads.
    layers: Vec<String>,
}

impl EvalSpec {
    /// Adds the `layers` (unless dense) and `search` inputs of an `eval-ppl` / `eval-tasks` for
    /// this model and returns its (`choice`, `from-search`) params.
    fn bind(&self, inputs: &mut Vec<(&str, InputRef)>) -> (Option<Vec<LayerLevels>>, bool) {
        if !matches!(self.choice, Choice::Dense) {
            inputs.push(("layers", InputRef::Many(self.layers.clone())));
        }
        self.choice.clone().bind(inputs)
    }
}

struct Builder<'a> {
    c: &'a PruneConfig,
    n: usize,
    shapes: Shapes<'a>,
    base: &'a Path,
    cache: PathBuf,
    mem_budget: u64,
    out: Vec<StageSpec>,
}

impl Builder<'_> {
    /// Appends one stage; `mem` is its peak-memory estimate (`estimate.rs`) for the executor.
    fn push<P: Serialize>(
        &mut self,
        id: &str,
        kind: &str,
        p: &P,
        inputs: &[(&str, InputRef)],
        mem: Option<u64>,
    ) -> Result<&mut StageSpec> {
        let params = toml::Table::try_from(p)
            .map_err(|e| Error::msg(format!("stage `{id}`: encoding params: {e}")))?;
        self.out.push(StageSpec {
            id: id.to_string(),
            kind: kind.to_string(),
            params,
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            line: None,
            section: None,
            mem_bytes: mem,
        });
        Ok(self.out.last_mut().expect("just pushed"))
    }

    /// A stage that downloads (model, data): it gets the pip cache folder as a param outside
    /// its key.
    fn push_cached<P: Serialize>(
        &mut self,
        id: &str,
        kind: &str,
        p: &P,
        inputs: &[(&str, InputRef)],
    ) -> Result<()> {
        let cache = self.cache.to_string_lossy().into_owned();
        self.push(id, kind, p, inputs, None)?
            .params
            .insert("cache-dir".into(), toml::Value::String(cache));
        Ok(())
    }

    /// `model`, `calib-pool`, `embed` (X_0).
    fn sources(&mut self, model: ModelSpec) -> Result<()> {
        let c = self.c;
        self.push_cached(
            ids::MODEL,
            ModelStage::KIND,
            &ModelParams {
                model,
                cache_dir: None,
            },
            &[],
        )?;
        let sources = c
            .calib
            .0
            .iter()
            .map(|e| CalibSource {
                data: anchored(self.base, &e.data),
                format: e.format.clone().unwrap_or_else(|| c.calib_format.clone()),
                weight: e.weight.unwrap_or(1.0),
            })
            .collect();
        let pool = CalibPoolParams {
            sources,
            seq_len: c.seq_len,
            calib_tokens: c.calib_tokens,
            cache_dir: None,
        };
        self.push_cached(
            ids::CALIB_POOL,
            CalibPool::KIND,
            &pool,
            &[(ids::MODEL, one(ids::MODEL))],
        )?;
        let mem = self.shapes.embed();
        self.push(
            ids::EMBED,
            Embed::KIND,
            &EmbedParams {
                chunk_mib: c.chunk_mib,
                activation_dtype: c.activation_dtype,
            },
            &[
                (ids::MODEL, one(ids::MODEL)),
                ("pool", one(ids::CALIB_POOL)),
            ],
            Some(mem),
        )?;
        Ok(())
    }

    /// Around the previous round's choice: `K` levels each side and a floor on the step.
    fn around(&self) -> AroundPrevious {
        let g = self.c.grid_options();
        AroundPrevious {
            levels_each_side: g.levels_each_side,
            min_step: g.min_step,
            budget: self.c.budget,
        }
    }

    /// Levels per module in a round after the first: the centre and K on each side.
    fn later_levels(&self) -> usize {
        2 * self.c.grid_options().levels_each_side + 1
    }

    /// Round t's supernet: a layer stage per layer, chained through `layer-forward`s from X_0.
    /// Returns the layer stage ids.
    fn supernet_round(
        &mut self,
        t: usize,
        ga: &TypeGrid,
        gf: &TypeGrid,
        previous: Option<&str>,
    ) -> Result<Vec<String>> {
        let c = self.c;
        let centre_needed = c.expectation == Expectation::Centre;
        let levels = |g: &TypeGrid, l: usize| ModuleLevels {
            levels: g.modules[l].levels.clone(),
            centre: centre_needed.then_some(g.modules[l].centre),
        };
        let mut x = ids::EMBED.to_string();
        let mut layers = Vec::with_capacity(self.n);
        for l in 0..self.n {
            let (attn, ffn, around) = if t == 1 {
                (Some(levels(ga, l)), Some(levels(gf, l)), None)
            } else {
                (None, None, Some(self.around()))
            };
            let p = SupernetLayerParams {
                round: t,
                layer: l,
                attn,
                ffn,
                around,
                refit: false,
                expectation: c.expectation,
                ffn_stats: c.ffn_stats,
                attn_pruning: c.local(c.attn_removal),
                ffn_pruning: c.local(c.ffn_removal),
                joined: false,
                parallel_levels: 0, // not serialised: set with the estimate, outside the key
                variant_dtype: c.variant_dtype,
            };
            let id = ids::layer(t, l);
            let levels = if t == 1 {
                (ga.modules[l].levels.len(), gf.modules[l].levels.len())
            } else {
                (self.later_levels(), self.later_levels())
            };
            self.supernet_layer(&id, p, &x, previous, levels)?;
            if l + 1 < self.n {
                let fwd = ids::forward(t, l);
                self.forward(&fwd, l, &x, &id)?;
                x = fwd;
            }
            layers.push(id);
        }
        Ok(layers)
    }

    /// The final re-fit: a layer stage per layer at the level `search` chose, each calibrated
    /// on the previous re-fit layer's output (the `centre` chain of the chosen configuration).
    /// Returns the layer stage ids.
    fn refit_chain(&mut self, search: &str) -> Result<Vec<String>> {
        let c = self.c;
        let mut x = ids::EMBED.to_string();
        let mut layers = Vec::with_capacity(self.n);
        for l in 0..self.n {
            let p = SupernetLayerParams {
                round: 1,
                layer: l,
                attn: None,
                ffn: None,
                around: None,
                refit: true,
                expectation: Expectation::Centre,
                ffn_stats: c.ffn_stats,
                attn_pruning: c.local(c.attn_removal),
                ffn_pruning: c.local(c.ffn_removal),
                joined: false,
                parallel_levels: 0, // not serialised: set with the estimate, outside the key
                variant_dtype: c.variant_dtype,
            };
            let id = ids::refit_layer(l);
            self.supernet_layer(&id, p, &x, Some(search), (1, 1))?;
            if l + 1 < self.n {
                let fwd = ids::refit_forward(l);
                self.forward(&fwd, l, &x, &id)?;
                x = fwd;
            }
            layers.push(id);
        }
        Ok(layers)
    }

    /// Layer stage `id` (params `p`, X_ℓ from stage `x`, the grid from search `previous` where
    /// given, `levels` per module for the estimate): one `supernet-layer` stage, or under
    /// `supernet-split` the `supernet-part` stages of both modules (`<id>-attn`, `<id>-ffn`, with
    /// `-<share>` under `level`) and a `supernet-layer` under the same id that joins them and
    /// writes what the whole build would. Without a split the stage and its key are as before.
    fn supernet_layer(
        &mut self,
        id: &str,
        p: SupernetLayerParams,
        x: &str,
        previous: Option<&str>,
        levels: (usize, usize),
    ) -> Result<()> {
        let l = p.layer;
        let mut common = vec![(ids::MODEL, one(ids::MODEL))];
        let Some(shares) = self.c.supernet_shares() else {
            common.push(("x", one(x)));
            common.extend(previous.map(|s| ("previous", one(s))));
            let (par, mem) = self.parallel_levels(
                |par| self.shapes.supernet_layer(l, levels.0, levels.1, par),
                levels.0.max(levels.1),
            );
            self.push(id, SupernetLayer::KIND, &p, &common, Some(mem))?
                .params
                .insert("parallel-levels".into(), toml::Value::Integer(par as i64));
            return Ok(());
        };
        let mut parts: [Vec<String>; 2] = Default::default();
        for (m, module) in ModuleKind::ALL.into_iter().enumerate() {
            let n = [levels.0, levels.1][m];
            for share in 0..shares {
                let part = SupernetPartParams {
                    module,
                    share,
                    shares,
                    build: p.clone(),
                };
                let pid = ids::part(id, module, (shares > 1).then_some(share));
                let mut inputs = vec![(ids::MODEL, one(ids::MODEL)), ("x", one(x))];
                inputs.extend(previous.map(|s| ("previous", one(s))));
                if module == ModuleKind::Ffn && p.ffn_stats == FfnStats::ExpectedAttention {
                    inputs.push(("attn-parts", InputRef::Many(parts[0].clone())));
                }
                let share_levels = n.div_ceil(shares);
                let (par, mem) = self.parallel_levels(
                    |par| self.shapes.supernet_part(l, module, share_levels, par),
                    share_levels,
                );
                let spec = self.push(&pid, SupernetPart::KIND, &part, &inputs, Some(mem))?;
                if let Some(toml::Value::Table(b)) = spec.params.get_mut("build") {
                    b.insert("parallel-levels".into(), toml::Value::Integer(par as i64));
                }
                parts[m].push(pid);
            }
        }
        let [attn_parts, ffn_parts] = parts;
        common.push(("attn-parts", InputRef::Many(attn_parts)));
        common.push(("ffn-parts", InputRef::Many(ffn_parts)));
        common.extend(previous.map(|s| ("previous", one(s))));
        let joined = SupernetLayerParams { joined: true, ..p };
        let mem = self.shapes.supernet_join(l, levels.0, levels.1);
        self.push(id, SupernetLayer::KIND, &joined, &common, Some(mem))?;
        Ok(())
    }

    /// How many levels a layer stage builds at once, and its estimate then: as many as this
    /// machine has cores and `levels` allows, fewer when that would not fit the memory budget
    /// (one at least; a stage over the budget even then is refused by the executor, naming
    /// it). Outside the key: the levels are independent, so their grouping changes no result.
    fn parallel_levels(&self, estimate: impl Fn(usize) -> u64, levels: usize) -> (usize, u64) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut par = cores.min(levels).max(1);
        while par > 1 && estimate(par) > self.mem_budget {
            par -= 1;
        }
        (par, estimate(par))
    }

    /// The `layer-forward` stage computing X_{l+1} from `x` and the layer stage `weights`.
    fn forward(&mut self, id: &str, layer: usize, x: &str, weights: &str) -> Result<()> {
        let mem = self.shapes.layer_forward(layer);
        self.push(
            id,
            LayerForward::KIND,
            &LayerForwardParams {
                layer,
                activation_dtype: self.c.activation_dtype,
            },
            &[
                (ids::MODEL, one(ids::MODEL)),
                ("x", one(x)),
                ("weights", one(weights)),
            ],
            Some(mem),
        )?;
        Ok(())
    }

    /// Round t's search over `layers`; returns its id.
    fn search_round(
        &mut self,
        t: usize,
        ga: &TypeGrid,
        gf: &TypeGrid,
        layers: Vec<String>,
        previous: Option<&str>,
    ) -> Result<String> {
        let c = self.c;
        let sp = SearchStageParams {
            round: t,
            grids: (t == 1).then(|| RoundGrids {
                attn: ga.clone(),
                ffn: gf.clone(),
            }),
            around: (t > 1).then_some(self.around()),
            generations: c.generations,
            offspring: c.offspring,
            max_swaps: c.max_swaps,
            selection: c.selection.clone(),
            fitness: c.fitness,
            incremental: c.incremental_search,
            param_target: (c.budget == BudgetKind::Params).then_some(c.target),
            cache_mib: 0, // not serialised: set below, outside the key
        };
        let id = ids::search(t);
        let mut inputs = vec![
            (ids::MODEL, one(ids::MODEL)),
            ("pool", one(ids::CALIB_POOL)),
            ("teacher", one(ids::TEACHER)),
            ("layers", InputRef::Many(layers)),
        ];
        if let Some(s) = previous {
            inputs.push(("previous", one(s)));
        }
        let minibatches: Vec<u64> = c.selection.iter().map(|s| s[0] as u64).collect();
        let mem = self
            .shapes
            .search(c.search_cache_mib << 20, &minibatches, c.offspring as u64);
        self.push(&id, SearchStage::KIND, &sp, &inputs, Some(mem))?
            .params
            .insert(
                "cache-mib".into(),
                toml::Value::Integer(c.search_cache_mib as i64),
            );
        Ok(id)
    }

    /// One baseline's layer chain (and its export when asked); returns its eval and export id.
    fn baseline(
        &mut self,
        baseline: Baseline,
        ba: &TypeGrid,
        bf: &TypeGrid,
    ) -> Result<(EvalSpec, Option<String>)> {
        let c = self.c;
        let name = baseline.name();
        let mut layers = Vec::new();
        let mut x = ids::EMBED.to_string();
        for l in 0..self.n {
            let (a, f) = (ba.modules[l].centre, bf.modules[l].centre);
            let id = ids::baseline_layer(name, l);
            match baseline {
                Baseline::Uniform => {
                    let p = SupernetLayerParams {
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
                        refit: false,
                        expectation: Expectation::Centre,
                        ffn_stats: c.ffn_stats,
                        attn_pruning: c.local(c.attn_removal),
                        ffn_pruning: c.local(c.ffn_removal),
                        joined: false,
                        parallel_levels: 0,
                        variant_dtype: c.variant_dtype,
                    };
                    self.supernet_layer(&id, p, &x, None, (1, 1))?;
                }
                Baseline::Magnitude | Baseline::WandaSp => {
                    let method = if baseline == Baseline::Magnitude {
                        BaselineMethod::Magnitude
                    } else {
                        BaselineMethod::WandaSp
                    };
                    let p = BaselineLayerParams {
                        method,
                        layer: l,
                        attn_level: a,
                        ffn_level: f,
                        activation_dtype: c.activation_dtype,
                    };
                    let mut inputs = vec![(ids::MODEL, one(ids::MODEL))];
                    let reads_x = method == BaselineMethod::WandaSp;
                    if reads_x {
                        inputs.push(("x", one(&x)));
                    }
                    let mem = self.shapes.baseline_layer(l, reads_x);
                    self.push(&id, BaselineLayer::KIND, &p, &inputs, Some(mem))?;
                }
            }
            layers.push(id.clone());
            x = match baseline {
                Baseline::Uniform if l + 1 < self.n => {
                    let fwd = ids::baseline_forward(name, l);
                    self.forward(&fwd, l, &x, &id)?;
                    fwd
                }
                // wanda-sp's layer stage outputs X_{l+1} itself; magnitude reads none.
                _ => id,
            };
        }
        let choice: Vec<LayerLevels> = (0..self.n)
            .map(|l| [ba.modules[l].centre, bf.modules[l].centre])
            .collect();
        let export = if c.exported_baselines().contains(&baseline) {
            let id = ids::export_baseline(name);
            let dir = format!("baselines/{name}/model");
            self.export(&id, name, &dir, Choice::Fixed(choice.clone()), &layers)?;
            Some(id)
        } else {
            None
        };
        let eval = EvalSpec {
            label: name.to_string(),
            choice: Choice::Fixed(choice),
            layers,
        };
        Ok((eval, export))
    }

    /// An `export` stage writing `label`'s model to `out/<pipeline>/<dir>/`.
    fn export(
        &mut self,
        id: &str,
        label: &str,
        dir: &str,
        choice: Choice,
        layers: &[String],
    ) -> Result<()> {
        let c = self.c;
        let mut inputs = vec![
            (ids::MODEL, one(ids::MODEL)),
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
        let mem = self.shapes.export();
        self.push(id, ExportStage::KIND, &p, &inputs, Some(mem))?;
        Ok(())
    }

    /// Per held-out text, `eval-text` and one `eval-ppl` per entry (the dense model first);
    /// returns the eval ids (text by text, in pipeline order).
    fn evals(&mut self, mut evals: Vec<EvalSpec>) -> Result<(Vec<String>, Vec<String>)> {
        let c = self.c;
        let texts = c.eval_texts();
        if texts.is_empty() && c.eval_tasks.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if c.eval_dense {
            evals.insert(
                0,
                EvalSpec {
                    label: "dense".into(),
                    choice: Choice::Dense,
                    layers: Vec::new(),
                },
            );
        }
        let named = texts.len() > 1;
        let mut eval_ids = Vec::with_capacity(evals.len() * texts.len());
        for text in texts {
            let name = named.then(|| text.name());
            let name = name.as_deref();
            let et = EvalTextParams {
                data: anchored(self.base, &text.data),
                format: text.format.clone().unwrap_or_else(|| c.eval_format.clone()),
                separator: "\n\n".into(),
                seq_len: c.eval_seq_len.unwrap_or(c.seq_len),
                max_tokens: c.eval_max_tokens,
                cache_dir: None,
            };
            let text_id = ids::eval_text(name);
            self.push_cached(
                &text_id,
                EvalText::KIND,
                &et,
                &[(ids::MODEL, one(ids::MODEL))],
            )?;
            for e in &evals {
                let mut inputs = vec![(ids::MODEL, one(ids::MODEL)), ("windows", one(&text_id))];
                let (fixed, from_search) = e.bind(&mut inputs);
                let p = EvalPplParams {
                    label: e.label.clone(),
                    choice: fixed,
                    from_search,
                    text: name.map(str::to_string),
                };
                let id = ids::eval_on(&e.label, name);
                let mem = self.shapes.eval();
                self.push(&id, EvalPpl::KIND, &p, &inputs, Some(mem))?;
                eval_ids.push(id);
            }
        }
        let task_ids = self.task_evals(&evals)?;
        Ok((eval_ids, task_ids))
    }

    /// One `eval-tasks` per entry when the pipeline names zero-shot tasks; returns their ids.
    fn task_evals(&mut self, evals: &[EvalSpec]) -> Result<Vec<String>> {
        let c = self.c;
        if c.eval_tasks.is_empty() {
            return Ok(Vec::new());
        }
        let tasks = task_specs(&c.eval_tasks, self.base)?;
        let mut ids = Vec::with_capacity(evals.len());
        for e in evals {
            let mut inputs = vec![(ids::MODEL, one(ids::MODEL))];
            let (fixed, from_search) = e.bind(&mut inputs);
            let p = EvalTasksParams {
                label: e.label.clone(),
                choice: fixed,
                from_search,
                tasks: tasks.clone(),
                limit: c.eval_tasks_limit,
                batch_tokens: 2048,
                add_bos: false,
                target_delimiter: " ".into(),
            };
            let id = ids::eval_tasks(&e.label);
            let mem = self.shapes.eval();
            self.push(&id, EvalTasks::KIND, &p, &inputs, Some(mem))?;
            ids.push(id);
        }
        Ok(ids)
    }
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

/// The held-out text as the report names it; several as `name: text, …`.
fn describe_texts(texts: &[EvalEntry]) -> String {
    match texts {
        [one] => one.data.label(),
        many => many
            .iter()
            .map(|t| format!("{}: {}", t.name(), t.data.label()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
