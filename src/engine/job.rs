//! One attempt of one stage, on a blocking thread: record the attempt and its lease, run the
//! stage, write its blobs, write its manifest, commit the index, drop its progress record.
//! The order is what makes a crash at any instant safe: nothing counts as done before the
//! manifest is durable, and everything before it is either content-addressed (idempotent) or
//! garbage the next run clears.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::engine::artifact::{ArtifactSet, Entry, Value};
use crate::engine::fault;
use crate::engine::fsio;
use crate::engine::key::{Digest, KeyParts};
use crate::engine::stage::{DynStage, StageContext};
use crate::engine::store::Store;
use crate::engine::store::manifest::{
    ChunkRef, Manifest, OutputEntry, chunk_list_digest, now_s, output_digest, round_trip_safe,
};
use crate::{Error, Result};

/// Reports progress of running stages (progress bars, log lines).
pub trait Observer: Send + Sync {
    fn started(&self, _id: &str, _kind: &str) {}
    fn progress(&self, _id: &str, _done: u64, _total: u64) {}
    fn finished(&self, _id: &str, _outcome: &Outcome) {}
}

/// An observer that does nothing (tracing events are still emitted).
pub struct Quiet;
impl Observer for Quiet {}

/// What happened to a stage in one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Ran and committed, in seconds.
    Ran(f64),
    Cached,
    Failed(String),
    /// Not run because an input failed.
    Skipped(String),
}

pub(crate) struct Job {
    pub id: String,
    pub kind: String,
    pub pipeline: String,
    pub stage: Arc<dyn DynStage>,
    pub parts: KeyParts,
    pub inputs: BTreeMap<String, Vec<Arc<ArtifactSet>>>,
    pub store: Arc<Store>,
    pub observer: Arc<dyn Observer>,
}

/// A committed stage with its outputs still in memory for direct handoff.
pub(crate) struct Committed {
    pub manifest: Manifest,
    pub set: Arc<ArtifactSet>,
}

/// How many times an attempt whose chunk was collected before its commit runs again.
const MAX_CHUNK_RETRIES: usize = 3;

pub(crate) fn run(job: Job) -> Result<Committed> {
    let key = job.parts.key();
    let span = tracing::info_span!("stage", id = %job.id, kind = %job.kind);
    let _g = span.enter();
    let index = job.store.index();
    let attempt = match index {
        Some(ix) => Some(ix.start_attempt(&job.pipeline, &job.id, key)?),
        None => None,
    };
    let mut result = attempt_inner(&job, key);
    // Chunks are shared by content: a chunk this attempt found already in the store may have
    // been another stage's transient output, collected before this commit. Running again
    // resumes after the chunks still there and writes the rest.
    for _ in 0..MAX_CHUNK_RETRIES {
        let Err(Error::EngineChunkGone { output, chunk, .. }) = &result else {
            break;
        };
        tracing::info!(
            output,
            chunk,
            "a chunk was collected before the commit; running again"
        );
        result = attempt_inner(&job, key);
    }
    if let (Err(e), Some(ix), Some(a)) = (&result, index, attempt) {
        ix.fail(a, &e.to_string())?;
    }
    let committed = result?;
    if let (Some(ix), Some(a)) = (index, attempt) {
        ix.commit(a, &committed.manifest)?;
    }
    let progress = job.store.progress_path(&key);
    fsio::remove_if_exists(&progress)?;
    fsio::remove_dir_if_exists(&crate::engine::chunks::chunks_dir(&progress))?;
    Ok(committed)
}

fn attempt_inner(job: &Job, key: Digest) -> Result<Committed> {
    let start = Instant::now();
    tracing::info!(key = %key.short(), "stage started");
    fault::hit("stage-before-run");
    let store = &job.store;
    let observer = job.observer.clone();
    let id = job.id.clone();
    let on_progress = move |done: u64, total: u64| observer.progress(&id, done, total);
    let mut ctx = StageContext {
        stage_id: &job.id,
        seed: job.parts.seed,
        device: &job.parts.device_class,
        dtype: &job.parts.dtype,
        inputs: &job.inputs,
        progress_path: store.progress_path(&key),
        tmp_dir: store.tmp_dir(),
        on_progress: &on_progress,
        store,
    };
    let outs = job.stage.run(&mut ctx)?;
    // From here to the durable manifest, an interrupted run waits for this attempt.
    let _gate = store.commit_gate();
    let mut entries = BTreeMap::new();
    let mut set = BTreeMap::new();
    for (name, out) in outs.entries {
        if let Some(p) = &out.publish {
            check_publish_path(p).map_err(|m| Error::EngineArtifact {
                stage: job.id.clone(),
                output: name.clone(),
                message: m,
            })?;
        }
        let mut chunks = Vec::new();
        let (digest, size_bytes) = match &out.value {
            Value::File(path) => store.adopt_blob(path)?,
            Value::Chunks(list) => {
                if out.publish.is_some() {
                    return Err(Error::EngineArtifact {
                        stage: job.id.clone(),
                        output: name.clone(),
                        message: "a chunked output cannot be published".into(),
                    });
                }
                if let Some((i, _)) = list
                    .iter()
                    .enumerate()
                    .find(|(_, c)| !store.blob_has_size(&c.digest, c.size_bytes))
                {
                    return Err(Error::EngineChunkGone {
                        stage: job.id.clone(),
                        output: name.clone(),
                        chunk: i,
                    });
                }
                chunks.clone_from(list);
                (
                    chunk_list_digest(list),
                    list.iter().map(|c| c.size_bytes).sum(),
                )
            }
            v => store.put_blob(&v.encode()?)?,
        };
        let kind = out.value.kind();
        let chunk_paths = with_paths(store, &chunks);
        entries.insert(
            name.clone(),
            OutputEntry {
                kind,
                digest,
                size_bytes,
                retention: out.retention,
                publish: out.publish,
                chunks,
            },
        );
        // Consumers get a small value from memory; a file's bytes, chunks and large values
        // are read from the store (the executor keeps a committed stage's outputs until all its
        // consumers have settled, so handing over a round's variants would hold them all).
        let value = OnceLock::new();
        if !matches!(out.value, Value::File(_) | Value::Chunks(_))
            && size_bytes <= crate::engine::artifact::CACHE_BYTES
        {
            let _ = value.set(Arc::new(out.value));
        }
        set.insert(
            name,
            Entry {
                kind,
                digest,
                path: store.blob_path(&digest),
                value,
                chunks: chunk_paths,
            },
        );
    }
    let manifest = Manifest {
        key,
        parts: job.parts.clone(),
        pipeline: job.pipeline.clone(),
        stage: job.id.clone(),
        output_digest: output_digest(&entries),
        outputs: entries,
        metrics: outs.metrics,
        committed_at_s: now_s(),
        duration_s: round_trip_safe(start.elapsed().as_secs_f64(), 1e6),
    };
    store.write_manifest(&manifest)?;
    // Committed: the scratch folder's files have moved into the store; what is left goes.
    let scratch = crate::engine::stage::scratch_path(&store.tmp_dir(), &job.id);
    if let Err(e) = fsio::remove_dir_if_exists(&scratch) {
        tracing::warn!("{e}");
    }
    tracing::info!(key = %key.short(), duration_s = manifest.duration_s, "stage committed");
    Ok(Committed {
        manifest,
        set: Arc::new(ArtifactSet::new(job.id.clone(), set)),
    })
}

/// The outputs of a committed stage, read lazily from the store.
pub(crate) fn lazy_set(store: &Store, m: &Manifest, id: &str) -> Arc<ArtifactSet> {
    let entries = m
        .outputs
        .iter()
        .map(|(name, o)| {
            (
                name.clone(),
                Entry {
                    kind: o.kind,
                    digest: o.digest,
                    path: store.blob_path(&o.digest),
                    value: OnceLock::new(),
                    chunks: with_paths(store, &o.chunks),
                },
            )
        })
        .collect();
    Arc::new(ArtifactSet::new(id.to_string(), entries))
}

fn with_paths(store: &Store, chunks: &[ChunkRef]) -> Vec<(ChunkRef, std::path::PathBuf)> {
    chunks
        .iter()
        .map(|c| (*c, store.blob_path(&c.digest)))
        .collect()
}

/// Publish paths are relative and stay inside the output folder.
fn check_publish_path(p: &str) -> std::result::Result<(), String> {
    let path = std::path::Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("publish path `{p}` must be relative without `..`"))
    }
}

/// Publishes every published output of `m` into each of `out_dirs` (a sweep's stage shared by
/// several values has one folder per value): the first copy is streamed from the blob and
/// checked against its digest, the others are hard links to it (a copy where the filesystem
/// cannot link), so shared outputs take their space once. A file already holding the right
/// bytes is left as it is; a missing or corrupt blob is skipped with a warning.
pub(crate) fn publish(
    store: &Store,
    m: &Manifest,
    out_dirs: &[std::path::PathBuf],
) -> Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    for (name, o) in &m.outputs {
        let Some(rel) = &o.publish else { continue };
        let mut first: Option<std::path::PathBuf> = None;
        for dir in out_dirs {
            let dest = dir.join(rel);
            if let Some(f) = &first {
                if !same_file(f, &dest) {
                    let linked =
                        fsio::link_atomic(&store.tmp_dir(), f, &dest, fsio::WriteKind::Publish);
                    if let Err(e) = linked {
                        tracing::debug!(dest = %dest.display(), "no hard link ({e}): copying");
                        fsio::copy_verified(
                            &store.tmp_dir(),
                            f,
                            &dest,
                            &o.digest,
                            fsio::WriteKind::Publish,
                        )?;
                    }
                }
                written.push(dest);
                continue;
            }
            if fsio::digest_of_file(&dest) != Some(o.digest) {
                let src = store.blob_path(&o.digest);
                let copied = src.exists()
                    && fsio::copy_verified(
                        &store.tmp_dir(),
                        &src,
                        &dest,
                        &o.digest,
                        fsio::WriteKind::Publish,
                    )?;
                if !copied {
                    tracing::warn!(stage = %m.stage, output = %name, "not published: blob missing or corrupt");
                    break;
                }
            }
            first = Some(dest.clone());
            written.push(dest);
        }
    }
    Ok(written)
}

/// Whether two paths name one file (the same inode on the same device).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
