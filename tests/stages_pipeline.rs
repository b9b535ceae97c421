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
}
