//! The store in a work directory:
//!
//! ```text
//! <workdir>/lock                 holder's pid; flock'd while a run, verify or gc holds it
//! <workdir>/blobs/ab/cdef…       content-addressed artifacts (BLAKE3 of the bytes)
//! <workdir>/manifests/<key>.json one per committed stage: the source of truth
//! <workdir>/progress/<key>.bin   progress records of unfinished long stages
//! <workdir>/progress/<key>.chunks/ lists of the chunks an unfinished stage has written
//! <workdir>/runs/<pipeline>.json pins: stage id → key of each pipeline's latest run
//! <workdir>/index.sled/          sled index (manifest copies, run log, leases); rebuildable
//! <workdir>/tmp/                 private temp files, emptied whenever the lock is taken
//! <workdir>/out/<pipeline>/      published outputs
//! <workdir>/running.json         stages the lock holder is running (display hint only)
//! ```
//!
//! Every file is written temp → fsync → rename → fsync folder. A stage is done only when its
//! manifest is durable and every listed blob exists with the right digest.

pub mod index;
pub mod lock;
pub mod manifest;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::engine::fsio::{self, WriteKind};
use crate::engine::key::Digest;
use crate::{Error, Result};
use index::Index;
use lock::WorkdirLock;
use manifest::Manifest;

/// The state of one blob on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Ok,
    Missing,
    Corrupt,
}

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// No lock, no index: `plan`, `status`, `graph` while a run may be going.
    ReadOnly,
    /// Lock held, index untouched (opened only if it exists): `verify` without `--repair`.
    Inspect,
    /// Lock held, temp files cleared, index opened and reconciled with disk: `run`, `gc`,
    /// `verify --repair`.
    Exclusive,
}

pub struct Store {
    root: PathBuf,
    /// Where temp files are written before their rename: `<root>/tmp`, or an attempt's own
    /// folder for a worker (`open_worker`), which the coordinator's `tmp/` sweep never touches.
    tmp: PathBuf,
    _lock: Option<WorkdirLock>,
    /// Held while an attempt writes its blobs and manifest, so that an interrupted run can
    /// stop at a commit boundary (`commit_gate`).
    gate: Mutex<()>,
    index: Option<Index>,
    checked: Mutex<BTreeMap<Digest, BlobState>>,
    open_notes: Vec<String>,
}

/// Blobs up to this size are re-hashed whenever a plan checks them.
pub const FULL_HASH_LIMIT_BYTES: u64 = 256 << 20;

const DIRS: &[&str] = &["blobs", "manifests", "progress", "runs", "tmp"];

impl Store {
    pub fn open(root: &Path, mode: OpenMode) -> Result<Store> {
        let mut store = Store {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            _lock: None,
            gate: Mutex::new(()),
            index: None,
            checked: Mutex::new(BTreeMap::new()),
            open_notes: Vec::new(),
        };
        if mode == OpenMode::ReadOnly {
            return Ok(store);
        }
        fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        store._lock = Some(WorkdirLock::acquire(root)?);
        match mode {
            OpenMode::Inspect => {
                if store.index_path().exists() {
                    store.index = Some(Index::open(&store.index_path())?);
                }
            }
            _ => {
                for d in DIRS {
                    let p = root.join(d);
                    fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
                }
                store.clear_tmp()?;
                fsio::remove_if_exists(&store.running_path())?;
                store.index = Some(store.open_or_rebuild_index()?);
                store.open_notes = store.reconcile()?;
            }
        }
        Ok(store)
    }

    /// A store for one stage attempt running outside the lock holder (a Slurm job): no lock,
    /// no index, temp files in `tmp` (created here). It writes blobs, progress records and its
    /// manifest exactly as a local attempt does; the lock holder commits the index.
    pub fn open_worker(root: &Path, tmp: &Path) -> Result<Store> {
        if !root.join("manifests").is_dir() {
            return Err(Error::EngineStore {
                path: root.to_path_buf(),
                message: "not a tyr work directory (no manifests/); is it on a filesystem \
                          this node shares with the coordinator?"
                    .into(),
            });
        }
        fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
        Ok(Store {
            root: root.to_path_buf(),
            tmp: tmp.to_path_buf(),
            _lock: None,
            gate: Mutex::new(()),
            index: None,
            checked: Mutex::new(BTreeMap::new()),
            open_notes: Vec::new(),
        })
    }

    /// Taken around an attempt's blob and manifest writes; whoever holds it knows no commit is
    /// half written.
    pub fn commit_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.gate.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.sled")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.tmp.clone()
    }
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let h = d.hex();
        self.root.join("blobs").join(&h[..2]).join(&h[2..])
    }
    pub fn manifest_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(format!("{}.json", key.hex()))
    }
    pub fn progress_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("progress")
            .join(format!("{}.bin", key.hex()))
    }
    pub fn pins_path(&self, pipeline: &str) -> PathBuf {
        self.root.join("runs").join(format!("{pipeline}.json"))
    }
    pub fn out_dir(&self, pipeline: &str) -> PathBuf {
        self.root.join("out").join(pipeline)
    }
    /// What opening the store repaired (see `reconcile`).
    pub fn open_notes(&self) -> &[String] {
        &self.open_notes
    }
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    fn clear_tmp(&self) -> Result<()> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            fsio::remove_if_exists(&entry.path())?;
        }
        Ok(())
    }

    fn open_or_rebuild_index(&self) -> Result<Index> {
        let path = self.index_path();
        match Index::open(&path) {
            Ok(i) => Ok(i),
            Err(err) => {
                let aside = self
                    .root
                    .join(format!("index.sled.broken-{}", std::process::id()));
                tracing::warn!(error = %err, aside = %aside.display(), "index unreadable; moving it aside and rebuilding");
                fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
                Index::open(&path)
            }
        }
    }

    /// Brings the index in line with disk after a crash: abandons leases of dead attempts,
    /// restores unreadable manifests from the index copy when it is intact, drops the rest,
    /// and makes the index's manifest copies equal to the manifests on disk.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let Some(index) = &self.index else {
            return Ok(notes);
        };
        let n = index.abandon_stale_leases()?;
        if n > 0 {
            notes.push(format!("abandoned {n} attempt(s) of a process that died"));
        }
        let (_, bad) = self.disk_manifests();
        for (path, why) in bad {
            let key = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| Digest::parse(s).ok());
            match key.and_then(|k| index.manifest(&k)) {
                Some(copy) => {
                    self.write_manifest(&copy)?;
                    notes.push(format!(
                        "restored {} ({why}) from the index copy",
                        path.display()
                    ));
                }
                None => {
                    fsio::remove_if_exists(&path)?;
                    notes.push(format!(
                        "removed {} ({why}); its stage will run again",
                        path.display()
                    ));
                }
            }
        }
        let (disk, _) = self.disk_manifests();
        let (added, removed) = index.sync_manifests(&disk)?;
        if added + removed > 0 {
            notes.push(format!(
                "index: {added} manifest(s) added, {removed} removed to match disk"
            ));
        }
        for n in &notes {
            tracing::info!("{n}");
        }
        Ok(notes)
    }

    /// Writes `bytes` as a blob (skipped when an intact copy exists); returns digest and size.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let d = Digest::of(bytes);
        if self.check_blob_uncached(&d) != BlobState::Ok {
            fsio::write_atomic(&self.tmp_dir(), &self.blob_path(&d), bytes, WriteKind::Blob)?;
        }
        self.remember(d, BlobState::Ok);
        Ok((d, bytes.len() as u64))
    }

    /// Moves file `path` into the store as a blob, hashed in pieces and never read whole
    /// (renamed into place on the store's filesystem, copied across filesystems); when an
    /// intact copy exists the file is removed instead. Returns digest and size.
    pub fn adopt_blob(&self, path: &Path) -> Result<(Digest, u64)> {
        let size = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        let d = fsio::digest_of_file(path)
            .ok_or_else(|| Error::msg(format!("{}: cannot be read back", path.display())))?;
        if self.check_blob_uncached(&d) == BlobState::Ok {
            fsio::remove_if_exists(path)?;
        } else {
            fsio::move_durably(
                &self.tmp_dir(),
                path,
                &self.blob_path(&d),
                &d,
                WriteKind::Blob,
            )?;
        }
        self.remember(d, BlobState::Ok);
        Ok((d, size))
    }

    fn remember(&self, d: Digest, s: BlobState) {
        if let Ok(mut c) = self.checked.lock() {
            c.insert(d, s);
        }
    }

    /// Whether the blob exists with the right digest (hashes it; cached per store handle).
    pub fn check_blob(&self, d: &Digest) -> BlobState {
        if let Some(s) = self.checked.lock().ok().and_then(|c| c.get(d).copied()) {
            return s;
        }
        let s = self.check_blob_uncached(d);
        self.remember(*d, s);
        s
    }

    /// The cheap check used to decide whether a stage is done: a blob of the expected size
    /// is re-hashed only up to `FULL_HASH_LIMIT_BYTES`; larger ones are trusted by size here
    /// (re-hashing hundreds of GB on every `tyr plan` is not an option) and are still verified
    /// when a consumer reads them and by `tyr verify`.
    pub fn check_blob_sized(&self, d: &Digest, size_bytes: u64) -> BlobState {
        match fs::metadata(self.blob_path(d)) {
            Err(_) => BlobState::Missing,
            Ok(m) if m.len() != size_bytes => BlobState::Corrupt,
            Ok(m) if m.len() > FULL_HASH_LIMIT_BYTES => BlobState::Ok,
            Ok(_) => self.check_blob(d),
        }
    }

    fn check_blob_uncached(&self, d: &Digest) -> BlobState {
        // Hashed in pieces: a blob can be as large as an exported model.
        match fsio::digest_of_file(&self.blob_path(d)) {
            Some(x) if x == *d => BlobState::Ok,
            Some(_) => BlobState::Corrupt,
            None => BlobState::Missing,
        }
    }

    /// Whether blob `d` exists with `size_bytes` bytes, without reading it: how a chunked
    /// output's chunks are checked where re-hashing them all would read a whole activation set
    /// (a consumer still checks each chunk's digest when it reads it, and `tyr verify` all).
    pub fn blob_has_size(&self, d: &Digest, size_bytes: u64) -> bool {
        fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() == size_bytes)
    }

    /// The state of a committed output's blobs as a plan sees it: `check_blob_sized` for one
    /// blob; for chunks, their sizes only (`blob_has_size`): `Corrupt` when one has the wrong
    /// size, else `Missing` when any is gone (a collected transient, or one whose collection
    /// was interrupted).
    pub fn output_state(&self, o: &manifest::OutputEntry) -> BlobState {
        if o.kind != crate::engine::ArtifactKind::Chunks {
            return self.check_blob_sized(&o.digest, o.size_bytes);
        }
        let mut state = BlobState::Ok;
        for c in &o.chunks {
            match fs::metadata(self.blob_path(&c.digest)) {
                Err(_) => state = BlobState::Missing,
                Ok(m) if m.len() != c.size_bytes => return BlobState::Corrupt,
                Ok(_) => {}
            }
        }
        state
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        fsio::remove_if_exists(&p)?;
        self.remember(*d, BlobState::Missing);
        Ok(())
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        fsio::write_atomic(
            &self.tmp_dir(),
            &self.manifest_path(&m.key),
            &m.to_bytes(),
            WriteKind::Manifest,
        )
    }

    /// `Ok(None)`: no manifest; `Err`: present but unreadable (why).
    pub fn read_manifest(&self, key: &Digest) -> std::result::Result<Option<Manifest>, String> {
        match fs::read(self.manifest_path(key)) {
            Ok(b) => Manifest::from_bytes(&b).and_then(|m| {
                if m.key == *key {
                    Ok(Some(m))
                } else {
                    Err("file name does not match its key".into())
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every readable manifest by key hex, and every unreadable one with why.
    pub fn disk_manifests(&self) -> (BTreeMap<String, Manifest>, Vec<(PathBuf, String)>) {
        let mut good = BTreeMap::new();
        let mut bad = Vec::new();
        let dir = self.root.join("manifests");
        let Ok(entries) = fs::read_dir(&dir) else {
            return (good, bad);
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let Some(key) = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| Digest::parse(s).ok())
            else {
                continue;
            };
            match self.read_manifest(&key) {
                Ok(Some(m)) => {
                    good.insert(key.hex(), m);
                }
                Ok(None) => {}
                Err(why) => bad.push((p, why)),
            }
        }
        (good, bad)
    }

    /// Stage id → key of the latest committed run of `pipeline`.
    pub fn pins(&self, pipeline: &str) -> BTreeMap<String, Digest> {
        fs::read(self.pins_path(pipeline))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Every pipeline's pins.
    pub fn all_pins(&self) -> BTreeMap<String, BTreeMap<String, Digest>> {
        let dir = self.root.join("runs");
        let Ok(entries) = fs::read_dir(&dir) else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let name = p.file_stem()?.to_str()?.to_string();
                (p.extension()? == "json").then(|| (name.clone(), self.pins(&name)))
            })
            .collect()
    }

    /// Records which stages are running now, for `tyr status` from another process while the
    /// index is held. Best effort and not durable: it is only a display hint.
    pub fn write_running(&self, ids: &[&str]) {
        let tmp = fsio::temp_path(&self.tmp_dir());
        let body = serde_json::to_vec(ids).unwrap_or_default();
        if std::fs::write(&tmp, body)
            .and_then(|_| fs::rename(&tmp, self.running_path()))
            .is_err()
        {
            tracing::debug!("could not update running.json");
        }
    }

    /// The stages the lock holder said were running (empty when none or unreadable).
    pub fn running(&self) -> Vec<String> {
        fs::read(self.running_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn running_path(&self) -> PathBuf {
        self.root.join("running.json")
    }

    pub fn write_pins(&self, pipeline: &str, pins: &BTreeMap<String, Digest>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(pins).map_err(|e| Error::msg(e.to_string()))?;
        fsio::write_atomic(
            &self.tmp_dir(),
            &self.pins_path(pipeline),
            &bytes,
            WriteKind::Plain,
        )
    }
}
