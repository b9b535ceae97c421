//! The engine's command line: bad pipeline files give clear errors and write nothing; a second
//! run on a busy work directory is refused and a stale lock is recovered; plan, status and
//! graph print what scripts rely on.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, TYR, demo_body, text, tyr};

fn bad_file(body: &str) -> (Scratch, String) {
    let s = Scratch::new();
    let p = s.write("p", body);
    let o = tyr(&["run", p.to_str().unwrap()]);
    assert!(!o.status.success(), "a bad pipeline ran:\n{}", text(&o));
    assert!(!s.workdir().exists(), "a bad pipeline wrote to the store");
    (s, text(&o))
}

#[test]
fn syntax_error_names_file_and_line() {
    let (_, e) = bad_file("[[stage]]\nid = \"a\nkind = \"text\"\n");
    assert!(e.contains("pipeline.toml:"), "{e}");
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let (_, e) =
        bad_file("[[stage]]\nid = \"a\"\nkind = \"text\"\nparams = { text = \"x\" }\ncolor = 3\n");
    assert!(e.contains("pipeline.toml:11") && e.contains("color"), "{e}");
}

#[test]
fn unknown_kind_lists_the_available_kinds() {
    let (_, e) = bad_file("[[stage]]\nid = \"a\"\nkind = \"nope\"\n");
    assert!(
        e.contains("unknown stage kind `nope`") && e.contains("random-tensor"),
        "{e}"
    );
}

#[test]
fn missing_input_lists_the_stages() {
    let (_, e) = bad_file("[[stage]]\nid = \"h\"\nkind = \"hash\"\ninputs = { src = \"ghost\" }\n");
    assert!(
        e.contains("no stage `ghost`") && e.contains("stages: h"),
        "{e}"
    );
}

#[test]
fn cycle_is_reported_with_its_full_path() {
    let body = r#"
[[stage]]
id = "a"
kind = "hash"
inputs = { src = "c" }

[[stage]]
id = "b"
kind = "hash"
inputs = { src = "a" }

[[stage]]
id = "c"
kind = "hash"
inputs = { src = "b" }
"#;
    let (_, e) = bad_file(body);
    assert!(e.contains("cycle:"), "{e}");
    assert!(
        e.contains("a → b → c → a") || e.contains("b → c → a → b") || e.contains("c → a → b → c"),
        "{e}"
    );
}

#[test]
fn wrong_param_type_is_a_clear_error() {
    let (_, e) = bad_file("[[stage]]\nid = \"c\"\nkind = \"count\"\nparams = { n = \"many\" }\n");
    assert!(
        e.contains("stage `c`.params") && e.contains("pipeline.toml:7"),
        "{e}"
    );
}

#[test]
fn second_run_on_a_busy_workdir_is_refused_naming_the_holder() {
    let s = Scratch::new();
    let p = s.write("p", &demo_body(400, 10));
    let mut first = Command::new(TYR)
        .args(["run", p.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = s.workdir().join("lock");
    let t = Instant::now();
    while std::fs::read_to_string(&lock)
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // `tyr status` meanwhile shows the slow stage as running.
    let t = Instant::now();
    loop {
        let o = tyr(&["status", p.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out
            .lines()
            .any(|l| l.starts_with("running") && l.contains("count"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "status never showed `count` running:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = tyr(&["run", p.to_str().unwrap()]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!o.status.success());
    let e = text(&o);
    assert!(
        e.contains("in use by pid") && e.contains(&first.id().to_string()),
        "{e}"
    );
    // The holder died; its lock is stale and the next run recovers it.
    let o = tyr(&["run", p.to_str().unwrap(), "--set", "count.n=3"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn plan_json_prints_one_object_per_stage() {
    let s = Scratch::new();
    let p = s.write("p", &demo_body(3, 0));
    let o = tyr(&["plan", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        for k in ["id", "kind", "state", "reason"] {
            assert!(l.get(k).is_some(), "{l} lacks {k}");
        }
    }
    assert_eq!(lines[0]["state"], "run");
    assert_eq!(lines[0]["reason"], "never run");
    assert!(!s.workdir().exists(), "plan must not write");
}

#[test]
fn status_and_graph_describe_the_pipeline() {
    let s = Scratch::new();
    let p = s.write("p", &demo_body(3, 0));
    let p = p.to_str().unwrap();
    assert!(tyr(&["run", p]).status.success());
    let o = tyr(&["status", p]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("done"))
            .count(),
        6,
        "{}",
        text(&o)
    );
    let dot = String::from_utf8_lossy(&tyr(&["graph", p]).stdout).into_owned();
    assert!(dot.contains("\"noise\" -> \"scaled\""), "{dot}");
    let mm =
        String::from_utf8_lossy(&tyr(&["graph", p, "--format", "mermaid"]).stdout).into_owned();
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("-->|parts|"),
        "{mm}"
    );
    let o = tyr(&["--log-format", "json", "run", p]);
    assert!(o.status.success());
}
