//! Checking that a bad input made the `tyr` binary fail cleanly (run it with `engine::tyr`).

use std::process::Output;

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A documented failure code (1 general, 2 bad input, 3 locked, 4 stage failed, 5 interrupted;
/// not a panic's 101), no panic text, and each of `mentions` in the message.
pub fn assert_failed_cleanly(o: &Output, mentions: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(
        matches!(o.status.code(), Some(1..=5)),
        "exit {:?} is not a documented failure code (a panic exits 101): {err}",
        o.status.code()
    );
    assert!(!err.contains("panicked"), "{err}");
    for m in mentions {
        assert!(err.contains(m), "stderr does not mention {m:?}: {err}");
    }
}
