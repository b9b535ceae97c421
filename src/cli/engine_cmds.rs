//! `tyr run | plan | status | graph | verify | gc`: the engine's commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::exit::BadInput;
use crate::cli::logging::Ui;
use crate::engine::human_bytes;
use crate::engine::slurm::{ExecutorKind, SlurmSettings};
use crate::engine::store::lock;
use crate::engine::{self, Graph, Observer, OpenMode, Outcome, StageState, Store};
use crate::pipeline::sweep::Sweep;

#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Work directory holding the store [default: the file's `workdir`, else `.tyr/` beside it].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Override a parameter: `pipeline.seed=3`, `<stage>.<param>=…`, `prune.target=0.25`.
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Memory for concurrently running stages (`20G`, `512M`, bytes); a stage whose estimate
    /// exceeds it fails before it starts [80% of RAM or of the cgroup limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub mem_budget: Option<u64>,
    /// Run the pipeline at several values of one key as one DAG: `prune.target=0.3,0.4,0.5`.
    /// Stages that do not depend on the key run once; each value's outputs go to
    /// `out/<name>/sweep/<KEY>=<value>/`, and `out/<name>/sweep/report.html` compares them.
    #[arg(long, value_name = "KEY=V1,V2,…", value_parser = parse_sweep)]
    pub sweep: Option<Sweep>,
}

fn parse_sweep(s: &str) -> Result<Sweep, String> {
    Sweep::parse(s)
}

/// `20G`, `1.5T`, `512M`, `64K` (binary units) or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => {
            let unit = t[at..].to_ascii_lowercase();
            let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
            };
            (t[..at].trim(), mult)
        }
        None => (t, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 20G, 512M or 1073741824"))?;
    let bytes = v * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < 2f64.powi(63)) {
        return Err(format!("`{s}` is not a positive size below 8 EiB"));
    }
    Ok(bytes as u64)
}

impl PipelineArgs {
    fn load(&self) -> anyhow::Result<Graph> {
        let mut set = self.set.clone();
        if let Some(b) = self.mem_budget {
            set.push(format!("pipeline.mem_budget_bytes={b}"));
        }
        // Whatever goes wrong reading, expanding or validating the file is the input's fault.
        let registry = crate::stages::default_registry();
        let workdir = self.workdir.as_deref();
        Ok(match &self.sweep {
            None => crate::pipeline::load(&self.pipeline, &set, workdir, &registry),
            Some(sw) => crate::pipeline::sweep::load(&self.pipeline, &set, sw, workdir, &registry),
        }
        .map_err(BadInput)?)
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub p: PipelineArgs,
    /// Where stage attempts run: `local` (threads here) or `slurm` (one `sbatch` job per
    /// attempt; the work directory must be on a filesystem the nodes share)
    /// [`pipeline.executor.kind`, else local].
    #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
    pub executor: Option<ExecutorKind>,
    /// Slurm partition for the jobs [`pipeline.executor.partition`, else the cluster's default].
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// An extra sbatch option for every job, e.g. `--slurm-opt=--account=X`; repeatable; added
    /// after `pipeline.executor.slurm_opts`.
    #[arg(long = "slurm-opt", value_name = "OPT", allow_hyphen_values = true)]
    pub slurm_opt: Vec<String>,
}

fn parse_executor(s: &str) -> Result<ExecutorKind, String> {
    match s {
        "local" => Ok(ExecutorKind::Local),
        "slurm" => Ok(ExecutorKind::Slurm),
        _ => Err(format!("`{s}` is not an executor (local or slurm)")),
    }
}

#[derive(Debug, clap::Args)]
pub struct ExecStageArgs {
    /// The work directory (on a filesystem shared with the coordinator).
    #[arg(long)]
    pub workdir: PathBuf,
    /// The stage's key (64 hex digits); its job spec is `jobs/<key>/spec.json`.
    #[arg(long)]
    pub key: String,
    /// The attempt number the coordinator gave this job.
    #[arg(long)]
    pub attempt: u32,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub p: PipelineArgs,
    /// One JSON object per stage (`id`, `kind`, `state`, `reason`, `key`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub p: PipelineArgs,
    /// One JSON object per stage.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub p: PipelineArgs,
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Work directory to check.
    #[arg(long, default_value = ".tyr")]
    pub workdir: PathBuf,
    /// Rebuild the index, restore or drop broken manifests, delete corrupt blobs.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Work directory to clean.
    #[arg(long, default_value = ".tyr")]
    pub workdir: PathBuf,
}

pub fn run(args: &RunArgs, ui: &Ui) -> anyhow::Result<()> {
    let mut graph = args.p.load()?;
    apply_executor_flags(args, &mut graph.header.executor)?;
    engine::interrupt::install();
    let store = Arc::new(Store::open(&graph.header.workdir, OpenMode::Exclusive)?);
    let observer: Arc<dyn Observer> = match &ui.bars {
        Some(bars) => Arc::new(Bars {
            bars: bars.clone(),
            live: Mutex::new(BTreeMap::new()),
        }),
        None => Arc::new(Lines {
            last: Mutex::new(BTreeMap::new()),
        }),
    };
    let report = engine::run(&graph, store.clone(), observer)?;
    for (id, o) in &report.stages {
        match o {
            Outcome::Ran(s) => println!("ran      {id} ({s:.2}s)"),
            Outcome::Cached => println!("cached   {id}"),
            Outcome::Failed(e) => println!("failed   {id}: {e}"),
            Outcome::Skipped(e) => println!("skipped  {id}: {e}"),
        }
    }
    println!("outputs: {}", report.out_dir.display());
    for p in &report.published {
        println!("  {}", p.display());
    }
    let failed = report.failed();
    if !failed.is_empty() {
        return Err(crate::Error::EngineRunFailed { failed }.into());
    }
    // The report's stage timings are only known now; they go into the published copies.
    let cached: std::collections::BTreeSet<&str> = report
        .stages
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Cached))
        .map(|(id, _)| id.as_str())
        .collect();
    // In plan order, which is the graph's node order.
    let timings: Vec<crate::export::report::StageTiming> =
        engine::status::status(&graph, &store, None, None)
            .into_iter()
            .map(|r| {
                let c = cached.contains(r.id.as_str());
                crate::export::report::StageTiming {
                    stage: r.id,
                    kind: r.kind,
                    seconds: r.duration_s.unwrap_or(f64::NAN),
                    cached: c,
                }
            })
            .collect();
    let Some(sweep) = &args.p.sweep else {
        finish_outputs(&report.out_dir, timings)?;
        return Ok(());
    };
    let mut values = Vec::new();
    for v in &sweep.values {
        let sub = sweep.dir(v);
        let mine = timings
            .iter()
            .zip(&graph.nodes)
            .filter(|(_, n)| n.out_dirs.contains(&sub))
            .map(|(t, _)| t.clone())
            .collect();
        let dir = report.out_dir.join(&sub);
        println!("{}={v}:", sweep.key);
        finish_outputs(&dir, mine)?;
        values.push((v.clone(), dir));
    }
    let files = crate::export::sweep_report::write(
        &report.out_dir.join("sweep"),
        &graph.header.name,
        &sweep.key,
        &values,
    )?;
    println!("sweep report: {}", files.html.display());
    Ok(())
}

/// Puts the stage timings into the report in `dir` (when there is one) and names the pruned
/// model and the report there.
fn finish_outputs(
    dir: &Path,
    timings: Vec<crate::export::report::StageTiming>,
) -> anyhow::Result<()> {
    let has_report = crate::export::report::fill_timings(dir, timings)?;
    let model = dir.join("model");
    if model.is_dir() {
        println!("pruned model: {}", model.display());
    }
    if has_report {
        println!("report: {}", dir.join("report.html").display());
    }
    Ok(())
}

/// `--executor`, `--partition`, `--slurm-opt` over the pipeline file's `[pipeline.executor]`.
fn apply_executor_flags(
    args: &RunArgs,
    s: &mut crate::engine::slurm::ExecutorSettings,
) -> anyhow::Result<()> {
    let bad = |field: &str, message: String| {
        BadInput(crate::Error::Pipeline {
            file: args.p.pipeline.clone(),
            line: None,
            field: field.to_string(),
            message,
        })
    };
    if let Some(k) = args.executor {
        s.kind = k;
    }
    if let Some(p) = &args.partition {
        SlurmSettings::check_partition(p).map_err(|m| bad("--partition", m))?;
        s.slurm.partition = Some(p.clone());
    }
    for o in &args.slurm_opt {
        SlurmSettings::check_opt(o).map_err(|m| bad("--slurm-opt", m))?;
        s.slurm.opts.push(o.clone());
    }
    Ok(())
}

/// `tyr exec-stage`: one attempt of one stage, inside a Slurm job.
pub fn exec_stage(args: &ExecStageArgs) -> anyhow::Result<()> {
    let key = crate::engine::Digest::parse(&args.key).map_err(BadInput)?;
    crate::data::digest::remember_in(&args.workdir.join(crate::pipeline::DIGESTS_DIR));
    let outcome = engine::worker::exec(
        &args.workdir,
        &key,
        args.attempt,
        &crate::stages::default_registry(),
    )
    .map_err(|e| crate::Error::EngineRunFailed {
        failed: vec![e.to_string()],
    })?;
    println!("{outcome:?}");
    Ok(())
}

pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let graph = args.p.load()?;
    let store = Store::open(&graph.header.workdir, OpenMode::ReadOnly)?;
    let plans = engine::plan(&graph, &store);
    if args.json {
        for p in &plans {
            println!("{}", serde_json::to_string(p)?);
        }
        return Ok(());
    }
    let w = plans.iter().map(|p| p.id.len()).max().unwrap_or(0);
    for p in &plans {
        println!(
            "{:<8} {:<w$}  {:<14} {}",
            p.state.to_string(),
            p.id,
            p.kind,
            p.reason
        );
    }
    let count = |s: StageState| plans.iter().filter(|p| p.state == s).count();
    println!(
        "{} cached, {} to run, {} blocked",
        count(StageState::Cached),
        count(StageState::Run),
        count(StageState::Blocked)
    );
    if let Some(sw) = &args.p.sweep {
        let shared = graph
            .nodes
            .iter()
            .filter(|n| n.out_dirs.len() == sw.values.len())
            .count();
        println!(
            "sweep over {} ({} values): {shared} stages shared by every value, {} of fewer",
            sw.key,
            sw.values.len(),
            graph.nodes.len() - shared
        );
    }
    Ok(())
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let graph = args.p.load()?;
    let root = &graph.header.workdir;
    // Reading the run log needs the index, which a running `tyr run` holds.
    let mode = if root.join("lock").exists() {
        OpenMode::Inspect
    } else {
        OpenMode::ReadOnly
    };
    let (store, attempts, holder) = match Store::open(root, mode) {
        Ok(s) => {
            let a = s.index().map(|i| i.attempts());
            (s, a, None)
        }
        Err(crate::Error::EngineLocked { .. }) => (
            Store::open(root, OpenMode::ReadOnly)?,
            None,
            Some(lock::holder(&root.join("lock"))),
        ),
        Err(e) => return Err(e.into()),
    };
    let rows = engine::status::status(&graph, &store, attempts.as_deref(), holder.as_deref());
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(0);
    for r in &rows {
        let t = r.duration_s.map_or(String::new(), |d| format!("{d:.2}s"));
        println!(
            "{:<8} {:<w$}  {:>10}  {:>9}  {}",
            r.state,
            r.id,
            human_bytes(r.size_bytes),
            t,
            r.detail
        );
    }
    Ok(())
}

pub fn graph(args: &GraphArgs) -> anyhow::Result<()> {
    let graph = args.p.load()?;
    print!(
        "{}",
        match args.format {
            GraphFormat::Dot => graph.to_dot(),
            GraphFormat::Mermaid => graph.to_mermaid(),
        }
    );
    Ok(())
}

pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    check_workdir(&args.workdir)?;
    let mut report = if args.repair {
        let store = Store::open(&args.workdir, OpenMode::Exclusive)?;
        let notes = store.open_notes().to_vec();
        engine::verify::repair(&store, notes)?
    } else {
        engine::verify::verify(&Store::open(&args.workdir, OpenMode::Inspect)?)
    };
    // The remembered digests of input files are re-hashed too; one that no longer holds is
    // dropped, so the next plan hashes that file again.
    let digests = args.workdir.join(crate::pipeline::DIGESTS_DIR);
    let check = crate::data::digest::verify_remembered(&digests)?;
    for p in &check.wrong {
        report.repaired.push(format!(
            "the remembered digest of {} did not match its bytes; dropped (the next plan \
             hashes it again)",
            p.display()
        ));
    }
    if check.sound + check.stale + check.wrong.len() > 0 {
        report.notes.push(format!(
            "input file digests: {} re-hashed and sound, {} stale entries dropped",
            check.sound, check.stale
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for r in &report.repaired {
            println!("repaired: {r}");
        }
        for p in &report.problems {
            println!("problem:  {p}");
        }
        for n in &report.notes {
            println!("note:     {n}");
        }
        if report.problems.is_empty() {
            println!("ok: {} is sound", args.workdir.display());
        }
    }
    if !report.problems.is_empty() {
        bail!(
            "{} problem(s) found; `tyr verify --repair` fixes them",
            report.problems.len()
        );
    }
    Ok(())
}

pub fn gc(args: &GcArgs) -> anyhow::Result<()> {
    check_workdir(&args.workdir)?;
    let store = Store::open(&args.workdir, OpenMode::Exclusive)?;
    let r = engine::verify::gc(&store)?;
    println!(
        "removed {} manifest(s), {} blob(s) and {} Slurm job folder(s), freed {}",
        r.manifests_removed,
        r.blobs_removed,
        r.job_dirs_removed,
        human_bytes(r.bytes_freed)
    );
    Ok(())
}

fn check_workdir(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("manifests").is_dir() && !dir.join("index.sled").exists() {
        bail!(
            "{} is not a tyr work directory (no manifests/ or index.sled/)",
            dir.display()
        );
    }
    std::fs::metadata(dir).with_context(|| dir.display().to_string())?;
    Ok(())
}

/// Progress bars for running stages on an interactive terminal.
struct Bars {
    bars: MultiProgress,
    live: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Observer for Bars {
    fn started(&self, id: &str, kind: &str) {
        let pb = self.bars.add(ProgressBar::new(0));
        let style = ProgressStyle::with_template(
            "{spinner} {prefix:.bold} {wide_bar} {pos}/{len} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        pb.set_prefix(format!("{id} ({kind})"));
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Ok(mut l) = self.live.lock() {
            l.insert(id.to_string(), pb);
        }
    }
    fn progress(&self, id: &str, done: u64, total: u64) {
        if let Some(pb) = self.live.lock().ok().and_then(|l| l.get(id).cloned()) {
            pb.set_length(total);
            pb.set_position(done);
        }
    }
    fn finished(&self, id: &str, _outcome: &Outcome) {
        if let Some(pb) = self.live.lock().ok().and_then(|mut l| l.remove(id)) {
            pb.finish_and_clear();
            self.bars.remove(&pb);
        }
    }
}

/// Progress as log lines, at most one per stage every two seconds.
struct Lines {
    last: Mutex<BTreeMap<String, Instant>>,
}

impl Observer for Lines {
    fn progress(&self, id: &str, done: u64, total: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = Instant::now();
        let due = last
            .get(id)
            .is_none_or(|t| now.duration_since(*t).as_secs_f64() >= 2.0);
        if due || done == total {
            last.insert(id.to_string(), now);
            tracing::info!(stage = id, done, total, "progress");
        }
    }
}
