//! Thin adapters that expose each algorithm step as an engine stage, one file per kind, and the
//! `[prune]` section expander that generates the Týr DAG (`prune_section`).
//!
//! Kinds: `model`, `calib-pool`, `eval-text`, `embed`, `supernet-layer`, `layer-forward`,
//! `baseline-layer`, `teacher-topk`, `search`, `eval-ppl`, `export`, `report`. Shared pieces:
//! `model_ref` (naming and reopening the model), `acts` (the activations X_ℓ between layer
//! stages), `layer_ops` (dense layer weights, statistics passes, variant names, assembling a
//! pruned block), `rounds` (a round's choice and how the next round's grids follow from it),
//! `search_scorer` (the model behind the search's fitness).

pub mod acts;
pub mod baseline_layer;
pub mod calib_pool;
pub mod embed;
pub mod estimate;
pub mod eval_ppl;
pub mod eval_text;
pub mod export;
pub mod layer_forward;
pub mod layer_ops;
pub mod model;
pub mod model_ref;
pub mod prune_section;
pub mod report;
pub mod rounds;
pub mod search;
pub mod search_scorer;
pub mod supernet_layer;
pub mod teacher;

use crate::engine::{Registry, Resources};

/// The registration point for every LLM stage kind and for pipeline-section expanders such as
/// `[prune]`. The CLI builds its registry with `Registry::with_defaults()`, which calls this
/// after the engine's demo kinds.
pub fn register_all(registry: &mut Registry) {
    registry
        .register::<model::ModelStage>()
        .register::<calib_pool::CalibPool>()
        .register::<eval_text::EvalText>()
        .register::<embed::Embed>()
        .register::<supernet_layer::SupernetLayer>()
        .register::<layer_forward::LayerForward>()
        .register::<baseline_layer::BaselineLayer>()
        .register::<eval_ppl::EvalPpl>()
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
