//! Content keys decide what reruns: a param change reruns that stage and its dependents only,
//! an upstream change propagates, nothing changed reruns nothing, and a missing or corrupt blob
//! invalidates its stage. `tyr plan` explains each verdict.

mod common;

use std::sync::Arc;

use common::{Scratch, demo_body};
use tyr::engine::{self, OpenMode, Outcome, Quiet, RunReport, StageState, Store};

fn run_lib(s: &Scratch, overrides: &[&str]) -> RunReport {
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let g = tyr::pipeline::load(&s.pipeline(), &sets, None, &tyr::stages::default_registry())
        .expect("load");
    let store = Arc::new(Store::open(&g.header.workdir, OpenMode::Exclusive).expect("open store"));
    engine::run(&g, store, Arc::new(Quiet)).expect("run")
}

fn plan_lib(s: &Scratch, overrides: &[&str]) -> Vec<engine::StagePlan> {
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let g = tyr::pipeline::load(&s.pipeline(), &sets, None, &tyr::stages::default_registry())
        .expect("load");
    engine::plan(
        &g,
        &Store::open(&g.header.workdir, OpenMode::ReadOnly).unwrap(),
    )
}

fn sorted(v: Vec<&str>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn changing_nothing_reruns_nothing() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    let first = run_lib(&s, &[]);
    assert_eq!(first.ran().len(), 6, "{:?}", first.stages);
    let second = run_lib(&s, &[]);
    assert!(second.ran().is_empty(), "{:?}", second.stages);
    assert!(
        plan_lib(&s, &[])
            .iter()
            .all(|p| p.state == StageState::Cached)
    );
}

#[test]
fn param_change_reruns_that_stage_and_its_dependents_only() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    let plan = plan_lib(&s, &["digest.rounds=4"]);
    let digest = plan.iter().find(|p| p.id == "digest").unwrap();
    assert_eq!(digest.state, StageState::Run);
    assert!(digest.reason.contains("rounds: 3 → 4"), "{}", digest.reason);
    let summary = plan.iter().find(|p| p.id == "summary").unwrap();
    assert_eq!(summary.state, StageState::Blocked, "{}", summary.reason);
    let r = run_lib(&s, &["digest.rounds=4"]);
    assert_eq!(sorted(r.ran()), vec!["digest", "summary"]);
}

#[test]
fn upstream_change_propagates_to_dependents() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    let r = run_lib(&s, &["greeting.text=\"bye\""]);
    assert_eq!(sorted(r.ran()), vec!["digest", "greeting", "summary"]);
    // Going back to the first text finds its results still in the store.
    let plan = plan_lib(&s, &[]);
    assert!(
        plan.iter().all(|p| p.state == StageState::Cached),
        "{plan:?}"
    );
    // A third text: plan names the param change against the latest run ("bye").
    let plan = plan_lib(&s, &["greeting.text=\"ciao\""]);
    let g = plan.iter().find(|p| p.id == "greeting").unwrap();
    assert!(g.reason.contains(r#"text: "bye" → "ciao""#), "{}", g.reason);
    let d = plan.iter().find(|p| p.id == "digest").unwrap();
    assert_eq!(d.state, StageState::Blocked, "{}", d.reason);
}

#[test]
fn seed_change_invalidates_every_stage() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    let plan = plan_lib(&s, &["pipeline.seed=8"]);
    let roots: Vec<_> = plan.iter().filter(|p| p.state == StageState::Run).collect();
    assert_eq!(roots.len(), 3, "{plan:?}");
    assert!(
        roots.iter().all(|p| p.reason.contains("seed 7 → 8")),
        "{roots:?}"
    );
}

fn blob_of(s: &Scratch, stage: &str, output: &str) -> std::path::PathBuf {
    let store = Store::open(&s.workdir(), OpenMode::ReadOnly).unwrap();
    let pins = store.pins("p");
    let m = store.read_manifest(&pins[stage]).unwrap().unwrap();
    store.blob_path(&m.outputs[output].digest)
}

/// A stage may return a file it wrote (an exported model) instead of bytes in memory: the
/// engine moves it into the store, and its digest, its consumers and its published copy are
/// exactly those of the same bytes returned in memory; the scratch folder is gone.
#[test]
fn a_file_output_is_stored_and_read_back_exactly_as_the_same_bytes() {
    let body = |as_file: bool| {
        format!(
            r#"
[[stage]]
id = "greeting"
kind = "text"
params = {{ text = "hello" }}

[[stage]]
id = "summary"
kind = "summary"
params = {{ publish = "summary.txt", as_file = {as_file} }}
inputs = {{ parts = ["greeting"] }}

[[stage]]
id = "digest"
kind = "hash"
inputs = {{ src = "summary" }}
"#
        )
    };
    let outcome = |as_file: bool| {
        let s = Scratch::new();
        s.write("p", &body(as_file));
        let r = run_lib(&s, &[]);
        assert_eq!(r.ran().len(), 3, "{:?}", r.stages);
        let published = std::fs::read(s.workdir().join("out/p/summary.txt")).unwrap();
        let tmp: Vec<_> = std::fs::read_dir(s.workdir().join("tmp"))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
        let summary = std::fs::read(blob_of(&s, "summary", "bytes")).unwrap();
        let digest = std::fs::read(blob_of(&s, "digest", "bytes")).unwrap();
        (published, summary, digest)
    };
    let (in_memory, as_file) = (outcome(false), outcome(true));
    assert!(!in_memory.0.is_empty());
    assert_eq!(in_memory, as_file);
}

#[test]
fn missing_blob_invalidates_its_stage() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    std::fs::remove_file(blob_of(&s, "digest", "bytes")).unwrap();
    let plan = plan_lib(&s, &[]);
    let d = plan.iter().find(|p| p.id == "digest").unwrap();
    assert_eq!(d.state, StageState::Run);
    assert!(d.reason.contains("missing"), "{}", d.reason);
    let r = run_lib(&s, &[]);
    assert_eq!(
        r.ran(),
        vec!["digest"],
        "the rerun reproduces the same digest, so summary stays cached"
    );
}

#[test]
fn corrupt_blob_invalidates_its_stage() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    let p = blob_of(&s, "scaled", "t");
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    std::fs::write(&p, b).unwrap();
    let plan = plan_lib(&s, &[]);
    let d = plan.iter().find(|p| p.id == "scaled").unwrap();
    assert!(d.reason.contains("corrupt"), "{}", d.reason);
    // `noise` is transient and was collected, so it must run again to feed `scaled`.
    let n = plan.iter().find(|p| p.id == "noise").unwrap();
    assert_eq!(n.state, StageState::Run, "{}", n.reason);
    let r = run_lib(&s, &[]);
    assert_eq!(sorted(r.ran()), vec!["noise", "scaled"]);
    assert!(
        tyr::engine::verify::verify(&Store::open(&s.workdir(), OpenMode::Inspect).unwrap())
            .problems
            .is_empty()
    );
}

#[test]
fn transient_output_is_deleted_once_its_consumers_commit() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    assert!(!blob_of(&s, "noise", "t").exists());
    assert!(blob_of(&s, "scaled", "t").exists());
    assert!(s.workdir().join("out/p/scaled.safetensors").exists());
}

/// Blobs are shared by content. `a` and `b` write the same chunk; `a`'s consumer commits and the
/// chunk, `a`'s transient output, is collected while `b` (which found it already in the store)
/// still runs. `b` must not commit a chunk that is gone: it runs again and writes it, and its
/// consumer reads the right values.
#[test]
fn a_chunk_shared_with_a_collected_transient_is_written_again_before_the_commit() {
    let s = Scratch::new();
    let body = r#"
[[stage]]
id = "a"
kind = "random-tensor"
params = { rows = 8, cols = 16, transient = true, chunked = true }

[[stage]]
id = "a2"
kind = "scale-tensor"
params = { factor = 2.0 }
inputs = { x = "a" }

[[stage]]
id = "b"
kind = "random-tensor"
params = { rows = 8, cols = 16, transient = true, chunked = true, hold_ms = 1500 }

[[stage]]
id = "b2"
kind = "scale-tensor"
params = { factor = 3.0, publish = "b2.safetensors" }
inputs = { x = "b" }
"#;
    s.write("p", body);
    let r = run_lib(&s, &[]);
    assert!(r.failed().is_empty(), "{:?}", r.stages);
    let p = s.workdir().join("out/p/b2.safetensors");
    let b = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap()["t"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // `random-tensor`'s draws (the pipeline seed is 7), three times over.
    let mut draws = tyr::rng::Stream::new(7, "random-tensor", &[8, 16]);
    let want: Vec<f32> = (0..128).map(|_| 3.0f32 * draws.normal() as f32).collect();
    assert_eq!(b, want);
    assert!(
        tyr::engine::verify::verify(&Store::open(&s.workdir(), OpenMode::Inspect).unwrap())
            .problems
            .is_empty()
    );
}

#[test]
fn failing_stage_stops_its_dependents_and_lets_others_finish() {
    let s = Scratch::new();
    let body = r#"
[[stage]]
id = "bad"
kind = "fail"
params = { message = "boom" }

[[stage]]
id = "after-bad"
kind = "summary"
inputs = { parts = ["bad"] }

[[stage]]
id = "good"
kind = "text"
params = { text = "fine" }
"#;
    s.write("p", body);
    let r = run_lib(&s, &[]);
    let outcome = |id: &str| r.stages.iter().find(|(i, _)| i == id).unwrap().1.clone();
    assert!(matches!(outcome("bad"), Outcome::Failed(e) if e.contains("boom")));
    assert!(matches!(outcome("after-bad"), Outcome::Skipped(_)));
    assert!(matches!(outcome("good"), Outcome::Ran(_)));
    // `tyr status` reports it failed, with its error, from the run log.
    let g =
        tyr::pipeline::load(&s.pipeline(), &[], None, &tyr::stages::default_registry()).unwrap();
    let store = Store::open(&g.header.workdir, OpenMode::Inspect).unwrap();
    let attempts = store.index().unwrap().attempts();
    let rows = tyr::engine::status::status(&g, &store, Some(&attempts), None);
    let bad = rows.iter().find(|r| r.id == "bad").unwrap();
    assert_eq!(
        (bad.state.as_str(), bad.detail.contains("boom")),
        ("failed", true),
        "{bad:?}"
    );
    drop(store);
    // The next run retries the failed stage (and only it: `good` is cached).
    let r = run_lib(&s, &[]);
    assert!(
        matches!(r.stages[0].1, Outcome::Failed(_))
            || r.stages
                .iter()
                .any(|(i, o)| i == "bad" && matches!(o, Outcome::Failed(_)))
    );
    assert!(
        r.stages
            .iter()
            .any(|(i, o)| i == "good" && *o == Outcome::Cached)
    );
}

#[test]
fn another_pipeline_reuses_shared_stages() {
    let s = Scratch::new();
    s.write("p", &demo_body(3, 0));
    run_lib(&s, &[]);
    s.write("q", &demo_body(3, 0));
    let r = run_lib(&s, &["summary.publish=\"other.txt\""]);
    assert_eq!(r.ran(), vec!["summary"]);
    let plan = plan_lib(&s, &[]);
    assert!(
        plan.iter().any(|p| p.reason.contains("of pipeline `p`")),
        "{plan:?}"
    );
}
