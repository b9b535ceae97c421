//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no network) with a
//! summary of the run, plots drawn by `svg_charts`, and tables (`report_tables`). A section the
//! run did not produce is replaced by a one-line note, never by a broken plot.

use std::fmt::Write;

use super::report::{ModelRole, ParamCounts, Perplexity, Report};
use super::svg::{self, esc, fmt_num};
use super::svg_charts;
use crate::search::ModuleKind;

pub(super) const CSS: &str = "
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d1d1f;
 background:#f6f7f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:26px;margin:0 0 2px}h2{font-size:19px;margin:34px 0 8px;
 border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 18px}.note{color:#777;font-style:italic}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.card{border:1px solid #e2e4e8;border-radius:8px;padding:10px 14px;background:#fafbfc}
.card .k{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#666}
.card .v{font-size:21px;font-weight:600;margin:2px 0}.card .d{font-size:13px;color:#555}
.good{color:#1a7f37}.bad{color:#b42318}
figure{margin:14px 0 6px}figcaption{font-weight:600;margin-bottom:4px}
svg text{font-family:system-ui,sans-serif}svg text:not([fill]){fill:#333}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}code{font-size:13px;word-break:break-all}
details summary{cursor:pointer;color:#335;margin:6px 0}
";

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>tyr report: {}</title><style>{CSS}</style></head><body><main>",
        esc(&r.pipeline)
    );
    summary(&mut h, r);
    plots(&mut h, r);
    super::report_tables::tables(&mut h, r);
    h.push_str("</main></body></html>\n");
    h
}

pub(super) fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

fn kind_label(k: ModuleKind) -> &'static str {
    match k {
        ModuleKind::Attn => "attention heads",
        ModuleKind::Ffn => "FFN channels",
    }
}

fn card(h: &mut String, key: &str, value: &str, detail: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{value}</div>\
         <div class=\"d\">{detail}</div></div>",
        esc(key)
    );
}

/// "106,202,880 → 53,561,088 (50.43% kept)", or what is known of it.
fn params_arrow(dense: Option<u64>, pruned: Option<u64>) -> String {
    match (dense, pruned) {
        (Some(d), Some(p)) => format!(
            "{} → {} ({} kept)",
            fmt_num(d as f64),
            fmt_num(p as f64),
            pct(p as f64 / d as f64)
        ),
        (Some(d), None) => fmt_num(d as f64),
        (None, Some(p)) => format!("? → {}", fmt_num(p as f64)),
        (None, None) => "n/a".into(),
    }
}

fn summary(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<h1>{} pruned to {} sparsity</h1><p class=\"sub\">pipeline <b>{}</b> · seed {} · \
         report format {}</p><div class=\"cards\">",
        esc(&r.source.name),
        pct(r.target_sparsity),
        esc(&r.pipeline),
        r.seed,
        r.format
    );
    let digest = r
        .source
        .digest
        .as_deref()
        .map(|d| format!("<br>digest <code>{}</code>", esc(&d[..d.len().min(16)])))
        .unwrap_or_default();
    card(
        h,
        "model",
        &esc(&r.source.name),
        &format!("<code>{}</code>{digest}", esc(&r.source.path)),
    );
    let achieved: Vec<String> = r
        .unit_sparsity
        .iter()
        .map(|u| {
            format!(
                "{} {} ({} of {} removed)",
                kind_label(u.kind),
                pct(u.achieved),
                fmt_num(u.removed_units as f64),
                fmt_num(u.dense_units as f64)
            )
        })
        .collect();
    card(
        h,
        "target → achieved unit sparsity",
        &pct(r.target_sparsity),
        &if achieved.is_empty() {
            "not pruned in this run".into()
        } else {
            achieved.join("<br>")
        },
    );
    let p = &r.params;
    let decoder = |c: Option<ParamCounts>| c.map(|c| c.decoder);
    let total = |c: Option<ParamCounts>| c.map(|c| c.total);
    let short = |c: Option<u64>| c.map(svg::fmt_count).unwrap_or_else(|| "?".into());
    let mut detail = format!(
        "decoder {}<br>total {}",
        params_arrow(decoder(p.dense), decoder(p.pruned)),
        params_arrow(total(p.dense), total(p.pruned))
    );
    if let (Some(d), Some(q)) = (p.dense, p.pruned)
        && let (Some(da), Some(qa), Some(df), Some(qf)) = (d.attn, q.attn, d.ffn, q.ffn)
    {
        let removed = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / a.max(1) as f64;
        let _ = write!(
            detail,
            "<br>attention {} (−{:.1}%), FFN {} (−{:.1}%)",
            params_arrow(Some(da), Some(qa)),
            removed(da, qa),
            params_arrow(Some(df), Some(qf)),
            removed(df, qf)
        );
    }
    if let Some(dup) = p.pruned_kv_duplicated {
        let _ = write!(
            detail,
            "<br>with K/V heads duplicated for even GQA groups: decoder {}, total {}",
            fmt_num(dup.decoder as f64),
            fmt_num(dup.total as f64)
        );
    }
    card(
        h,
        "decoder parameters",
        &format!("{} → {}", short(decoder(p.dense)), short(decoder(p.pruned))),
        &detail,
    );
    match r.headline_perplexity() {
        Some((d, q)) => {
            let ratio = q.value / d.value;
            card(
                h,
                "perplexity dense → pruned",
                &format!(
                    "{} → {}{}",
                    fmt_num(d.value),
                    fmt_num(q.value),
                    if ratio.is_finite() {
                        format!(" <span class=\"bad\">×{ratio:.2}</span>")
                    } else {
                        String::new()
                    }
                ),
                &format!(
                    "{} · seq_len {} · {} tokens",
                    esc(&d.text),
                    d.seq_len,
                    fmt_num(d.tokens as f64)
                ),
            );
        }
        None => card(h, "perplexity", "n/a", "no dense and pruned pair evaluated"),
    }
    h.push_str("</div>");
}

fn figure(h: &mut String, caption: &str, body: Option<String>, missing: &str) {
    let _ = write!(h, "<figure><figcaption>{}</figcaption>", esc(caption));
    match body {
        Some(svg) => h.push_str(&svg),
        None => {
            let _ = write!(h, "<p class=\"note\">{}</p>", esc(missing));
        }
    }
    h.push_str("</figure>");
}

fn plots(h: &mut String, r: &Report) {
    h.push_str("<h2>Plots</h2>");
    let pruned: Vec<_> = r
        .layers
        .iter()
        .filter_map(|l| l.pruned.as_ref().map(|p| (l, p)))
        .collect();
    let have_layers = !pruned.is_empty();
    let categories: Vec<String> = pruned.iter().map(|(l, _)| l.layer.to_string()).collect();
    let heads = have_layers.then(|| {
        svg_charts::bar_chart(&svg_charts::BarChart {
            title: "kept query and K/V heads per layer".into(),
            x_title: "layer".into(),
            y_title: "heads".into(),
            categories: categories.clone(),
            series: vec![
                svg_charts::BarSeries {
                    name: "query heads kept".into(),
                    unit: "query heads".into(),
                    colour: svg::BLUE,
                    kept: pruned.iter().map(|(_, p)| p.query_heads as f64).collect(),
                    dense: pruned
                        .iter()
                        .map(|(l, _)| l.dense.query_heads as f64)
                        .collect(),
                },
                svg_charts::BarSeries {
                    name: "K/V heads kept".into(),
                    unit: "K/V heads".into(),
                    colour: svg::ORANGE,
                    kept: pruned.iter().map(|(_, p)| p.kv_heads as f64).collect(),
                    dense: pruned
                        .iter()
                        .map(|(l, _)| l.dense.kv_heads as f64)
                        .collect(),
                },
            ],
        })
    });
    figure(
        h,
        "Attention heads kept per layer (dashed: dense; ✕: attention removed)",
        heads,
        "No pruned model in this run.",
    );
    let ffn = have_layers.then(|| {
        svg_charts::bar_chart(&svg_charts::BarChart {
            title: "kept FFN channels per layer".into(),
            x_title: "layer".into(),
            y_title: "FFN channels".into(),
            categories,
            series: vec![svg_charts::BarSeries {
                name: "FFN channels kept".into(),
                unit: "FFN channels".into(),
                colour: svg::GREEN,
                kept: pruned
                    .iter()
                    .map(|(_, p)| p.intermediate_size as f64)
                    .collect(),
                dense: pruned
                    .iter()
                    .map(|(l, _)| l.dense.intermediate_size as f64)
                    .collect(),
            }],
        })
    });
    figure(
        h,
        "FFN channels kept per layer (dashed: dense; ✕: FFN removed)",
        ffn,
        "No pruned model in this run.",
    );
    figure(
        h,
        &format!(
            "Search: best fitness per generation ({}; lower is better)",
            r.fitness_metric.as_deref().unwrap_or("fitness")
        ),
        fitness_chart(r),
        "No search history in this run.",
    );
    figure(
        h,
        "Held-out perplexity (lower is better)",
        perplexity_chart(r),
        "No perplexity was evaluated in this run.",
    );
}

fn fitness_chart(r: &Report) -> Option<String> {
    let mut series = Vec::new();
    let mut separators = Vec::new();
    let mut offset = 0u64;
    for (i, round) in r.rounds.iter().enumerate() {
        if round.generations.is_empty() {
            continue;
        }
        if offset > 0 {
            separators.push((offset as f64 + 0.5, format!("round {}", round.round)));
        }
        series.push(svg_charts::LineSeries {
            name: format!("round {}", round.round),
            colour: svg::PALETTE[i % svg::PALETTE.len()],
            points: round
                .generations
                .iter()
                .map(|g| ((offset + g.generation + 1) as f64, g.best_fitness))
                .collect(),
        });
        offset += round
            .generations
            .iter()
            .map(|g| g.generation + 1)
            .max()
            .unwrap_or(0);
    }
    (!series.is_empty()).then(|| {
        svg_charts::line_chart(&svg_charts::LineChart {
            title: "best fitness per generation".into(),
            x_title: "generation (rounds in order)".into(),
            y_title: "best fitness".into(),
            series,
            separators,
        })
    })
}

/// Perplexities grouped by text (in first-seen order): dense, pruned, then baselines.
pub(super) fn ordered_perplexities(r: &Report) -> Vec<&Perplexity> {
    let mut texts: Vec<&str> = Vec::new();
    for p in &r.perplexities {
        if !texts.contains(&p.text.as_str()) {
            texts.push(&p.text);
        }
    }
    let rank = |role: ModelRole| match role {
        ModelRole::Dense => 0,
        ModelRole::Pruned => 1,
        ModelRole::Baseline => 2,
    };
    let mut out: Vec<&Perplexity> = r.perplexities.iter().collect();
    // Stable sort: entries of equal rank keep the pipeline's order.
    out.sort_by_key(|p| {
        (
            texts.iter().position(|t| *t == p.text).unwrap_or(0),
            rank(p.role),
        )
    });
    out
}

/// The dense perplexity on `text`, if one was evaluated.
fn dense_on<'a>(r: &'a Report, text: &str) -> Option<&'a Perplexity> {
    r.perplexities
        .iter()
        .find(|p| p.role == ModelRole::Dense && p.text == text)
}

/// "×4.68" of the dense perplexity on the same text; empty for dense itself or when unknown.
pub(super) fn times_dense(r: &Report, p: &Perplexity) -> String {
    match dense_on(r, &p.text) {
        Some(d) if p.role != ModelRole::Dense => {
            let x = p.value / d.value;
            if x.is_finite() {
                format!("×{x:.2}")
            } else {
                String::new()
            }
        }
        _ => String::new(),
    }
}

fn perplexity_chart(r: &Report) -> Option<String> {
    if r.perplexities.is_empty() {
        return None;
    }
    let multi_text = r
        .perplexities
        .iter()
        .any(|p| p.text != r.perplexities[0].text);
    let mut baseline_colour = 0;
    let bars = ordered_perplexities(r)
        .into_iter()
        .map(|p| {
            let colour = match p.role {
                ModelRole::Dense => svg::GREY,
                ModelRole::Pruned => svg::BLUE,
                ModelRole::Baseline => {
                    baseline_colour += 1;
                    [svg::ORANGE, svg::PURPLE, svg::RED, svg::GREEN][(baseline_colour - 1) % 4]
                }
            };
            let who = match p.role {
                ModelRole::Dense if p.model == "dense" => p.model.clone(),
                ModelRole::Dense => format!("{} (dense)", p.model),
                ModelRole::Pruned => format!("{} (pruned)", p.model),
                ModelRole::Baseline => format!("{} (baseline)", p.model),
            };
            svg_charts::HBar {
                label: if multi_text {
                    format!("{who} · {}", p.text)
                } else {
                    who
                },
                value: p.value,
                note: match times_dense(r, p) {
                    x if x.is_empty() => x,
                    x => format!("{x} dense"),
                },
                colour,
            }
        })
        .collect();
    Some(svg_charts::hbar_chart(&svg_charts::HBarChart {
        title: "held-out perplexity".into(),
        value_title: "perplexity".into(),
        bars,
    }))
}
