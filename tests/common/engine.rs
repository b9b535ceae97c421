#![allow(dead_code)]
//! Shared helpers for the engine tests: temp work directories, pipeline text builders, and
//! running the `tyr` binary as a child process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TYR: &str = env!("CARGO_BIN_EXE_tyr");

/// A temp folder holding `pipeline.toml` and the work directory `work/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn workdir(&self) -> PathBuf {
        self.path().join("work")
    }
    pub fn pipeline(&self) -> PathBuf {
        self.path().join("pipeline.toml")
    }
    /// Writes `body` (stages) under a header with workdir `work`.
    pub fn write(&self, name: &str, body: &str) -> PathBuf {
        let text = format!(
            "[pipeline]\nname = \"{name}\"\nseed = 7\nworkdir = \"work\"\ncpu_tokens = 2\n\n{body}"
        );
        std::fs::write(self.pipeline(), text).expect("write pipeline");
        self.pipeline()
    }
}

/// The demo pipeline's stages: two chains and a fan-in, with a transient tensor, a published
/// tensor, a published summary, and a slow counter with progress records.
pub fn demo_body(count_n: u64, step_ms: u64) -> String {
    format!(
        r#"
[[stage]]
id = "greeting"
kind = "text"
params = {{ text = "hello" }}

[[stage]]
id = "digest"
kind = "hash"
params = {{ rounds = 3 }}
inputs = {{ src = "greeting" }}

[[stage]]
id = "count"
kind = "count"
params = {{ n = {count_n}, step_ms = {step_ms} }}

[[stage]]
id = "noise"
kind = "random-tensor"
params = {{ rows = 8, cols = 16, transient = true }}

[[stage]]
id = "scaled"
kind = "scale-tensor"
params = {{ factor = 2.0, publish = "scaled.safetensors" }}
inputs = {{ x = "noise" }}

[[stage]]
id = "summary"
kind = "summary"
params = {{ publish = "summary.txt" }}
inputs = {{ parts = ["digest", "count", "scaled"] }}
"#
    )
}

/// Runs `tyr args…` to completion.
pub fn tyr(args: &[&str]) -> Output {
    tyr_env(args, &[])
}

pub fn tyr_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(TYR);
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn tyr")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` with its bytes, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    b,
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The durable results of a work directory: published outputs and blobs (manifests carry
/// timestamps, so they are compared through the blobs they list instead).
pub fn results(workdir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut r: BTreeMap<String, Vec<u8>> = snapshot(&workdir.join("out"))
        .into_iter()
        .map(|(k, v)| (format!("out/{k}"), v))
        .collect();
    r.extend(
        snapshot(&workdir.join("blobs"))
            .into_iter()
            .map(|(k, v)| (format!("blobs/{k}"), v)),
    );
    r
}

/// The stage ids `tyr run` printed as `ran`.
pub fn ran(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ran "))
        .map(|l| l.trim().split(' ').next().unwrap_or("").to_string())
        .collect()
}
