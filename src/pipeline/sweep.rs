//! Sweeps: `--sweep KEY=V1,V2,…` runs one pipeline at several values of one key as one DAG.
//!
//! The pipeline is loaded once per value, exactly as `--set KEY=V` would load it. Each stage's
//! *recipe* is the key it will have, computed before anything runs by standing in the inputs'
//! recipes for their output digests (kind, version, params, external fingerprint, code versions
//! and, recursively, everything upstream). Stages of equal id and recipe are one node, so what
//! does not depend on the swept key — model, pool, teacher, round 1 — exists once, and each value
//! gets its own chain from the first stage the key reaches. A node's published outputs go to
//! `out/<name>/sweep/<KEY>=<value>/` for every value it belongs to, so each value's folder holds a
//! whole run's outputs; a node of only some values is named `<KEY>=<v1,v2>/<id>`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::graph::{Graph, Header, Node};
use crate::engine::key::Digest;
use crate::engine::plan::key_parts;
use crate::engine::registry::Registry;
use crate::{Error, Result};

/// At most this many values in one sweep (each is a whole chain of stages).
pub const MAX_VALUES: usize = 64;

/// One swept key and its values, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub key: String,
    pub values: Vec<String>,
}

impl Sweep {
    /// `prune.target=0.3,0.4,0.5`. The key is checked when the pipeline is loaded (it must be
    /// one `--set` accepts); here only the shape and the values, which name folders.
    pub fn parse(spec: &str) -> std::result::Result<Sweep, String> {
        let (key, values) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}`: expected KEY=V1,V2,…"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{spec}`: the key is empty"));
        }
        if key == "pipeline" || key.starts_with("pipeline.") {
            return Err(format!(
                "`{key}`: a sweep varies a stage parameter or a section key; the `[pipeline]` \
                 header (name, seed, work directory, …) is one for the whole run"
            ));
        }
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.len() > MAX_VALUES {
            return Err(format!(
                "{} values; a sweep takes at most {MAX_VALUES}",
                values.len()
            ));
        }
        for (i, v) in values.iter().enumerate() {
            let ok = !v.is_empty()
                && !v.starts_with('.')
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
            if !ok {
                return Err(format!(
                    "value `{v}`: a swept value names a folder, so it must be non-empty \
                     letters, digits, `.`, `-`, `_` or `+`, not starting with `.`"
                ));
            }
            if values[..i].contains(v) {
                return Err(format!("value `{v}` is given twice"));
            }
        }
        Ok(Sweep {
            key: key.to_string(),
            values,
        })
    }

    /// The folder of `value`'s outputs under `out/<name>/`: `sweep/<KEY>=<value>`.
    pub fn dir(&self, value: &str) -> String {
        format!("sweep/{}={value}", self.key)
    }
}

/// Loads the pipeline at `path` once per value of `sweep` (after `overrides`) and merges the
/// graphs into one.
pub fn load(
    path: &Path,
    overrides: &[String],
    sweep: &Sweep,
    workdir: Option<&Path>,
    registry: &Registry,
) -> Result<Graph> {
    let fail = |message: String| Error::Pipeline {
        file: path.to_path_buf(),
        line: None,
        field: format!("--sweep {}", sweep.key),
        message,
    };
    let set_key = |o: &String| o.split_once('=').map(|(k, _)| k.trim().to_string());
    if overrides
        .iter()
        .any(|o| set_key(o).as_deref() == Some(sweep.key.as_str()))
    {
        return Err(fail("the swept key is also given by --set".into()));
    }
    let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut graphs = Vec::with_capacity(sweep.values.len());
    for v in &sweep.values {
        let mut o = overrides.to_vec();
        o.push(format!("{}={v}", sweep.key));
        graphs.push(super::load_str(&src, path, &o, workdir, registry)?);
    }
    let header = graphs
        .first()
        .map(|g| g.header.clone())
        .ok_or_else(|| fail("no values".into()))?;
    Ok(merge(header, graphs, sweep))
}

/// One graph from one graph per value (`graphs[i]` loaded at `sweep.values[i]`); `header` is
/// theirs (one for all, since a sweep never varies `[pipeline]`).
fn merge(header: Header, graphs: Vec<Graph>, sweep: &Sweep) -> Graph {
    let mut nodes: Vec<Node> = Vec::new();
    // Which values each merged node belongs to, in value order.
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut by_recipe: BTreeMap<(Digest, String), usize> = BTreeMap::new();
    for (vi, g) in graphs.iter().enumerate() {
        let mut recipe: Vec<Digest> = Vec::with_capacity(g.nodes.len());
        let mut to_merged: Vec<usize> = Vec::with_capacity(g.nodes.len());
        for (i, n) in g.nodes.iter().enumerate() {
            let r = key_parts(g, i, |d| recipe[d]).key();
            recipe.push(r);
            let m = *by_recipe.entry((r, n.id.clone())).or_insert_with(|| {
                let mut node = n.clone();
                for b in &mut node.inputs {
                    for f in &mut b.from {
                        *f = to_merged[*f];
                    }
                }
                nodes.push(node);
                members.push(Vec::new());
                nodes.len() - 1
            });
            if !members[m].contains(&vi) {
                members[m].push(vi);
            }
            to_merged.push(m);
        }
    }
    let mut same_id: BTreeMap<String, usize> = BTreeMap::new();
    for n in &nodes {
        *same_id.entry(n.id.clone()).or_default() += 1;
    }
    for (n, vs) in nodes.iter_mut().zip(&members) {
        n.out_dirs = vs.iter().map(|&v| sweep.dir(&sweep.values[v])).collect();
        if same_id[&n.id] > 1 {
            let values: Vec<&str> = vs.iter().map(|&v| sweep.values[v].as_str()).collect();
            n.id = format!("{}={}/{}", sweep.key, values.join(","), n.id);
        }
    }
    Graph::from_ordered(header, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_spec_is_a_key_and_distinct_folder_safe_values() {
        let s = Sweep::parse("prune.target=0.3, 0.4,0.5").unwrap();
        assert_eq!(s.key, "prune.target");
        assert_eq!(s.values, ["0.3", "0.4", "0.5"]);
        assert_eq!(s.dir("0.4"), "sweep/prune.target=0.4");
        for bad in [
            "prune.target",
            "=0.3",
            "prune.target=0.3,,0.5",
            "prune.target=0.3,0.3",
            "prune.target=../x",
            "prune.target=a/b",
            "pipeline.seed=1,2",
        ] {
            assert!(Sweep::parse(bad).is_err(), "{bad} was accepted");
        }
        let many = (0..=MAX_VALUES).map(|i| i.to_string()).collect::<Vec<_>>();
        assert!(Sweep::parse(&format!("prune.rounds={}", many.join(","))).is_err());
    }
}
