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
    rename_into(&tmp, dest, after_rename, after_dir)
}

/// Copies file `src` to `dest` durably (temp → fsync → rename → fsync folder) in pieces, never
/// holding it whole, if its BLAKE3 is `expect`; returns whether it was (a file whose bytes are
/// not `expect` is left where it is and nothing is written).
pub fn copy_verified(
    tmp_dir: &Path,
    src: &Path,
    dest: &Path,
    expect: &crate::engine::Digest,
    kind: WriteKind,
) -> Result<bool> {
    let [after_write, after_fsync, after_rename, after_dir] = kind.points();
    let mut from = File::open(src).map_err(|e| Error::io(src, e))?;
    let tmp = temp_path(tmp_dir);
    let mut to = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; COPY_PIECE];
    loop {
        let n = std::io::Read::read(&mut from, &mut buf).map_err(|e| Error::io(src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
    }
    if hasher.finalize().as_bytes() != &expect.0 {
        drop(to);
        remove_if_exists(&tmp)?;
        return Ok(false);
    }
    hit(after_write);
    to.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(to);
    hit(after_fsync);
    rename_into(&tmp, dest, after_rename, after_dir)?;
    Ok(true)
}

/// Moves file `src` (whose BLAKE3 is `digest`) to `dest` durably: fsync → rename → fsync folder,
/// or, where the two are on different filesystems, a verified copy and the source removed.
pub fn move_durably(
    tmp_dir: &Path,
    src: &Path,
    dest: &Path,
    digest: &crate::engine::Digest,
    kind: WriteKind,
) -> Result<()> {
    let [after_write, after_fsync, after_rename, after_dir] = kind.points();
    File::open(src)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(src, e))?;
    hit(after_write);
    hit(after_fsync);
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    match fs::rename(src, dest) {
        Ok(()) => {
            hit(after_rename);
            fsync_dir(parent)?;
            hit(after_dir);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            if !copy_verified(tmp_dir, src, dest, digest, kind)? {
                return Err(Error::msg(format!(
                    "{}: changed while it was moved into the store",
                    src.display()
                )));
            }
            remove_if_exists(src)
        }
        Err(e) => Err(Error::io(dest, e)),
    }
}

/// Makes `dest` a hard link to `src` durably (link at a temp path → rename → fsync folder), so
/// the two names share one copy of the bytes.
pub fn link_atomic(tmp_dir: &Path, src: &Path, dest: &Path, kind: WriteKind) -> Result<()> {
    let [_, _, after_rename, after_dir] = kind.points();
    let tmp = temp_path(tmp_dir);
    fs::hard_link(src, &tmp).map_err(|e| Error::io(&tmp, e))?;
    rename_into(&tmp, dest, after_rename, after_dir)
}

fn rename_into(
    tmp: &Path,
    dest: &Path,
    after_rename: Option<&'static str>,
    after_dir: Option<&'static str>,
) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))?;
    hit(after_rename);
    fsync_dir(parent)?;
    hit(after_dir);
    Ok(())
}

/// BLAKE3 of file `path`, read in pieces; `None` when it cannot be read (missing).
pub fn digest_of_file(path: &Path) -> Option<crate::engine::Digest> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path).ok()?).ok()?;
    Some(crate::engine::Digest(*hasher.finalize().as_bytes()))
}

/// Bytes read at a time when copying a file.
const COPY_PIECE: usize = 4 << 20;

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
