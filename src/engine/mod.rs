//! The generic dataflow engine: stage trait and registry, content keys, the on-disk store with
//! its sled index, and the tokio executor. Knows nothing of language models.
