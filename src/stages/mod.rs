//! Thin adapters that expose each algorithm step as an engine stage.

use crate::engine::Registry;

/// The registration point for every LLM stage kind (`supernet-layer`, `search-round`, …) and
/// for pipeline-section expanders such as `[prune]`: each area adds its
/// `registry.register::<TheStage>()` / `registry.register_expander(…)` line here. The CLI builds
/// its registry with `Registry::with_defaults()`, which calls this after the engine's demo kinds.
pub fn register_all(registry: &mut Registry) {
    let _ = registry;
}
