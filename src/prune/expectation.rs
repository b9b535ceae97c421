//! Expectation error accumulation (ALGORITHM.md §7): the weights of each grid level under the
//! `expectation` option, and the averaged padded weight `W̄ = Σ_e w_e·pad(Ŵ_e)` that makes one
//! forward pass equal the weighted average of the variants' outputs.

use serde::{Deserialize, Serialize};

use super::UnitLayout;
use super::slice::pad_columns;
use crate::{Error, Result};

/// The `expectation` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expectation {
    /// w_e ∝ 1 − s_e (paper Eq. 5; default).
    DensityWeighted,
    /// w_e = 1/E.
    Uniform,
    /// The centre variant only.
    Centre,
    /// Propagate the dense outputs (what the reference code does in effect).
    None,
}

/// What the next layer is calibrated on.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpectationWeights {
    /// One weight per grid level (same order), summing to 1.
    Levels(Vec<f64>),
    /// The dense module.
    Dense,
}

/// The weights of `levels` (a module's grid, units removed out of `units`) under `mode`.
/// Density weighting over a grid whose only level is `units` (every variant empty) falls back to
/// uniform weights: every variant is the zero branch, so any weights give the same average.
pub fn expectation_weights(
    mode: Expectation,
    levels: &[usize],
    units: usize,
    centre: usize,
) -> Result<ExpectationWeights> {
    let bad = |reason: String| Error::PruneShape {
        what: "expectation grid".into(),
        expected: format!("levels in 0..={units} including the centre {centre}"),
        got: reason,
    };
    if levels.is_empty() || units == 0 || levels.iter().any(|&l| l > units) {
        return Err(bad(format!("{levels:?} of {units} units")));
    }
    let e = levels.len() as f64;
    Ok(match mode {
        Expectation::None => ExpectationWeights::Dense,
        Expectation::Uniform => ExpectationWeights::Levels(vec![1.0 / e; levels.len()]),
        Expectation::Centre => {
            let Some(pos) = levels.iter().position(|&l| l == centre) else {
                return Err(bad(format!("{levels:?} lacks the centre")));
            };
            let mut w = vec![0.0; levels.len()];
            w[pos] = 1.0;
            ExpectationWeights::Levels(w)
        }
        Expectation::DensityWeighted => {
            let density: Vec<f64> = levels
                .iter()
                .map(|&l| 1.0 - l as f64 / units as f64)
                .collect();
            let total: f64 = density.iter().sum();
            if total == 0.0 {
                ExpectationWeights::Levels(vec![1.0 / e; levels.len()])
            } else {
                ExpectationWeights::Levels(density.iter().map(|d| d / total).collect())
            }
        }
    })
}

/// One variant as the average needs it: kept units (ascending) and the compact refit weight
/// [d_out, |kept|·width], HF layout.
#[derive(Debug, Clone, Copy)]
pub struct CompactWeight<'a> {
    pub kept: &'a [u32],
    pub weight: &'a [f32],
}

/// `W̄ = Σ_e w_e·pad(Ŵ_e)` in f32, HF layout [d_out, units·width]. Summation runs over the
/// variants in the order given (the grid order), element by element, starting from 0.
pub fn averaged_weight(
    variants: &[CompactWeight],
    weights: &[f64],
    d_out: usize,
    layout: UnitLayout,
) -> Result<Vec<f32>> {
    if variants.len() != weights.len() {
        return Err(Error::PruneShape {
            what: "expectation weights".into(),
            expected: format!("one per variant ({})", variants.len()),
            got: weights.len().to_string(),
        });
    }
    let mut acc = vec![0.0f32; d_out * layout.channels_total()];
    for (v, &w) in variants.iter().zip(weights) {
        let full = pad_columns(v.weight, v.kept, d_out, layout)?;
        let w = w as f32;
        for (a, x) in acc.iter_mut().zip(&full) {
            *a += w * x;
        }
    }
    Ok(acc)
}
