//! Durable file writes: every file the store creates is written to a private temp path,
//! fsynced, renamed into place and its folder fsynced, so a crash leaves either the old state or
//! the complete new file, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::fault;
use crate::{Error, Result};

/// Which fault points a write passes (blob, manifest, progress or publish).
#[derive(Debug, Clone, Copy)]
pub enum WriteKind {
    Blob,
    Manifest,
    Progress,
    Publish,
    /// Small bookkeeping files (pins) with no fault points.
    Plain,
}

impl WriteKind {
    fn points(self) -> [Option<&'static str>; 4] {
        match self {
            WriteKind::Blob => [
                Some("blob-after-temp-write"),
                Some("blob-after-temp-fsync"),
                Some("blob-after-rename"),
                Some("blob-after-dir-fsync"),
            ],
            WriteKind::Manifest => [
                Some("manifest-after-temp-write"),
                Some("manifest-after-temp-fsync"),
                Some("manifest-after-rename"),
                Some("manifest-after-dir-fsync"),
            ],
            WriteKind::Progress => [None, None, Some("progress-after-rename"), None],
            WriteKind::Publish => [None, None, Some("publish-after-rename"), None],
            WriteKind::Plain => [None, None, None, None],
        }
    }
}

fn hit(p: Option<&'static str>) {
    if let Some(p) = p {
        fault::hit(p);
    }
}

/// A temp path in `tmp_dir` unique within this process (the work-directory lock makes it
/// unique across processes too).
pub fn temp_path(tmp_dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{}-{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `dest` durably: temp → fsync → rename → fsync folder.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8], kind: WriteKind) -> Result<()> {
    let [after_write, after_fsync, after_rename, after_dir] = kind.points();
    let tmp = temp_path(tmp_dir);
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    hit(after_write);
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    hit(after_fsync);
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    hit(after_rename);
    fsync_dir(parent)?;
    hit(after_dir);
    Ok(())
}

/// Fsyncs a folder so a rename or delete inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Removes a folder and everything in it if it exists.
pub fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
