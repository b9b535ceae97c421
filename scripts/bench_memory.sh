#!/usr/bin/env bash
# Peak memory of a whole run against the model's depth and the calibration token count: the
# `[prune]` pipeline on a random model with wide layers (hidden 1024, FFN 4096, 16 q / 4 kv
# heads, vocab 4096; a bf16 safetensors file, `examples/write_random_hf.rs`; pieces of 512, one
# round, a short search, the uniform baseline), each
# configuration from a cold store, with the maximum resident set size that `/usr/bin/time -v`
# reports and the largest per-stage estimate that `tyr plan --json` declared, side by side.
#
#   scripts/bench_memory.sh [LAYERS…] [-- TOKENS…]   (build first: cargo build --release --examples)
#   scripts/bench_memory.sh 4 16 -- 8192 32768 65536  (the default)
#
# Extra settings go through SET, e.g. SET="--set prune.top-k=256"; TYR=/path/to/tyr measures
# another build (an older one, for a before/after table). The calibration text is this
# repository's own sources and docs (random models read bytes: one token per byte), cycled to
# the largest token count asked for. Work folders go under ${WORK:-/tmp/tyr-bench-memory}.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TYR:-$PWD/target/release/tyr}
G=$PWD/target/release/examples/write_random_hf
[ -x "$T" ] && [ -x "$G" ] || { echo "build first: cargo build --release --examples" >&2; exit 1; }
layers=()
tokens=()
seen_sep=0
for a in "$@"; do
  if [ "$a" = "--" ]; then seen_sep=1; continue; fi
  if [ $seen_sep = 0 ]; then layers+=("$a"); else tokens+=("$a"); fi
done
[ ${#layers[@]} -gt 0 ] || layers=(4 16)
[ ${#tokens[@]} -gt 0 ] || tokens=(8192 32768 65536)
W=${WORK:-/tmp/tyr-bench-memory}
rm -rf "$W" && mkdir -p "$W"

# Text: blank-line separated documents; enough bytes for the largest pool.
max_tokens=0
for n in "${tokens[@]}"; do [ "$n" -gt "$max_tokens" ] && max_tokens=$n; done
corpus=$W/calib.txt
: > "$corpus"
while [ "$(stat -c %s "$corpus")" -lt $((max_tokens * 2)) ]; do
  for f in docs/*.md README.md src/*/*.rs; do cat "$f"; printf '\n\n'; done >> "$corpus"
done
head -c 200000 "$corpus" > "$W/eval.txt"

printf '%-7s %-8s %-10s %-14s %-12s %s\n' layers tokens wall_s max_rss_MiB largest_est stage
for L in "${layers[@]}"; do
  # The model as a file (bf16 safetensors, read a tensor at a time like a real checkpoint): a `random`
  # spec would rebuild every layer in memory in each stage that opens the model, which grows
  # with the depth for reasons no real run has.
  model=$W/model-L$L
  [ -f "$model/config.json" ] || "$G" "$model" "$L" 4096 1024 64 16 4 4096 > /dev/null
  for N in "${tokens[@]}"; do
    d=$W/L$L-N$N
    mkdir -p "$d"
    cat > "$d/p.toml" <<EOF
[pipeline]
name = "bench-memory"
seed = 1

[prune]
model = { source = "path", path = "$model" }
calib = { source = "path", path = "$corpus" }
calib-format = { format = "text", documents = "blank-lines" }
eval = { source = "path", path = "$W/eval.txt" }
seq-len = 512
calib-tokens = $N
eval-max-tokens = 4096
target = 0.5
baselines = ["uniform"]
rounds = 1
generations = 2
offspring = 4
selection = [[1024, 2], [2048, 1]]
top-k = 256
EOF
    # shellcheck disable=SC2086
    "$T" plan "$d/p.toml" --workdir "$d/work" --json ${SET:-} > "$d/plan.json"
    est=$(python3 - "$d/plan.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
top = max(rows, key=lambda r: r.get("mem_bytes", 0))
print(f'{top["mem_bytes"] / 2**20:.0f}MiB {top["id"]}')
PY
)
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    /usr/bin/time -v "$T" run "$d/p.toml" --workdir "$d/work" ${SET:-} > "$d/run.log" 2>&1 \
      || { echo "run failed: $d/run.log" >&2; tail -5 "$d/run.log" >&2; exit 1; }
    end=$(date +%s.%N)
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$d/run.log")
    printf '%-7s %-8s %-10.1f %-14s %s\n' "$L" "$N" "$(awk "BEGIN {print $end - $start}")" \
      "$((rss_kb / 1024))" "$est"
  done
done
