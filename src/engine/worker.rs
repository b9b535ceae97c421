//! One stage attempt in a process of its own (`tyr exec-stage`, what a Slurm job runs). The
//! coordinator writes a job spec, `<workdir>/jobs/<key>/spec.json`: the stage's kind, params,
//! key parts and the keys of its inputs' manifests. The worker rebuilds the stage from the
//! registry, checks it builds to the same key parts (the same tyr on every node), reads its
//! inputs from the store, runs, and writes blobs and manifest exactly as a local attempt does
//! (temp → fsync → rename), with temp files in its attempt folder. It takes no lock and never
//! touches the index: the coordinator commits. Last it writes an exit record saying how it
//! ended. A requeued job whose stage is already committed exits at once.
//!
//! ```text
//! <workdir>/jobs/<key>/spec.json              what to run (written by the coordinator)
//! <workdir>/jobs/<key>/<attempt>/job.sh       the batch script sbatch got
//! <workdir>/jobs/<key>/<attempt>/slurm-<id>.out  the job's stdout and stderr
//! <workdir>/jobs/<key>/<attempt>/exit.json    the exit record (written by the worker)
//! <workdir>/jobs/<key>/<attempt>/tmp/         the worker's temp files
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::fsio::{self, WriteKind};
use crate::engine::job::{self, Job, Quiet};
use crate::engine::key::{Digest, KeyParts};
use crate::engine::plan::{Lookup, lookup};
use crate::engine::registry::Registry;
use crate::engine::store::Store;
use crate::{Error, Result};

/// What a worker needs to rebuild and run one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    /// The stage's params table as TOML text.
    pub params_toml: String,
    pub parts: KeyParts,
    /// Slot → (upstream stage id, upstream manifest key), in binding order.
    pub inputs: BTreeMap<String, Vec<(String, Digest)>>,
}

/// How a worker ended, as it says itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitOutcome {
    Committed,
    /// The stage was committed before this attempt started (a requeued or duplicate job).
    AlreadyCommitted,
    /// The stage itself returned an error (running it again gives the same error).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub outcome: ExitOutcome,
    #[serde(default)]
    pub error: Option<String>,
    pub host: String,
    pub job_id: Option<String>,
    pub pid: u32,
}

pub fn jobs_dir(workdir: &Path) -> PathBuf {
    workdir.join("jobs")
}
pub fn key_dir(workdir: &Path, key: &Digest) -> PathBuf {
    jobs_dir(workdir).join(key.hex())
}
pub fn spec_path(workdir: &Path, key: &Digest) -> PathBuf {
    key_dir(workdir, key).join("spec.json")
}
pub fn attempt_dir(workdir: &Path, key: &Digest, attempt: u32) -> PathBuf {
    key_dir(workdir, key).join(attempt.to_string())
}
pub fn exit_path(workdir: &Path, key: &Digest, attempt: u32) -> PathBuf {
    attempt_dir(workdir, key, attempt).join("exit.json")
}

pub fn write_spec(store: &Store, spec: &JobSpec) -> Result<()> {
    let key = spec.parts.key();
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| Error::msg(e.to_string()))?;
    fsio::write_atomic(
        &store.tmp_dir(),
        &spec_path(store.root(), &key),
        &bytes,
        WriteKind::Plain,
    )
}

pub fn read_exit(workdir: &Path, key: &Digest, attempt: u32) -> Option<ExitRecord> {
    let b = std::fs::read(exit_path(workdir, key, attempt)).ok()?;
    serde_json::from_slice(&b).ok()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs attempt `attempt` of the stage with key `key`. `Ok` with the outcome; the exit record is
/// written in every case the process lives to write it.
pub fn exec(
    workdir: &Path,
    key: &Digest,
    attempt: u32,
    registry: &Registry,
) -> Result<ExitOutcome> {
    let tmp = attempt_dir(workdir, key, attempt).join("tmp");
    let store = Arc::new(Store::open_worker(workdir, &tmp)?);
    let result = exec_inner(&store, key, registry);
    let (outcome, error) = match &result {
        Ok(o) => (*o, None),
        Err(e) => (ExitOutcome::Failed, Some(e.to_string())),
    };
    let record = ExitRecord {
        outcome,
        error,
        host: host(),
        job_id: std::env::var("SLURM_JOB_ID").ok(),
        pid: std::process::id(),
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::msg(e.to_string()))?;
    fsio::write_atomic(
        &tmp,
        &exit_path(workdir, key, attempt),
        &bytes,
        WriteKind::Plain,
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn exec_inner(store: &Arc<Store>, key: &Digest, registry: &Registry) -> Result<ExitOutcome> {
    let path = spec_path(store.root(), key);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let spec: JobSpec = serde_json::from_slice(&bytes).map_err(|e| Error::EngineStore {
        path: path.clone(),
        message: format!("job spec unreadable: {e}"),
    })?;
    if spec.parts.key() != *key {
        return Err(Error::EngineStore {
            path,
            message: format!(
                "job spec is for key {}, not {}",
                spec.parts.key().short(),
                key.short()
            ),
        });
    }
    if let Lookup::Done { .. } = lookup(store, &spec.parts, None) {
        tracing::info!(stage = %spec.stage, key = %key.short(), "already committed; nothing to do");
        return Ok(ExitOutcome::AlreadyCommitted);
    }
    let fail = |message: String| Error::EngineStage {
        stage: spec.stage.clone(),
        message,
    };
    let params: toml::Table = toml::from_str(&spec.params_toml)
        .map_err(|e| fail(format!("params in the job spec: {}", e.message())))?;
    let built = registry.instantiate(&spec.kind, &params)?;
    let code: BTreeMap<String, u32> = built
        .stage
        .code_versions()
        .iter()
        .map(|&(n, v)| (n.to_string(), v))
        .collect();
    if built.params_json != spec.parts.params
        || built.stage.version() != spec.parts.version
        || built.stage.kind() != spec.parts.kind
        || code != spec.parts.code
    {
        return Err(fail(
            "this tyr builds the stage to different key parts than the coordinator's did \
             (kind version, params or code versions differ); run the same tyr binary on every node"
                .into(),
        ));
    }
    let mut inputs = BTreeMap::new();
    for (slot, from) in &spec.inputs {
        let mut sets = Vec::new();
        for (id, k) in from {
            let m = match store.read_manifest(k) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(fail(format!(
                        "input `{id}` (key {}) has no manifest",
                        k.short()
                    )));
                }
                Err(why) => return Err(fail(format!("input `{id}`: manifest unreadable: {why}"))),
            };
            sets.push(job::lazy_set(store, &m, id));
        }
        inputs.insert(slot.clone(), sets);
    }
    job::run(Job {
        id: spec.stage.clone(),
        kind: spec.kind.clone(),
        pipeline: spec.pipeline.clone(),
        stage: built.stage,
        parts: spec.parts.clone(),
        inputs,
        store: store.clone(),
        observer: Arc::new(Quiet),
    })?;
    Ok(ExitOutcome::Committed)
}
