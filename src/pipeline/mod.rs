//! Pipeline files (TOML) → a validated `engine::Graph`. `file` parses and applies `--set`
//! overrides; this module expands extra sections through the registry's expanders (the
//! `[prune]` section is one), resolves the header, and validates the stages into the DAG.

pub mod file;

use std::path::{Path, PathBuf};

use crate::engine::graph::{Graph, Header};
use crate::engine::registry::{ExpandContext, Registry, StageSpec};
use crate::{Error, Result};
pub use file::{RawHeader, RawPipeline, RawStage};

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
    let workdir: PathBuf = match (workdir, &h.workdir) {
        (Some(w), _) => w.to_path_buf(),
        (None, Some(w)) => base.join(w),
        (None, None) => base.join(".tyr"),
    };
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
        gpu_tokens: h.gpu_tokens,
        mem_budget_bytes: h.mem_budget_bytes.filter(|&m| m > 0).unwrap_or(u64::MAX),
    })
}
