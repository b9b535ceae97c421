//! `tyr verify [--repair]` and `tyr gc`. Verify re-hashes every blob, parses every manifest and
//! compares the sled index with disk; repair drops what is corrupt (the stages concerned run
//! again), restores manifests from intact index copies, and rebuilds the index. Gc deletes
//! manifests no pinned run references, then blobs no manifest references.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Result;
use crate::engine::artifact::Retention;
use crate::engine::fsio;
use crate::engine::key::Digest;
use crate::engine::store::{BlobState, Store};

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Things that are wrong (empty: the store is sound).
    pub problems: Vec<String>,
    /// Harmless observations (leftover temp files, unreferenced blobs).
    pub notes: Vec<String>,
    /// What `--repair` did.
    pub repaired: Vec<String>,
}

/// Every blob file on disk with the digest its path names (`None`: not a blob name).
fn blob_files(store: &Store) -> Vec<(PathBuf, Option<Digest>)> {
    let mut out = Vec::new();
    let root = store.root().join("blobs");
    let Ok(dirs) = fs::read_dir(&root) else {
        return out;
    };
    for d in dirs.flatten() {
        let prefix = d.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            out.push((f.path(), Digest::parse(&format!("{prefix}{name}")).ok()));
        }
    }
    out.sort();
    out
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|r| r.flatten().count()).unwrap_or(0)
}

/// Checks the store. Open it with `OpenMode::Inspect` to see it as it is.
pub fn verify(store: &Store) -> VerifyReport {
    let mut r = VerifyReport::default();
    let (disk, bad) = store.disk_manifests();
    for (p, why) in &bad {
        r.problems
            .push(format!("manifest {} is unreadable: {why}", p.display()));
    }
    let mut referenced = BTreeSet::new();
    let mut collected = 0;
    for m in disk.values() {
        for (name, o) in &m.outputs {
            let mut missing = false;
            for b in o.blobs() {
                referenced.insert(b.digest);
                match (store.check_blob(&b.digest), o.retention) {
                    (BlobState::Ok, _) => {}
                    (BlobState::Missing, Retention::Transient) => missing = true,
                    (BlobState::Missing, Retention::Keep) => r.problems.push(format!(
                        "stage `{}` output `{name}`: blob {} is missing",
                        m.stage,
                        b.digest.short()
                    )),
                    (BlobState::Corrupt, _) => r.problems.push(format!(
                        "stage `{}` output `{name}`: blob {} is corrupt",
                        m.stage,
                        b.digest.short()
                    )),
                }
            }
            if missing {
                collected += 1;
            }
        }
    }
    let mut unreferenced = 0;
    for (path, digest) in blob_files(store) {
        match digest {
            None => r
                .problems
                .push(format!("{} is not a blob name", path.display())),
            Some(d) if !referenced.contains(&d) => {
                if store.check_blob(&d) == BlobState::Corrupt {
                    r.problems
                        .push(format!("unreferenced blob {} is corrupt", d.short()));
                }
                unreferenced += 1;
            }
            Some(_) => {}
        }
    }
    match store.index() {
        None => r
            .problems
            .push(format!("index {} is missing", store.index_path().display())),
        Some(ix) => {
            let copies = ix.manifests();
            for (k, m) in &disk {
                match copies.get(k) {
                    Some(Ok(c)) if c == m => {}
                    Some(_) => r.problems.push(format!(
                        "index copy of manifest {} differs from disk",
                        &k[..12]
                    )),
                    None => r.problems.push(format!(
                        "index lacks manifest {} (stage `{}`)",
                        &k[..12],
                        m.stage
                    )),
                }
            }
            for k in copies.keys().filter(|k| !disk.contains_key(*k)) {
                r.problems.push(format!(
                    "index lists manifest {} that is not on disk",
                    &k[..k.len().min(12)]
                ));
            }
            let leases = ix.lease_count();
            if leases > 0 {
                r.notes.push(format!(
                    "{leases} lease(s) of attempts whose process died (cleared by the next run)"
                ));
            }
        }
    }
    if collected > 0 {
        r.notes
            .push(format!("{collected} transient blob(s) already collected"));
    }
    if unreferenced > 0 {
        r.notes.push(format!(
            "{unreferenced} blob(s) no manifest references (`tyr gc` removes them)"
        ));
    }
    let tmp = count_files(&store.tmp_dir());
    if tmp > 0 {
        r.notes.push(format!(
            "{tmp} temp file(s) of an interrupted write (cleared by the next run)"
        ));
    }
    r
}

/// Repairs the store (open it with `OpenMode::Exclusive`, which already rebuilt the index and
/// restored or dropped unreadable manifests): deletes corrupt blobs and the manifests that
/// need a missing or corrupt blob, then checks again.
pub fn repair(store: &Store, opened_notes: Vec<String>) -> Result<VerifyReport> {
    let mut repaired = opened_notes;
    let (disk, _) = store.disk_manifests();
    for (path, digest) in blob_files(store) {
        match digest {
            Some(d) if store.check_blob(&d) == BlobState::Corrupt => {
                store.remove_blob(&d)?;
                repaired.push(format!("deleted corrupt blob {}", d.short()));
            }
            None => {
                fsio::remove_if_exists(&path)?;
                repaired.push(format!("deleted stray file {}", path.display()));
            }
            _ => {}
        }
    }
    for m in disk.values() {
        let broken = m.outputs.iter().find(|(_, o)| {
            o.retention == Retention::Keep
                && o.blobs()
                    .iter()
                    .any(|b| store.check_blob(&b.digest) != BlobState::Ok)
        });
        if let Some((name, _)) = broken {
            fsio::remove_if_exists(&store.manifest_path(&m.key))?;
            repaired.push(format!(
                "dropped stage `{}` (output `{name}` lost); the next run redoes it",
                m.stage
            ));
        }
    }
    repaired.extend(store.reconcile()?);
    let mut r = verify(store);
    r.repaired = repaired;
    Ok(r)
}

/// What gc removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub manifests_removed: usize,
    pub blobs_removed: usize,
    /// Slurm job folders (`jobs/<key>/`: spec, scripts, logs) of stages that have committed.
    pub job_dirs_removed: usize,
    pub bytes_freed: u64,
}

/// Deletes manifests no pinned run references, blobs no remaining manifest references, and
/// progress records and Slurm job folders of stages that have committed (the run log
/// `jobs/runlog.jsonl` stays: it is small and says what was submitted). Open the store with
/// `OpenMode::Exclusive`.
pub fn gc(store: &Store) -> Result<GcReport> {
    let mut r = GcReport::default();
    let pinned: BTreeSet<Digest> = store
        .all_pins()
        .into_values()
        .flat_map(|p| p.into_values())
        .collect();
    let (disk, _) = store.disk_manifests();
    // Stages that committed, whether or not their manifest survives below.
    let committed: BTreeSet<String> = disk.keys().cloned().collect();
    let mut live = BTreeSet::new();
    for m in disk.values() {
        if pinned.contains(&m.key) {
            live.extend(m.outputs.values().flat_map(|o| o.blobs()).map(|b| b.digest));
        } else {
            let p = store.manifest_path(&m.key);
            r.bytes_freed += fs::metadata(&p).map(|x| x.len()).unwrap_or(0);
            fsio::remove_if_exists(&p)?;
            r.manifests_removed += 1;
        }
    }
    for (path, digest) in blob_files(store) {
        if digest.is_some_and(|d| live.contains(&d)) {
            continue;
        }
        r.bytes_freed += fs::metadata(&path).map(|x| x.len()).unwrap_or(0);
        match digest {
            Some(d) => store.remove_blob(&d)?,
            None => fsio::remove_if_exists(&path)?,
        }
        r.blobs_removed += 1;
    }
    let (disk, _) = store.disk_manifests();
    if let Ok(entries) = fs::read_dir(store.root().join("progress")) {
        for e in entries.flatten() {
            let p = e.path();
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if disk.contains_key(&stem) {
                if p.is_dir() {
                    fsio::remove_dir_if_exists(&p)?;
                } else {
                    fsio::remove_if_exists(&p)?;
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(store.root().join("jobs")) {
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() && committed.contains(&name) {
                r.bytes_freed += dir_bytes(&p);
                fsio::remove_dir_if_exists(&p)?;
                r.job_dirs_removed += 1;
            }
        }
    }
    if let Ok(entries) = fs::read_dir(store.root()) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("index.sled.broken-")
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    store.reconcile()?;
    Ok(r)
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
