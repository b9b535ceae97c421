#!/usr/bin/env bash
# The whole `[prune]` pipeline on a random model with Llama-3.1-8B's layer shape (hidden 4096,
# 32 q / 8 kv heads of 128, FFN 14336; a bf16 safetensors directory, as real checkpoints come)
# and few layers, with a small budget: wall time and peak RSS of the run, and per stage the
# largest RSS sampled while it ran. Two stages can run at once on 2 cores; a stage's figure is
# then the process's RSS with the other one alongside (the table names it), an upper bound.
#
#   scripts/bench_8b_shape.sh [LAYERS] [VOCAB]   (default 2 32000; build first:
#                                                 cargo build --release --examples)
#
# Settings go through SET as for bench_memory.sh; work folders under ${WORK:-/tmp/tyr-bench-8b}.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TYR:-$PWD/target/release/tyr}
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
"$T" plan "$d/p.toml" --workdir "$d/work" --json ${SET:-} > "$d/plan.jsonl"
start=$(date +%s.%N)
# shellcheck disable=SC2086
/usr/bin/time -v -o "$d/time.txt" "$T" --log-format json run "$d/p.toml" --workdir "$d/work" \
  ${SET:-} 2> "$d/log.jsonl" > "$d/out.txt" &
tpid=$!
# The tyr process under time: its RSS every 0.5 s.
sleep 0.2
pid=$(pgrep -P "$tpid" | head -1 || true)
: > "$d/rss.txt"
while kill -0 "$tpid" 2>/dev/null; do
  if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    printf '%s %s\n' "$(date +%s.%N)" "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")" >> "$d/rss.txt"
  fi
  sleep 0.5
done
wait "$tpid" || { echo "run failed: see $d/log.jsonl" >&2; tail -5 "$d/log.jsonl" >&2; exit 1; }
wall=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')
peak=$(awk '/Maximum resident/ {printf "%.0f", $6 / 1024}' "$d/time.txt")
echo "layers $L, vocab $V: wall ${wall} s, max RSS ${peak} MiB (/usr/bin/time -v)"
python3 - "$d" <<'PY'
import json, sys, datetime, collections
d = sys.argv[1]
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
spans = {}
for line in open(f"{d}/log.jsonl"):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    msg, span = j.get("fields", {}).get("message"), j.get("span", {})
    if msg == "stage started":
        spans[span["id"]] = [span["kind"], ts(j["timestamp"]), None]
    elif msg == "stage committed" and span.get("id") in spans:
        spans[span["id"]][2] = ts(j["timestamp"])
est = {}
for line in open(f"{d}/plan.jsonl"):
    try:
        j = json.loads(line)
        est[j["id"]] = j.get("mem_bytes") or j.get("estimate_bytes") or 0
    except (ValueError, KeyError):
        pass
samples = [tuple(map(float, l.split())) for l in open(f"{d}/rss.txt") if len(l.split()) == 2]
print(f"{'stage':<18} {'kind':<16} {'secs':>7} {'max RSS MiB':>12} {'estimate MiB':>13}  alongside")
by_kind = collections.defaultdict(float)
for sid, (kind, a, b) in sorted(spans.items(), key=lambda x: x[1][1]):
    b = b or a
    rss = max((r for t, r in samples if a <= t <= b), default=0) / 1024
    others = sorted(o for o, (_, c, e) in spans.items() if o != sid and c < b and (e or c) > a)
    print(f"{sid:<18} {kind:<16} {b - a:7.1f} {rss:12.0f} {est.get(sid, 0) / 2**20:13.0f}  {' '.join(others)}")
    by_kind[kind] = max(by_kind[kind], rss)
print()
print("largest per kind (MiB):", ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items())))
PY
du -sh "$d/work" | awk '{print "store on disk: " $1}'
