//! Deciding what must run. For each stage in topological order: compute its key from its
//! inputs' output digests, look the key up in the store, and explain the verdict — `cached`,
//! `run` (with which key part changed, or which blob is missing), or `blocked` (an input must
//! run first, so the key is not known yet). Reads only disk, so it works during a run.

use serde::Serialize;

use crate::engine::artifact::Retention;
use crate::engine::graph::Graph;
use crate::engine::key::{Digest, ENGINE_FORMAT, InputDigest, KeyParts};
use crate::engine::store::manifest::Manifest;
use crate::engine::store::{BlobState, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    Cached,
    Run,
    Blocked,
}

impl std::fmt::Display for StageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageState::Cached => "cached",
            StageState::Run => "run",
            StageState::Blocked => "blocked",
        })
    }
}

/// The verdict for one stage; `tyr plan --json` prints one per line.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub id: String,
    pub kind: String,
    pub state: StageState,
    pub reason: String,
    /// Known unless blocked.
    pub key: Option<String>,
    /// The stage's declared peak memory, bytes (0: not declared), against the budget.
    pub mem_bytes: u64,
}

/// The key parts of node `i` given each input binding's upstream output digests.
pub fn key_parts(graph: &Graph, i: usize, output_digest: impl Fn(usize) -> Digest) -> KeyParts {
    let n = &graph.nodes[i];
    KeyParts {
        engine_format: ENGINE_FORMAT,
        kind: n.kind.clone(),
        version: n.stage.version(),
        params: n.params_json.clone(),
        inputs: n
            .inputs
            .iter()
            .map(|b| InputDigest {
                slot: b.slot.clone(),
                digests: b.from.iter().map(|&f| output_digest(f)).collect(),
            })
            .collect(),
        external: match n.stage.fingerprint() {
            Ok(f) => f,
            Err(e) => Some(format!("error: {e}")),
        },
        seed: graph.header.seed,
        dtype: graph.header.dtype.clone(),
        device_class: graph.header.device.clone(),
        code: n
            .stage
            .code_versions()
            .iter()
            .map(|&(name, v)| (name.to_string(), v))
            .collect(),
    }
}

/// The result of looking a key up in the store.
pub enum Lookup {
    /// Committed. `available`: every output blob is present (transient ones may be collected).
    Done {
        manifest: Box<Manifest>,
        available: bool,
    },
    /// Must run, because…
    Missing(String),
}

/// Looks `parts` up; `previous` is the key this stage id had in the pipeline's last run.
pub fn lookup(store: &Store, parts: &KeyParts, previous: Option<Digest>) -> Lookup {
    let key = parts.key();
    match store.read_manifest(&key) {
        Ok(Some(m)) => {
            let mut available = true;
            for (name, o) in &m.outputs {
                let state = store.output_state(o);
                match (state, o.retention) {
                    (BlobState::Ok, _) => {}
                    (BlobState::Missing, Retention::Transient) => available = false,
                    (BlobState::Missing, Retention::Keep) => {
                        return Lookup::Missing(format!(
                            "output `{name}` blob {} is missing",
                            o.digest.short()
                        ));
                    }
                    (BlobState::Corrupt, _) => {
                        return Lookup::Missing(format!(
                            "output `{name}` blob {} is corrupt",
                            o.digest.short()
                        ));
                    }
                }
            }
            Lookup::Done {
                manifest: Box::new(m),
                available,
            }
        }
        Err(why) => Lookup::Missing(format!("manifest {} unreadable: {why}", key.short())),
        Ok(None) => Lookup::Missing(why_new(store, parts, previous)),
    }
}

fn why_new(store: &Store, parts: &KeyParts, previous: Option<Digest>) -> String {
    let Some(prev) = previous else {
        return "never run".into();
    };
    if prev == parts.key() {
        return "its manifest is gone".into();
    }
    match store.read_manifest(&prev) {
        Ok(Some(old)) => {
            let d = parts.diff(&old.parts);
            if d.is_empty() {
                "key changed".into()
            } else {
                d.join("; ")
            }
        }
        _ => "key changed (the previous manifest is gone, so which part is unknown)".into(),
    }
}

/// A dry run over the whole graph.
pub fn plan(graph: &Graph, store: &Store) -> Vec<StagePlan> {
    let pins = store.pins(&graph.header.name);
    let n = graph.nodes.len();
    let mut state = vec![StageState::Blocked; n];
    let mut reason = vec![String::new(); n];
    let mut keys: Vec<Option<Digest>> = vec![None; n];
    let mut digests = vec![Digest([0; 32]); n];
    let mut available = vec![true; n];
    for i in 0..n {
        let node = &graph.nodes[i];
        let waiting: Vec<&str> = node
            .deps()
            .into_iter()
            .filter(|&d| state[d] != StageState::Cached)
            .map(|d| graph.nodes[d].id.as_str())
            .collect();
        if !waiting.is_empty() {
            reason[i] = format!(
                "waits for {}",
                waiting
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            continue;
        }
        let parts = key_parts(graph, i, |d| digests[d]);
        keys[i] = Some(parts.key());
        match lookup(store, &parts, pins.get(&node.id).copied()) {
            Lookup::Done {
                manifest,
                available: a,
            } => {
                state[i] = StageState::Cached;
                digests[i] = manifest.output_digest;
                available[i] = a;
                reason[i] = if manifest.pipeline == graph.header.name && manifest.stage == node.id {
                    "up to date".into()
                } else {
                    format!(
                        "reuses `{}` of pipeline `{}`",
                        manifest.stage, manifest.pipeline
                    )
                };
            }
            Lookup::Missing(why) => {
                state[i] = StageState::Run;
                reason[i] = why;
            }
        }
    }
    // A stage that runs needs its inputs' blobs; a cached input whose transient outputs were
    // collected must run again first. Walking consumers before producers lets this cascade.
    for i in (0..n).rev() {
        if state[i] == StageState::Cached {
            continue;
        }
        for d in graph.nodes[i].deps() {
            if state[d] == StageState::Cached && !available[d] {
                state[d] = StageState::Run;
                reason[d] = format!(
                    "its transient outputs were deleted and `{}` needs them",
                    graph.nodes[i].id
                );
            }
        }
    }
    (0..n)
        .map(|i| StagePlan {
            id: graph.nodes[i].id.clone(),
            kind: graph.nodes[i].kind.clone(),
            state: state[i],
            reason: std::mem::take(&mut reason[i]),
            key: keys[i].map(|k| k.hex()),
            mem_bytes: graph.nodes[i].resources.mem_bytes,
        })
        .collect()
}
