//! The tables of `report.html`: per-layer widths, chosen levels per round, perplexities,
//! baselines, outputs and stage timings.

use std::fmt::Write;

use super::report::{ModelRole, Report, UnitSparsity};
use super::report_html::{ordered_perplexities, pct, times_dense};
use super::svg::{esc, fmt_num};
use crate::search::ModuleKind;

fn table(h: &mut String, head: &[&str], rows: &[Vec<String>]) {
    h.push_str("<table><thead><tr>");
    let numeric: Vec<bool> = head.iter().map(|c| c.starts_with('#')).collect();
    for c in head {
        let (cls, name) = match c.strip_prefix('#') {
            Some(n) => (" class=\"n\"", n),
            None => ("", *c),
        };
        let _ = write!(h, "<th{cls}>{}</th>", esc(name));
    }
    h.push_str("</tr></thead><tbody>");
    for row in rows {
        h.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let cls = if numeric.get(i).copied().unwrap_or(false) {
                " class=\"n\""
            } else {
                ""
            };
            // Cells arrive already escaped: some hold markup such as <code>.
            let _ = write!(h, "<td{cls}>{cell}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
}

fn arrow(dense: usize, pruned: Option<usize>) -> String {
    match pruned {
        Some(p) if p == dense => dense.to_string(),
        Some(p) => format!("{dense} → {p}"),
        None => dense.to_string(),
    }
}

fn sparsity_of(us: &[UnitSparsity], kind: ModuleKind) -> String {
    us.iter()
        .find(|u| u.kind == kind)
        .map(|u| pct(u.achieved))
        .unwrap_or_else(|| "n/a".into())
}

pub(super) fn tables(h: &mut String, r: &Report) {
    h.push_str("<h2>Per-layer widths</h2>");
    if r.layers.is_empty() {
        h.push_str("<p class=\"note\">No layer widths in this run.</p>");
    } else {
        let any_dup = r.layers.iter().any(|l| l.kv_heads_duplicated.is_some());
        let mut head = vec![
            "#layer",
            "#query heads",
            "#K/V heads",
            "K/V group sizes",
            "#FFN channels",
        ];
        if any_dup {
            head.push("#K/V heads after duplication");
        }
        let rows: Vec<Vec<String>> = r
            .layers
            .iter()
            .map(|l| {
                let p = l.pruned.as_ref();
                let mut row = vec![
                    l.layer.to_string(),
                    arrow(l.dense.query_heads, p.map(|p| p.query_heads)),
                    arrow(l.dense.kv_heads, p.map(|p| p.kv_heads)),
                    p.unwrap_or(&l.dense)
                        .kv_group_sizes
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    arrow(l.dense.intermediate_size, p.map(|p| p.intermediate_size)),
                ];
                if any_dup {
                    row.push(
                        l.kv_heads_duplicated
                            .map(|k| k.to_string())
                            .unwrap_or_default(),
                    );
                }
                row
            })
            .collect();
        table(h, &head, &rows);
    }

    if !r.rounds.is_empty() {
        h.push_str("<h2>Chosen levels per round</h2><details><summary>units removed per module and round, and each round's grid step</summary>");
        let mut head: Vec<String> = vec!["#layer".into()];
        for round in &r.rounds {
            for k in ModuleKind::ALL {
                let step = round
                    .steps
                    .iter()
                    .find(|s| s.kind == k)
                    .map(|s| format!(" (Δ {})", s.step))
                    .unwrap_or_default();
                head.push(format!("#r{} {}{}", round.round, k.name(), step));
            }
        }
        let n_layers = r
            .rounds
            .iter()
            .flat_map(|x| x.levels.iter().map(|m| m.layer + 1))
            .max()
            .unwrap_or(0);
        let rows: Vec<Vec<String>> = (0..n_layers)
            .map(|l| {
                let mut row = vec![l.to_string()];
                for round in &r.rounds {
                    for k in ModuleKind::ALL {
                        row.push(
                            round
                                .levels
                                .iter()
                                .find(|m| m.layer == l && m.kind == k)
                                .map(|m| format!("{} / {}", m.level, m.units))
                                .unwrap_or_default(),
                        );
                    }
                }
                row
            })
            .collect();
        let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
        table(h, &head_refs, &rows);
        let offspring: Vec<String> = r
            .rounds
            .iter()
            .map(|x| {
                format!(
                    "round {}: {} generations, {} offspring evaluated",
                    x.round,
                    x.generations.len(),
                    fmt_num(x.generations.iter().map(|g| g.offspring as f64).sum())
                )
            })
            .collect();
        let _ = write!(h, "</details><p>{}</p>", esc(&offspring.join("; ")));
    }

    h.push_str("<h2>Perplexity</h2>");
    if r.perplexities.is_empty() {
        h.push_str("<p class=\"note\">Not evaluated in this run.</p>");
    } else {
        let rows: Vec<Vec<String>> = ordered_perplexities(r)
            .into_iter()
            .map(|p| {
                vec![
                    esc(&p.model),
                    esc(match p.role {
                        ModelRole::Dense => "dense",
                        ModelRole::Pruned => "pruned",
                        ModelRole::Baseline => "baseline",
                    }),
                    esc(&p.text),
                    p.seq_len.to_string(),
                    fmt_num(p.tokens as f64),
                    fmt_num(p.value),
                    times_dense(r, p),
                ]
            })
            .collect();
        table(
            h,
            &[
                "model",
                "role",
                "text",
                "#seq_len",
                "#tokens",
                "#perplexity",
                "#vs dense",
            ],
            &rows,
        );
    }

    if !r.accuracies.is_empty() {
        h.push_str("<h2>Zero-shot accuracy</h2>");
        let dense_mean = mean_accuracy(r, "dense");
        let mut rows: Vec<Vec<String>> = r
            .accuracies
            .iter()
            .map(|a| {
                vec![
                    esc(&a.model),
                    esc(&a.task),
                    a.n.to_string(),
                    format!("{:.2}", 100.0 * a.acc),
                    a.acc_norm
                        .map_or("–".into(), |v| format!("{:.2}", 100.0 * v)),
                ]
            })
            .collect();
        let mut models: Vec<&str> = Vec::new();
        for a in &r.accuracies {
            if !models.contains(&a.model.as_str()) {
                models.push(&a.model);
            }
        }
        for m in models {
            let mean = mean_accuracy(r, m).unwrap_or(f64::NAN);
            let of_dense = dense_mean.map_or("–".into(), |d| {
                format!("{:.1}% of dense", 100.0 * mean / d)
            });
            rows.push(vec![
                esc(m),
                "mean".into(),
                String::new(),
                format!("{:.2}", 100.0 * mean),
                of_dense,
            ]);
        }
        table(
            h,
            &["model", "task", "#examples", "#acc %", "#acc_norm %"],
            &rows,
        );
    }

    h.push_str("<h2>Baselines</h2>");
    if r.baselines.is_empty() {
        h.push_str("<p class=\"note\">No baselines in this run.</p>");
    } else {
        let rows: Vec<Vec<String>> = r
            .baselines
            .iter()
            .map(|b| {
                vec![
                    esc(&b.name),
                    b.params
                        .map(|p| fmt_num(p.decoder as f64))
                        .unwrap_or_else(|| "n/a".into()),
                    b.params
                        .map(|p| fmt_num(p.total as f64))
                        .unwrap_or_else(|| "n/a".into()),
                    sparsity_of(&b.unit_sparsity, ModuleKind::Attn),
                    sparsity_of(&b.unit_sparsity, ModuleKind::Ffn),
                    b.model_dir
                        .as_deref()
                        .map(|d| format!("<code>{}</code>", esc(d)))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        table(
            h,
            &[
                "baseline",
                "#decoder params",
                "#total params",
                "#head sparsity",
                "#channel sparsity",
                "model",
            ],
            &rows,
        );
    }

    h.push_str("<h2>Outputs</h2>");
    let o = &r.outputs;
    if o.model_dir.is_none() && o.gguf.is_none() {
        h.push_str("<p class=\"note\">No model was exported in this run.</p>");
    } else {
        let mut rows = Vec::new();
        if let Some(d) = &o.model_dir {
            rows.push(vec![
                "model folder".into(),
                format!("<code>{}</code>", esc(d)),
            ]);
        }
        if let Some(g) = &o.gguf {
            rows.push(vec!["GGUF".into(), format!("<code>{}</code>", esc(g))]);
        }
        table(h, &["output", "path"], &rows);
    }

    h.push_str("<h2>Stage timings</h2>");
    if r.timings.stages.is_empty() {
        h.push_str("<p class=\"note\">No timings recorded.</p>");
    } else {
        let ran = r.timings.stages.iter().filter(|s| !s.cached).count();
        let _ = write!(
            h,
            "<p>{} stages, {} ran, {} cached; {} s ({} min) summed over stages (independent \
             stages run side by side, so the run's wall time is shorter; a cached stage shows \
             the time it took when it ran). Wall-clock times vary between runs; every other \
             number in this report is reproducible.</p>",
            r.timings.stages.len(),
            ran,
            r.timings.stages.len() - ran,
            fmt_num(r.timings.total_seconds().round()),
            fmt_num((r.timings.total_seconds() / 6.0).round() / 10.0)
        );
        let rows: Vec<Vec<String>> = r
            .timings
            .stages
            .iter()
            .map(|s| {
                vec![
                    format!("<code>{}</code>", esc(&s.stage)),
                    esc(&s.kind),
                    if s.seconds.is_finite() {
                        format!("{:.2}", s.seconds)
                    } else {
                        "n/a".into()
                    },
                    if s.cached { "cached" } else { "ran" }.into(),
                ]
            })
            .collect();
        table(h, &["stage", "kind", "#seconds", "status"], &rows);
    }
}

/// Mean `acc` of `model` over its tasks.
fn mean_accuracy(r: &Report, model: &str) -> Option<f64> {
    let xs: Vec<f64> = r
        .accuracies
        .iter()
        .filter(|a| a.model == model)
        .map(|a| a.acc)
        .collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}
