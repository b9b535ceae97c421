//! `supernet-part` stage: one module's variants at a share of its levels, for a layer whose
//! supernet is built in parts (`[prune] supernet-split`, docs/ENGINE.md "Wider DAGs"). The
//! layer's `supernet-layer` stage (`joined = true`) joins the parts of both modules into exactly
//! what one whole build writes, so several machines can build one layer's levels at once.
//!
//! Inputs: `model`, `x` (X_ℓ), `previous` when the grid comes from a search (later rounds, the
//! re-fit), and — for an FFN part under `ffn-stats = expected-attention` — `attn-parts`, the
//! layer's attention parts, whose expectation is the `o_proj` its statistics pass runs with.
//! Params: `module`, `share` of `shares` (levels split in contiguous runs,
//! `supernet::build::level_share`) and `build`, the layer's params as its `supernet-layer`
//! stage has them.
//!
//! Output: record `part` (`supernet::build::ModulePart`: the share's variants, the digest of
//! the H they came from), transient: the joining stage copies the variants into its own outputs,
//! so a part's copy goes once the join has committed.
//!
//! Invalidated by: the params, the model record, X_ℓ (and `previous`, the attention parts), the
//! stage version (which includes `LOCAL_PRUNE_VERSION`), the forward's code versions.

use serde::{Deserialize, Serialize};

use super::acts;
use super::model_ref::{ModelRecord, open};
use super::supernet_layer::{FfnStats, SupernetLayer, SupernetLayerParams};
use crate::engine::{InputSlot, Outputs, Stage, StageContext};
use crate::prune::ModuleKind;
use crate::prune::local::LOCAL_PRUNE_VERSION;
use crate::supernet::build::{
    ModulePart, build_module_part, join_parts, level_share, module_expectation,
};
use crate::supernet::layer::DenseLayer;
use crate::{Error, Result};

/// Most shares one module's levels may be split into (`[prune] split-groups`).
pub const MAX_SHARES: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SupernetPartParams {
    pub module: ModuleKind,
    /// This part's share, from 0.
    pub share: usize,
    /// How many shares the module's levels are split into (1–64).
    pub shares: usize,
    /// The layer's build, as its joining `supernet-layer` stage has it (without `joined`).
    pub build: SupernetLayerParams,
}

pub struct SupernetPart(SupernetPartParams);

impl SupernetPart {
    /// Whether this part reads the attention parts (an FFN part whose statistics run with the
    /// attention's expectation).
    fn reads_attention(&self) -> bool {
        self.0.module == ModuleKind::Ffn && self.0.build.ffn_stats == FfnStats::ExpectedAttention
    }
}

impl Stage for SupernetPart {
    const KIND: &'static str = "supernet-part";
    const VERSION: u32 = 100 + LOCAL_PRUNE_VERSION;
    type Params = SupernetPartParams;

    fn new(p: SupernetPartParams) -> Result<Self> {
        if p.shares == 0 || p.shares > MAX_SHARES {
            return Err(Error::PruneOption {
                field: "shares",
                reason: format!("{} is outside 1–{MAX_SHARES}", p.shares),
            });
        }
        if p.share >= p.shares {
            return Err(Error::PruneOption {
                field: "share",
                reason: format!("share {} of {}: shares count from 0", p.share, p.shares),
            });
        }
        if p.build.joined {
            return Err(Error::PruneOption {
                field: "build.joined",
                reason: "a part builds its variants itself".into(),
            });
        }
        SupernetLayer::new(p.build.clone())?;
        Ok(Self(p))
    }

    fn code_versions(&self) -> Vec<(&'static str, u32)> {
        crate::model::forward_code_versions()
    }

    fn inputs(&self) -> Vec<InputSlot> {
        let mut v = vec![InputSlot::one("model"), InputSlot::one("x")];
        if self.0.build.takes_previous() {
            v.push(InputSlot::one("previous"));
        }
        if self.reads_attention() {
            v.push(InputSlot::many("attn-parts"));
        }
        v
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let p = &self.0;
        let b = &p.build;
        let (attn_grid, ffn_grid) = b.grids(ctx)?;
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let cfg = &model.config;
        let dense = DenseLayer::load_on(cfg, b.layer, model.source.as_ref(), &ctx.compute()?)?;
        let o_bar = if self.reads_attention() {
            let parts: Vec<ModulePart> = ctx
                .inputs("attn-parts")?
                .iter()
                .map(|s| s.record("part"))
                .collect::<Result<_>>()?;
            let (attn, _) = join_parts(b.layer, ModuleKind::Attn, &attn_grid, parts)?;
            Some(module_expectation(&dense, ModuleKind::Attn, &attn_grid, &attn, b.expectation)?.0)
        } else {
            None
        };
        let (grid, opts) = match p.module {
            ModuleKind::Attn => (&attn_grid, &b.attn_pruning),
            ModuleKind::Ffn => (&ffn_grid, &b.ffn_pruning),
        };
        let levels = level_share(&grid.levels, p.share, p.shares)?;
        let span = tracing::info_span!(
            "supernet-part",
            round = b.round,
            layer = b.layer,
            module = %p.module,
            share = p.share
        );
        let _g = span.enter();
        ctx.report(0, 1);
        let x = acts::Reader::open(ctx.input("x")?, "x")?;
        let part = build_module_part(
            cfg,
            &dense,
            &x,
            p.module,
            levels,
            o_bar.as_deref(),
            opts,
            b.parallel_levels,
            b.variant_dtype,
        )?;
        ctx.report(1, 1);
        let mut o = Outputs::new();
        o.record("part", &part)?.transient();
        Ok(o)
    }
}
