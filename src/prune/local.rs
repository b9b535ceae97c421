//! Local pruning of one module at one level (ALGORITHM.md §5): free removal of all-zero or dead
//! units, progressive scored passes with OBS updates, the exact least-squares refit, damping
//! retries, and the metrics stored with each variant. The math lives in `obs.rs`.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::linalg::{Mat, NotPositiveDefinite};
use super::obs::{FirstOrder, ObsState, refit, relative_error};
use super::stats::{Hessian, damping_lambda};
use super::{ModuleKind, UnitLayout, lowest_units};
use crate::model::StorageDtype;
use crate::{Error, Result};

/// Version of the local-pruning code, part of every variant's checkpoint key (§6). Bump it
/// whenever a change can alter any variant's bits.
///
/// 2: a variant record names the dtype its weight is stored in (`variant-dtype`).
pub const LOCAL_PRUNE_VERSION: u32 = 2;

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
#[serde(rename_all = "kebab-case")]
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
    /// `tr((W0−Ŵ)ᵀHλ(W0−Ŵ)) / tr(W0ᵀHλW0)`, with the Hλ actually used and the f64 refit
    /// (the stored f32 rounding moves it only to second order). 0 at level 0; 1 at level = units
    /// (0 if W0 = 0).
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

/// One module pruned at one level. Stored as a record whose weight is in `storage`'s dtype
/// (`variant-dtype`); in memory the weight is f32 either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Units removed.
    pub level: usize,
    /// Kept unit indices, ascending.
    pub kept: Vec<u32>,
    /// Rows of `weight`.
    pub d_out: usize,
    /// The refit weight, HF layout [d_out, |kept|·width] row-major; empty at level = units.
    /// Every value is one that `storage` holds, so storing it loses nothing.
    pub weight: Vec<f32>,
    /// The dtype the record stores `weight` in.
    pub storage: StorageDtype,
    pub metrics: VariantMetrics,
}

/// The record's weight field (same variant order in both directions).
#[derive(Serialize)]
enum WeightOut<'a> {
    F32(&'a [f32]),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
}

#[derive(Deserialize)]
enum WeightIn {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
}

#[derive(Serialize)]
struct VariantOut<'a> {
    level: usize,
    kept: &'a [u32],
    d_out: usize,
    weight: WeightOut<'a>,
    metrics: &'a VariantMetrics,
}

#[derive(Deserialize)]
struct VariantIn {
    level: usize,
    kept: Vec<u32>,
    d_out: usize,
    weight: WeightIn,
    metrics: VariantMetrics,
}

impl Serialize for Variant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let weight = match (self.storage, self.storage.bits(&self.weight)) {
            (StorageDtype::Bf16, Some(b)) => WeightOut::Bf16(b),
            (StorageDtype::F16, Some(b)) => WeightOut::F16(b),
            _ => WeightOut::F32(&self.weight),
        };
        VariantOut {
            level: self.level,
            kept: &self.kept,
            d_out: self.d_out,
            weight,
            metrics: &self.metrics,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Variant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = VariantIn::deserialize(d)?;
        let (storage, weight) = match v.weight {
            WeightIn::F32(w) => (StorageDtype::F32, w),
            WeightIn::Bf16(b) => (StorageDtype::Bf16, StorageDtype::Bf16.from_bits(&b)),
            WeightIn::F16(b) => (StorageDtype::F16, StorageDtype::F16.from_bits(&b)),
        };
        Ok(Variant {
            level: v.level,
            kept: v.kept,
            d_out: v.d_out,
            weight,
            storage,
            metrics: v.metrics,
        })
    }
}

impl Variant {
    /// This variant with its weight rounded to `dtype`, to be stored in it. Applied where the
    /// variant is made, before anything uses it, so the build, a resumed build and every reader
    /// see the same values.
    pub fn in_storage(mut self, dtype: StorageDtype) -> Self {
        dtype.round(&mut self.weight);
        self.storage = dtype;
        self
    }

    /// The refit weight padded back to the dense shape [d_out, units·width], zeros in the
    /// removed columns (what the expectation and a masked dense forward use).
    pub fn padded_weight(&self, layout: UnitLayout) -> Result<Vec<f32>> {
        super::slice::pad_columns(&self.weight, &self.kept, self.d_out, layout)
    }

    /// The view `expectation::averaged_weight` takes.
    pub fn compact(&self) -> super::expectation::CompactWeight<'_> {
        super::expectation::CompactWeight {
            kept: &self.kept,
            weight: &self.weight,
        }
    }
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
            if !r.is_multiple_of(u) {
                sizes.push(r % u);
            }
            Ok(sizes)
        }
    }
}

/// Prunes `level` units of one module (§5). Level 0 returns the weight bit for bit; level =
/// units returns an empty weight. A numerical failure restarts with λ ×10 up to
/// `damping_retries` times, then fails with `LocalPruneSingular`. To build several levels of one
/// module, use `ModulePruner`, which shares the level-independent work.
pub fn local_prune(
    ctx: &PruneContext,
    h: &Hessian,
    module: &ModuleWeight,
    level: usize,
    opts: &LocalPruneOptions,
) -> Result<Variant> {
    ModulePruner::new(*ctx, h, *module, *opts)?.prune(level)
}

/// The start state at the base damping: Hλ, and W = W0, Hinv = Hλ⁻¹, G = Hλ·W0.
type Start = std::result::Result<(Arc<Mat>, ObsState), NotPositiveDefinite>;

/// Local pruning of one module at any number of levels. The start state (Hλ, Hλ⁻¹ and
/// G = Hλ·W0, most of the cost of one variant) is computed once, on first use, and cloned for
/// each level, so every variant is bit-identical to a separate `local_prune` call. `Sync`:
/// levels may be pruned from several threads at once.
pub struct ModulePruner<'a> {
    ctx: PruneContext,
    h: &'a Hessian,
    module: ModuleWeight<'a>,
    opts: LocalPruneOptions,
    w0: Mat,
    dead: Vec<bool>,
    lambda0: f64,
    start: OnceLock<Start>,
}

impl<'a> ModulePruner<'a> {
    /// Checks shapes and options; no factorisation yet.
    pub fn new(
        ctx: PruneContext,
        h: &'a Hessian,
        module: ModuleWeight<'a>,
        opts: LocalPruneOptions,
    ) -> Result<Self> {
        check_inputs(&ctx, h, &module, 0, &opts)?;
        let d_in = module.layout.channels_total();
        Ok(ModulePruner {
            ctx,
            h,
            module,
            opts,
            w0: Mat::from_f32(module.d_out, d_in, module.weight).transpose(),
            dead: dead_mask(h),
            lambda0: damping_lambda(h.diag_mean(), opts.damping),
            start: OnceLock::new(),
        })
    }

    /// One variant at `level` units removed.
    pub fn prune(&self, level: usize) -> Result<Variant> {
        let (ctx, module, opts) = (&self.ctx, &self.module, &self.opts);
        check_inputs(ctx, self.h, module, level, opts)?;
        let units = module.layout.units;
        let all_or_none = |kept: Vec<u32>, weight: Vec<f32>, rel_error: f64| Variant {
            level,
            kept,
            d_out: module.d_out,
            weight,
            storage: StorageDtype::F32,
            metrics: VariantMetrics {
                rel_error,
                damping: opts.damping,
                lambda: self.lambda0,
                retries: 0,
                passes: 0,
                free_units: 0,
            },
        };
        if level == 0 {
            return Ok(all_or_none(
                (0..units as u32).collect(),
                module.weight.to_vec(),
                0.0,
            ));
        }
        if level == units {
            // Hλ is positive definite, so an empty branch has relative error 1 unless W0 = 0.
            let rel = if module.weight.iter().all(|&x| x == 0.0) {
                0.0
            } else {
                1.0
            };
            return Ok(all_or_none(Vec::new(), Vec::new(), rel));
        }
        let mut scale = 1.0;
        for retry in 0..=opts.damping_retries {
            let lambda = self.lambda0 * scale;
            let attempt = if retry == 0 {
                self.start
                    .get_or_init(|| self.start_state(lambda))
                    .clone()
                    .and_then(|(hl, state)| self.prune_from(&hl, state, level))
            } else {
                self.start_state(lambda)
                    .and_then(|(hl, state)| self.prune_from(&hl, state, level))
            };
            match attempt {
                Ok((kept, weight, mut metrics)) => {
                    metrics.damping = opts.damping * scale;
                    metrics.lambda = lambda;
                    metrics.retries = retry;
                    tracing::debug!(
                        layer = ctx.layer, module = %ctx.module, level,
                        rel_error = metrics.rel_error, retries = retry, "local prune"
                    );
                    return Ok(Variant {
                        level,
                        kept,
                        d_out: module.d_out,
                        weight,
                        storage: StorageDtype::F32,
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

    fn start_state(&self, lambda: f64) -> Start {
        let hl = self.h.plus_identity(lambda);
        let state = ObsState::new(&hl, self.w0.clone())?;
        Ok((Arc::new(hl), state))
    }

    /// Free removal, scored passes and the refit, from a fresh start state.
    fn prune_from(
        &self,
        h_lambda: &Mat,
        mut state: ObsState,
        level: usize,
    ) -> std::result::Result<Outcome, NotPositiveDefinite> {
        let (layout, opts, w0) = (self.module.layout, &self.opts, &self.w0);
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
                zero || layout.unit_channels(u).all(|i| self.dead[i])
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
            let scores =
                state.unit_scores(&layout, &remaining, opts.first_order, opts.second_order)?;
            let scored: Vec<(usize, f64)> = remaining.iter().copied().zip(scores).collect();
            let mut chosen = lowest_units(&scored, p);
            chosen.sort_unstable();
            state.remove(&channels(&chosen))?;
            remaining.retain(|u| chosen.binary_search(u).is_err());
        }
        let kept_channels = channels(&remaining);
        let w_hat_t = refit(h_lambda, state.g(), &kept_channels)?;
        let weight: Vec<f32> = w_hat_t.data().iter().map(|&x| x as f32).collect();
        if weight.iter().any(|x| !x.is_finite()) {
            return Err(NotPositiveDefinite);
        }
        let rel_error = relative_error(w0, state.g(), &w_hat_t, &kept_channels);
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

type Outcome = (Vec<u32>, Vec<f32>, VariantMetrics);

fn dead_mask(h: &Hessian) -> Vec<bool> {
    let mut dead = vec![false; h.dim()];
    for i in h.dead_channels() {
        dead[i] = true;
    }
    dead
}
