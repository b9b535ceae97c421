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

/// The two prunable module types of a decoder layer (ALGORITHM.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleKind {
    /// q/k/v/o_proj; units are query heads, statistics and refit on `o_proj`.
    Attn,
    /// gate/up/down_proj; units are intermediate channels, statistics and refit on `down_proj`.
    Ffn,
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleKind::Attn => "attn",
            ModuleKind::Ffn => "ffn",
        })
    }
}

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
