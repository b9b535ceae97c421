//! Driving `pipelines/tiny.toml` through the binary: run / plan in a work directory.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::engine::{text, tyr_env};

pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.toml")
}

/// `tyr <verb…> pipelines/tiny.toml --workdir <work> <extra…>` with `env`.
pub fn tyr_in(work: &Path, verb: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Output {
    let p = tiny();
    let mut args: Vec<&str> = verb.to_vec();
    args.push(p.to_str().unwrap());
    args.extend(["--workdir", work.to_str().unwrap()]);
    args.extend(extra);
    tyr_env(&args, env)
}

/// `tyr plan --json` as (id, state, key) triples.
pub fn plan(work: &Path, extra: &[&str]) -> Vec<(String, String, String)> {
    let o = tyr_in(work, &["plan", "--json"], extra, &[]);
    assert!(o.status.success(), "plan failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            (s("id"), s("state"), s("key"))
        })
        .collect()
}
