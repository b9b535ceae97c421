//! One process per work directory. `tyr run` (and `verify`, `gc`) hold an exclusive advisory
//! lock on `<workdir>/lock` and write their pid into it. The OS drops the lock when the holder
//! dies, however it dies, so a stale lock of a dead process is recovered simply by locking again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The held lock; released on drop.
#[derive(Debug)]
pub struct WorkdirLock {
    file: File,
    path: PathBuf,
}

impl WorkdirLock {
    /// Takes the lock or fails with `EngineLocked` naming the holder.
    pub fn acquire(workdir: &Path) -> Result<Self> {
        let path = workdir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::EngineLocked {
                    workdir: workdir.to_path_buf(),
                    holder: holder(&path),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        if !previous.trim().is_empty() {
            tracing::info!(
                previous = previous.trim(),
                "recovered the lock of a process that is gone"
            );
        }
        let me = format!(
            "pid {} (tyr {})\n",
            std::process::id(),
            env!("CARGO_PKG_VERSION")
        );
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { file, path })
    }
}

/// Who holds the lock at `path`, as written by the holder.
pub fn holder(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "another tyr process".to_string(),
    }
}

impl Drop for WorkdirLock {
    fn drop(&mut self) {
        // Empty the file so the next holder does not report a stale holder; the lock itself
        // goes away with the handle.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
        tracing::debug!(path = %self.path.display(), "released work directory lock");
    }
}
