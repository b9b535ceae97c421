//! The `[prune]` pipeline end to end through the `tyr` binary on `pipelines/tiny.toml` (a random
//! tiny model and a few paragraphs of text): every method is scored, a changed target reuses
//! every round-1 variant, a killed supernet build resumes to identical variants, and bad
//! `[prune]` input fails with an error naming the key.

mod common;

use std::path::Path;

use common::{plan, text, tyr_in};

fn ppl(work: &Path, label: &str) -> serde_json::Value {
    let p = work.join(format!("out/tiny/ppl/{label}.json"));
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap()
}

#[test]
fn tiny_pipeline_runs_end_to_end_and_scores_every_method() {
    let w = tempfile::tempdir().unwrap();
    let o = tyr_in(w.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let dense = ppl(w.path(), "dense");
    let dense_params = dense["decoder_params"].as_u64().unwrap();
    for label in ["dense", "tyr", "uniform", "magnitude", "wanda-sp"] {
        let r = ppl(w.path(), label);
        let p = r["perplexity"].as_f64().unwrap();
        assert!(p.is_finite() && p > 1.0, "{label}: perplexity {p}");
        assert_eq!(r["seq_len"], 64);
        if label != "dense" {
            let params = r["decoder_params"].as_u64().unwrap();
            assert!(
                params < dense_params,
                "{label}: {params} ≥ dense {dense_params}"
            );
        }
    }
    // A second run has nothing left to do.
    let again = tyr_in(w.path(), &["run"], &[], &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        common::ran(&again).is_empty(),
        "reran: {:?}",
        common::ran(&again)
    );
}

#[test]
fn changing_only_the_target_reuses_every_round1_variant() {
    let w = tempfile::tempdir().unwrap();
    let o = tyr_in(w.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let stages = plan(w.path(), &["--set", "prune.target=0.25"]);
    let r1: Vec<_> = stages
        .iter()
        .filter(|s| s.0.starts_with("r1-layer-"))
        .collect();
    assert_eq!(r1.len(), 3);
    for (id, state, _) in &r1 {
        assert_eq!(state, "cached", "{id} is not reused");
    }
    // The target-dependent stages do rerun.
    let uniform0 = stages.iter().find(|s| s.0 == "uniform-layer-00").unwrap();
    assert_eq!(uniform0.1, "run");
    let tyr = stages.iter().find(|s| s.0 == "eval-tyr").unwrap();
    assert_ne!(tyr.1, "cached");
}

#[test]
fn killed_supernet_build_resumes_to_identical_variants() {
    let reference = tempfile::tempdir().unwrap();
    let o = tyr_in(reference.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let want = plan(reference.path(), &[]);
    // Progress is saved after each layer's attention variants: die right after the first and
    // the second save (mid-layer, before the FFN variants), then resume.
    for nth in ["1", "2"] {
        let w = tempfile::tempdir().unwrap();
        let spec = format!("progress-after-rename:{nth}");
        let killed = tyr_in(w.path(), &["run"], &[], &[("TYR_FAULT", spec.as_str())]);
        assert!(!killed.status.success(), "the fault {spec} was not reached");
        let resumed = tyr_in(w.path(), &["run"], &[], &[]);
        assert!(
            resumed.status.success(),
            "resume failed:\n{}",
            text(&resumed)
        );
        // Keys chain on upstream output digests, so equal keys everywhere mean every layer's
        // variants and activations came out bit-identical.
        let got = plan(w.path(), &[]);
        assert_eq!(got, want, "after a kill at {spec}");
        assert_eq!(
            std::fs::read(w.path().join("out/tiny/ppl/tyr.json")).unwrap(),
            std::fs::read(reference.path().join("out/tiny/ppl/tyr.json")).unwrap()
        );
    }
}

/// The tiny pipeline on a model wide enough that X comes in several 1 MiB chunks.
const WIDE_MODEL: &str = "prune.model={ source = \"random\", layers = 3, hidden = 512, \
     head-dim = 64, heads = 8, kv-heads = 2, d-ff = 256, vocab = 96, seed = 1 }";

/// Published files of the tiny pipeline except the report (which holds timings).
fn published(work: &Path) -> Vec<(String, Vec<u8>)> {
    let root = work.join("out/tiny");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if !rel.starts_with("report") {
                files.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn activations_in_many_chunks_give_the_results_of_one_and_a_killed_stream_resumes() {
    // One chunk per X (256 MiB) against 1 MiB chunks: same variants, choice, models, scores.
    let one = tempfile::tempdir().unwrap();
    let o = tyr_in(one.path(), &["run"], &["--set", WIDE_MODEL], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let want = published(one.path());
    assert!(want.iter().any(|(f, _)| f == "ppl/tyr.json"), "{want:?}");
    let small = ["--set", WIDE_MODEL, "--set", "prune.chunk-mib=1"];
    let many = tempfile::tempdir().unwrap();
    let o = tyr_in(many.path(), &["run"], &small, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    assert!(
        published(many.path()) == want,
        "1 MiB chunks changed a result"
    );
    let chunks = |work: &Path| -> Vec<usize> {
        let mut n = Vec::new();
        for e in std::fs::read_dir(work.join("manifests")).unwrap().flatten() {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            if m["stage"] == "embed" {
                n.push(m["outputs"]["x"]["chunks"].as_array().unwrap().len());
            }
        }
        n
    };
    assert_eq!(chunks(one.path()), vec![1]);
    let split = chunks(many.path());
    assert!(split.len() == 1 && split[0] >= 2, "X_0 in {split:?} chunks");

    // Killed after the third chunk written (X_0 has two, so mid-way through a layer's X), the
    // run resumes after the chunks on disk and ends with the same results.
    let w = tempfile::tempdir().unwrap();
    let killed = tyr_in(
        w.path(),
        &["run"],
        &small,
        &[("TYR_FAULT", "chunk-after-write:3")],
    );
    assert!(!killed.status.success(), "the fault was not reached");
    let resumed = tyr_in(w.path(), &["run"], &small, &[("RUST_LOG", "info")]);
    assert!(
        resumed.status.success(),
        "resume failed:\n{}",
        text(&resumed)
    );
    assert!(
        text(&resumed).contains("resuming after the chunks already written"),
        "no stage resumed mid-stream:\n{}",
        text(&resumed)
    );
    assert!(
        published(w.path()) == want,
        "the resumed run's results differ"
    );
    let v = common::tyr_env(&["verify", "--workdir", w.path().to_str().unwrap()], &[]);
    assert!(v.status.success(), "verify:\n{}", text(&v));
}

/// The bytes stage `stage` committed for its outputs whose names pass `pick`.
fn output_bytes(work: &Path, stage: &str, pick: impl Fn(&str) -> bool) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(work.join("manifests")).unwrap().flatten() {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if m["stage"] == stage {
            for (name, o) in m["outputs"].as_object().unwrap() {
                if pick(name) {
                    n += o["size_bytes"].as_u64().unwrap();
                }
            }
        }
    }
    n
}

#[test]
fn sixteen_bit_storage_halves_x_and_the_variants_and_a_killed_run_still_ends_identical() {
    let f32_run = tempfile::tempdir().unwrap();
    let o = tyr_in(f32_run.path(), &["run"], &["--set", WIDE_MODEL], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let half = [
        "--set",
        WIDE_MODEL,
        "--set",
        "prune.activation-dtype=\"bf16\"",
        "--set",
        "prune.variant-dtype=\"bf16\"",
    ];
    let w = tempfile::tempdir().unwrap();
    let o = tyr_in(w.path(), &["run"], &half, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let want = published(w.path());
    assert!(want.iter().any(|(f, _)| f == "ppl/tyr.json"), "{want:?}");

    // X (embed's and a layer-forward's) and a layer's variant records: about half the bytes.
    let is_variant = |n: &str| n.starts_with("attn-") || n.starts_with("ffn-");
    for (stage, pick) in [
        ("embed", &(|n: &str| n == "x") as &dyn Fn(&str) -> bool),
        ("r1-forward-00", &|n: &str| n == "x"),
        ("r1-layer-01", &is_variant),
    ] {
        let (full, small) = (
            output_bytes(f32_run.path(), stage, pick),
            output_bytes(w.path(), stage, pick),
        );
        assert!(
            full > 0 && small * 10 < full * 6 && small * 10 > full * 4,
            "{stage}: {small} bytes in bf16 against {full} in f32"
        );
    }

    // Rounded where they are made, so a run killed mid-stream (1 MiB chunks) resumes to the
    // same files as the uninterrupted one.
    let small = [&half[..], &["--set", "prune.chunk-mib=1"]].concat();
    let k = tempfile::tempdir().unwrap();
    let killed = tyr_in(
        k.path(),
        &["run"],
        &small,
        &[("TYR_FAULT", "chunk-after-write:3")],
    );
    assert!(!killed.status.success(), "the fault was not reached");
    let resumed = tyr_in(k.path(), &["run"], &small, &[]);
    assert!(
        resumed.status.success(),
        "resume failed:\n{}",
        text(&resumed)
    );
    assert!(
        published(k.path()) == want,
        "the resumed bf16 run's results differ"
    );
}

#[test]
fn a_new_forward_version_reruns_every_forward_stage_and_nothing_else() {
    let w = tempfile::tempdir().unwrap();
    let o = tyr_in(w.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let bumped = [("TYR_TEST_FORWARD_VERSION", "99")];
    let runs_forward = |id: &str, kind: &str| {
        matches!(
            kind,
            "embed" | "supernet-layer" | "layer-forward" | "teacher-topk" | "search" | "eval-ppl"
        ) || id.starts_with("wanda-sp-layer-")
    };
    // The plan names the changed part for the forward stages it can key now; everything
    // else is cached or waits for them.
    let o = tyr_in(w.path(), &["plan", "--json"], &[], &bumped);
    assert!(o.status.success(), "plan failed:\n{}", text(&o));
    let mut forward_ids = Vec::new();
    for v in String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let (id, kind) = (v["id"].as_str().unwrap(), v["kind"].as_str().unwrap());
        let (state, reason) = (v["state"].as_str().unwrap(), v["reason"].as_str().unwrap());
        match (runs_forward(id, kind), state) {
            (true, "run") => assert_eq!(reason, "forward code version 1 → 99", "{id}"),
            (true, s) => assert_eq!(s, "blocked", "{id} ({kind}): {reason}"),
            (false, s) => assert_ne!(s, "run", "{id} ({kind}): {reason}"),
        }
        if runs_forward(id, kind) {
            forward_ids.push(id.to_string());
        }
    }
    // Running it reruns exactly the forward stages: the same code gives the same bits, so
    // every other stage (exports, magnitude, the report) finds its inputs unchanged.
    let o = tyr_in(w.path(), &["run"], &[], &bumped);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let mut ran = common::ran(&o);
    ran.sort();
    forward_ids.sort();
    assert_eq!(ran, forward_ids);
}

fn plan_error(set: &[&str]) -> String {
    let w = tempfile::tempdir().unwrap();
    let mut extra = Vec::new();
    for s in set {
        extra.extend(["--set", *s]);
    }
    let o = tyr_in(w.path(), &["plan"], &extra, &[]);
    assert!(!o.status.success(), "plan with {set:?} should fail");
    text(&o)
}

#[test]
fn bad_prune_input_fails_with_an_error_naming_the_key() {
    for t in ["prune.target=1.0", "prune.target=-0.1"] {
        let e = plan_error(&[t]);
        assert!(e.contains("prune.target"), "{t}: {e}");
    }
    let e = plan_error(&["prune.initial-step=0.0"]);
    assert!(e.contains("prune.initial-step"), "{e}");
    let e = plan_error(&["prune.colour=3"]);
    assert!(e.contains("colour"), "{e}");
    let e = plan_error(&["prune.attn-removal={ passes = 0 }"]);
    assert!(e.contains("attn-removal"), "{e}");
    let not_a_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/tiny-eval.txt");
    let e = plan_error(&[
        "prune.model.source=path",
        &format!("prune.model.path={}", not_a_model.display()),
    ]);
    assert!(e.contains("prune.model"), "{e}");
    // Search settings.
    let e = plan_error(&["prune.selection=[[4096, 2]]"]);
    assert!(
        e.contains("prune.selection") && e.contains("calib-tokens"),
        "{e}"
    );
    let e = plan_error(&["prune.offspring=0"]);
    assert!(e.contains("prune.offspring"), "{e}");
    let e = plan_error(&[
        "prune.export-baselines=[\"magnitude\"]",
        "prune.baselines=[]",
    ]);
    assert!(e.contains("prune.export-baselines"), "{e}");
    let e = plan_error(&["prune.fitness=\"kl\""]);
    assert!(e.contains("fitness"), "{e}");
    let e = plan_error(&["prune.budget=\"bytes\""]);
    assert!(e.contains("prune.budget"), "{e}");
    // Splitting a layer's supernet.
    let e = plan_error(&["prune.supernet-split=\"heads\""]);
    assert!(e.contains("prune.supernet-split"), "{e}");
    let e = plan_error(&["prune.split-groups=2"]);
    assert!(
        e.contains("prune.split-groups") && e.contains("level"),
        "{e}"
    );
    for g in ["0", "65"] {
        let e = plan_error(&[
            "prune.supernet-split=\"level\"",
            &format!("prune.split-groups={g}"),
        ]);
        assert!(
            e.contains("prune.split-groups") && e.contains("1–64"),
            "{g}: {e}"
        );
    }
}

#[test]
fn absurd_counts_are_refused_before_anything_is_built() {
    // Each of these once allocated until the OOM killer ended the process.
    for (set, key) in [
        ("prune.rounds=1000000000000", "prune.rounds"),
        ("prune.generations=1000000000000", "prune.generations"),
        ("prune.offspring=1000000000000", "prune.offspring"),
        (
            "prune.levels-each-side=1000000000",
            "prune.levels-each-side",
        ),
        ("prune.calib-tokens=1000000000000000", "prune.calib-tokens"),
        ("prune.top-k=1000000000000", "prune.top-k"),
        (
            "prune.search-cache-mib=1000000000000",
            "prune.search-cache-mib",
        ),
    ] {
        let e = plan_error(&[set]);
        assert!(e.contains(key) && e.contains("tyr accepts"), "{set}: {e}");
    }
    for (set, what) in [
        (&["prune.model.layers=1000000000000"][..], "layers"),
        (&["prune.model.hidden=1000000000000"][..], "hidden"),
        (
            &["prune.model.hidden=1000000", "prune.model.d-ff=1000000"][..],
            "elements",
        ),
    ] {
        let e = plan_error(set);
        assert!(
            e.contains("random model") && e.contains(what),
            "{set:?}: {e}"
        );
    }
}

#[test]
fn a_stage_over_the_memory_budget_fails_before_it_starts() {
    let w = tempfile::tempdir().unwrap();
    // The plan shows each heavy stage's estimate.
    let o = tyr_in(w.path(), &["plan", "--json"], &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let embed = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["id"] == "embed")
        .expect("embed in the plan");
    let need = embed["mem_bytes"].as_u64().unwrap();
    assert!(need > 1 << 20, "embed declares {need} bytes");
    // A budget below that: the run fails naming the stage, its estimate and the budget, and
    // the stage never starts (nothing of it is committed; a later run with room does it).
    let o = tyr_in(w.path(), &["run", "--mem-budget", "1M"], &[], &[]);
    assert!(!o.status.success(), "ran within a 1 MiB budget");
    let t = text(&o);
    assert!(
        t.contains("embed") && t.contains("needs an estimated") && t.contains("budget of 1.0 MiB"),
        "{t}"
    );
    let stages = plan(w.path(), &[]);
    let state = |id: &str| stages.iter().find(|s| s.0 == id).unwrap().1.clone();
    assert_eq!(state("embed"), "run");
    assert_eq!(state("calib-pool"), "cached");
    let o = tyr_in(w.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_tight_memory_budget_builds_fewer_levels_at_once() {
    // Wide enough that one level's OBS working set (d_ff² f64 matrices) dominates a layer's
    // estimate; the plan declares what the stage will hold.
    let model = "prune.model={ source = \"random\", layers = 2, hidden = 256, head-dim = 32, \
         heads = 8, kv-heads = 2, d-ff = 1024, vocab = 96, seed = 1 }";
    let w = tempfile::tempdir().unwrap();
    let estimate = |budget: &str| -> u64 {
        let o = tyr_in(
            w.path(),
            &["plan", "--json", "--mem-budget", budget],
            &["--set", model],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["id"] == "r1-layer-00")
            .and_then(|v| v["mem_bytes"].as_u64())
            .expect("r1-layer-00 in the plan")
    };
    let roomy = estimate("1T");
    let tight = estimate(&format!("{}", roomy - 1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        assert_eq!(tight, roomy, "one core builds one level at a time anyway");
    } else {
        assert!(
            tight < roomy,
            "{tight} ≥ {roomy}: the budget did not lower the parallelism"
        );
    }
    // Keys do not see it (the grouping of levels changes no result): after a run of the tiny
    // model, a budget that lowers a layer's parallelism finds every stage cached.
    let t = tempfile::tempdir().unwrap();
    let o = tyr_in(t.path(), &["run"], &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let layer = plan(t.path(), &[])
        .into_iter()
        .find(|s| s.0 == "r1-layer-00")
        .unwrap();
    assert_eq!(layer.1, "cached");
    let o = tyr_in(
        t.path(),
        &["plan", "--json", "--mem-budget", "1T"],
        &[],
        &[],
    );
    let est = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["id"] == "r1-layer-00")
        .and_then(|v| v["mem_bytes"].as_u64())
        .unwrap();
    let budget = format!("{}", est - 1);
    for (id, state, _) in plan(t.path(), &["--mem-budget", &budget]) {
        assert_eq!(state, "cached", "{id} reruns under a budget of {budget}");
    }
}

#[test]
fn a_teacher_killed_between_its_shards_resumes_there_and_ends_identical() {
    use common::{Scratch, results, tyr_env};
    // Model, pool and teacher only. A shard closes at the end of the batch that brings it to
    // 256 tokens: with 24 pieces of ≤ 64 tokens in batches of ≤ 1024 tokens, one per batch.
    let calib =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/tiny-calib.txt");
    let body = format!(
        r#"
[[stage]]
id = "model"
kind = "model"
params = {{ model = {{ source = "random", layers = 2, hidden = 32, head-dim = 8, heads = 4, kv-heads = 2, d-ff = 48, vocab = 96, seed = 1 }} }}

[[stage]]
id = "calib-pool"
kind = "calib-pool"
params = {{ sources = [{{ data = {{ source = "path", path = "{}" }}, format = {{ format = "text", documents = "blank-lines" }}, weight = 1.0 }}], seq-len = 64, calib-tokens = 1500 }}
inputs = {{ model = "model" }}

[[stage]]
id = "teacher"
kind = "teacher-topk"
params = {{ top-k = 16, shard-tokens = 256 }}
inputs = {{ model = "model", pool = "calib-pool" }}
"#,
        calib.display()
    );
    let run =
        |s: &Scratch, env: &[(&str, &str)]| tyr_env(&["run", s.pipeline().to_str().unwrap()], env);
    let reference = Scratch::new();
    reference.write("teacher", &body);
    let o = run(&reference, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let want = results(&reference.workdir());
    for nth in ["1", "2"] {
        let s = Scratch::new();
        s.write("teacher", &body);
        let spec = format!("chunk-after-write:{nth}");
        let killed = run(&s, &[("TYR_FAULT", spec.as_str())]);
        assert!(!killed.status.success(), "the fault {spec} was not reached");
        let resumed = run(&s, &[("RUST_LOG", "info")]);
        assert!(resumed.status.success(), "{}", text(&resumed));
        assert!(
            text(&resumed).contains(&format!("resuming the teacher shards={nth}")),
            "{}",
            text(&resumed)
        );
        assert_eq!(results(&s.workdir()), want, "after a kill at {spec}");
        // A committed stage leaves no progress behind.
        let left: Vec<_> = std::fs::read_dir(s.workdir().join("progress"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// Output name → digest of stage `id` in the tiny pipeline's latest run in `work`.
fn outputs_of(work: &Path, id: &str) -> std::collections::BTreeMap<String, String> {
    let pins: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("runs/tiny.json")).unwrap()).unwrap();
    let key = pins[id]
        .as_str()
        .unwrap_or_else(|| panic!("no pin for {id}"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join(format!("manifests/{key}.json"))).unwrap())
            .unwrap();
    m["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["digest"].as_str().unwrap().to_string()))
        .collect()
}

/// `budget = "params"`: each round's choice removes the budget within one FFN channel's weight,
/// and the exported model has exactly the dense decoder's parameters less what the search
/// counted for its choice (K/V heads included).
#[test]
fn a_parameter_budget_is_kept_by_each_round_and_counted_as_the_export_counts() {
    let w = tempfile::tempdir().unwrap();
    let set = [
        "--set",
        "prune.budget=\"params\"",
        "--set",
        "prune.baselines=[]",
        "--set",
        "prune.generations=6",
    ];
    let o = tyr_in(w.path(), &["run"], &set, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    let mut last = None;
    for round in 1..=2 {
        let p = w.path().join(format!("out/tiny/search/round-{round}.json"));
        let choice: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let split = &choice["params"];
        let (removed, budget, tol) = (
            split["removed"].as_i64().unwrap(),
            split["budget"].as_i64().unwrap(),
            split["tolerance"].as_i64().unwrap(),
        );
        // The tiny model: hidden 32, heads of 8 dims, FFN 48; 0.5 of its 3 × (4·512 + 2·512 +
        // 48·96) prunable parameters.
        assert_eq!(budget, 3 * (4 * 512 + 2 * 512 + 48 * 96) / 2);
        assert_eq!(tol, 96, "one FFN channel: gate and up rows, a down column");
        assert!((removed - budget).abs() <= tol, "round {round}: {split}");
        assert_eq!(
            split["removed_attn"].as_i64().unwrap() + split["removed_ffn"].as_i64().unwrap(),
            removed
        );
        last = Some(removed);
    }
    let (dense, tyr) = (ppl(w.path(), "dense"), ppl(w.path(), "tyr"));
    assert_eq!(
        dense["decoder_params"].as_i64().unwrap() - tyr["decoder_params"].as_i64().unwrap(),
        last.unwrap(),
        "the exported model's parameters are not the dense ones less the search's count"
    );
}

#[test]
fn the_final_refit_of_the_all_centre_choice_is_the_uniform_baseline_bit_for_bit() {
    // No generation runs, so the search keeps its start, the all-centre configuration; with a
    // centred round-1 grid those centres are the uniform baseline's levels exactly.
    let w = tempfile::tempdir().unwrap();
    let set = [
        "--set",
        "prune.final-refit=true",
        "--set",
        "prune.rounds=1",
        "--set",
        "prune.generations=0",
        "--set",
        "prune.round1-grid=\"centred\"",
        "--set",
        "prune.baselines=[\"uniform\"]",
    ];
    let o = tyr_in(w.path(), &["run"], &set, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    for l in 0..3 {
        let refit = outputs_of(w.path(), &format!("refit-layer-{l:02}"));
        let uniform = outputs_of(w.path(), &format!("uniform-layer-{l:02}"));
        assert_eq!(refit, uniform, "layer {l}");
    }
    let (tyr, uniform, searched) = (
        ppl(w.path(), "tyr"),
        ppl(w.path(), "uniform"),
        ppl(w.path(), "searched"),
    );
    assert_eq!(tyr["perplexity"], uniform["perplexity"]);
    assert_eq!(tyr["decoder_params"], searched["decoder_params"]);
}

/// `supernet-split`: a layer's supernet built as parts (per module, or per share of levels) and
/// joined gives every supernet layer stage — both rounds, the final re-fit, the uniform
/// baseline — the same outputs as the whole build, and so the same models and perplexities.
#[test]
fn a_supernet_split_into_parts_gives_the_same_stages_and_models_as_a_whole_build() {
    let layer_ids: Vec<String> = (0..3)
        .flat_map(|l| {
            [
                format!("r1-layer-{l:02}"),
                format!("r2-layer-{l:02}"),
                format!("refit-layer-{l:02}"),
                format!("uniform-layer-{l:02}"),
            ]
        })
        .collect();
    let run = |stats: &str, split: &[&str]| {
        let w = tempfile::tempdir().unwrap();
        let stats = format!("prune.ffn-stats=\"{stats}\"");
        let mut set = vec![
            "--set",
            "prune.final-refit=true",
            "--set",
            "prune.baselines=[\"uniform\"]",
            "--set",
            &stats,
        ];
        for s in split {
            set.extend(["--set", *s]);
        }
        let o = tyr_in(w.path(), &["run"], &set, &[]);
        assert!(o.status.success(), "run {split:?} failed:\n{}", text(&o));
        let layers: Vec<_> = layer_ids
            .iter()
            .map(|id| outputs_of(w.path(), id))
            .collect();
        let model = std::fs::read(w.path().join("out/tiny/model/model.safetensors")).unwrap();
        let ppls: Vec<_> = ["tyr", "searched", "uniform"]
            .map(|m| ppl(w.path(), m)["perplexity"].clone())
            .into();
        (w, layers, model, ppls)
    };
    for (stats, split) in [
        (
            "dense-attention",
            &["prune.supernet-split=\"level\"", "prune.split-groups=3"][..],
        ),
        (
            "expected-attention",
            &["prune.supernet-split=\"module\""][..],
        ),
    ] {
        let (_, whole_layers, whole_model, whole_ppl) = run(stats, &[]);
        let (w, layers, model, ppls) = run(stats, split);
        for (id, (a, b)) in layer_ids.iter().zip(whole_layers.iter().zip(&layers)) {
            assert_eq!(a, b, "{stats} {split:?}: {id}");
        }
        assert!(
            model == whole_model,
            "{stats} {split:?}: the exported model differs"
        );
        assert_eq!(ppls, whole_ppl, "{stats} {split:?}");
        // The parts ran as their own stages, and all of the split run is committed.
        let mut again = vec![
            "--set",
            "prune.final-refit=true",
            "--set",
            "prune.baselines=[\"uniform\"]",
        ];
        let stats = format!("prune.ffn-stats=\"{stats}\"");
        again.extend(["--set", &stats]);
        for s in split {
            again.extend(["--set", *s]);
        }
        let p = plan(w.path(), &again);
        let part = if split.len() == 2 {
            "r2-layer-01-ffn-2"
        } else {
            "r2-layer-01-ffn"
        };
        assert!(p.iter().any(|(id, _, _)| id == part), "no {part}: {p:?}");
        assert!(p.iter().all(|(_, state, _)| state == "cached"), "{p:?}");
    }
}

/// `calib` and `eval` as lists: the pool mixes both texts, every model is scored on every
/// held-out text under its name, and the report carries each perplexity with its text.
#[test]
fn several_calibration_and_held_out_texts_are_mixed_and_each_scored() {
    let w = tempfile::tempdir().unwrap();
    let set = [
        "--set",
        "prune.calib=[{source = \"path\", path = \"data/tiny-calib.txt\", weight = 3}, \
         {source = \"path\", path = \"data/tiny-eval.txt\", format = {format = \"text\", documents = \"whole\"}}]",
        "--set",
        "prune.eval=[{source = \"path\", path = \"data/tiny-eval.txt\"}, \
         {source = \"path\", path = \"data/tiny-calib.txt\", name = \"second\"}]",
        "--set",
        "prune.rounds=1",
        "--set",
        "prune.baselines=[\"uniform\"]",
    ];
    let o = tyr_in(w.path(), &["run"], &set, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    for t in ["tiny-eval", "second"] {
        for label in ["dense", "tyr", "uniform"] {
            let p = w.path().join(format!("out/tiny/ppl/{t}/{label}.json"));
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(r["text"], t, "{}", p.display());
            assert!(r["perplexity"].as_f64().unwrap() > 1.0);
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/tiny/report.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = report["perplexities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| **t == "second").count(), 3);
    // The two held-out texts differ, so their dense perplexities do.
    let dense = |t: &str| {
        let p = w.path().join(format!("out/tiny/ppl/{t}/dense.json"));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        r["perplexity"].as_f64().unwrap()
    };
    assert_ne!(dense("tiny-eval"), dense("second"));
    // The mix is another pool than the first text alone: the calibration stages differ.
    let alone = plan(
        w.path(),
        &[
            "--set",
            "prune.rounds=1",
            "--set",
            "prune.baselines=[\"uniform\"]",
        ],
    );
    let pool = alone.iter().find(|s| s.0 == "calib-pool").unwrap();
    assert_eq!(pool.1, "run", "{pool:?}");
}

#[test]
fn a_bad_weight_or_two_held_out_texts_of_one_name_are_refused() {
    let e = plan_error(&[
        "prune.calib=[{source = \"path\", path = \"data/tiny-calib.txt\", weight = 0}]",
    ]);
    assert!(e.contains("prune.calib") && e.contains("weight"), "{e}");
    let e = plan_error(&[
        "prune.eval=[{source = \"path\", path = \"data/tiny-eval.txt\"}, \
         {source = \"path\", path = \"other/tiny-eval.txt\"}]",
    ]);
    assert!(e.contains("prune.eval") && e.contains("tiny-eval"), "{e}");
    let e = plan_error(&["prune.calib=[]"]);
    assert!(e.contains("prune.calib") && e.contains("empty"), "{e}");
}

#[test]
fn zero_shot_tasks_are_scored_on_every_model_and_rescored_when_the_file_changes() {
    let w = tempfile::tempdir().unwrap();
    let task = w.path().join("choices.jsonl");
    let lines = [
        r#"{"context": "The cat sat on the", "choices": ["mat", "moon", "sky"], "gold": 0}"#,
        r#"{"context": "One, two,", "choices": ["three", "blue"], "gold": 0}"#,
        r#"{"context": "Water is", "choices": ["wet", "dry", "loud", "green"], "gold": 0}"#,
    ];
    std::fs::write(&task, lines.join("\n")).unwrap();
    let spec = format!("prune.eval-tasks=[\"generic:toy={}\"]", task.display());
    let set = [
        "--set",
        spec.as_str(),
        "--set",
        "prune.rounds=1",
        "--set",
        "prune.baselines=[\"uniform\"]",
    ];
    let o = tyr_in(w.path(), &["run"], &set, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    for label in ["dense", "tyr", "uniform"] {
        let p = w.path().join(format!("out/tiny/tasks/{label}.json"));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let t = &r["tasks"][0];
        assert_eq!(t["task"], "generic:toy");
        assert_eq!(t["n"], 3);
        let acc = t["acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{label}: acc {acc}");
        // Three items: the accuracy is a count of thirds.
        assert!(((acc * 3.0).round() - acc * 3.0).abs() < 1e-9, "{acc}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/tiny/report.json")).unwrap())
            .unwrap();
    let models: Vec<&str> = report["accuracies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_object().unwrap()["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["dense", "tyr", "uniform"]);
    let html = std::fs::read_to_string(w.path().join("out/tiny/report.html")).unwrap();
    assert!(html.contains("Zero-shot accuracy"));
    // Another answer in the file re-scores the tasks (and the report), nothing else.
    std::fs::write(&task, lines[..2].join("\n")).unwrap();
    let again = tyr_in(w.path(), &["run"], &set, &[]);
    assert!(again.status.success(), "{}", text(&again));
    let mut ran = common::ran(&again);
    ran.sort();
    assert_eq!(ran, ["report", "tasks-dense", "tasks-tyr", "tasks-uniform"]);
    // A bad spec is refused naming the key.
    let e = plan_error(&["prune.eval-tasks=[\"no-such-task=x.jsonl\"]"]);
    assert!(e.contains("prune.eval-tasks"), "{e}");
}

#[test]
fn a_sweep_of_three_targets_shares_round1_and_the_teacher_and_each_value_is_its_own_run() {
    let w = tempfile::tempdir().unwrap();
    let set = ["--set", "prune.baselines=[\"uniform\"]"];
    let mut sweep = set.to_vec();
    sweep.extend(["--sweep", "prune.target=0.25,0.5,0.625"]);
    let stages = plan(w.path(), &sweep);
    let ids: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    // What does not depend on the target exists once, under its own id …
    for shared in ["teacher", "r1-layer-00", "r1-layer-02", "eval-dense"] {
        assert_eq!(
            ids.iter().filter(|i| i.ends_with(shared)).count(),
            1,
            "{shared} is not shared: {ids:?}"
        );
        assert!(ids.contains(&shared), "{shared} was renamed: {ids:?}");
    }
    // … and each value has its own search, model and evaluations.
    for v in ["0.25", "0.5", "0.625"] {
        for own in ["eval-tyr", "uniform-layer-00", "report"] {
            let id = format!("prune.target={v}/{own}");
            assert!(ids.contains(&id.as_str()), "no {id}: {ids:?}");
        }
    }
    let o = tyr_in(w.path(), &["run"], &sweep, &[]);
    assert!(o.status.success(), "sweep failed:\n{}", text(&o));
    // An output shared by every value (the dense model's perplexity) is published once: each
    // value's folder holds a hard link to one file.
    let inode = |v: &str| {
        use std::os::unix::fs::MetadataExt;
        let f = w
            .path()
            .join(format!("out/tiny/sweep/prune.target={v}/ppl/dense.json"));
        std::fs::metadata(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .ino()
    };
    assert_eq!(inode("0.25"), inode("0.5"));
    assert_eq!(inode("0.25"), inode("0.625"));
    assert_ne!(
        inode("0.25"),
        {
            use std::os::unix::fs::MetadataExt;
            let f = w
                .path()
                .join("out/tiny/sweep/prune.target=0.5/ppl/tyr.json");
            std::fs::metadata(&f).unwrap().ino()
        },
        "each value's own outputs are its own files"
    );

    // A plain run at one of the values finds every stage done: the same keys.
    let mut single = set.to_vec();
    single.extend(["--set", "prune.target=0.5"]);
    let again = tyr_in(w.path(), &["run"], &single, &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        common::ran(&again).is_empty(),
        "reran: {:?}",
        common::ran(&again)
    );
    // And its published outputs are those of the value's folder, byte for byte (the reports
    // differ only in their timings).
    let out = w.path().join("out/tiny");
    let value = common::snapshot(&out.join("sweep/prune.target=0.5"));
    let plain: std::collections::BTreeMap<_, _> = common::snapshot(&out)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("sweep/"))
        .collect();
    let no_reports = |m: &std::collections::BTreeMap<String, Vec<u8>>| -> Vec<String> {
        m.keys()
            .filter(|k| !k.starts_with("report."))
            .cloned()
            .collect()
    };
    assert_eq!(no_reports(&value), no_reports(&plain));
    for k in no_reports(&value) {
        assert!(
            value[&k] == plain[&k],
            "{k} differs between the sweep and a plain run"
        );
    }
    assert!(
        value.contains_key("model/model.safetensors"),
        "{:?}",
        value.keys()
    );

    // The sweep report has the three values, smaller models at higher targets.
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sweep/report.json")).unwrap()).unwrap();
    assert_eq!(s["key"], "prune.target");
    let params: Vec<u64> = s["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["report"]["params"]["pruned"]["decoder"].as_u64().unwrap())
        .collect();
    assert_eq!(params.len(), 3);
    assert!(params[0] > params[1] && params[1] > params[2], "{params:?}");
    let html = std::fs::read_to_string(out.join("sweep/report.html")).unwrap();
    assert!(html.contains("prune.target=0.625/report.html") && html.contains("<svg"));
}

#[test]
fn a_bad_sweep_is_refused_naming_it() {
    let w = tempfile::tempdir().unwrap();
    for (sweep, says) in [
        ("prune.target=0.5,0.5", "given twice"),
        ("pipeline.seed=1,2", "[pipeline]"),
        ("prune.target=0.5,1.5", "prune.target"),
        ("prune.nope=1,2", "nope"),
    ] {
        let o = tyr_in(w.path(), &["plan"], &["--sweep", sweep], &[]);
        common::assert_failed_cleanly(&o, &[says]);
    }
}
