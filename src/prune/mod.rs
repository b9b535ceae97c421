//! Týr local pruning math: Hessian statistics, OBS saliency and updates, least-squares refit,
//! grids and budgets, expectation weights, and the baselines. Pure functions.

pub mod baselines;
pub mod expectation;
pub mod grid;
pub mod linalg;
pub mod local;
pub mod obs;
pub mod slice;
pub mod stats;

use serde::{Deserialize, Serialize};

pub use crate::vocab::ModuleKind;

/// How a module's refit input channels group into units: `units` units of `width` consecutive
/// channels each (`width = head_dim` for attention, 1 for FFN channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLayout {
    pub units: usize,
    pub width: usize,
}

impl UnitLayout {
    pub fn heads(n_heads: usize, head_dim: usize) -> Self {
        UnitLayout {
            units: n_heads,
            width: head_dim,
        }
    }

    pub fn channels(n: usize) -> Self {
        UnitLayout { units: n, width: 1 }
    }

    /// Input channels of the refit matrix (`d_in`).
    pub fn channels_total(&self) -> usize {
        self.units * self.width
    }

    /// The channels of unit `u`.
    pub fn unit_channels(&self, u: usize) -> std::ops::Range<usize> {
        u * self.width..(u + 1) * self.width
    }
}

/// Orders units for removal: the `r` lowest scores go, ties to the lower index, NaN counts as
/// +∞. Returns the removed units in removal order.
pub fn lowest_units(candidates: &[(usize, f64)], r: usize) -> Vec<usize> {
    let mut order: Vec<(usize, f64)> = candidates.to_vec();
    let key = |s: f64| if s.is_nan() { f64::INFINITY } else { s };
    order.sort_by(|a, b| {
        let by_score = key(a.1)
            .partial_cmp(&key(b.1))
            .unwrap_or(std::cmp::Ordering::Equal);
        by_score.then(a.0.cmp(&b.0))
    });
    order.into_iter().take(r).map(|(u, _)| u).collect()
}
