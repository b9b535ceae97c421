#!/usr/bin/env bash
# The SmolLM2-135M measurements of the issue notes, in one work directory (about 75 minutes on
# 2 cores): the quickstart at 50% and 25%, the four expectation options (all-centre configuration
# of each round-1 supernet) at both levels, and `ffn-stats = expected-attention` for both levels.
# Perplexities are copied after each run to $OUT/<name>/ppl/; the runs share one output folder,
# so each copy also holds older runs' files: read the labels the run produced (r1-centre for
# the expectation runs; dense, tyr, uniform, magnitude, wanda-sp for the others).
#
#   scripts/measure_quickstart.sh [WORKDIR] [OUT]     (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
T=target/release/tyr
W=${1:-/tmp/tyr-measure}
OUT=${2:-/tmp/tyr-measure-results}
P=pipelines/quickstart.toml
mkdir -p "$OUT"
save() {
  mkdir -p "$OUT/$1"
  cp -r "$W/out/quickstart/ppl" "$OUT/$1/"
  cp "$W/out/quickstart/report.json" "$OUT/$1/" 2>/dev/null || true
}
run() { # name, then --set arguments
  local name=$1; shift
  /usr/bin/time -v "$T" run "$P" --workdir "$W" "$@" > "$OUT/$name.log" 2>&1
  save "$name"
}
run t50
run t25 --set prune.target=0.25
for e in density-weighted uniform centre none; do
  for t in 0.5 0.25; do
    run "expectation-$e-$t" --set prune.expectation=$e --set prune.rounds=0 \
      --set 'prune.baselines=[]' --set prune.eval-supernet-centre=true --set prune.target=$t
  done
done
for t in 0.5 0.25; do
  run "ffn-stats-expected-attention-$t" --set prune.ffn-stats=expected-attention --set prune.target=$t
done
grep -H '"perplexity"' "$OUT"/*/ppl/*.json
