#!/usr/bin/env bash
# The quickstart pipeline on the reference implementation's settings (SmolLM2-135M, 32,768
# calibration tokens in pieces of 512, top-k 8192, one round, 6 generations of 16 offspring,
# selection [[1024,4],[4096,2],[8192,1]], 9 levels, 16 FFN removal passes, no re-fit, no
# baselines) from a cold store, with the per-stage RSS table of rss_by_stage.sh.
#
#   scripts/bench_reference.sh [DIR] [extra tyr run options…]   (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-/tmp/tyr-bench-reference}
shift || true
rm -rf "$d/work"
scripts/rss_by_stage.sh "$d" pipelines/quickstart.toml --workdir "$d/work" \
  --set prune.calib-tokens=32768 --set prune.rounds=1 --set prune.generations=6 \
  --set prune.offspring=16 --set 'prune.selection=[[1024,4],[4096,2],[8192,1]]' \
  --set prune.top-k=8192 --set prune.final-refit=false --set 'prune.baselines=[]' \
  --set prune.levels-each-side=4 --set 'prune.ffn-removal={passes=16}' "$@"
