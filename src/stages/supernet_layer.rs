//! `supernet-layer` stage: one layer of one round's supernet (ALGORITHM.md §6–§7).
//!
//! Inputs: `model` (the `model` record) and `x` (X_ℓ: the `embed` stage for layer 0, else the
//! previous layer stage). Params: round, layer, each module's grid levels (and its centre, only
//! when `expectation = centre` needs it), `expectation`, `ffn-stats`, local-pruning options.
//!
//! The build itself is `supernet::build::build_layer`.
//!
//! Outputs: one record per variant, `attn-{level}` / `ffn-{level}` (`prune::local::Variant`:
//! kept unit indices u32, compact refit weight [hidden, kept·width] f32, metrics) — the search
//! reads these by name; record `layer` (`LayerSupernet`: grids, expectation weights, statistics
//! digests); `expected` = the averaged `o_proj` and `down_proj` (full shape, f32), from which a
//! `layer-forward` stage computes X_{ℓ+1}. X_{ℓ+1} is not an output here on purpose: it is
//! transient, and a consumer of the variants (an eval, the search) must not force a rebuild of
//! the layer just because its activations were collected. After the attention variants a
//! progress record is saved, so a run killed while building the FFN variants resumes there.
//!
//! Built in parts (`joined = true`, `[prune] supernet-split`): the variants are read from the
//! `supernet-part` stages of inputs `attn-parts` / `ffn-parts` instead of built here, and the
//! outputs are exactly those of the whole build (`supernet::build::join_layer`).
//!
//! Invalidated by: the params (not the target: a round-1 `lattice` grid lists every lattice
//! level and no centre, so one round-1 supernet serves every target), the model record, X_ℓ,
//! the seed, the stage version (which includes `LOCAL_PRUNE_VERSION`).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::model::StorageDtype;
use crate::prune::ModuleKind;
use crate::prune::expectation::Expectation;
use crate::prune::local::{LOCAL_PRUNE_VERSION, LocalPruneOptions, Variant};
use crate::supernet::build::{BuildCheckpoint, BuildOptions, ModulePart, build_layer, join_layer};
pub use crate::supernet::build::{FfnStats, LayerSupernet, ModuleLevels, ModuleSummary};
use crate::supernet::layer::DenseLayer;
use crate::supernet::rounds::{AroundPrevious, RoundChoice, next_grids};
use crate::{Error, Result};

/// The output name of the variant of `module` at `level` (`attn-3`, `ffn-192`). A search stage
/// reads the variants of a round by these names from the round's layer stages.
pub fn variant_name(module: ModuleKind, level: usize) -> String {
    format!("{module}-{level}")
}

fn round_one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SupernetLayerParams {
    /// Round t (1-based) [1].
    #[serde(default = "round_one")]
    pub round: usize,
    pub layer: usize,
    /// Round 1: each module's levels. Later rounds leave them out and take `around`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn: Option<ModuleLevels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<ModuleLevels>,
    /// Later rounds: the grid is centred on the previous round's choice (input `previous`, a
    /// `search` stage) with the step halved, as `rounds::next_grids` computes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub around: Option<AroundPrevious>,
    /// The final re-fit (ALGORITHM.md §9.1): one level per module, the level input `previous`
    /// (the last `search`) chose for this layer, built on the activations of the pruned model
    /// itself (`expectation = centre`, chained through `layer-forward`) [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refit: bool,
    /// [density-weighted]
    #[serde(default = "density_weighted")]
    pub expectation: Expectation,
    /// [dense-attention]
    #[serde(default)]
    pub ffn_stats: FfnStats,
    /// Local pruning of heads [1 head per pass, damping 0.01, signed first order, OBS term].
    #[serde(default = "LocalPruneOptions::attn_default")]
    pub attn_pruning: LocalPruneOptions,
    /// Local pruning of FFN channels [16 passes, otherwise as heads].
    #[serde(default = "LocalPruneOptions::ffn_default")]
    pub ffn_pruning: LocalPruneOptions,
    /// Built in parts (`supernet-split`): the variants come from the `supernet-part` stages in
    /// the inputs `attn-parts` and `ffn-parts` (in share order), and this stage only joins them
    /// and averages; it reads no X [false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
    /// The dtype the variants are stored in (`variant-dtype`) [f32]. Part of the key: a
    /// 16-bit variant is rounded as it is made, so everything downstream sees other values.
    #[serde(default, skip_serializing_if = "StorageDtype::is_f32")]
    pub variant_dtype: StorageDtype,
    /// Most levels built at once (0: one per core). Set by `[prune]` to fit the memory
    /// budget; outside the key (levels are independent, so it changes no result).
    #[serde(default, skip_serializing)]
    pub parallel_levels: usize,
}

fn density_weighted() -> Expectation {
    Expectation::DensityWeighted
}

/// Saved after the attention variants, so a resumed run skips them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    attn: Vec<Variant>,
}

pub struct SupernetLayer(SupernetLayerParams);

impl Stage for SupernetLayer {
    const KIND: &'static str = "supernet-layer";
    const VERSION: u32 = 100 + LOCAL_PRUNE_VERSION;
    type Params = SupernetLayerParams;

    fn new(p: SupernetLayerParams) -> Result<Self> {
        match (&p.attn, &p.ffn, &p.around, p.refit) {
            (Some(a), Some(f), None, false) => {
                a.check("attn.levels", p.expectation)?;
                f.check("ffn.levels", p.expectation)?;
            }
            (None, None, Some(_), false) if p.round > 1 => {}
            (None, None, None, true) => {
                if p.expectation != Expectation::Centre {
                    return Err(Error::PruneOption {
                        field: "expectation",
                        reason: "a re-fit layer propagates its one level: use `centre`".into(),
                    });
                }
            }
            _ => {
                return Err(Error::PruneOption {
                    field: "attn.levels",
                    reason: "give `attn` and `ffn` levels (round 1), `around` (later rounds) \
                             or `refit = true` (after the last search)"
                        .into(),
                });
            }
        }
        if p.round == 0 {
            return Err(Error::PruneOption {
                field: "round",
                reason: "rounds count from 1".into(),
            });
        }
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model")];
        if self.0.joined {
            v.push(InputSlot::many("attn-parts"));
            v.push(InputSlot::many("ffn-parts"));
        } else {
            v.push(InputSlot::one("x"));
        }
        if self.0.takes_previous() {
            v.push(InputSlot::one("previous"));
        }
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let (attn_grid, ffn_grid) = p.grids(ctx)?;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let dense = DenseLayer::load_on(cfg, p.layer, model.source.as_ref(), &ctx.compute()?)?;
        let span = tracing::info_span!("supernet-layer", round = p.round, layer = p.layer);
        let _g = span.enter();
        let built = if p.joined {
            let parts = |slot: &str| -> Result<Vec<ModulePart>> {
                ctx.inputs(slot)?.iter().map(|s| s.record("part")).collect()
            };
            let (attn_parts, ffn_parts) = (parts("attn-parts")?, parts("ffn-parts")?);
            join_layer(
                &dense,
                p.round,
                &attn_grid,
                &ffn_grid,
                attn_parts,
                ffn_parts,
                p.expectation,
            )?
        } else {
            let x = acts::Reader::open(ctx.input("x")?, "x")?;
            let opts = BuildOptions {
                expectation: p.expectation,
                ffn_stats: p.ffn_stats,
                attn_pruning: p.attn_pruning,
                ffn_pruning: p.ffn_pruning,
                parallel_levels: p.parallel_levels,
                variant_dtype: p.variant_dtype,
            };
            build_layer(
                cfg,
                &dense,
                &x,
                p.round,
                &attn_grid,
                &ffn_grid,
                &opts,
                &mut Checkpoint(ctx),
            )?
        };

        let mut o = Outputs::new();
        for (kind, vs) in [
            (ModuleKind::Attn, &built.attn),
            (ModuleKind::Ffn, &built.ffn),
        ] {
            for v in vs.iter() {
                let name = variant_name(kind, v.level);
                o.metric(format!("{name}-rel-error"), v.metrics.rel_error);
                o.record(name, v)?;
            }
        }
        o.record("layer", &built.summary)?;
        let (h, q, d_ff) = (
            dense.hidden,
            dense.attn_layout().channels_total(),
            dense.ffn_layout().units,
        );
        let expected = std::collections::BTreeMap::from([
            (
                "o_proj".to_string(),
                Tensor::from_vec(built.o_bar, (h, q), &Device::Cpu)?,
            ),
            (
                "down_proj".to_string(),
                Tensor::from_vec(built.d_bar, (h, d_ff), &Device::Cpu)?,
            ),
        ]);
        o.tensors("expected", expected);
        Ok(o)
    }
}

/// The engine side of a build's checkpoint: progress reports and the attention variants saved
/// as the stage's progress record.
struct Checkpoint<'c, 'a>(&'c mut StageContext<'a>);

impl BuildCheckpoint for Checkpoint<'_, '_> {
    fn report(&mut self, done: u64, total: u64) {
        self.0.report(done, total);
    }

    fn resumed_attn(&mut self) -> Result<Option<Vec<Variant>>> {
        Ok(self.0.load_progress::<Progress>()?.map(|p| p.attn))
    }

    fn attn_built(&mut self, attn: &[Variant]) -> Result<()> {
        self.0.save_progress(&Progress {
            attn: attn.to_vec(),
        })
    }
}

impl SupernetLayerParams {
    /// Whether the grids come from input `previous` (a later round's or the re-fit's).
    pub fn takes_previous(&self) -> bool {
        self.around.is_some() || self.refit
    }

    /// This layer's grids: from the params (round 1), around the previous round's choice, or
    /// (a re-fit) the one level the last search chose.
    pub fn grids(&self, ctx: &StageContext<'_>) -> Result<(ModuleLevels, ModuleLevels)> {
        let p = self;
        if p.refit {
            let chosen: RoundChoice = ctx.input("previous")?.record("choice")?;
            let [a, f] = *chosen.levels.get(p.layer).ok_or_else(|| Error::LayerDims {
                layer: p.layer,
                msg: format!("the search chose levels for {} layers", chosen.levels.len()),
            })?;
            let one = |l: usize| ModuleLevels {
                levels: vec![l],
                centre: Some(l),
            };
            return Ok((one(a), one(f)));
        }
        match (&p.attn, &p.ffn, &p.around) {
            (Some(a), Some(f), _) => Ok((a.clone(), f.clone())),
            (_, _, Some(around)) => {
                let prev: RoundChoice = ctx.input("previous")?.record("choice")?;
                let (ga, gf) = next_grids(&prev, around)?;
                let module = |g: &crate::prune::grid::TypeGrid| -> Result<ModuleLevels> {
                    let m = g.modules.get(p.layer).ok_or_else(|| Error::LayerDims {
                        layer: p.layer,
                        msg: format!(
                            "the previous round chose levels for {} layers",
                            g.modules.len()
                        ),
                    })?;
                    Ok(ModuleLevels {
                        levels: m.levels.clone(),
                        centre: Some(m.centre),
                    })
                };
                Ok((module(&ga)?, module(&gf)?))
            }
            _ => Err(Error::msg("supernet-layer: no grid (checked in new)")),
        }
    }
}
