//! The sweep report (`out/<name>/sweep/report.json` and `report.html`): the values of one swept
//! key side by side, read from each value's own `report.json`: the pruned model's size, its
//! perplexity on every held-out text (and each baseline's), zero-shot means, and a plot of
//! perplexity against the share of dense decoder parameters kept.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::report::{ModelRole, Report, ReportFiles};
use super::svg::{self, esc, fmt_num};
use super::svg_charts;
use crate::{Error, Result};

/// The layout version of the sweep's `report.json`.
pub const SWEEP_REPORT_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub format: u32,
    pub pipeline: String,
    /// The swept key, e.g. `prune.target`.
    pub key: String,
    /// In the order the values were given.
    pub values: Vec<SweepValue>,
}

/// One value's run: its report (absent when the pipeline has no report stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepValue {
    pub value: String,
    /// That value's folder, relative to the sweep report (`prune.target=0.3`).
    pub dir: String,
    pub report: Option<Report>,
}

/// Reads each value's `report.json` from its folder in `values` and writes the sweep report
/// into `dir`.
pub fn write(
    dir: &Path,
    pipeline: &str,
    key: &str,
    values: &[(String, PathBuf)],
) -> Result<ReportFiles> {
    let mut out = SweepReport {
        format: SWEEP_REPORT_FORMAT,
        pipeline: pipeline.to_string(),
        key: key.to_string(),
        values: Vec::new(),
    };
    for (v, vdir) in values {
        let json = vdir.join("report.json");
        let report = match std::fs::read_to_string(&json) {
            Ok(text) => Some(Report::from_json(&text).map_err(|e| {
                Error::msg(format!("the report of {key}={v} ({}): {e}", json.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&json, e)),
        };
        out.values.push(SweepValue {
            value: v.clone(),
            dir: vdir
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            report,
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = ReportFiles {
        json: dir.join("report.json"),
        html: dir.join("report.html"),
    };
    let mut json = serde_json::to_string_pretty(&out).map_err(|e| Error::ExportReport {
        reason: format!("cannot encode the sweep report as JSON: {e}"),
    })?;
    json.push('\n');
    crate::atomic_file::write(&files.json, json.as_bytes())?;
    crate::atomic_file::write(&files.html, render(&out).as_bytes())?;
    Ok(files)
}

/// Decoder parameters of `model` in `r` ("tyr" is the pruned model, else a baseline's name).
fn decoder_params(r: &Report, role: ModelRole, model: &str) -> Option<u64> {
    match role {
        ModelRole::Dense => r.params.dense.map(|p| p.decoder),
        ModelRole::Pruned => r.params.pruned.map(|p| p.decoder),
        ModelRole::Baseline => r
            .baselines
            .iter()
            .find(|b| b.name == model)
            .and_then(|b| b.params.map(|p| p.decoder)),
    }
}

/// The page: a table with one row per (value, model) and one perplexity column per text, and
/// the perplexity-vs-size plot.
pub fn render(s: &SweepReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>tyr sweep: {} over {}</title><style>{}</style></head><body><main>\
         <h1>{} — sweep over <code>{}</code></h1><p class=\"sub\">{} values; each links to its \
         own report.</p>",
        esc(&s.pipeline),
        esc(&s.key),
        super::report_html::CSS,
        esc(&s.pipeline),
        esc(&s.key),
        s.values.len()
    );
    let reports: Vec<(&SweepValue, &Report)> = s
        .values
        .iter()
        .filter_map(|v| v.report.as_ref().map(|r| (v, r)))
        .collect();
    let mut texts: Vec<&str> = Vec::new();
    for (_, r) in &reports {
        for p in &r.perplexities {
            if !texts.contains(&p.text.as_str()) {
                texts.push(&p.text);
            }
        }
    }
    let dense_of = |r: &Report, text: &str| {
        r.perplexities
            .iter()
            .find(|p| p.role == ModelRole::Dense && p.text == text)
            .map(|p| p.value)
    };

    // The plot: one line per (model, text) over the values, x = share of dense decoder params.
    let mut series: Vec<svg_charts::LineSeries> = Vec::new();
    for (_, r) in &reports {
        let dense = decoder_params(r, ModelRole::Dense, "dense");
        for p in r.perplexities.iter().filter(|p| p.role != ModelRole::Dense) {
            let (Some(d), Some(n)) = (dense, decoder_params(r, p.role, &p.model)) else {
                continue;
            };
            let name = format!("{} on {}", p.model, p.text);
            let x = 100.0 * n as f64 / d.max(1) as f64;
            match series.iter_mut().find(|l| l.name == name) {
                Some(l) => l.points.push((x, p.value)),
                None => {
                    let colour = svg::PALETTE[series.len() % svg::PALETTE.len()];
                    series.push(svg_charts::LineSeries {
                        name,
                        colour,
                        points: vec![(x, p.value)],
                    })
                }
            }
        }
    }
    for l in &mut series {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if series.is_empty() {
        h.push_str("<p class=\"note\">No value has both perplexities and parameter counts.</p>");
    } else {
        let _ = write!(
            h,
            "<figure><figcaption>Perplexity against size</figcaption>{}</figure>",
            svg_charts::line_chart(&svg_charts::LineChart {
                title: "held-out perplexity per model and text".into(),
                x_title: "decoder parameters kept (% of dense)".into(),
                y_title: "perplexity".into(),
                series,
                separators: Vec::new(),
            })
        );
    }

    // The table.
    h.push_str("<h2>Values</h2><table><tr>");
    let _ = write!(
        h,
        "<th>{}</th><th>model</th><th class=\"n\">decoder params</th><th class=\"n\">% of dense</th>",
        esc(&s.key)
    );
    for t in &texts {
        let _ = write!(h, "<th class=\"n\">{} (×dense)</th>", esc(t));
    }
    let any_accuracy = reports.iter().any(|(_, r)| !r.accuracies.is_empty());
    if any_accuracy {
        h.push_str("<th class=\"n\">zero-shot mean</th>");
    }
    h.push_str("</tr>");
    // The dense model is the same in every value: one row, with the first value.
    let mut dense_shown = false;
    for v in &s.values {
        let link = format!(
            "<a href=\"{}/report.html\">{}</a>",
            esc(&v.dir),
            esc(&v.value)
        );
        let Some(r) = &v.report else {
            let _ = write!(
                h,
                "<tr><td>{link}</td><td colspan=\"{}\" class=\"note\">no report</td></tr>",
                texts.len() + 3 + usize::from(any_accuracy)
            );
            continue;
        };
        let mut models: Vec<(&str, ModelRole)> = Vec::new();
        for p in &r.perplexities {
            if !models.iter().any(|m| m.0 == p.model) {
                models.push((&p.model, p.role));
            }
        }
        let dense = decoder_params(r, ModelRole::Dense, "dense");
        for (model, role) in models {
            if role == ModelRole::Dense {
                if dense_shown {
                    continue;
                }
                dense_shown = true;
            }
            let params = decoder_params(r, role, model);
            let share = match (params, dense) {
                (Some(n), Some(d)) if d > 0 => format!("{:.1}%", 100.0 * n as f64 / d as f64),
                _ => "?".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{link}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{share}</td>",
                esc(model),
                params.map(svg::fmt_count).unwrap_or_else(|| "?".into()),
            );
            for t in &texts {
                let cell = r
                    .perplexities
                    .iter()
                    .find(|p| p.model == model && p.text == *t)
                    .map(|p| match dense_of(r, t) {
                        Some(d) if role != ModelRole::Dense && d > 0.0 => {
                            format!("{} (×{:.2})", fmt_num(p.value), p.value / d)
                        }
                        _ => fmt_num(p.value),
                    })
                    .unwrap_or_default();
                let _ = write!(h, "<td class=\"n\">{cell}</td>");
            }
            let accs: Vec<f64> = r
                .accuracies
                .iter()
                .filter(|a| a.model == model)
                .map(|a| a.acc)
                .collect();
            let mean = if accs.is_empty() {
                String::new()
            } else {
                format!(
                    "{:.2}%",
                    100.0 * accs.iter().sum::<f64>() / accs.len() as f64
                )
            };
            if any_accuracy {
                let _ = write!(h, "<td class=\"n\">{mean}</td>");
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table></main></body></html>\n");
    h
}
