//! `tyr status`: per stage of a pipeline, whether it is done, pending, running or failed, its
//! size on disk and how long it took, from the manifests (and the run log when no run holds
//! the work directory).

use serde::Serialize;

use crate::engine::graph::Graph;
use crate::engine::plan::{StageState, plan};
use crate::engine::store::index::{Attempt, AttemptState};
use crate::engine::store::{BlobState, Store};

#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub id: String,
    pub kind: String,
    /// `done`, `pending`, `running` or `failed`.
    pub state: String,
    pub size_bytes: u64,
    pub duration_s: Option<f64>,
    pub detail: String,
}

/// Status of every stage. `attempts`: the run log if it could be read (`None` while a run holds
/// the work directory; then `running_pid` names it).
pub fn status(
    graph: &Graph,
    store: &Store,
    attempts: Option<&[Attempt]>,
    running_pid: Option<&str>,
) -> Vec<StageStatus> {
    let running = if running_pid.is_some() {
        store.running()
    } else {
        Vec::new()
    };
    plan(graph, store)
        .into_iter()
        .map(|p| {
            let manifest = p
                .key
                .as_deref()
                .and_then(|k| crate::engine::Digest::parse(k).ok())
                .and_then(|k| store.read_manifest(&k).ok().flatten());
            let size_bytes = manifest
                .iter()
                .flat_map(|m| m.outputs.values())
                .filter(|o| store.output_state(o) == BlobState::Ok)
                .map(|o| o.size_bytes)
                .sum();
            let last = attempts.and_then(|a| {
                a.iter()
                    .rev()
                    .find(|a| a.pipeline == graph.header.name && a.stage == p.id)
            });
            let (state, detail) = match (p.state, last, running_pid) {
                (StageState::Cached, _, _) => ("done", String::new()),
                (_, _, Some(pid)) if running.contains(&p.id) => ("running", format!("in {pid}")),
                (_, _, Some(pid)) => ("pending", format!("waiting in the run of {pid}")),
                (_, Some(a), _) if a.state == AttemptState::Failed => {
                    ("failed", a.error.clone().unwrap_or_default())
                }
                (_, Some(a), _) if a.state == AttemptState::Abandoned => {
                    ("pending", "last attempt was interrupted".into())
                }
                _ => ("pending", p.reason.clone()),
            };
            // Under the Slurm executor, the jobs each attempt ran as (retries included).
            let detail = match p
                .key
                .as_deref()
                .and_then(|k| crate::engine::Digest::parse(k).ok())
                .and_then(|k| crate::engine::slurm::status_note(store.root(), &k))
            {
                Some(note) if detail.is_empty() => note,
                Some(note) => format!("{detail} ({note})"),
                None => detail,
            };
            StageStatus {
                id: p.id,
                kind: p.kind,
                state: state.into(),
                size_bytes,
                duration_s: manifest.map(|m| m.duration_s),
                detail,
            }
        })
        .collect()
}
