#!/usr/bin/env bash
# The whole `[prune]` pipeline on a random model with Llama-3.1-8B's layer shape (hidden 4096,
# 32 q / 8 kv heads of 128, FFN 14336; a bf16 safetensors directory, as real checkpoints come)
# and few layers, with a small budget: wall time and peak RSS of the run, and per stage the
# largest RSS sampled while it ran (scripts/rss_by_stage.sh). Two stages can run at once on 2
# cores; a stage's figure is then the process's RSS with the other one alongside (the table
# names it), an upper bound.
#
#   scripts/bench_8b_shape.sh [LAYERS] [VOCAB]   (default 2 32000; build first:
#                                                 cargo build --release --examples)
#
# Settings go through SET as for bench_memory.sh; work folders under ${WORK:-/tmp/tyr-bench-8b}.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TYR:-$PWD/target/release/tyr}
export TYR=$T
G=$PWD/target/release/examples/write_random_hf
[ -x "$T" ] && [ -x "$G" ] || { echo "build first: cargo build --release --examples" >&2; exit 1; }
L=${1:-2}
V=${2:-32000}
W=${WORK:-/tmp/tyr-bench-8b}
mkdir -p "$W"
model=$W/model-L$L-V$V
[ -f "$model/config.json" ] || "$G" "$model" "$L" "$V"

corpus=$W/calib.txt
if [ ! -s "$corpus" ]; then
  while [ "$(stat -c %s "$corpus" 2>/dev/null || echo 0)" -lt 400000 ]; do
    for f in docs/*.md README.md src/*/*.rs; do cat "$f"; printf '\n\n'; done >> "$corpus"
  done
  head -c 100000 "$corpus" > "$W/eval.txt"
fi

d=$W/run-L$L-V$V
rm -rf "$d" && mkdir -p "$d"
cat > "$d/p.toml" <<EOF
[pipeline]
name = "bench-8b-shape"
seed = 1

[prune]
model = { source = "path", path = "$model" }
calib = { source = "path", path = "$corpus" }
calib-format = { format = "text", documents = "blank-lines" }
eval = { source = "path", path = "$W/eval.txt" }
seq-len = 512
calib-tokens = 4096
eval-max-tokens = 2048
target = 0.5
round1-grid = "centred"
levels-each-side = 1
attn-removal = { passes = 1 }
ffn-removal = { passes = 1 }
rounds = 1
generations = 1
offspring = 2
selection = [[1024, 1]]
top-k = 256
gguf = false
EOF
# shellcheck disable=SC2086
scripts/rss_by_stage.sh "$d" "$d/p.toml" --workdir "$d/work" ${SET:-}
du -sh "$d/work" | awk '{print "store on disk: " $1}'
