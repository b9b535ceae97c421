//! Evolutionary search over per-module levels: mutation under exact budgets (units per type, or
//! parameters), successive-halving selection, and top-k KL fitness.

pub mod budget;
pub mod config;
pub mod evolution;
pub mod fitness;
pub mod mutate;
pub mod select;

pub use budget::{BudgetKind, ParamBudget};
pub use config::{Configuration, Module, ModuleGrid, ModuleKind, SearchSpace, Steps};
pub use evolution::{GenerationRecord, Search, SearchOutcome, SearchParams, SearchProgress};
pub use fitness::{FitnessKind, KlMean, TeacherTopK, TopKIds};
pub use mutate::{MutationParams, Offspring, generate_offspring};
pub use select::{Minibatch, PieceSlice, ScoreRequest, Scorer, Selection, Stage, Winner, select};
