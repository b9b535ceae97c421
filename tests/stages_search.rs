//! The search half of the `[prune]` pipeline through the `tyr` binary on `pipelines/tiny.toml`:
//! two rounds of search, export and report; a killed search resumes to the identical choice;
//! incremental offspring evaluation gives the same fitness as full forwards; the exported model
//! (saved format and GGUF) scores what the pipeline scored for the chosen variants.

mod common;

use std::path::Path;
use std::process::Output;

use common::{plan, text, tiny, tyr_env, tyr_in};
use tyr::data::{TextDocuments, TextFormat, read_documents, token_stream};
use tyr::eval::perplexity::{PerplexityOptions, perplexity};
use tyr::model::Llama;
use tyr::model::open::open_model;

fn run_ok(work: &Path, extra: &[&str]) -> Output {
    let o = tyr_in(work, &["run"], extra, &[]);
    assert!(o.status.success(), "run failed:\n{}", text(&o));
    o
}

fn read(work: &Path, rel: &str) -> Vec<u8> {
    let p = work.join("out/tiny").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(work: &Path, rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read(work, rel)).unwrap()
}

#[test]
fn two_rounds_search_export_and_report() {
    let w = tempfile::tempdir().unwrap();
    let o = run_ok(w.path(), &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("pruned model: "), "{out}");
    assert!(out.contains("report: "), "{out}");

    // Each round keeps each type's budget exactly: half the heads and half the channels.
    for t in [1, 2] {
        let r = json(w.path(), &format!("search/round-{t}.json"));
        assert_eq!(r["round"], t);
        assert_eq!(r["history"].as_array().unwrap().len(), 4);
        let levels = r["levels"].as_array().unwrap();
        assert_eq!(levels.len(), 3);
        let sum = |i: usize| -> u64 { levels.iter().map(|l| l[i].as_u64().unwrap()).sum() };
        assert_eq!(sum(0), 6, "round {t}: attention heads removed");
        assert_eq!(sum(1), 72, "round {t}: FFN channels removed");
    }
    // Round 2's grid is centred on round 1's choice with the step halved.
    let (r1, r2) = (
        json(w.path(), "search/round-1.json"),
        json(w.path(), "search/round-2.json"),
    );
    assert_eq!(
        r2["ffn"]["step"].as_u64().unwrap() * 2,
        r1["ffn"]["step"].as_u64().unwrap()
    );
    for l in 0..3 {
        assert_eq!(r2["ffn"]["modules"][l]["centre"], r1["levels"][l][1]);
        assert_eq!(r2["attn"]["modules"][l]["centre"], r1["levels"][l][0]);
    }

    let report = json(w.path(), "report.json");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 2);
    let models: Vec<&str> = report["perplexities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["dense", "tyr", "uniform", "magnitude", "wanda-sp"]);
    assert!(!report["timings"]["stages"].as_array().unwrap().is_empty());
    assert_eq!(report["outputs"]["model_dir"], "model");
    let html = String::from_utf8(read(w.path(), "report.html")).unwrap();
    assert!(html.contains("<svg"), "the report has no plots");

    // The exported model, in both formats, scores what the pipeline scored for the choice.
    let eval = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/tiny-eval.txt");
    let docs = read_documents(
        &eval,
        &TextFormat::Text {
            documents: TextDocuments::Whole,
        },
    )
    .unwrap();
    let stream = token_stream(&docs, "\n\n", &|t: &str| {
        Ok(t.bytes().map(|b| u32::from(b) % 96).collect())
    })
    .unwrap();
    let want = json(w.path(), "ppl/tyr.json")["perplexity"]
        .as_f64()
        .unwrap();
    let opts = PerplexityOptions {
        seq_len: 64,
        max_tokens: None,
    };
    for file in ["model", "model/model.gguf"] {
        let m = open_model(&w.path().join("out/tiny").join(file)).unwrap();
        let llama = Llama::load(&m.config, m.source.as_ref()).unwrap();
        let got = perplexity(&llama, &stream, &opts).unwrap().perplexity;
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "{file}: perplexity {got}, the pipeline's {want}"
        );
        let heads: usize = m.config.layers.iter().map(|d| d.n_q).sum();
        assert_eq!(heads, 6, "{file}: kept query heads");
    }
    assert!(
        w.path()
            .join("out/tiny/baselines/uniform/model/model.safetensors")
            .is_file()
    );
}

#[test]
fn another_target_reuses_round1_supernet_and_teacher() {
    let w = tempfile::tempdir().unwrap();
    run_ok(w.path(), &[]);
    let stages = plan(w.path(), &["--set", "prune.target=0.25"]);
    let state = |id: &str| stages.iter().find(|s| s.0 == id).unwrap().1.clone();
    for l in 0..3 {
        assert_eq!(state(&format!("r1-layer-{l:02}")), "cached");
    }
    assert_eq!(state("teacher"), "cached");
    assert_eq!(state("r1-search"), "run");
    assert_ne!(state("export"), "cached");
}

#[test]
fn killed_search_resumes_to_the_identical_choice() {
    // Without baselines the progress records come in a fixed order: r1-layer-00..02 (1–3),
    // r1-search generations 1–4 (4–7), r2-layer-00..02 (8–10), r2-search (11–14).
    let no_baselines = ["--set", "prune.baselines=[]"];
    let reference = tempfile::tempdir().unwrap();
    run_ok(reference.path(), &no_baselines);
    let want = plan(reference.path(), &no_baselines);
    let tiny_path = tiny().to_string_lossy().into_owned();
    for nth in ["5", "12"] {
        let w = tempfile::tempdir().unwrap();
        let spec = format!("progress-after-rename:{nth}");
        let killed = tyr_in(w.path(), &["run"], &no_baselines, &[("TYR_FAULT", &spec)]);
        assert!(!killed.status.success(), "the fault {spec} was not reached");
        let mut args = vec!["run", tiny_path.as_str(), "--workdir"];
        let work = w.path().to_str().unwrap().to_string();
        args.push(&work);
        args.extend(no_baselines);
        let resumed = tyr_env(&args, &[("RUST_LOG", "info")]);
        assert!(
            resumed.status.success(),
            "resume failed:\n{}",
            text(&resumed)
        );
        assert!(
            text(&resumed).contains("resuming the search"),
            "{spec}: the search did not resume from its progress record:\n{}",
            text(&resumed)
        );
        assert_eq!(
            plan(w.path(), &no_baselines),
            want,
            "after a kill at {spec}"
        );
        for rel in [
            "search/round-1.json",
            "search/round-2.json",
            "model/model.safetensors",
        ] {
            assert_eq!(
                read(w.path(), rel),
                read(reference.path(), rel),
                "{rel} after {spec}"
            );
        }
    }
}

#[test]
fn incremental_offspring_evaluation_equals_full_forwards() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Eight layers, so that offspring often first differ past layer 0.
    let deeper = "prune.model={ source = \"random\", layers = 8, hidden = 32, head-dim = 8, \
                  heads = 4, kv-heads = 2, d-ff = 48, vocab = 96, seed = 1 }";
    let only_search = [
        "--set",
        "prune.baselines=[]",
        "--set",
        "prune.export=false",
        "--set",
        deeper,
    ];
    run_ok(a.path(), &only_search);
    let mut full = only_search.to_vec();
    full.extend(["--set", "prune.incremental-search=false"]);
    run_ok(b.path(), &full);
    // The incremental run really skipped layers...
    let forwarded = |w: &Path, stage: &str| -> f64 {
        for e in std::fs::read_dir(w.join("manifests")).unwrap() {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if m["stage"] == stage {
                return m["metrics"]["layers_forwarded"].as_f64().unwrap();
            }
        }
        panic!("no manifest for {stage}");
    };
    for stage in ["r1-search", "r2-search"] {
        let (inc, full) = (forwarded(a.path(), stage), forwarded(b.path(), stage));
        assert!(
            inc < full,
            "{stage}: {inc} layers forwarded incrementally, {full} in full"
        );
    }
    // ...and every generation's fitness (17 significant digits in JSON) and choice agree.
    for t in [1, 2] {
        let rel = format!("search/round-{t}.json");
        assert_eq!(
            json(a.path(), &rel),
            json(b.path(), &rel),
            "round {t}: incremental and full evaluation differ"
        );
    }
}

#[test]
fn full_vocabulary_kl_is_an_option() {
    let w = tempfile::tempdir().unwrap();
    let set = [
        "--set",
        "prune.fitness=\"full-kl\"",
        "--set",
        "prune.baselines=[]",
        "--set",
        "prune.rounds=1",
    ];
    run_ok(w.path(), &set);
    let r = json(w.path(), "search/round-1.json");
    assert_eq!(r["fitness_metric"], "full-vocabulary KL");
    let f = r["fitness"].as_f64().unwrap();
    assert!(f.is_finite() && f >= 0.0, "fitness {f}");
}
