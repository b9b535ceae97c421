//! The domain layer of Týr's supernet, in plain types (no engine): the activations X_ℓ between
//! layers (`acts`), one decoder layer's dense weights, statistics pass and pruned-block assembly
//! (`layer`), building one layer's variants and expected weights (`build`), the model behind
//! the search's fitness over a source of variants (`scorer`), and what connects the
//! coarse-to-fine rounds (`rounds`). The stages in `stages/` read their inputs, call these and
//! write their outputs; everything here is tested on small tensors without a store.

pub mod acts;
pub mod build;
pub mod layer;
pub mod rounds;
pub mod scorer;
