//! Corruption: a flipped byte in a blob, a truncated manifest and a deleted sled index are each
//! detected by `tyr verify`, and `--repair` or the next run recovers without losing committed
//! work.

mod common;

use common::{Scratch, demo_body, ran, results, text, tyr};
use tyr::engine::{OpenMode, Store};

fn setup() -> (Scratch, String, String) {
    let s = Scratch::new();
    let p = s.write("p", &demo_body(3, 0)).to_str().unwrap().to_string();
    let o = tyr(&["run", &p]);
    assert!(o.status.success(), "{}", text(&o));
    let w = s.workdir().to_str().unwrap().to_string();
    (s, p, w)
}

fn manifest_path(s: &Scratch, stage: &str) -> std::path::PathBuf {
    let store = Store::open(&s.workdir(), OpenMode::ReadOnly).unwrap();
    store.manifest_path(&store.pins("p")[stage])
}

#[test]
fn flipped_blob_byte_is_detected_and_repaired() {
    let (s, p, w) = setup();
    let want = results(&s.workdir());
    let store = Store::open(&s.workdir(), OpenMode::ReadOnly).unwrap();
    let m = store
        .read_manifest(&store.pins("p")["digest"])
        .unwrap()
        .unwrap();
    let blob = store.blob_path(&m.outputs["bytes"].digest);
    let mut b = std::fs::read(&blob).unwrap();
    b[0] ^= 1;
    std::fs::write(&blob, b).unwrap();

    let o = tyr(&["verify", "--workdir", &w]);
    assert!(!o.status.success());
    assert!(text(&o).contains("corrupt"), "{}", text(&o));
    let o = tyr(&["verify", "--workdir", &w, "--repair"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("repaired"), "{}", text(&o));
    let o = tyr(&["run", &p]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ran(&o), vec!["digest"]);
    assert_eq!(results(&s.workdir()), want);
    assert!(tyr(&["verify", "--workdir", &w]).status.success());
}

#[test]
fn truncated_manifest_is_detected_and_restored_from_the_index() {
    let (s, p, w) = setup();
    let mp = manifest_path(&s, "scaled");
    let full = std::fs::read(&mp).unwrap();
    std::fs::write(&mp, &full[..full.len() / 2]).unwrap();

    let o = tyr(&["verify", "--workdir", &w]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unreadable"), "{}", text(&o));
    // The next run restores it from the index copy: nothing has to run again.
    let o = tyr(&["run", &p]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(ran(&o).is_empty(), "{}", text(&o));
    assert_eq!(std::fs::read(&mp).unwrap(), full);
    assert!(tyr(&["verify", "--workdir", &w]).status.success());
}

#[test]
fn deleted_index_is_detected_and_rebuilt() {
    let (s, p, w) = setup();
    std::fs::remove_dir_all(s.workdir().join("index.sled")).unwrap();
    let o = tyr(&["verify", "--workdir", &w]);
    assert!(!o.status.success());
    assert!(text(&o).contains("index"), "{}", text(&o));
    let o = tyr(&["verify", "--workdir", &w, "--repair"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tyr(&["verify", "--workdir", &w]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tyr(&["run", &p]);
    assert!(ran(&o).is_empty(), "{}", text(&o));
}

#[test]
fn deleted_index_is_rebuilt_by_the_next_run() {
    let (s, p, w) = setup();
    std::fs::remove_dir_all(s.workdir().join("index.sled")).unwrap();
    let o = tyr(&["run", &p]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(ran(&o).is_empty(), "{}", text(&o));
    assert!(tyr(&["verify", "--workdir", &w]).status.success());
}

#[test]
fn gc_keeps_what_the_latest_run_pins_and_removes_the_rest() {
    let (s, p, w) = setup();
    let o = tyr(&["run", &p, "--set", "digest.rounds=5"]);
    assert!(o.status.success(), "{}", text(&o));
    let before = results(&s.workdir());
    // Slurm job folders: one per committed stage (pinned or not) and one of a job that never
    // committed (it may still be running, for a later run to adopt).
    let jobs = s.workdir().join("jobs");
    let committed: Vec<String> = std::fs::read_dir(s.workdir().join("manifests"))
        .unwrap()
        .flatten()
        .filter_map(|e| Some(e.path().file_stem()?.to_str()?.to_string()))
        .collect();
    let pending = "ab".repeat(32);
    for k in committed.iter().chain([&pending]) {
        std::fs::create_dir_all(jobs.join(k).join("1")).unwrap();
        std::fs::write(jobs.join(k).join("1/slurm-1.out"), "log").unwrap();
    }
    let o = tyr(&["gc", "--workdir", &w]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("removed 2 manifest(s)"), "{}", text(&o));
    let n = committed.len();
    assert!(
        text(&o).contains(&format!("{n} Slurm job folder(s)")),
        "{}",
        text(&o)
    );
    let left: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, std::slice::from_ref(&pending));
    std::fs::remove_dir_all(&jobs).unwrap();
    let after = results(&s.workdir());
    assert!(after.len() < before.len());
    let o = tyr(&["run", &p, "--set", "digest.rounds=5"]);
    assert!(
        ran(&o).is_empty(),
        "gc removed something the pinned run needs: {}",
        text(&o)
    );
    assert!(tyr(&["verify", "--workdir", &w]).status.success());
}
