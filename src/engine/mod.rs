//! The generic dataflow engine: stage trait and registry, content keys, the on-disk store with
//! its sled index, and the tokio executor. Knows nothing of language models.
//!
//! Flow: a `Registry` of stage kinds turns `StageSpec`s into a validated `Graph`; `plan::plan`
//! explains what would run; `executor::run` runs it against a `Store`; `verify` checks and
//! repairs the store and collects garbage.

pub mod artifact;
pub mod chunks;
pub mod demo;
pub mod executor;
pub mod fault;
pub mod fsio;
pub mod graph;
pub mod interrupt;
pub mod job;
pub mod key;
pub mod plan;
pub mod registry;
pub mod slurm;
pub mod stage;
pub mod status;
pub mod store;
pub mod verify;
pub mod worker;

pub use artifact::{ArtifactKind, ArtifactSet, Output, Outputs, Retention, Value};
pub use chunks::ChunkWriter;
pub use executor::{RunReport, human_bytes, run};
pub use graph::{Graph, Header, Node};
pub use job::{Observer, Outcome, Quiet};
pub use key::{Digest, KeyParts};
pub use plan::{StagePlan, StageState, plan};
pub use registry::{Built, ExpandContext, InputRef, Registry, SectionExpander, StageSpec};
pub use stage::{DynStage, InputSlot, Resources, Stage, StageContext};
pub use store::{OpenMode, Store};
