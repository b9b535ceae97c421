//! Data-free and data-light baselines (ALGORITHM.md §12): `magnitude` and `wanda-sp` unit
//! scores, and the kept set for a level. No refit: the caller slices the dense weights.

use super::stats::Hessian;
use super::{UnitLayout, lowest_units};
use crate::{Error, Result};

fn shape_err(what: &str, expected: usize, got: usize) -> Error {
    Error::PruneShape {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// Σx² of the row groups of a [units·width, cols] matrix, per unit.
fn row_sq(w: &[f32], cols: usize, layout: UnitLayout) -> Vec<f64> {
    (0..layout.units)
        .map(|u| {
            let r = layout.unit_channels(u);
            w[r.start * cols..r.end * cols]
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum()
        })
        .collect()
}

/// Σx² (or Σ|x| with `abs`) of the column groups of a [rows, units·width] matrix, per channel.
fn column_sums(w: &[f32], rows: usize, d_in: usize, abs: bool) -> Vec<f64> {
    let mut s = vec![0.0f64; d_in];
    for row in w.chunks_exact(d_in.max(1)).take(rows) {
        for (acc, &x) in s.iter_mut().zip(row) {
            let x = x as f64;
            *acc += if abs { x.abs() } else { x * x };
        }
    }
    s
}

/// `magnitude` for heads: the L2 norm of the head's q_proj rows and o_proj columns (K/V are
/// shared, so left out). q [n_q·d_h, hidden], o [hidden, n_q·d_h].
pub fn magnitude_head_scores(
    q: &[f32],
    o: &[f32],
    hidden: usize,
    layout: UnitLayout,
) -> Result<Vec<f64>> {
    let d_in = layout.channels_total();
    if q.len() != d_in * hidden {
        return Err(shape_err("q_proj length", d_in * hidden, q.len()));
    }
    if o.len() != d_in * hidden {
        return Err(shape_err("o_proj length", d_in * hidden, o.len()));
    }
    let q_sq = row_sq(q, hidden, layout);
    let o_col = column_sums(o, hidden, d_in, false);
    Ok((0..layout.units)
        .map(|u| (q_sq[u] + layout.unit_channels(u).map(|i| o_col[i]).sum::<f64>()).sqrt())
        .collect())
}

/// `magnitude` for FFN channels: the L2 norm of gate row c, up row c and down column c.
/// gate/up [d_ff, hidden], down [hidden, d_ff].
pub fn magnitude_channel_scores(
    gate: &[f32],
    up: &[f32],
    down: &[f32],
    hidden: usize,
    d_ff: usize,
) -> Result<Vec<f64>> {
    for (name, w) in [("gate_proj", gate), ("up_proj", up), ("down_proj", down)] {
        if w.len() != d_ff * hidden {
            return Err(shape_err(&format!("{name} length"), d_ff * hidden, w.len()));
        }
    }
    let l = UnitLayout::channels(d_ff);
    let (g, u) = (row_sq(gate, hidden, l), row_sq(up, hidden, l));
    let d = column_sums(down, hidden, d_ff, false);
    Ok((0..d_ff).map(|c| (g[c] + u[c] + d[c]).sqrt()).collect())
}

/// `wanda-sp`: `Σ_{i∈C_u} sqrt(H_ii)·Σ_j |W_ij|` over the unit's input columns of the refit
/// matrix (o_proj / down_proj, HF [d_out, d_in]); H undamped.
pub fn wanda_sp_scores(
    h: &Hessian,
    weight: &[f32],
    d_out: usize,
    layout: UnitLayout,
) -> Result<Vec<f64>> {
    let d_in = layout.channels_total();
    if h.dim() != d_in {
        return Err(shape_err("Hessian dimension", d_in, h.dim()));
    }
    if weight.len() != d_out * d_in {
        return Err(shape_err("refit weight length", d_out * d_in, weight.len()));
    }
    let col_abs = column_sums(weight, d_out, d_in, true);
    let diag = |i: usize| (h.data()[i * d_in + i] as f64).max(0.0).sqrt();
    Ok((0..layout.units)
        .map(|u| layout.unit_channels(u).map(|i| diag(i) * col_abs[i]).sum())
        .collect())
}

/// The kept units after removing the `level` lowest scores (ties: the lower index goes first;
/// NaN counts as +∞), ascending.
pub fn kept_after_removing_lowest(scores: &[f64], level: usize) -> Result<Vec<u32>> {
    if level > scores.len() {
        return Err(shape_err(
            "baseline level (at most the unit count)",
            scores.len(),
            level,
        ));
    }
    let scored: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
    let mut removed = vec![false; scores.len()];
    lowest_units(&scored, level)
        .into_iter()
        .for_each(|u| removed[u] = true);
    Ok((0..scores.len() as u32)
        .filter(|&u| !removed[u as usize])
        .collect())
}
