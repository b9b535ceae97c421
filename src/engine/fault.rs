//! Test hook for crash tests: `TYR_FAULT=<point>[:<nth>]` kills the process (SIGKILL to
//! itself) the `nth` time (default first) execution reaches the named point on the write path.
//! The crash tests use it to kill a run between "temp written" and "renamed", between
//! "manifest durable" and "index committed", and so on, then check that the next run recovers. Unset in normal use; this is
//! the one environment variable the engine reads, and only as a test hook.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Every named fault point, in write order. Tests iterate this list.
pub const FAULT_POINTS: &[&str] = &[
    "stage-before-run",
    "blob-after-temp-write",
    "blob-after-temp-fsync",
    "blob-after-rename",
    "blob-after-dir-fsync",
    "manifest-after-temp-write",
    "manifest-after-temp-fsync",
    "manifest-after-rename",
    "manifest-after-dir-fsync",
    "index-before-commit",
    "index-after-commit",
    "progress-after-rename",
    "chunk-after-write",
    "transient-before-delete",
    "publish-after-rename",
];

struct Fault {
    point: String,
    nth: u64,
    hits: Mutex<BTreeMap<String, u64>>,
}

fn configured() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("TYR_FAULT").ok()?;
            let (point, nth) = match spec.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Fault {
                point,
                nth: nth.max(1),
                hits: Mutex::new(BTreeMap::new()),
            })
        })
        .as_ref()
}

/// Marks that execution reached `point`; aborts the process if the test hook asks for it.
pub fn hit(point: &'static str) {
    let Some(f) = configured() else { return };
    if f.point != point {
        return;
    }
    let n = {
        let mut hits = match f.hits.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        let n = hits.entry(point.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if n == f.nth {
        die();
    }
}

/// Ends the process at once, without unwinding or flushing anything: SIGKILL to itself, the
/// same death the crash tests deal out from outside (and no core dump, unlike `abort`).
fn die() -> ! {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid with a constant signal has no memory-safety concerns.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
