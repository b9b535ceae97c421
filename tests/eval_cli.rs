//! `tyr eval | generate | inspect` as a user runs them: JSON output that agrees with the library,
//! and bad inputs (empty text, a text shorter than one window, a missing model) that end with a
//! message naming the input and a non-zero exit, never a panic.

#[path = "common/tiny_gguf.rs"]
mod tiny_gguf;

mod common;

use common::{assert_failed_cleanly, stderr, tyr};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tiny_gguf::{GgufOptions, tiny_config, write_tiny_gguf};
use tyr::eval::perplexity::{PerplexityOptions, perplexity_with, window_nll};
use tyr::model::llama::Llama;
use tyr::model::open::open_model;
use tyr::model::random::random_source;

const TEXT: &str =
    "hello world, hello there. The 12 hello worlds are all here, 3 of them new.\n\nhello again";

/// A tiny GGUF model and a text file in a temp dir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let cfg = tiny_config(true, false);
    write_tiny_gguf(
        &model,
        &cfg,
        &random_source(&cfg, 5).unwrap(),
        &GgufOptions::default(),
    );
    let text = dir.path().join("text.txt");
    std::fs::write(&text, TEXT).unwrap();
    (dir, model, text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_json_reports_the_library_perplexity_and_its_setting() {
    let (_dir, model, text) = setup();
    let o = tyr(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&text),
        "--seq-len",
        "8",
        "--max-tokens",
        "30",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["windows"], 3);
    assert_eq!(v["tokens"], 24);
    assert_eq!(v["seq_len"], 8);
    assert_eq!(v["model"], s(&model));
    assert_eq!(v["data"], s(&text));

    let m = open_model(&model).unwrap();
    let tokens = m.tokenizer().unwrap().encode(TEXT).unwrap();
    let llama = Llama::load(&m.config, m.source.as_ref()).unwrap();
    // Independently of the CLI's chunked lm_head: full logits, then the protocol.
    let want = perplexity_with(
        &tokens,
        &PerplexityOptions {
            seq_len: 8,
            max_tokens: Some(30),
        },
        |w| {
            let logits = llama
                .forward(&Tensor::new(w, &Device::Cpu)?.unsqueeze(0)?)?
                .squeeze(0)?;
            Ok(window_nll(&logits, w)?)
        },
    )
    .unwrap();
    let got = v["perplexity"].as_f64().unwrap();
    assert!(
        (got - want.perplexity).abs() < 1e-9,
        "{got} vs {}",
        want.perplexity
    );
    // A random model is poor but not absurd: between 1 and the vocab size times a margin.
    assert!(
        got > 1.0 && got < 10.0 * m.config.vocab_size as f64,
        "{got}"
    );
}

#[test]
fn eval_of_an_empty_text_fails_naming_the_file() {
    let (dir, model, _) = setup();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let o = tyr(&["eval", "--model", s(&model), "--data", s(&empty)]);
    assert_failed_cleanly(&o, &["empty.txt", "empty"]);
}

#[test]
fn eval_with_seq_len_longer_than_the_text_fails_naming_the_file() {
    let (_dir, model, text) = setup();
    let o = tyr(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&text),
        "--seq-len",
        "4096",
    ]);
    assert_failed_cleanly(&o, &["text.txt", "fewer than one window", "4096"]);
}

#[test]
fn eval_of_a_missing_model_fails_naming_it() {
    let (dir, _, text) = setup();
    let missing = dir.path().join("no-such-model.gguf");
    let o = tyr(&["eval", "--model", s(&missing), "--data", s(&text)]);
    assert_failed_cleanly(&o, &["no-such-model.gguf"]);
}

#[test]
fn eval_of_a_missing_text_fails_naming_it() {
    let (dir, model, _) = setup();
    let o = tyr(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&dir.path().join("gone.txt")),
    ]);
    assert_failed_cleanly(&o, &["gone.txt"]);
}

#[test]
fn inspect_json_lists_per_layer_dims_and_parameter_counts() {
    let (_dir, model, _) = setup();
    let o = tyr(&["inspect", "--model", s(&model), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cfg = tiny_config(true, false);
    assert_eq!(v["total_params"], cfg.total_params());
    assert_eq!(v["decoder_params"], cfg.decoder_params());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(
        (
            layers[1]["n_q"].as_u64(),
            layers[1]["n_kv"].as_u64(),
            layers[1]["d_ff"].as_u64()
        ),
        (Some(2), Some(1), Some(32))
    );
    assert_eq!(layers[2]["params"], cfg.layer_params(2));
    assert_eq!(v["format"], "gguf");
    // The table form works too.
    let o = tyr(&["inspect", "--model", s(&model)]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("total params"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_is_deterministic_and_continues_the_prompt() {
    let (_dir, model, _) = setup();
    let run = || {
        tyr(&[
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "6",
        ])
    };
    let (a, b) = (run(), run());
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).starts_with("hello"));
}

#[test]
fn generate_with_a_missing_model_fails_naming_it() {
    let o = tyr(&[
        "generate",
        "--model",
        "/nonexistent/dir/model",
        "--prompt",
        "hi",
    ]);
    assert_failed_cleanly(&o, &["/nonexistent/dir/model"]);
}

#[test]
fn a_gguf_without_tokenizer_needs_tokenizer_json_and_works_with_one() {
    let (dir, model, text) = setup();
    let bare = dir.path().join("bare.gguf");
    let cfg = tiny_config(true, false);
    let opts = GgufOptions {
        with_tokenizer: false,
        ..Default::default()
    };
    write_tiny_gguf(&bare, &cfg, &random_source(&cfg, 5).unwrap(), &opts);
    let o = tyr(&[
        "eval",
        "--model",
        s(&bare),
        "--data",
        s(&text),
        "--seq-len",
        "8",
    ]);
    assert_failed_cleanly(&o, &["bare.gguf", "tokenizer"]);

    let json = dir.path().join("tokenizer.json");
    open_model(&model)
        .unwrap()
        .tokenizer()
        .unwrap()
        .save(&json)
        .unwrap();
    let args = [
        "eval",
        "--model",
        s(&bare),
        "--data",
        s(&text),
        "--seq-len",
        "8",
        "--json",
        "--tokenizer",
        s(&json),
    ];
    let with = tyr(&args);
    assert!(with.status.success(), "{}", stderr(&with));
    let plain = tyr(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&text),
        "--seq-len",
        "8",
        "--json",
    ]);
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&with.stdout).unwrap(),
        serde_json::from_slice(&plain.stdout).unwrap(),
    );
    assert_eq!(a["perplexity"], b["perplexity"]);
}
