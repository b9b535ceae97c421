//! Pipeline files (TOML) → a validated `engine::Graph`. `file` parses and applies `--set`
//! overrides; this module expands extra sections through the registry's expanders (the
//! `[prune]` section is one), resolves the header, and validates the stages into the DAG.

pub mod file;
pub mod sweep;

use std::path::{Path, PathBuf};

use crate::engine::graph::{Graph, Header};
use crate::engine::registry::{ExpandContext, Registry, StageSpec};
use crate::engine::slurm::{ExecutorSettings, SlurmSettings};
use crate::{Error, Result};
pub use file::{RawExecutor, RawHeader, RawPipeline, RawStage};

/// Reads, overrides, expands and validates the pipeline at `path`. `workdir` (from the command
/// line) wins over the file's `workdir`; the default is `.tyr/` beside the file.
pub fn load(
    path: &Path,
    overrides: &[String],
    workdir: Option<&Path>,
    registry: &Registry,
) -> Result<Graph> {
    let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    load_str(&src, path, overrides, workdir, registry)
}

/// `load` on text already read (`path` names it in errors and anchors relative paths).
pub fn load_str(
    src: &str,
    path: &Path,
    overrides: &[String],
    workdir: Option<&Path>,
    registry: &Registry,
) -> Result<Graph> {
    let mut raw = file::parse(src, path)?;
    for o in overrides {
        raw.apply_override(o, path)?;
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let header = resolve_header(&raw.header, &base, workdir, path)?;
    // Input files hashed while the stages expand and key are remembered in the store, so a
    // replan (a requeued job) does not hash a large checkpoint again.
    crate::data::digest::remember_in(&header.workdir.join(DIGESTS_DIR));
    let mut specs: Vec<StageSpec> = raw
        .stages
        .iter()
        .map(|(s, line)| StageSpec {
            id: s.id.clone(),
            kind: s.kind.clone(),
            params: s.params.clone(),
            inputs: s.inputs.clone(),
            line: Some(*line),
            section: None,
            mem_bytes: None,
        })
        .collect();
    let declared: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    for (name, (table, line)) in &raw.sections {
        let Some(exp) = registry.expander(name) else {
            let mut known = vec!["pipeline".to_string(), "stage".to_string()];
            known.extend(registry.sections().iter().map(|s| s.to_string()));
            return Err(Error::Pipeline {
                file: path.to_path_buf(),
                line: Some(*line),
                field: name.clone(),
                message: format!("unknown section (known: {})", known.join(", ")),
            });
        };
        let ctx = ExpandContext {
            pipeline: &header.name,
            seed: header.seed,
            base_dir: &base,
            declared: &declared,
            mem_budget_bytes: header.mem_budget_bytes,
        };
        let generated = exp.expand(table, &ctx).map_err(|e| Error::Pipeline {
            file: path.to_path_buf(),
            line: Some(*line),
            field: format!("[{name}]"),
            message: e.to_string(),
        })?;
        specs.extend(generated.into_iter().map(|mut s| {
            s.line = s.line.or(Some(*line));
            s.section = Some(name.clone());
            s
        }));
    }
    Graph::build(header, specs, registry, path)
}

/// The memory budget when the pipeline names none: 80% of the memory this process may use
/// (the machine's RAM, or a lower cgroup limit such as a Slurm job's `--mem`), leaving room for
/// the page cache and whatever else runs; unlimited where neither can be read.
pub fn default_mem_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    match (total, cgroup) {
        (None, None) => u64::MAX,
        (a, b) => a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)) / 5 * 4,
    }
}

/// The folder of the work directory where input files' digests are remembered.
pub const DIGESTS_DIR: &str = "digests";

fn resolve_header(
    h: &RawHeader,
    base: &Path,
    workdir: Option<&Path>,
    file: &Path,
) -> Result<Header> {
    let bad = |field: &str, message: &str| Error::Pipeline {
        file: file.to_path_buf(),
        line: None,
        field: format!("pipeline.{field}"),
        message: message.to_string(),
    };
    if h.name.is_empty()
        || !h
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || h.name.starts_with('.')
    {
        return Err(bad(
            "name",
            "must be non-empty letters, digits, `-`, `_` or `.` (it names a folder)",
        ));
    }
    if let Err(e) = crate::model::compute::parse_dtype(&h.dtype) {
        return Err(bad("dtype", &e.to_string()));
    }
    // Syntax only: the GPU is opened by the stages that run the model, which under Slurm run on
    // other nodes than the one planning.
    if let Err(e) = crate::model::compute::check_device_name(&h.device) {
        return Err(bad("device", &e.to_string()));
    }
    let workdir: PathBuf = match (workdir, &h.workdir) {
        (Some(w), _) => w.to_path_buf(),
        (None, Some(w)) => base.join(w),
        (None, None) => base.join(".tyr"),
    };
    let executor = resolve_executor(h.executor.as_ref(), file)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Ok(Header {
        name: h.name.clone(),
        seed: h.seed,
        workdir,
        dtype: h.dtype.clone(),
        device: h.device.clone(),
        cpu_tokens: h.cpu_tokens.unwrap_or(cores).max(1),
        // A pipeline on a GPU runs one model stage on it at a time unless told otherwise.
        gpu_tokens: if h.gpu_tokens == 0 && h.device.starts_with("cuda") {
            1
        } else {
            h.gpu_tokens
        },
        mem_budget_bytes: h
            .mem_budget_bytes
            .filter(|&m| m > 0)
            .unwrap_or_else(default_mem_budget),
        executor,
    })
}

fn resolve_executor(raw: Option<&file::RawExecutor>, file: &Path) -> Result<ExecutorSettings> {
    let Some(r) = raw else {
        return Ok(ExecutorSettings::default());
    };
    let bad = |field: &str, message: String| Error::Pipeline {
        file: file.to_path_buf(),
        line: None,
        field: format!("pipeline.executor.{field}"),
        message,
    };
    let mut s = SlurmSettings::default();
    if let Some(p) = &r.partition {
        SlurmSettings::check_partition(p).map_err(|m| bad("partition", m))?;
        s.partition = Some(p.clone());
    }
    for o in &r.slurm_opts {
        SlurmSettings::check_opt(o).map_err(|m| bad("slurm_opts", m))?;
    }
    s.opts = r.slurm_opts.clone();
    if let Some(t) = &r.time {
        SlurmSettings::check_time(t).map_err(|m| bad("time", m))?;
        s.time = Some(t.clone());
    }
    if let Some(n) = r.max_attempts {
        SlurmSettings::check_max_attempts(n).map_err(|m| bad("max_attempts", m))?;
        s.max_attempts = n;
    }
    if let Some(ms) = r.poll_ms {
        SlurmSettings::check_poll_ms(ms).map_err(|m| bad("poll_ms", m))?;
        s.poll_ms = ms;
    }
    s.program = r.program.clone();
    Ok(ExecutorSettings {
        kind: r.kind,
        slurm: s,
    })
}
