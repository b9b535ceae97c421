//! The scales and number formatting behind the report's inline-SVG charts (`svg_charts`):
//! linear and log axes with readable ticks, "n/a" for non-finite numbers, escaping.
//!
//! Every value reaches a coordinate only through `Scale::map`, which returns `None` for
//! NaN/inf, so a non-finite number can never be written into an SVG attribute.

/// The width of every chart's viewBox; the page scales it to its column.
pub const WIDTH: f64 = 1000.0;
pub(super) const LEFT: f64 = 72.0;
pub(super) const RIGHT: f64 = 20.0;
pub(super) const TOP: f64 = 40.0;
pub(super) const FONT: f64 = 13.0;

/// Colours, chosen to stay distinct for colour-blind readers.
pub const BLUE: &str = "#4269d0";
pub const ORANGE: &str = "#e69f00";
pub const GREEN: &str = "#3ca951";
pub const RED: &str = "#d62728";
pub const PURPLE: &str = "#a463f2";
pub const GREY: &str = "#8c8c8c";
pub const PALETTE: [&str; 6] = [BLUE, ORANGE, GREEN, PURPLE, RED, "#17becf"];

/// A number for people: "n/a" for NaN/inf, thousands separated, at most 4 significant digits
/// for fractions.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 1e15 {
        return format!("{x:.3e}");
    }
    if a >= 1000.0 || (x.fract() == 0.0 && a >= 1.0) {
        return group_thousands(x.round() as i64);
    }
    if a == 0.0 {
        return "0".into();
    }
    // 4 significant digits, trailing zeros removed.
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// A parameter count in short form: "106.2M", "8.03B", "950K", "512".
pub fn fmt_count(n: u64) -> String {
    let x = n as f64;
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, "B")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e4 {
        (x / 1e3, "K")
    } else {
        return n.to_string();
    };
    let decimals = if v >= 100.0 { 1 } else { 2 };
    format!("{v:.decimals$}{unit}")
}

/// `1234567` → "1,234,567".
pub fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Text for HTML and SVG content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A value axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// `step` is the tick spacing; `lo` and `hi` are multiples of it.
    Linear {
        lo: f64,
        hi: f64,
        step: f64,
    },
    Log {
        lo: f64,
        hi: f64,
    },
}

impl Scale {
    /// A linear scale from 0 (or the smallest value, if negative) to a round number above the
    /// largest finite value.
    pub fn linear_from_zero(values: impl IntoIterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if hi <= lo {
            hi = lo + 1.0;
        }
        Scale::linear_between(lo, hi)
    }

    /// A linear scale over round numbers just around `lo..hi` (ticks about every eighth).
    fn linear_between(lo: f64, hi: f64) -> Self {
        let step = nice_step((hi - lo) / 8.0);
        Scale::Linear {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// A scale fitted to the values' range (not from zero), so a slow decrease is visible; a log
    /// scale when all are positive and span at least `min_ratio`.
    pub fn fitted(values: &[f64], min_ratio: f64) -> Self {
        let auto = Scale::auto(values, min_ratio);
        if auto.is_log() {
            return auto;
        }
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let lo = finite.clone().fold(f64::INFINITY, f64::min);
        let hi = finite.fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return auto;
        }
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else {
            0.5 * lo.abs().max(1e-6)
        };
        Scale::linear_between(lo - pad, hi + pad)
    }

    /// A log scale when every finite value is positive and they span at least `min_ratio`;
    /// otherwise `linear_from_zero`.
    pub fn auto(values: &[f64], min_ratio: f64) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !finite.is_empty() && lo > 0.0 && hi / lo >= min_ratio {
            Scale::Log {
                lo: nice_log_floor(lo),
                hi: nice_log_ceil(hi),
            }
        } else {
            Scale::linear_from_zero(finite)
        }
    }

    pub fn is_log(&self) -> bool {
        matches!(self, Scale::Log { .. })
    }

    /// The lowest value on the axis (where bars start).
    pub fn base(&self) -> f64 {
        match *self {
            Scale::Linear { lo, .. } => lo.max(0.0).min(self.top()),
            Scale::Log { lo, .. } => lo,
        }
    }

    fn top(&self) -> f64 {
        match *self {
            Scale::Linear { hi, .. } | Scale::Log { hi, .. } => hi,
        }
    }

    /// `v` as a fraction of the axis (0 at the bottom, 1 at the top), clamped to [0, 1];
    /// `None` for NaN/inf or a non-positive value on a log scale.
    pub fn frac(&self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        let f = match *self {
            Scale::Linear { lo, hi, .. } => (v - lo) / (hi - lo),
            Scale::Log { lo, hi } => {
                if v <= 0.0 {
                    return None;
                }
                (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
            }
        };
        f.is_finite().then_some(f.clamp(0.0, 1.0))
    }

    /// `v` mapped onto pixels `a` (axis bottom/left) .. `b` (top/right).
    pub fn map(&self, v: f64, a: f64, b: f64) -> Option<f64> {
        self.frac(v).map(|f| a + f * (b - a))
    }

    /// Tick values: about five round numbers on a linear axis; 1-2-5 steps or powers of ten on
    /// a log axis.
    pub fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { lo, hi, step } => {
                let n = ((hi - lo) / step).round() as i64;
                // Multiples of the step, computed from the index so no rounding error builds up.
                (0..=n.clamp(0, 50))
                    .map(|i| ((lo / step).round() + i as f64) * step)
                    .collect()
            }
            Scale::Log { lo, hi } => {
                let decades = (hi / lo).log10();
                let mults: &[f64] = if decades > 3.0 {
                    &[1.0]
                } else if decades > 1.5 {
                    &[1.0, 3.0]
                } else {
                    &[1.0, 2.0, 5.0]
                };
                let mut out = Vec::new();
                let mut p = 10f64.powf(lo.log10().floor());
                while p <= hi * (1.0 + 1e-9) && out.len() < 60 {
                    for m in mults {
                        let t = m * p;
                        if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                            out.push(t);
                        }
                    }
                    p *= 10.0;
                }
                out
            }
        }
    }
}

/// The 1-2-5 number nearest above `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * p
}

/// The largest 1-2-5 number ≤ v (v > 0).
fn nice_log_floor(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c <= v * (1.0 + 1e-12))
        .unwrap_or(p)
}

/// The smallest 1-2-5 number ≥ v (v > 0).
fn nice_log_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable_and_non_finite_is_na() {
        assert_eq!(fmt_num(f64::NAN), "n/a");
        assert_eq!(fmt_num(f64::INFINITY), "n/a");
        assert_eq!(fmt_num(134_515_008.0), "134,515,008");
        assert_eq!(fmt_num(17.0712), "17.07");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-2.5), "-2.5");
        assert_eq!(fmt_count(106_202_880), "106.2M");
        assert_eq!(fmt_count(53_561_088), "53.56M");
        assert_eq!(fmt_count(8_030_261_248), "8.03B");
        assert_eq!(fmt_count(576), "576");
    }

    #[test]
    fn log_scale_is_chosen_for_a_wide_spread_and_ticks_cover_it() {
        let s = Scale::auto(&[17.1, 80.0, 102.0, 550.0], 8.0);
        assert!(s.is_log());
        let t = s.ticks();
        assert!(t.first().is_some_and(|&x| x <= 17.1));
        assert!(t.last().is_some_and(|&x| x >= 550.0));
        assert!(!Scale::auto(&[17.1, 80.0], 8.0).is_log());
        assert!(!Scale::auto(&[0.0, 80.0], 8.0).is_log());
    }

    #[test]
    fn non_finite_values_never_map_to_a_coordinate() {
        let s = Scale::linear_from_zero([1.0, f64::NAN, 5.0]);
        assert_eq!(s.map(f64::NAN, 0.0, 100.0), None);
        assert_eq!(s.map(f64::INFINITY, 0.0, 100.0), None);
        let l = Scale::auto(&[1.0, 100.0], 10.0);
        assert_eq!(l.map(0.0, 0.0, 100.0), None);
        assert_eq!(l.map(-3.0, 0.0, 100.0), None);
    }

    #[test]
    fn linear_ticks_are_round_and_reach_the_top() {
        let s = Scale::linear_from_zero([9.0, 3.0]);
        assert_eq!(s.ticks(), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let s = Scale::fitted(&[1.92, 1.26], 10.0);
        let t = s.ticks();
        assert!(t[0] > 1.0 && t[0] <= 1.26, "{t:?}");
        assert!(
            *t.last().unwrap() >= 1.92 && *t.last().unwrap() < 2.2,
            "{t:?}"
        );
        let s = Scale::linear_from_zero([1536.0]);
        assert!(s.ticks().last().is_some_and(|&t| t >= 1536.0));
    }

    #[test]
    fn escaping_covers_markup_characters() {
        assert_eq!(esc("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
    }
}
