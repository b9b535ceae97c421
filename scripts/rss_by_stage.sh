#!/usr/bin/env bash
# Runs one `tyr run` under /usr/bin/time -v with its RSS sampled every 0.5 s, then prints per
# stage its wall time, the largest RSS sampled while it ran, its declared estimate and the
# stages that ran beside it (a stage's figure is the process's RSS, so with others alongside it
# is an upper bound), and the run's wall time and max RSS.
#
#   scripts/rss_by_stage.sh DIR PIPELINE [tyr run options…]
#
# DIR receives plan.jsonl, log.jsonl, rss.txt, time.txt, out.txt; TYR names the binary
# (default target/release/tyr). Used by bench_8b_shape.sh and bench_reference.sh.
set -euo pipefail
T=${TYR:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tyr}
d=$1
p=$2
shift 2
mkdir -p "$d"
"$T" plan "$p" --json "$@" > "$d/plan.jsonl"
start=$(date +%s.%N)
/usr/bin/time -v -o "$d/time.txt" "$T" --log-format json run "$p" "$@" \
  2> "$d/log.jsonl" > "$d/out.txt" &
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
echo "wall ${wall} s, max RSS ${peak} MiB (/usr/bin/time -v)"
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
        est[j["id"]] = j["mem_bytes"]
    except (ValueError, KeyError):
        pass
samples = [tuple(map(float, l.split())) for l in open(f"{d}/rss.txt") if len(l.split()) == 2]
print(f"{'stage':<22} {'kind':<16} {'secs':>7} {'max RSS MiB':>12} {'estimate MiB':>13}  alongside")
by_kind = collections.defaultdict(float)
for sid, (kind, a, b) in sorted(spans.items(), key=lambda x: x[1][1]):
    b = b or a
    rss = max((r for t, r in samples if a <= t <= b), default=0) / 1024
    others = sorted(o for o, (_, c, e) in spans.items() if o != sid and c < b and (e or c) > a)
    shown = " ".join(others[:6]) + (f" (+{len(others) - 6})" if len(others) > 6 else "")
    print(f"{sid:<22} {kind:<16} {b - a:7.1f} {rss:12.0f} {est.get(sid, 0) / 2**20:13.0f}  {shown}")
    by_kind[kind] = max(by_kind[kind], rss)
print()
print("largest per kind (MiB):", ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items())))
PY
