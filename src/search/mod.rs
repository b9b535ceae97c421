//! Evolutionary search over per-module levels: mutation under exact budgets, successive-halving
//! selection, and top-k KL fitness.

pub mod config;
pub mod evolution;
pub mod fitness;
pub mod mutate;
pub mod select;

pub use config::{Configuration, Module, ModuleGrid, ModuleKind, SearchSpace, Steps};
pub use evolution::{GenerationRecord, Search, SearchOutcome, SearchParams, SearchProgress};
pub use fitness::{FitnessKind, KlMean, TeacherTopK, TopKIds};
pub use mutate::{MutationParams, Offspring, generate_offspring};
pub use select::{Minibatch, PieceSlice, ScoreRequest, Scorer, Selection, Stage, Winner, select};
