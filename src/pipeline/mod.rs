//! Pipeline files (TOML) → a validated plan of stages; the `[prune]` section expands into the
//! Týr DAG here.
