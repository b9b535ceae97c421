//! Local pruning of one module at one level (ALGORITHM.md §5): free removal of all-zero or dead
//! units, progressive scored passes with OBS updates, the exact least-squares refit, damping
//! retries, and the metrics stored with each variant. The math lives in `obs.rs`.

use serde::{Deserialize, Serialize};

use super::linalg::{Mat, NotPositiveDefinite};
use super::obs::{FirstOrder, ObsState, refit, relative_error};
use super::stats::{Hessian, damping_lambda};
use super::{ModuleKind, UnitLayout, lowest_units};
use crate::{Error, Result};

/// How the r removed units of one variant are split into passes (`attn-removal`/`ffn-removal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovalSchedule {
    /// Passes of this many units; the last one takes the remainder.
    UnitsPerPass(usize),
    /// This many passes (at most r), sizes differing by at most 1, larger first.
    Passes(usize),
}

/// Local pruning options (§5), defaults in `attn_default` / `ffn_default`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocalPruneOptions {
    /// λ = damping · mean(diag H) [0.01].
    pub damping: f64,
    /// Restarts with λ ×10 after a numerical failure [3].
    pub damping_retries: u32,
    /// First-order saliency term [signed].
    pub first_order: FirstOrder,
    /// Whether the OBS (second-order) term is used [true].
    pub second_order: bool,
    /// Pass schedule [1 unit per pass for heads, 16 passes for FFN channels].
    pub schedule: RemovalSchedule,
}

impl LocalPruneOptions {
    pub fn attn_default() -> Self {
        LocalPruneOptions {
            damping: 0.01,
            damping_retries: 3,
            first_order: FirstOrder::Signed,
            second_order: true,
            schedule: RemovalSchedule::UnitsPerPass(1),
        }
    }

    pub fn ffn_default() -> Self {
        LocalPruneOptions {
            schedule: RemovalSchedule::Passes(16),
            ..Self::attn_default()
        }
    }
}

/// Which module is being pruned, for error messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneContext {
    pub layer: usize,
    pub module: ModuleKind,
}

/// The refit matrix of a module: `o_proj.weight` or `down_proj.weight`, HF layout
/// [d_out, d_in] row-major, with its unit layout (d_in = units · width).
#[derive(Debug, Clone, Copy)]
pub struct ModuleWeight<'a> {
    pub weight: &'a [f32],
    pub d_out: usize,
    pub layout: UnitLayout,
}

/// What is stored with a variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantMetrics {
    /// `tr((W0−Ŵ)ᵀHλ(W0−Ŵ)) / tr(W0ᵀHλW0)`, with the f32 Ŵ and the Hλ actually used.
    pub rel_error: f64,
    /// The damping factor used (the option × 10^retries).
    pub damping: f64,
    /// λ used.
    pub lambda: f64,
    /// Restarts after numerical failure.
    pub retries: u32,
    /// Scored removal passes run (free removal not counted).
    pub passes: usize,
    /// Units removed for free (all-zero or all-dead).
    pub free_units: usize,
}

/// One module pruned at one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Units removed.
    pub level: usize,
    /// Kept unit indices, ascending.
    pub kept: Vec<u32>,
    /// Rows of `weight`.
    pub d_out: usize,
    /// The refit weight, HF layout [d_out, |kept|·width] row-major; empty at level = units.
    pub weight: Vec<f32>,
    pub metrics: VariantMetrics,
}

/// Pass sizes for removing r units: `Passes(P)` gives min(P, r) sizes differing by at most 1,
/// larger first; `UnitsPerPass(u)` gives ⌊r/u⌋ passes of u, then the remainder.
pub fn pass_sizes(schedule: RemovalSchedule, r: usize) -> Result<Vec<usize>> {
    match schedule {
        RemovalSchedule::Passes(0) | RemovalSchedule::UnitsPerPass(0) => Err(Error::PruneOption {
            field: "removal",
            reason: "`passes` and `units-per-pass` must be at least 1".into(),
        }),
        RemovalSchedule::Passes(p) => {
            let k = p.min(r);
            Ok((0..k).map(|i| r / k + usize::from(i < r % k)).collect())
        }
        RemovalSchedule::UnitsPerPass(u) => {
            let mut sizes = vec![u; r / u];
            if r % u != 0 {
                sizes.push(r % u);
            }
            Ok(sizes)
        }
    }
}

/// Prunes `level` units of one module (§5). Level 0 returns the weight bit for bit; level =
/// units returns an empty weight. A numerical failure restarts with λ ×10 up to
/// `damping_retries` times, then fails with `LocalPruneSingular`.
pub fn local_prune(
    ctx: &PruneContext,
    h: &Hessian,
    module: &ModuleWeight,
    level: usize,
    opts: &LocalPruneOptions,
) -> Result<Variant> {
    let layout = module.layout;
    let d_in = layout.channels_total();
    check_inputs(ctx, h, module, level, opts)?;
    let lambda0 = damping_lambda(h.diag_mean(), opts.damping);
    let all_or_none = |kept: Vec<u32>, weight: Vec<f32>, rel_error: f64| Variant {
        level,
        kept,
        d_out: module.d_out,
        weight,
        metrics: VariantMetrics {
            rel_error,
            damping: opts.damping,
            lambda: lambda0,
            retries: 0,
            passes: 0,
            free_units: 0,
        },
    };
    if level == 0 {
        let kept = (0..layout.units as u32).collect();
        return Ok(all_or_none(kept, module.weight.to_vec(), 0.0));
    }
    if level == layout.units {
        // Hλ is positive definite, so the relative error of an empty branch is 1 unless W0 = 0.
        let rel = if module.weight.iter().all(|&x| x == 0.0) {
            0.0
        } else {
            1.0
        };
        return Ok(all_or_none(Vec::new(), Vec::new(), rel));
    }
    let w0 = Mat::from_f32(module.d_out, d_in, module.weight).transpose();
    let dead = dead_mask(h);
    let mut scale = 1.0;
    for retry in 0..=opts.damping_retries {
        let lambda = lambda0 * scale;
        match prune_once(h.plus_identity(lambda), &w0, &dead, layout, level, opts) {
            Ok((kept, weight, mut metrics)) => {
                metrics.damping = opts.damping * scale;
                metrics.lambda = lambda;
                metrics.retries = retry;
                tracing::debug!(
                    layer = ctx.layer, module = %ctx.module, level, rel_error = metrics.rel_error,
                    retries = retry, "local prune"
                );
                return Ok(Variant {
                    level,
                    kept,
                    d_out: module.d_out,
                    weight,
                    metrics,
                });
            }
            Err(NotPositiveDefinite) => {
                tracing::warn!(
                    layer = ctx.layer, module = %ctx.module, level, lambda,
                    "local prune: not positive definite, raising damping ×10"
                );
                scale *= 10.0;
            }
        }
    }
    Err(Error::LocalPruneSingular {
        layer: ctx.layer,
        module: ctx.module,
        level,
        damping: opts.damping * scale / 10.0,
    })
}

fn check_inputs(
    ctx: &PruneContext,
    h: &Hessian,
    module: &ModuleWeight,
    level: usize,
    opts: &LocalPruneOptions,
) -> Result<()> {
    let d_in = module.layout.channels_total();
    let shape = |what: &str, expected: usize, got: usize| Error::PruneShape {
        what: format!("layer {} {}: {what}", ctx.layer, ctx.module),
        expected: expected.to_string(),
        got: got.to_string(),
    };
    if h.dim() != d_in {
        return Err(shape("Hessian dimension (units × width)", d_in, h.dim()));
    }
    if module.weight.len() != module.d_out * d_in {
        return Err(shape(
            "refit weight length (d_out × d_in)",
            module.d_out * d_in,
            module.weight.len(),
        ));
    }
    if level > module.layout.units {
        return Err(Error::PruneLevel {
            layer: ctx.layer,
            module: ctx.module,
            level,
            units: module.layout.units,
        });
    }
    if !(opts.damping.is_finite() && opts.damping >= 0.0) {
        return Err(Error::PruneOption {
            field: "damping",
            reason: format!("{} is not a finite non-negative number", opts.damping),
        });
    }
    pass_sizes(opts.schedule, 0).map(|_| ())
}

fn dead_mask(h: &Hessian) -> Vec<bool> {
    let mut dead = vec![false; h.dim()];
    for i in h.dead_channels() {
        dead[i] = true;
    }
    dead
}

type Outcome = (Vec<u32>, Vec<f32>, VariantMetrics);

/// One attempt at a fixed λ (already added into `h_lambda`).
fn prune_once(
    h_lambda: Mat,
    w0: &Mat,
    dead: &[bool],
    layout: UnitLayout,
    level: usize,
    opts: &LocalPruneOptions,
) -> Result<Outcome, NotPositiveDefinite> {
    let mut state = ObsState::new(&h_lambda, w0.clone())?;
    let channels = |units: &[usize]| -> Vec<usize> {
        units
            .iter()
            .flat_map(|&u| layout.unit_channels(u))
            .collect()
    };
    let free_units: Vec<usize> = (0..layout.units)
        .filter(|&u| {
            let zero = layout
                .unit_channels(u)
                .all(|i| w0.row(i).iter().all(|&x| x == 0.0));
            zero || layout.unit_channels(u).all(|i| dead[i])
        })
        .take(level)
        .collect();
    state.remove(&channels(&free_units))?;
    let mut is_free = vec![false; layout.units];
    free_units.iter().for_each(|&u| is_free[u] = true);
    let mut remaining: Vec<usize> = (0..layout.units).filter(|&u| !is_free[u]).collect();
    // A schedule of 0 was rejected in `check_inputs`.
    let sizes =
        pass_sizes(opts.schedule, level - free_units.len()).map_err(|_| NotPositiveDefinite)?;
    for &p in &sizes {
        let scores = state.unit_scores(&layout, &remaining, opts.first_order, opts.second_order)?;
        let scored: Vec<(usize, f64)> = remaining.iter().copied().zip(scores).collect();
        let mut chosen = lowest_units(&scored, p);
        chosen.sort_unstable();
        state.remove(&channels(&chosen))?;
        remaining.retain(|u| chosen.binary_search(u).is_err());
    }
    let kept_channels = channels(&remaining);
    let w_hat_t = refit(&h_lambda, state.g(), &kept_channels)?;
    let weight: Vec<f32> = w_hat_t.data().iter().map(|&x| x as f32).collect();
    if weight.iter().any(|x| !x.is_finite()) {
        return Err(NotPositiveDefinite);
    }
    let stored = Mat::from_f32(w_hat_t.rows(), w_hat_t.cols(), &weight);
    let rel_error = relative_error(&h_lambda, w0, state.g(), &stored, &kept_channels);
    let kept = remaining.iter().map(|&u| u as u32).collect();
    let metrics = VariantMetrics {
        rel_error,
        damping: 0.0,
        lambda: 0.0,
        retries: 0,
        passes: sizes.len(),
        free_units: free_units.len(),
    };
    Ok((kept, weight, metrics))
}
