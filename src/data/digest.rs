//! BLAKE3 digests of input files (models, corpora), hashed once per file version instead of on
//! every `tyr plan` and `tyr run`: a 141 GB checkpoint takes minutes to hash, and a requeued
//! job replans it each time.
//!
//! A digest is remembered under the file's identity as the file system reports it: canonical
//! path, size, modification and status-change times (ns) and inode. Any write to the file moves
//! its status-change time, which no user tool can set back, so a remembered digest is one of
//! the bytes now on disk. Memory holds the digests seen by this process; a pipeline's work
//! directory also keeps them on disk (`<workdir>/digests/`, one small JSON file per path,
//! written by rename), so the next process reuses them. `tyr verify` re-hashes every
//! remembered file ([`verify_remembered`]). A lost or unreadable entry only means one more hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What identifies one version of a file, as the file system reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FileIdentity {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

/// One remembered digest, as stored in `<workdir>/digests/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    identity: FileIdentity,
    digest: String,
}

#[derive(Default)]
struct Memo {
    dir: Option<PathBuf>,
    seen: HashMap<FileIdentity, String>,
}

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(Memo::default()))
}

/// Keeps digests in `dir` (a pipeline's `<workdir>/digests`) from now on, in this process.
pub fn remember_in(dir: &Path) {
    if let Ok(mut m) = memo().lock() {
        m.dir = Some(dir.to_path_buf());
    }
}

fn identity(path: &Path) -> Result<FileIdentity> {
    let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    let (mtime_ns, ctime_ns, inode) = {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        (
            ns(meta.mtime(), meta.mtime_nsec()),
            ns(meta.ctime(), meta.ctime_nsec()),
            meta.ino(),
        )
    };
    #[cfg(not(unix))]
    let (mtime_ns, ctime_ns, inode) = {
        let t = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        (t, t, 0)
    };
    Ok(FileIdentity {
        path: canonical,
        size: meta.len(),
        mtime_ns,
        ctime_ns,
        inode,
    })
}

fn entry_path(dir: &Path, id: &FileIdentity) -> PathBuf {
    let name = blake3::hash(id.path.as_os_str().as_encoded_bytes()).to_hex();
    dir.join(format!("{}.json", &name[..32]))
}

fn read_entry(path: &Path) -> Option<Entry> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes an entry by rename; failures are ignored (the next process hashes again).
fn write_entry(dir: &Path, e: &Entry) {
    let target = entry_path(dir, &e.identity);
    let Ok(bytes) = serde_json::to_vec(e) else {
        return;
    };
    // Only inside an existing work directory: a dry run must not create one.
    if !dir.parent().is_some_and(Path::is_dir) {
        return;
    }
    let tmp = target.with_extension(format!("json.{}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, &bytes))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(path = %target.display(), error = %err, "digest not remembered");
    }
}

/// BLAKE3 of the bytes of `path`, computed now.
pub fn hash_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(|e| Error::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// BLAKE3 of a file's bytes, lower-case hex: remembered from an earlier hash of the same file
/// version when there is one, hashed (and remembered) otherwise.
pub fn file_digest(path: &Path) -> Result<String> {
    let dir = memo().lock().ok().and_then(|m| m.dir.clone());
    file_digest_in(path, dir.as_deref())
}

/// [`file_digest`] with the on-disk memo in `dir` (none: memory only).
fn file_digest_in(path: &Path, dir: Option<&Path>) -> Result<String> {
    let id = identity(path)?;
    if let Some(d) = memo().lock().ok().and_then(|m| m.seen.get(&id).cloned()) {
        return Ok(d);
    }
    if let Some(dir) = dir
        && let Some(e) = read_entry(&entry_path(dir, &id))
        && e.identity == id
    {
        remember(&id, &e.digest);
        return Ok(e.digest);
    }
    let digest = hash_file(path)?;
    // The file must not have changed while it was hashed.
    if identity(path)? == id {
        remember(&id, &digest);
        if let Some(dir) = dir {
            write_entry(
                dir,
                &Entry {
                    identity: id,
                    digest: digest.clone(),
                },
            );
        }
    }
    Ok(digest)
}

fn remember(id: &FileIdentity, digest: &str) {
    if let Ok(mut m) = memo().lock() {
        m.seen.insert(id.clone(), digest.to_string());
    }
}

/// What [`verify_remembered`] found.
#[derive(Debug, Default)]
pub struct RememberedCheck {
    /// Entries whose file still has the remembered identity and digest.
    pub sound: usize,
    /// Entries dropped: the file is gone or changed since (a later run hashes it again).
    pub stale: usize,
    /// Files whose bytes no longer match their remembered digest although their identity
    /// does (something rewrote them behind the file system's back); the entries are dropped.
    pub wrong: Vec<PathBuf>,
}

/// Re-hashes every file remembered in `dir`, dropping entries that no longer hold.
pub fn verify_remembered(dir: &Path) -> Result<RememberedCheck> {
    let mut out = RememberedCheck::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let drop = |p: &Path| std::fs::remove_file(p).map_err(|e| Error::io(p, e));
        let Some(entry) = read_entry(&p) else {
            drop(&p)?;
            out.stale += 1;
            continue;
        };
        match identity(&entry.identity.path) {
            Ok(id) if id == entry.identity => {
                if hash_file(&id.path)? == entry.digest {
                    out.sound += 1;
                } else {
                    drop(&p)?;
                    out.wrong.push(id.path);
                }
            }
            _ => {
                drop(&p)?;
                out.stale += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_digest_is_reused_until_the_file_changes_and_verify_rehashes_it() {
        let d = tempfile::tempdir().unwrap();
        let memo_dir = d.path().join("digests");
        let f = d.path().join("model.bin");
        std::fs::write(&f, b"first").unwrap();
        // A planted entry for the file's current identity is believed without hashing…
        let id = identity(&f).unwrap();
        let planted = Entry {
            identity: id.clone(),
            digest: "planted".into(),
        };
        write_entry(&memo_dir, &planted);
        assert_eq!(file_digest_in(&f, Some(&memo_dir)).unwrap(), "planted");
        // …until `verify` re-hashes it and drops the entry as wrong.
        let check = verify_remembered(&memo_dir).unwrap();
        assert_eq!((check.sound, check.stale), (0, 0));
        assert_eq!(check.wrong, vec![id.path.clone()]);
        assert!(!entry_path(&memo_dir, &id).exists());
        // A rewrite moves the status-change time: hashed again and remembered as sound.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"second").unwrap();
        let fresh = file_digest_in(&f, Some(&memo_dir)).unwrap();
        assert_eq!(fresh, hash_file(&f).unwrap());
        assert_ne!(fresh, "planted");
        let check = verify_remembered(&memo_dir).unwrap();
        assert_eq!((check.sound, check.stale, check.wrong.len()), (1, 0, 0));
        // A deleted file's entry is stale.
        std::fs::remove_file(&f).unwrap();
        let check = verify_remembered(&memo_dir).unwrap();
        assert_eq!((check.sound, check.stale), (0, 1));
    }
}
