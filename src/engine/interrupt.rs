//! Stopping a run on a signal. `install` makes SIGTERM (what Slurm sends at a time limit or a
//! preemption, and `kill`'s default) and SIGINT (Ctrl-C) set a flag instead of killing the
//! process; the executor polls `requested` between stages, stops scheduling, waits only for a
//! commit that is being written, and returns `Error::EngineInterrupted`. A second signal of the
//! same kind kills the process at once (the handler is installed with `SA_RESETHAND`), which is
//! safe too: the store survives a kill at any instant.

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGINT to the flag. Call once, from the command that runs a pipeline.
pub fn install() {
    #[cfg(unix)]
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // performs an atomic store, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                tracing::warn!(signal = sig, "could not install the signal handler");
            }
        }
    }
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The usual name of a signal number, for messages.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        other => format!("signal {other}"),
    }
}
