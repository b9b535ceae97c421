//! Thin adapters that expose each algorithm step as an engine stage.
