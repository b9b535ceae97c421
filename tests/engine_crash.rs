//! Crash safety, sled style: the `tyr` binary runs as a child process and dies at named fault
//! points on the write path (`TYR_FAULT`, which aborts the process) and by SIGKILL at random
//! instants; after each death the run is resumed. The final outputs must be bit-identical to
//! an uninterrupted run's and `tyr verify` must find nothing wrong.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, TYR, demo_body, results, text, tyr_env};

const COUNT_N: u64 = 12;
const STEP_MS: u64 = 5;

fn run_in(s: &Scratch, fault: Option<&str>) -> std::process::Output {
    let p = s.pipeline();
    let mut c = Command::new(TYR);
    c.args(["run", p.to_str().unwrap()])
        .current_dir(s.path())
        .env("RUST_LOG", "warn");
    if let Some(f) = fault {
        c.env("TYR_FAULT", f);
    }
    c.output().expect("spawn tyr")
}

fn verify_clean(workdir: &Path) {
    let o = tyr_env(&["verify", "--workdir", workdir.to_str().unwrap()], &[]);
    assert!(o.status.success(), "verify found problems:\n{}", text(&o));
}

fn reference() -> std::collections::BTreeMap<String, Vec<u8>> {
    let s = Scratch::new();
    s.write("p", &demo_body(COUNT_N, STEP_MS));
    let o = run_in(&s, None);
    assert!(o.status.success(), "{}", text(&o));
    results(&s.workdir())
}

#[test]
fn runs_killed_at_every_write_path_fault_point_resume_to_identical_results() {
    let want = reference();
    let mut kills = 0;
    let mut points = Vec::new();
    for point in tyr::engine::fault::FAULT_POINTS {
        for nth in [1, 2] {
            let s = Scratch::new();
            s.write("p", &demo_body(COUNT_N, STEP_MS));
            let spec = format!("{point}:{nth}");
            let o = run_in(&s, Some(&spec));
            if !o.status.success() {
                kills += 1;
                points.push(spec.clone());
            }
            let resumed = run_in(&s, None);
            assert!(
                resumed.status.success(),
                "resume after {spec} failed:\n{}",
                text(&resumed)
            );
            assert_eq!(
                results(&s.workdir()),
                want,
                "results differ after a kill at {spec}"
            );
            verify_clean(&s.workdir());
        }
    }
    eprintln!("{kills} kills at fault points: {points:?}");
    assert!(
        kills >= 20,
        "only {kills} fault points were reached: {points:?}"
    );
}

#[test]
fn runs_killed_at_random_instants_resume_to_identical_results() {
    let want = reference();
    let s = Scratch::new();
    s.write("p", &demo_body(COUNT_N, STEP_MS));
    let p = s.pipeline();
    // Deterministic "random" delays (xorshift), spread over a run's typical length.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 12 && started.elapsed() < Duration::from_secs(30) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(20 + x % 250);
        let mut child = Command::new(TYR)
            .args(["run", p.to_str().unwrap()])
            .current_dir(s.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tyr");
        std::thread::sleep(delay);
        match child.try_wait().expect("poll child") {
            Some(_) => {
                // Finished before the kill: start over on a clean store to keep killing.
                std::fs::remove_dir_all(s.workdir()).unwrap();
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    eprintln!("{kills} SIGKILLs at random instants");
    assert!(kills >= 5, "only {kills} kills landed");
    let o = run_in(&s, None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(results(&s.workdir()), want);
    verify_clean(&s.workdir());
}

#[test]
fn long_stage_resumes_from_its_last_progress_record() {
    let s = Scratch::new();
    s.write("p", &demo_body(COUNT_N, 0));
    let o = run_in(&s, Some("progress-after-rename:7"));
    assert!(!o.status.success(), "the fault should have killed the run");
    let o = run_in(&s, None);
    assert!(o.status.success(), "{}", text(&o));
    let store = tyr::engine::Store::open(&s.workdir(), tyr::engine::OpenMode::ReadOnly).unwrap();
    let key = store.pins("p")["count"];
    let m = store.read_manifest(&key).unwrap().unwrap();
    assert_eq!(
        m.metrics["resumed_from"], 7.0,
        "the counter restarted instead of resuming"
    );
    assert_eq!(results(&s.workdir()), reference_with(COUNT_N, 0));
}

fn reference_with(n: u64, step_ms: u64) -> std::collections::BTreeMap<String, Vec<u8>> {
    let s = Scratch::new();
    s.write("p", &demo_body(n, step_ms));
    assert!(run_in(&s, None).status.success());
    results(&s.workdir())
}
