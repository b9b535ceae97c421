//! The report's charts as inline SVG: grouped bars with a dense outline, line charts with gaps,
//! and labelled horizontal bars. Each chart is a pure function of its spec returning one
//! `<svg>…</svg>` string, with coordinates written to fixed decimals.

use std::fmt::Write;

use super::svg::{FONT, LEFT, RED, RIGHT, Scale, TOP, WIDTH, esc, fmt_num, nice_step};

/// Opens an `<svg>` of the given height with a title for screen readers.
fn open(out: &mut String, height: f64, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH:.0} {height:.0}" width="100%" role="img" font-size="{FONT}"><title>{}</title>"#,
        esc(title)
    );
}

/// A legend row at the top right: (label, colour, dashed outline instead of a filled swatch).
fn legend(out: &mut String, items: &[(String, &str, bool)]) {
    let mut x = WIDTH - RIGHT;
    for (label, colour, outline) in items.iter().rev() {
        let w = 22.0 + 7.2 * label.chars().count() as f64;
        x -= w + 14.0;
        if *outline {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="10" width="14" height="12" fill="none" stroke="{colour}" stroke-dasharray="3 2"/>"#
            );
        } else {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="10" width="14" height="12" fill="{colour}"/>"#
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="20.5">{}</text>"#,
            x + 20.0,
            esc(label)
        );
    }
}

/// The value axis on the left of a vertical chart: gridlines, tick labels and the axis title.
fn y_axis(out: &mut String, scale: &Scale, y0: f64, y1: f64, title: &str) {
    for t in scale.ticks() {
        if let Some(y) = scale.map(t, y0, y1) {
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(t)
            );
        }
    }
    let mid = (y0 + y1) / 2.0;
    let _ = write!(
        out,
        r#"<text transform="translate(16 {mid:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        esc(title)
    );
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{y1:.1}" y2="{y0:.1}" stroke="#444"/><line x1="{LEFT}" x2="{:.1}" y1="{y0:.1}" y2="{y0:.1}" stroke="#444"/>"##,
        WIDTH - RIGHT
    );
}

/// One bar series: a kept value and a dense value per category.
pub struct BarSeries {
    /// The legend label.
    pub name: String,
    /// What one unit is, plural, for tooltips ("query heads").
    pub unit: String,
    pub colour: &'static str,
    pub kept: Vec<f64>,
    pub dense: Vec<f64>,
}

/// Vertical grouped bars (one group per category), each bar drawn over a dashed outline of its
/// dense value. A bar whose kept value is 0 while its dense value is not gets a red ✕ at the
/// base: that branch was removed.
pub struct BarChart {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

pub fn bar_chart(c: &BarChart) -> String {
    let height = 300.0;
    let (y0, y1) = (height - 48.0, TOP);
    let scale = Scale::linear_from_zero(
        c.series
            .iter()
            .flat_map(|s| s.kept.iter().chain(&s.dense).copied()),
    );
    let mut out = String::new();
    open(&mut out, height, &c.title);
    let mut items: Vec<(String, &str, bool)> = c
        .series
        .iter()
        .map(|s| (s.name.clone(), s.colour, false))
        .collect();
    items.push(("dense".into(), "#555", true));
    legend(&mut out, &items);
    y_axis(&mut out, &scale, y0, y1, &c.y_title);

    let n = c.categories.len().max(1);
    let slot = (WIDTH - LEFT - RIGHT) / n as f64;
    let groups = c.series.len().max(1);
    // Bars stay slim when there are few layers; groups are centred in their slot.
    let bar_w = (slot * 0.8 / groups as f64).clamp(0.5, 40.0);
    let label_every = n.div_ceil(30).max(1);
    for (i, cat) in c.categories.iter().enumerate() {
        let gx = LEFT + slot * (i as f64 + 0.5) - bar_w * groups as f64 / 2.0;
        for (k, s) in c.series.iter().enumerate() {
            let x = gx + bar_w * k as f64;
            let base = scale.base();
            let (Some(yb), kept, dense) = (
                scale.map(base, y0, y1),
                s.kept.get(i).copied().unwrap_or(f64::NAN),
                s.dense.get(i).copied().unwrap_or(f64::NAN),
            ) else {
                continue;
            };
            let tip = format!(
                "{} {}: {} of {} {} kept",
                c.x_title,
                cat,
                fmt_num(kept),
                fmt_num(dense),
                s.unit
            );
            if let Some(yk) = scale.map(kept, y0, y1) {
                let _ = write!(
                    out,
                    r#"<rect x="{x:.2}" y="{yk:.2}" width="{bar_w:.2}" height="{:.2}" fill="{}"><title>{}</title></rect>"#,
                    (yb - yk).max(0.0),
                    s.colour,
                    esc(&tip)
                );
            }
            if let Some(yd) = scale.map(dense, y0, y1) {
                let _ = write!(
                    out,
                    r##"<rect x="{x:.2}" y="{yd:.2}" width="{bar_w:.2}" height="{:.2}" fill="none" stroke="#555" stroke-width="1" stroke-dasharray="3 2"/>"##,
                    (yb - yd).max(0.0)
                );
            }
            if kept == 0.0 && dense > 0.0 {
                let (cx, cy, r) = (x + bar_w / 2.0, yb - 6.0, (bar_w / 2.0).clamp(2.0, 5.0));
                let _ = write!(
                    out,
                    r#"<path d="M{:.2} {:.2}L{:.2} {:.2}M{:.2} {:.2}L{:.2} {:.2}" stroke="{RED}" stroke-width="2"><title>{}</title></path>"#,
                    cx - r,
                    cy - r,
                    cx + r,
                    cy + r,
                    cx - r,
                    cy + r,
                    cx + r,
                    cy - r,
                    esc(&format!(
                        "{} {}: all {} {} removed",
                        c.x_title,
                        cat,
                        fmt_num(dense),
                        s.unit
                    ))
                );
            }
        }
        if i % label_every == 0 {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                LEFT + slot * (i as f64 + 0.5),
                y0 + 17.0,
                esc(cat)
            );
        }
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></svg>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        height - 8.0,
        esc(&c.x_title)
    );
    out
}

/// One line of a line chart: (x, y) points; a non-finite y breaks the line.
pub struct LineSeries {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with markers, optional labelled vertical separators (e.g. round boundaries)
/// and a log y axis when the values span a factor of 10 or more.
pub struct LineChart {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub series: Vec<LineSeries>,
    /// (x position, label) of dashed vertical separators.
    pub separators: Vec<(f64, String)>,
}

pub fn line_chart(c: &LineChart) -> String {
    let height = 320.0;
    let (y0, y1) = (height - 48.0, TOP);
    let ys: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let scale = Scale::fitted(&ys, 10.0);
    let xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(c.separators.iter().map(|s| s.0))
        .filter(|x| x.is_finite())
        .collect();
    let x_lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo {
        (x_lo, x_hi)
    } else if x_lo.is_finite() {
        (x_lo - 1.0, x_lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    let xscale = Scale::Linear {
        lo: x_lo,
        hi: x_hi,
        step: 1.0,
    };
    let (xa, xb) = (LEFT + 12.0, WIDTH - RIGHT - 12.0);

    let mut out = String::new();
    open(&mut out, height, &c.title);
    let items: Vec<(String, &str, bool)> = c
        .series
        .iter()
        .map(|s| (s.name.clone(), s.colour, false))
        .collect();
    legend(&mut out, &items);
    let y_title = if scale.is_log() {
        format!("{} (log scale)", c.y_title)
    } else {
        c.y_title.clone()
    };
    y_axis(&mut out, &scale, y0, y1, &y_title);

    // Integer x ticks, about 12 at most.
    let span = (x_hi - x_lo).max(1.0);
    let every = nice_step(span / 12.0).max(1.0);
    let mut t = (x_lo / every).ceil() * every;
    while t <= x_hi + 1e-9 {
        if let Some(x) = xscale.map(t, xa, xb) {
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y0 + 4.0,
                y0 + 17.0,
                fmt_num(t)
            );
        }
        t += every;
    }
    for (sx, label) in &c.separators {
        if let Some(x) = xscale.map(*sx, xa, xb) {
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{y1:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
                x + 4.0,
                y1 + 12.0,
                esc(label)
            );
        }
    }
    for s in &c.series {
        let mut path = String::new();
        let mut pen_down = false;
        let mut marks = String::new();
        for &(px, py) in &s.points {
            match (xscale.map(px, xa, xb), scale.map(py, y0, y1)) {
                (Some(x), Some(y)) => {
                    let _ = write!(path, "{}{x:.1} {y:.1}", if pen_down { "L" } else { "M" });
                    pen_down = true;
                    let _ = write!(
                        marks,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"><title>{}: {} at {}</title></circle>"#,
                        s.colour,
                        esc(&s.name),
                        fmt_num(py),
                        fmt_num(px)
                    );
                }
                (Some(x), None) => {
                    pen_down = false;
                    let _ = write!(
                        marks,
                        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="{RED}">n/a</text>"#,
                        y1 + 28.0
                    );
                }
                _ => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                out,
                r#"<path d="{path}" fill="none" stroke="{}" stroke-width="2"/>"#,
                s.colour
            );
        }
        out.push_str(&marks);
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></svg>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        height - 8.0,
        esc(&c.x_title)
    );
    out
}

/// One bar of a horizontal bar chart.
pub struct HBar {
    pub label: String,
    pub value: f64,
    /// Written after the value, e.g. "×4.68 dense".
    pub note: String,
    pub colour: &'static str,
}

/// Horizontal bars with the value written at each bar's end; a log axis when the values span a
/// factor of 8 or more; "n/a" (no bar) for a non-finite value.
pub struct HBarChart {
    pub title: String,
    pub value_title: String,
    pub bars: Vec<HBar>,
}

pub fn hbar_chart(c: &HBarChart) -> String {
    let row = 30.0;
    let label_w = 230.0;
    let top = 16.0;
    let height = top + row * c.bars.len().max(1) as f64 + 50.0;
    let values: Vec<f64> = c.bars.iter().map(|b| b.value).collect();
    let scale = Scale::auto(&values, 8.0);
    let notes = c.bars.iter().any(|b| !b.note.is_empty());
    let (xa, xb) = (label_w, WIDTH - RIGHT - if notes { 170.0 } else { 70.0 });
    let axis_y = top + row * c.bars.len().max(1) as f64;

    let mut out = String::new();
    open(&mut out, height, &c.title);
    for t in scale.ticks() {
        if let Some(x) = scale.map(t, xa, xb) {
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top:.1}" y2="{axis_y:.1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                axis_y + 17.0,
                fmt_num(t)
            );
        }
    }
    for (i, b) in c.bars.iter().enumerate() {
        let y = top + row * i as f64;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            xa - 8.0,
            y + row / 2.0 + 4.5,
            esc(&b.label)
        );
        let base = scale.map(scale.base(), xa, xb);
        match (base, scale.map(b.value, xa, xb)) {
            (Some(x0), Some(x1)) => {
                let _ = write!(
                    out,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
                    y + 5.0,
                    (x1 - x0).max(1.0),
                    row - 10.0,
                    b.colour,
                    esc(&b.label),
                    fmt_num(b.value),
                    x1.max(x0 + 1.0) + 6.0,
                    y + row / 2.0 + 4.5,
                    fmt_num(b.value)
                );
                if !b.note.is_empty() {
                    let _ = write!(
                        out,
                        r##"<text x="{:.1}" y="{:.1}" fill="#666">{}</text>"##,
                        x1.max(x0 + 1.0) + 14.0 + 8.0 * fmt_num(b.value).len() as f64,
                        y + row / 2.0 + 4.5,
                        esc(&b.note)
                    );
                }
            }
            _ => {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" fill="{RED}">n/a</text>"#,
                    xa + 6.0,
                    y + row / 2.0 + 4.5
                );
            }
        }
    }
    let title = if scale.is_log() {
        format!("{} (log scale)", c.value_title)
    } else {
        c.value_title.clone()
    };
    let _ = write!(
        out,
        r##"<line x1="{xa:.1}" x2="{xb:.1}" y1="{axis_y:.1}" y2="{axis_y:.1}" stroke="#444"/><line x1="{xa:.1}" x2="{xa:.1}" y1="{top:.1}" y2="{axis_y:.1}" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></svg>"##,
        (xa + xb) / 2.0,
        height - 8.0,
        esc(&title)
    );
    out
}
