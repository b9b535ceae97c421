//! The pipeline file format (TOML). A `[pipeline]` header, any number of `[[stage]]` tables,
//! and extra top-level sections (like `[prune]`) that a registered `SectionExpander` turns into
//! stages. Parsed strictly (`deny_unknown_fields`); errors carry file, line and field.
//!
//! ```toml
//! [pipeline]
//! name = "demo"          # required; names the output folder and the run's pins
//! seed = 7               # default 0; part of every key
//! workdir = ".tyr"       # default `.tyr` beside this file; relative to this file
//! dtype = "f32"          # "f32" | "bf16"; default "f32"; part of every key
//! device = "cpu"         # "cpu" (packed f32 kernels) | "cpu-candle" | "cuda" | "cuda:N"
//!                        # (a `--features cuda` build); default "cpu"; part of every key
//! cpu_tokens = 4         # heavy CPU tokens; default: number of cores
//! gpu_tokens = 1         # model stages run at once on the GPU; default 1 with a cuda
//!                        # device, else 0
//! mem_budget_bytes = 0   # memory budget for concurrent stages, bytes (`tyr run --mem-budget
//!                        # 20G` sets it too); default (or 0): 80% of RAM or of the cgroup limit
//!
//! [pipeline.executor]    # optional; `tyr run --executor slurm …` sets the same
//! kind = "local"         # "local" (default) or "slurm"
//! partition = "gpu"      # slurm: --partition [the cluster's default]
//! slurm_opts = ["--account=X"]  # slurm: extra sbatch options, after tyr's own [none]
//! time = "04:00:00"      # slurm: --time per job [the partition's default]
//! max_attempts = 3       # slurm: jobs per stage in one run before it fails [3]
//! poll_ms = 2000         # slurm: how often Slurm is asked about jobs, ms [2000]
//! program = "/shared/bin/tyr"   # slurm: the tyr binary jobs run [this binary]
//!
//! [[stage]]
//! id = "digest"          # unique
//! kind = "hash"          # a registered kind
//! params = { rounds = 3 }
//! inputs = { src = "greeting" }   # slot = stage id, or slot = [ids…]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::registry::InputRef;
use crate::{Error, Result};

/// The `[pipeline]` table as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub cpu_tokens: Option<u32>,
    #[serde(default)]
    pub gpu_tokens: u32,
    #[serde(default)]
    pub mem_budget_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<RawExecutor>,
}

/// The `[pipeline.executor]` table as written (see the module docs for each field).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    #[serde(default)]
    pub kind: crate::engine::slurm::ExecutorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slurm_opts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
}

fn default_dtype() -> String {
    "f32".into()
}

fn default_device() -> String {
    "cpu".into()
}

/// One `[[stage]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default)]
    pub inputs: BTreeMap<String, InputRef>,
}

#[derive(Debug, Deserialize)]
struct Shape {
    pipeline: Option<RawHeader>,
    #[serde(default)]
    stage: Vec<toml::Spanned<RawStage>>,
    #[serde(flatten)]
    sections: BTreeMap<String, toml::Value>,
}

/// A parsed file before expansion and validation.
#[derive(Debug, Clone)]
pub struct RawPipeline {
    pub header: RawHeader,
    /// Stages with the 1-based line each starts at.
    pub stages: Vec<(RawStage, usize)>,
    /// Extra top-level sections with the line each starts at.
    pub sections: BTreeMap<String, (toml::Table, usize)>,
}

/// 1-based line of byte offset `at` in `src`.
pub fn line_of(src: &str, at: usize) -> usize {
    src[..at.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn section_line(src: &str, name: &str) -> usize {
    src.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("[{name}]"))
                || l.starts_with(&format!("[{name}."))
                || l.starts_with(&format!("{name} ="))
        })
        .map_or(1, |i| i + 1)
}

fn field_of(message: &str) -> String {
    // serde names the offending key in backticks ("unknown field `x`", "missing field `y`").
    message
        .split('`')
        .nth(1)
        .map_or_else(|| "syntax".to_string(), |f| f.to_string())
}

/// Parses `src` (the content of `file`).
pub fn parse(src: &str, file: &Path) -> Result<RawPipeline> {
    let shape: Shape = toml::from_str(src).map_err(|e| {
        let message = e.message().trim().to_string();
        Error::Pipeline {
            file: file.to_path_buf(),
            line: e.span().map(|s| line_of(src, s.start)),
            field: field_of(&message),
            message,
        }
    })?;
    let header = shape.pipeline.ok_or_else(|| Error::Pipeline {
        file: file.to_path_buf(),
        line: None,
        field: "pipeline".into(),
        message: "missing the `[pipeline]` header (with at least `name`)".into(),
    })?;
    let stages = shape
        .stage
        .into_iter()
        .map(|s| (line_of(src, s.span().start), s.into_inner()))
        .map(|(l, s)| (s, l))
        .collect();
    let mut sections = BTreeMap::new();
    for (name, v) in shape.sections {
        let line = section_line(src, &name);
        let toml::Value::Table(t) = v else {
            return Err(Error::Pipeline {
                file: file.to_path_buf(),
                line: Some(line),
                field: name,
                message:
                    "unknown top-level key (expected `[pipeline]`, `[[stage]]` or a section table)"
                        .into(),
            });
        };
        sections.insert(name, (t, line));
    }
    Ok(RawPipeline {
        header,
        stages,
        sections,
    })
}

/// Parses the value of a `--set key=value`: TOML if it parses (`3`, `0.5`, `true`, `"s"`,
/// `[1, 2]`), otherwise the text as a string.
pub fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_path(
    table: &mut toml::Table,
    path: &[&str],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

impl RawPipeline {
    /// Applies one `--set key=value`: `pipeline.<field>`, `<stage id>.<param>[.<sub>…]`, or
    /// `<section>.<key>[.<sub>…]`.
    pub fn apply_override(&mut self, spec: &str, file: &Path) -> Result<()> {
        let fail = |message: String| Error::Pipeline {
            file: file.to_path_buf(),
            line: None,
            field: format!("--set {spec}"),
            message,
        };
        let (key, value) = spec
            .split_once('=')
            .ok_or_else(|| fail("expected KEY=VALUE".into()))?;
        let path: Vec<&str> = key.trim().split('.').collect();
        let value = parse_value(value.trim());
        match path.as_slice() {
            ["pipeline", rest @ ..] if !rest.is_empty() => {
                let mut t = toml::Table::try_from(&self.header).map_err(|e| fail(e.to_string()))?;
                set_path(&mut t, rest, value).map_err(fail)?;
                self.header = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| fail(e.message().trim().to_string()))?;
                Ok(())
            }
            [first, rest @ ..] if !rest.is_empty() => {
                if let Some((s, _)) = self.stages.iter_mut().find(|(s, _)| s.id == *first) {
                    return set_path(&mut s.params, rest, value).map_err(fail);
                }
                if let Some((t, _)) = self.sections.get_mut(*first) {
                    return set_path(t, rest, value).map_err(fail);
                }
                let mut known: Vec<String> = vec!["pipeline".into()];
                known.extend(self.stages.iter().map(|(s, _)| s.id.clone()));
                known.extend(self.sections.keys().cloned());
                Err(fail(format!(
                    "no stage or section `{first}` (have: {})",
                    known.join(", ")
                )))
            }
            _ => Err(fail(
                "key must be `pipeline.<field>`, `<stage id>.<param>` or `<section>.<key>`".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_parse_as_toml_or_fall_back_to_text() {
        assert_eq!(parse_value("3"), toml::Value::Integer(3));
        assert_eq!(parse_value("0.25"), toml::Value::Float(0.25));
        assert_eq!(
            parse_value("hello world"),
            toml::Value::String("hello world".into())
        );
    }

    #[test]
    fn unknown_field_in_a_stage_names_its_line_and_field() {
        let src =
            "[pipeline]\nname = \"p\"\n\n[[stage]]\nid = \"a\"\nkind = \"text\"\ncolour = 1\n";
        let e = parse(src, Path::new("p.toml")).unwrap_err().to_string();
        assert!(e.contains("p.toml:7"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }
}
