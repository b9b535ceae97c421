#!/usr/bin/env bash
# Forward speed of tyr and PyTorch side by side on this machine (the comparison of issue #2):
# SmolLM2-135M dims, random weights, f32, seq 512, batch 1 and 8, with and without logits.
# The two are run alternately for ROUNDS rounds so that load from other tenants of a shared
# machine hits both alike; the summary reports, per case, the median over rounds of each
# round's median tokens/s.
#
#   PYTHON=/path/to/venv/bin/python ROUNDS=3 scripts/bench_vs_torch.sh [OUT_DIR]
#
# PYTHON must have torch and transformers. Needs a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
OUT=${1:-target/bench-vs-torch}
mkdir -p "$OUT"
TYR=target/release/tyr
[ -x "$TYR" ] || { echo "no $TYR: run cargo build --release first" >&2; exit 1; }
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  "$TYR" bench forward --iters 3 --json > "$OUT/tyr-$r.json"
  "$TYR" bench forward --iters 3 --logits --json > "$OUT/tyr-logits-$r.json"
  "$PY" scripts/bench_torch.py 512 1,8 3 > "$OUT/torch-$r.json"
done
"$PY" - "$OUT" "$ROUNDS" <<'PYEOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
def add(impl, res):
    for x in res:
        rows.setdefault((x["batch"], x["logits"], impl), []).append(x["tokens_per_s"])
for r in range(1, rounds + 1):
    for name in (f"tyr-{r}", f"tyr-logits-{r}"):
        add("tyr", json.load(open(f"{out}/{name}.json"))["results"])
    add("torch", json.load(open(f"{out}/torch-{r}.json"))["results"])
print(f"{'batch':>5} {'logits':>6} {'tyr tok/s':>10} {'torch tok/s':>11} {'ratio':>6}   per round (tyr | torch)")
for b in sorted({k[0] for k in rows}):
    for lg in (False, True):
        t, p = rows[(b, lg, "tyr")], rows[(b, lg, "torch")]
        mt, mp = statistics.median(t), statistics.median(p)
        print(f"{b:>5} {str(lg).lower():>6} {mt:>10.1f} {mp:>11.1f} {mt/mp:>6.2f}   "
              + " ".join(f"{x:.0f}" for x in t) + " | " + " ".join(f"{x:.0f}" for x in p))
PYEOF
