//! The sled index: a fast copy of every manifest, the latest key of each (pipeline, stage), and
//! the run log (attempts started / committed / failed, a lease per running attempt). Never the
//! source of truth: `reconcile` rebuilds it from `manifests/` and it can be deleted at any time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::fault;
use crate::engine::key::Digest;
use crate::engine::store::manifest::{Manifest, now_s};
use crate::{Error, Result};

/// One attempt to run a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: u64,
    pub pipeline: String,
    pub stage: String,
    pub key: Digest,
    pub pid: u32,
    pub started_at_s: f64,
    pub state: AttemptState,
    pub ended_at_s: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptState {
    Started,
    Committed,
    Failed,
    /// Started by a process that died before committing.
    Abandoned,
}

pub struct Index {
    db: sled::Db,
    path: PathBuf,
    manifests: sled::Tree,
    attempts: sled::Tree,
    leases: sled::Tree,
}

fn e(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::EngineStore {
        path: path.to_path_buf(),
        message: format!("index: {err}"),
    }
}

impl Index {
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|x| e(path, x))?;
        let tree = |name: &str| db.open_tree(name).map_err(|x| e(path, x));
        Ok(Self {
            manifests: tree("manifests")?,
            attempts: tree("attempts")?,
            leases: tree("leases")?,
            db,
            path: path.to_path_buf(),
        })
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|x| e(&self.path, x))
    }

    /// Records a started attempt and its lease; returns the attempt id.
    pub fn start_attempt(&self, pipeline: &str, stage: &str, key: Digest) -> Result<u64> {
        let id = self.db.generate_id().map_err(|x| e(&self.path, x))?;
        let a = Attempt {
            id,
            pipeline: pipeline.into(),
            stage: stage.into(),
            key,
            pid: std::process::id(),
            started_at_s: now_s(),
            state: AttemptState::Started,
            ended_at_s: None,
            error: None,
        };
        self.put_attempt(&a)?;
        self.leases
            .insert(key.hex(), &id.to_be_bytes())
            .map_err(|x| e(&self.path, x))?;
        self.flush()?;
        Ok(id)
    }

    fn put_attempt(&self, a: &Attempt) -> Result<()> {
        let v = serde_json::to_vec(a).map_err(|x| e(&self.path, x))?;
        self.attempts
            .insert(a.id.to_be_bytes(), v)
            .map_err(|x| e(&self.path, x))?;
        Ok(())
    }

    fn end_attempt(&self, id: u64, state: AttemptState, error: Option<String>) -> Result<()> {
        if let Some(mut a) = self.attempt(id)? {
            a.state = state;
            a.ended_at_s = Some(now_s());
            a.error = error;
            self.leases
                .remove(a.key.hex())
                .map_err(|x| e(&self.path, x))?;
            self.put_attempt(&a)?;
        }
        Ok(())
    }

    pub fn attempt(&self, id: u64) -> Result<Option<Attempt>> {
        match self
            .attempts
            .get(id.to_be_bytes())
            .map_err(|x| e(&self.path, x))?
        {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// Commits a stage: its manifest copy and the attempt's end, then flushes.
    pub fn commit(&self, attempt: u64, m: &Manifest) -> Result<()> {
        fault::hit("index-before-commit");
        self.manifests
            .insert(m.key.hex(), m.to_bytes())
            .map_err(|x| e(&self.path, x))?;
        self.end_attempt(attempt, AttemptState::Committed, None)?;
        self.flush()?;
        fault::hit("index-after-commit");
        Ok(())
    }

    pub fn fail(&self, attempt: u64, error: &str) -> Result<()> {
        self.end_attempt(attempt, AttemptState::Failed, Some(error.to_string()))?;
        self.flush()
    }

    /// Every attempt, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// The manifest copies by key (entries that fail to parse come back as `Err`).
    pub fn manifests(&self) -> BTreeMap<String, std::result::Result<Manifest, String>> {
        self.manifests
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    Manifest::from_bytes(&v),
                )
            })
            .collect()
    }

    pub fn manifest(&self, key: &Digest) -> Option<Manifest> {
        let v = self.manifests.get(key.hex()).ok()??;
        Manifest::from_bytes(&v).ok()
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Marks every attempt still holding a lease as abandoned. Call only while holding the
    /// work-directory lock: then no other process can be running them.
    pub fn abandon_stale_leases(&self) -> Result<usize> {
        let ids: Vec<u64> = self
            .leases
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes))
            .collect();
        for &id in &ids {
            self.end_attempt(
                id,
                AttemptState::Abandoned,
                Some("process died before commit".into()),
            )?;
        }
        self.leases.clear().map_err(|x| e(&self.path, x))?;
        self.flush()?;
        Ok(ids.len())
    }

    /// Makes the manifest copies equal to `disk` (key hex → manifest). Returns (added, removed).
    pub fn sync_manifests(&self, disk: &BTreeMap<String, Manifest>) -> Result<(usize, usize)> {
        let mut removed = 0;
        for (k, v) in self.manifests() {
            let keep = matches!((&v, disk.get(&k)), (Ok(a), Some(b)) if a == b);
            if !keep {
                self.manifests
                    .remove(k.as_bytes())
                    .map_err(|x| e(&self.path, x))?;
                removed += 1;
            }
        }
        let mut added = 0;
        for (k, m) in disk {
            if self
                .manifests
                .get(k.as_bytes())
                .map_err(|x| e(&self.path, x))?
                .is_none()
            {
                self.manifests
                    .insert(k.as_bytes(), m.to_bytes())
                    .map_err(|x| e(&self.path, x))?;
                added += 1;
            }
        }
        self.flush()?;
        Ok((added, removed))
    }
}
