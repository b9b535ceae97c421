//! GGUF export (ALGORITHM.md §10b): a sliced model written for llama.cpp's `deci` (or `llama`)
//! graph reads back through our own GGUF loader with the written dims and the same logits; K/V
//! duplication to even groups and zero-width padding are exact.

mod common;
mod export_common;

use candle_core::quantized::gguf_file::Value;
use export_common::{choices, dense_config, logits, max_abs_diff};
use tyr::export::{
    GgufDtype, GgufExportOptions, ZeroWidth, slice_model, write_gguf, written_config,
};
use tyr::model::gguf::{GgufFile, open_gguf};
use tyr::model::random::random_source;
use tyr::model::{LayerDims, ModelConfig};

fn counts(cfg: &ModelConfig) -> Vec<(usize, usize, usize)> {
    cfg.layers.iter().map(|d| (d.n_q, d.n_kv, d.d_ff)).collect()
}

fn round_trip(
    zero_width: ZeroWidth,
    dtype: GgufDtype,
) -> (ModelConfig, f32, tyr::export::GgufExportReport) {
    let cfg = dense_config();
    let dense = random_source(&cfg, 11).unwrap();
    let (small_cfg, small) = slice_model(&cfg, &dense, &choices(&cfg)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pruned.gguf");
    let opts = GgufExportOptions {
        zero_width,
        dtype,
        ..Default::default()
    };
    let report = write_gguf(&path, &small_cfg, &small, &opts).unwrap();
    let (back_cfg, back) = open_gguf(&path).unwrap();
    assert_eq!(
        counts(&back_cfg),
        counts(&written_config(&small_cfg, zero_width))
    );
    let d = max_abs_diff(&logits(&small_cfg, &small), &logits(&back_cfg, &back));
    (back_cfg, d, report)
}

#[test]
fn gguf_round_trip_keeps_per_layer_dims_and_logits() {
    let (back, d, report) = round_trip(ZeroWidth::Omit, GgufDtype::F32);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
    assert_eq!(report.architecture, "deci");
    // Layer 0: groups 2+1 → g = 1, K/V duplicated to 3; layer 1: attention without FFN gets one
    // padding channel; layer 2: attention omitted; layer 3: groups 1+3 → 4 K/V heads.
    assert_eq!(
        counts(&back),
        vec![(3, 3, 6), (2, 1, 1), (0, 0, 8), (4, 4, 1)]
    );
    assert!(report.decoder_params_written > report.decoder_params);
}

#[test]
fn pad_one_writes_every_branch_and_stays_exact() {
    let (back, d, report) = round_trip(ZeroWidth::PadOne, GgufDtype::F32);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
    assert!(report.layers[2].padded_attention);
    assert!(back.layers.iter().all(|l| l.n_q > 0 && l.d_ff > 0));
}

#[test]
fn f16_export_is_close() {
    let (_, d, _) = round_trip(ZeroWidth::Omit, GgufDtype::F16);
    assert!(d < 5e-2, "max |Δlogit| = {d}");
}

#[test]
fn kv_duplication_gives_the_same_logits_as_uneven_groups() {
    // One layer of groups 1 and 3 (a lone K/V head and a wide one): written as 4 K/V heads.
    let cfg = common::tiny_config(vec![LayerDims {
        n_q: 4,
        n_kv: 2,
        kv_map: vec![1, 0, 1, 1],
        d_ff: 16,
    }]);
    let src = random_source(&cfg, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let report = write_gguf(&path, &cfg, &src, &GgufExportOptions::default()).unwrap();
    assert_eq!(report.layers[0].kv_source, vec![0, 1, 1, 1]);
    assert_eq!(report.layers[0].head_order, vec![1, 0, 2, 3]);
    let (back_cfg, back) = open_gguf(&path).unwrap();
    assert_eq!(counts(&back_cfg), vec![(4, 4, 16)]);
    let d = max_abs_diff(&logits(&cfg, &src), &logits(&back_cfg, &back));
    assert!(d < 1e-4, "max |Δlogit| = {d}");
    let added = 2 * cfg.hidden_size * cfg.head_dim * 2;
    assert_eq!(report.decoder_params_written, report.decoder_params + added);
}

#[test]
fn a_uniform_model_is_written_as_llama_with_scalar_counts() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.gguf");
    let report = write_gguf(&path, &cfg, &src, &GgufExportOptions::default()).unwrap();
    assert_eq!(report.architecture, "llama");
    let g = GgufFile::open(&path).unwrap();
    assert!(matches!(
        g.metadata("llama.attention.head_count"),
        Some(Value::U32(4))
    ));
    let (back_cfg, back) = open_gguf(&path).unwrap();
    let d = max_abs_diff(&logits(&cfg, &src), &logits(&back_cfg, &back));
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}

#[test]
fn deci_never_writes_kv_zero_with_heads_and_keeps_layer_zero_attention() {
    let cfg = dense_config();
    let dense = random_source(&cfg, 11).unwrap();
    let mut ch = choices(&cfg);
    ch[0].attn.kept.clear();
    let (small_cfg, small) = slice_model(&cfg, &dense, &ch).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.gguf");
    write_gguf(&path, &small_cfg, &small, &GgufExportOptions::default()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let arr = |k: &str| -> Vec<u32> {
        match g.metadata(k) {
            Some(Value::Array(v)) => v
                .iter()
                .map(|x| match x {
                    Value::U32(u) => *u,
                    _ => u32::MAX,
                })
                .collect(),
            other => panic!("{k}: {other:?}"),
        }
    };
    let (q, kv) = (
        arr("deci.attention.head_count"),
        arr("deci.attention.head_count_kv"),
    );
    assert!(
        q[0] > 0,
        "layer 0 must keep a head for llama.cpp's head dim"
    );
    assert!(q.iter().zip(&kv).all(|(&q, &kv)| (q == 0) == (kv == 0)));
    let (back_cfg, back) = open_gguf(&path).unwrap();
    let d = max_abs_diff(&logits(&small_cfg, &small), &logits(&back_cfg, &back));
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}
