//! The exit codes of `tyr run` (README's command table, `tyr::cli::exit`): bad input 2, work
//! directory held 3, a stage failed 4, interrupted 5; and SIGTERM during a local run stops it
//! cleanly, releases the lock, and the next run completes to identical results.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, TYR, demo_body, results, text, tyr};
use tyr::cli::exit::ExitKind;

fn run(s: &Scratch) -> std::process::Output {
    let p = s.pipeline();
    tyr(&["run", p.to_str().unwrap()])
}

fn code(k: ExitKind) -> Option<i32> {
    Some(k.code() as i32)
}

#[test]
fn a_bad_pipeline_file_exits_with_the_bad_input_code() {
    let s = Scratch::new();
    s.write("p", "[[stage]]\nid = \"a\"\nkind = \"text\"\ncolour = 1\n");
    let o = run(&s);
    assert_eq!(o.status.code(), code(ExitKind::BadInput), "{}", text(&o));
    assert!(text(&o).contains("colour"), "{}", text(&o));
}

#[test]
fn an_unknown_executor_setting_exits_with_the_bad_input_code_and_names_it() {
    let s = Scratch::new();
    s.write(
        "p",
        "[pipeline.executor]\nkind = \"slurm\"\nqueue = \"x\"\n\n[[stage]]\nid = \"a\"\nkind = \"text\"\nparams = { text = \"hi\" }\n",
    );
    let o = run(&s);
    assert_eq!(o.status.code(), code(ExitKind::BadInput), "{}", text(&o));
    assert!(text(&o).contains("queue"), "{}", text(&o));
    let p = s.pipeline();
    let o = tyr(&["run", p.to_str().unwrap(), "--executor", "cloud"]);
    assert_eq!(o.status.code(), code(ExitKind::BadInput), "{}", text(&o));
    let o = tyr(&[
        "run",
        p.to_str().unwrap(),
        "--set",
        "pipeline.executor.poll_ms=1",
    ]);
    assert_eq!(o.status.code(), code(ExitKind::BadInput), "{}", text(&o));
    assert!(text(&o).contains("poll_ms"), "{}", text(&o));
}

#[test]
fn a_work_directory_held_by_another_run_exits_with_the_locked_code() {
    let s = Scratch::new();
    s.write("p", &demo_body(2, 0));
    std::fs::create_dir_all(s.workdir()).unwrap();
    let _held = tyr::engine::Store::open(&s.workdir(), tyr::engine::OpenMode::Exclusive).unwrap();
    let o = run(&s);
    assert_eq!(o.status.code(), code(ExitKind::Locked), "{}", text(&o));
    assert!(text(&o).contains("in use"), "{}", text(&o));
}

#[test]
fn a_failed_stage_exits_with_the_stage_failed_code() {
    let s = Scratch::new();
    s.write(
        "p",
        "[[stage]]\nid = \"doomed\"\nkind = \"fail\"\nparams = { message = \"on purpose\" }\n",
    );
    let o = run(&s);
    assert_eq!(o.status.code(), code(ExitKind::StageFailed), "{}", text(&o));
    assert!(text(&o).contains("on purpose"), "{}", text(&o));
}

#[test]
fn sigterm_during_a_local_run_exits_interrupted_releases_the_lock_and_resumes_identically() {
    // The reference: the same pipeline uninterrupted.
    let want = {
        let s = Scratch::new();
        s.write("p", &demo_body(40, 50));
        let o = run(&s);
        assert!(o.status.success(), "{}", text(&o));
        results(&s.workdir())
    };
    let s = Scratch::new();
    s.write("p", &demo_body(40, 50));
    let p = s.pipeline();
    let child = Command::new(TYR)
        .args(["run", p.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal once the slow counter is running (it saves progress every step); `summary` waits
    // for it, so the run cannot be over yet.
    let progress = s.workdir().join("progress");
    let t0 = Instant::now();
    while std::fs::read_dir(&progress).map_or(0, |d| d.count()) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the counter never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on a child we spawned and have not waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t1 = Instant::now();
    let o = child.wait_with_output().unwrap();
    eprintln!("stopped {:.2}s after SIGTERM", t1.elapsed().as_secs_f64());
    assert_eq!(o.status.code(), code(ExitKind::Interrupted), "{}", text(&o));
    assert!(text(&o).contains("SIGTERM"), "{}", text(&o));
    assert!(text(&o).contains("summary"), "{}", text(&o));
    // The lock is free: the next run takes it and completes to the same bits.
    let again = run(&s);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(results(&s.workdir()), want);
    let v = tyr(&["verify", "--workdir", s.workdir().to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
}
