//! The Slurm run log, `<workdir>/jobs/runlog.jsonl`: one JSON line per job submitted and per
//! job seen ending, appended (and fsync'd) by the lock holder alone. After a coordinator dies,
//! the next one reads it to find jobs it submitted that may still be running, and adopts them
//! instead of submitting the stage again. `tyr status` reads it without the lock. A torn last
//! line (a crash mid-append) is skipped.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::key::Digest;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Submitted {
        pipeline: String,
        stage: String,
        key: Digest,
        attempt: u32,
        job_id: String,
        at_s: f64,
    },
    /// The coordinator saw the job over: `state` is Slurm's (or the exit record's) word,
    /// `committed` whether the stage's manifest was there.
    Ended {
        key: Digest,
        attempt: u32,
        job_id: String,
        state: String,
        committed: bool,
        at_s: f64,
    },
}

/// A submitted job not yet seen ending.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenJob {
    pub job_id: String,
    pub attempt: u32,
}

pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    pub fn path_in(workdir: &Path) -> PathBuf {
        workdir.join("jobs").join("runlog.jsonl")
    }

    pub fn new(workdir: &Path) -> Self {
        Self {
            path: Self::path_in(workdir),
        }
    }

    /// Every readable event, oldest first.
    pub fn events(&self) -> Vec<Event> {
        read_events(&self.path)
    }

    pub fn append(&self, e: &Event) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|x| Error::io(dir, x))?;
        }
        let mut line = serde_json::to_vec(e).map_err(|x| Error::msg(x.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|x| Error::io(&self.path, x))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|x| Error::io(&self.path, x))
    }

    /// Per key, the latest submitted job with no `ended` event.
    pub fn open_jobs(&self) -> BTreeMap<Digest, OpenJob> {
        let mut open = BTreeMap::new();
        for e in self.events() {
            match e {
                Event::Submitted {
                    key,
                    attempt,
                    job_id,
                    ..
                } => {
                    open.insert(key, OpenJob { job_id, attempt });
                }
                Event::Ended { key, job_id, .. } => {
                    if open.get(&key).is_some_and(|o: &OpenJob| o.job_id == job_id) {
                        open.remove(&key);
                    }
                }
            }
        }
        open
    }

    /// The highest attempt number used for `key` (0 when never submitted).
    pub fn last_attempt(&self, key: &Digest) -> u32 {
        self.events()
            .iter()
            .filter_map(|e| match e {
                Event::Submitted {
                    key: k, attempt, ..
                } if k == key => Some(*attempt),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

pub fn read_events(path: &Path) -> Vec<Event> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Digest {
        Digest([b; 32])
    }

    #[test]
    fn a_job_seen_ending_is_no_longer_open_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = RunLog::new(dir.path());
        let sub = |k, a, j: &str| Event::Submitted {
            pipeline: "p".into(),
            stage: "s".into(),
            key: key(k),
            attempt: a,
            job_id: j.into(),
            at_s: 0.0,
        };
        log.append(&sub(1, 1, "10")).unwrap();
        log.append(&sub(2, 1, "11")).unwrap();
        log.append(&Event::Ended {
            key: key(1),
            attempt: 1,
            job_id: "10".into(),
            state: "CANCELLED".into(),
            committed: false,
            at_s: 0.0,
        })
        .unwrap();
        log.append(&sub(1, 2, "12")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(RunLog::path_in(dir.path()))
            .unwrap();
        f.write_all(b"{\"event\":\"submi").unwrap();
        let open = log.open_jobs();
        assert_eq!(open.len(), 2);
        assert_eq!(open[&key(1)].job_id, "12");
        assert_eq!(open[&key(2)].attempt, 1);
        assert_eq!(log.last_attempt(&key(1)), 2);
        assert_eq!(log.last_attempt(&key(3)), 0);
    }
}
