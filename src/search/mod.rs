//! Evolutionary search over per-module levels: mutation under exact budgets, successive-halving
//! selection, and top-k KL fitness.
