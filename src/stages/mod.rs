//! Thin adapters that expose each algorithm step as an engine stage, one file per kind, and the
//! `[prune]` section expander that generates the Týr DAG (`prune_section`). A stage reads its
//! inputs, calls plain functions (`supernet`, `prune`, `search`, `export`, `eval`) on plain
//! types, and writes its outputs; the domain code never sees the engine.
//!
//! Kinds: `model`, `calib-pool`, `eval-text`, `embed`, `supernet-layer`, `supernet-part`,
//! `layer-forward`, `baseline-layer`, `teacher-topk`, `search`, `eval-ppl`, `eval-tasks`,
//! `export`, `report`. Shared pieces:
//! `model_ref` (naming and reopening the model), `acts` (how X_ℓ is stored between layer
//! stages), `estimate` (each stage's memory estimate), `Chosen` (which variant each layer
//! uses), `supernet_layer::variant_name` (how variants are named).

pub mod acts;
pub mod baseline_layer;
pub mod calib_pool;
pub mod embed;
pub mod estimate;
pub mod eval_ppl;
pub mod eval_tasks;
pub mod eval_text;
pub mod export;
pub mod layer_forward;
pub mod model;
pub mod model_ref;
pub mod prune_section;
pub mod report;
pub mod search;
pub mod supernet_layer;
pub mod supernet_part;
pub mod teacher;

use std::sync::Arc;

use crate::engine::{ArtifactSet, Registry, Resources, StageContext};
use crate::prune::local::Variant;
use crate::supernet::rounds::RoundChoice;
use crate::supernet::scorer::VariantSource;
use crate::vocab::{LayerLevels, ModuleKind};
use crate::{Error, Result};

/// What the CLI runs pipelines with: the engine's demo kinds (the engine tests drive them
/// through the binary) and every LLM kind with the `[prune]` expander.
pub fn default_registry() -> Registry {
    let mut r = Registry::new();
    crate::engine::demo::register(&mut r);
    register_all(&mut r);
    r
}

/// The registration point for every LLM stage kind and for pipeline-section expanders such as
/// `[prune]`.
pub fn register_all(registry: &mut Registry) {
    registry
        .register::<model::ModelStage>()
        .register::<calib_pool::CalibPool>()
        .register::<eval_text::EvalText>()
        .register::<embed::Embed>()
        .register::<supernet_layer::SupernetLayer>()
        .register::<supernet_part::SupernetPart>()
        .register::<layer_forward::LayerForward>()
        .register::<baseline_layer::BaselineLayer>()
        .register::<eval_ppl::EvalPpl>()
        .register::<eval_tasks::EvalTasks>()
        .register::<teacher::TeacherStage>()
        .register::<search::SearchStage>()
        .register::<export::ExportStage>()
        .register::<report::ReportStage>();
    registry.register_expander(prune_section::PruneSection);
}

/// Resources of a stage that does little work (no heavy CPU token).
pub(crate) fn light() -> Resources {
    Resources {
        cpu: 0,
        gpu: 0,
        mem_bytes: 0,
    }
}

/// The input slots of a consumer of chosen variants (`eval-ppl`, `eval-tasks`): `layers` when
/// it has a fixed choice or takes one from a search, and `search` for the latter.
pub(crate) fn choice_slots(fixed: bool, from_search: bool) -> Vec<crate::engine::InputSlot> {
    use crate::engine::InputSlot;
    let mut v = Vec::new();
    if fixed || from_search {
        v.push(InputSlot::many("layers"));
    }
    if from_search {
        v.push(InputSlot::one("search"));
    }
    v
}

/// The variants a consumer of a choice (`eval-ppl`, `eval-tasks`, `export`) builds its model
/// from: its layer stages (input slot `layers`, one per decoder layer, in order: a round's
/// `supernet-layer`s or a baseline's layer stages) and one `[attn, ffn]` level pair per layer.
pub(crate) struct Chosen {
    layers: LayerStages,
    levels: Vec<LayerLevels>,
}

impl Chosen {
    /// The consumer's static `fixed` choice, or the `search` input's when `from_search`; `None`
    /// for the dense model. The layer stages and the choice are both checked against the
    /// model's `n_layers`; `what` names the consumer in the error.
    pub(crate) fn resolve(
        ctx: &StageContext<'_>,
        what: &str,
        fixed: &Option<Vec<LayerLevels>>,
        from_search: bool,
        n_layers: usize,
    ) -> Result<Option<Chosen>> {
        let levels = if from_search {
            let rc: RoundChoice = ctx.input("search")?.record("choice")?;
            rc.levels
        } else {
            match fixed {
                Some(c) => c.clone(),
                None => return Ok(None),
            }
        };
        let layers = ctx.inputs("layers")?;
        if layers.len() != n_layers || levels.len() != n_layers {
            return Err(Error::msg(format!(
                "{what}: {} layer stages and {} choices for {n_layers} layers",
                layers.len(),
                levels.len(),
            )));
        }
        Ok(Some(Chosen {
            layers: LayerStages(layers.to_vec()),
            levels,
        }))
    }

    /// The layer stages the variants are read from.
    pub(crate) fn layer_stages(&self) -> LayerStages {
        LayerStages(self.layers.0.clone())
    }

    /// The `[attn, ffn]` levels of every layer.
    pub(crate) fn levels(&self) -> &[LayerLevels] {
        &self.levels
    }

    /// Layer `l`'s chosen attention and FFN variants.
    pub(crate) fn layer(&self, l: usize) -> Result<(Variant, Variant)> {
        let [a, f] = *self
            .levels
            .get(l)
            .ok_or_else(|| Error::msg(format!("no choice for layer {l}")))?;
        Ok((
            self.layers.variant(l, ModuleKind::Attn, a)?,
            self.layers.variant(l, ModuleKind::Ffn, f)?,
        ))
    }
}

/// Layer stages read as a `VariantSource`, by the names `supernet_layer::variant_name` gives
/// the variants.
pub(crate) struct LayerStages(pub Vec<Arc<ArtifactSet>>);

impl VariantSource for LayerStages {
    fn layers(&self) -> usize {
        self.0.len()
    }

    fn variant(&self, layer: usize, module: ModuleKind, level: usize) -> Result<Variant> {
        let set = self
            .0
            .get(layer)
            .ok_or_else(|| Error::msg(format!("no layer stage for layer {layer}")))?;
        set.record_uncached(&supernet_layer::variant_name(module, level))
    }
}
