#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no cargo, run the CUDA build's tests and
# benchmarks in one short pass and print a table. Build here first (scripts/build-cuda.sh
# --tests), then stage the binaries with `scripts/device-check.sh --stage`, which copies them to
# .devbin/ (git-ignored) compressed; carry .devbin to the GPU machine and run this script there
# from the repository root:
#
#   scripts/device-check.sh --stage        # here: target-cuda binaries -> .devbin/*.xz
#   scripts/device-check.sh [tests] [bench] [eval] [pipe]   # there: unpacks, runs the steps
#                                                          # asked for [all], prints the table
#
# Steps (each under its own time limit, so one hang does not cost the rest):
#   tests     the device-path tests on cuda:0 (TYR_REQUIRE_CUDA=1): f32 parity with the packed
#             CPU path on tiny uniform and heterogeneous models, bf16 within its bound, taps,
#             weights, KV-cache decoding, the tiny pipeline end to end on cuda:0, and SmolLM2's
#             perplexity in f32 and bf16 when the model file is there (SMOLLM2=path, or
#             smollm2.part1, .part2, … with smollm2.sha256 in .devbin)
#   smollm2   that SmolLM2 test alone. The model (98 MB) is larger than one call of the device
#             tool carries (64 MiB): carry part1 with the binaries in one call, part2 in the next
#             while the machine is still up; the parts are gathered in /tmp/device-check-work
#   fwd-*     `tyr bench forward` on random weights: SmolLM2-135M's shape, f32 and bf16, and
#             Llama-3.1-8B's layer shape with 4 layers (vocab 32000), bf16 and f32
#   decode    `tyr bench decode`, SmolLM2 shape, bf16
#   pipe-8b   the [prune] pipeline on a random 4-layer Llama-3.1-8B-shaped model in bf16 on
#             cuda:0: per-layer supernet phases (statistics, OBS) from the log, each stage's time
#             from `tyr status`, and one search generation at the paper's offspring and selection
#
# Logs go to /tmp/device-check, and as one archive to $OUT when the device tool set it.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.devbin

if [ "${1:-}" = "--stage" ]; then
  set -e
  mkdir -p "$BIN"   # git-ignored
  tyr=target-cuda/release/tyr
  test=$(ls -t target-cuda/release/deps/device_path-* 2>/dev/null | grep -v '\.d$' | head -1)
  [ -x "$tyr" ] && [ -n "$test" ] || { echo "build first: scripts/build-cuda.sh --tests" >&2; exit 1; }
  xz -T0 -6 -c "$tyr" > "$BIN/tyr.xz"
  xz -T0 -6 -c "$test" > "$BIN/device_path.xz"
  ls -la "$BIN"
  exit 0
fi

# Which steps: any of tests, smollm2 (only the SmolLM2 test), bench, eval, pipe [all].
STEPS=${*:-tests bench eval pipe}
want() { [[ " $STEPS " == *" $1 "* ]]; }

RES=/tmp/device-check
rm -rf "$RES" && mkdir -p "$RES"
SUMMARY=$RES/summary.txt
: > "$SUMMARY"
# Files carried in several calls to a machine that stays up between them (the device tool
# carries at most 64 MiB per call) are gathered here.
WORK=/tmp/device-check-work
mkdir -p "$WORK"
[ -d "$BIN" ] && cp -f "$BIN"/* "$WORK"/ 2>/dev/null

# Unpacked with Python's lzma: the GPU machine may have no xz.
for f in tyr device_path; do
  if [ -f "$WORK/$f.xz" ]; then
    python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
      "$WORK/$f.xz" "$WORK/$f" && chmod +x "$WORK/$f" && rm -f "$WORK/$f.xz"
  fi
done
[ -x "$WORK/tyr" ] || { echo "no tyr.xz in $BIN: run scripts/device-check.sh --stage here first" >&2; exit 1; }

# The CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC, the runtime) come from the
# machine's Python wheels; the driver's libcuda from the system.
PY=$(command -v python3 || true)
if [ -n "$PY" ]; then
  libs=$("$PY" - <<'EOF' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = []
for p in nvidia.__path__:
    for root, subdirs, files in os.walk(p):
        if any(f.startswith(("libcublas", "libcurand", "libnvrtc", "libcudart")) for f in files):
            dirs.append(root)
print(":".join(sorted(set(dirs))))
EOF
)
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# SmolLM2 in parts (smollm2.part1, .part2, … and smollm2.sha256), complete only when every
# part is there and the digest matches.
SMOLLM2=${SMOLLM2:-}
if [ -z "$SMOLLM2" ] && [ -f "$WORK/smollm2.sha256" ] && ls "$WORK"/smollm2.part* >/dev/null 2>&1; then
  cat "$WORK"/smollm2.part* > "$WORK/smollm2.gguf"
  if [ "$(sha256sum < "$WORK/smollm2.gguf" | cut -d' ' -f1)" = "$(cat "$WORK/smollm2.sha256")" ]; then
    SMOLLM2=$WORK/smollm2.gguf
  else
    echo "SmolLM2 parts incomplete: its perplexity is not checked on this call"
  fi
fi

# step NAME LIMIT_S CMD… : runs CMD with a time limit, logs to $RES/NAME.log, records rc and time.
step() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$RES/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '%-14s rc=%-3s %7.1f s\n' "$name" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" | tee -a "$SUMMARY"
  tail -n "${TAIL:-25}" "$RES/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$RES/gpu.txt"
ldd "$WORK/tyr" | grep -E "cuda|cublas|curand|nvrtc|not found" | tee "$RES/ldd.txt"

if want tests && [ -x "$WORK/device_path" ]; then
  skip=()
  [ -n "$SMOLLM2" ] || skip=(--skip smollm2)
  TAIL=60 step tests 240 env TYR_REQUIRE_CUDA=1 TYR_BIN="$WORK/tyr" \
    TYR_TINY_PIPELINE="$PWD/pipelines/tiny.toml" ${SMOLLM2:+TYR_SMOLLM2_GGUF=$SMOLLM2} \
    "$WORK/device_path" --test-threads 1 --nocapture "${skip[@]}"
fi

if want smollm2 && [ -x "$WORK/device_path" ] && [ -n "$SMOLLM2" ]; then
  TAIL=20 step smollm2 120 env TYR_REQUIRE_CUDA=1 TYR_SMOLLM2_GGUF="$SMOLLM2" \
    "$WORK/device_path" --test-threads 1 --nocapture smollm2
fi

T=$WORK/tyr
if want bench; then
step fwd-smol-f32 60 "$T" bench forward --device cuda:0 --dtype f32 --seq-len 512 --batch 1,8,32 --iters 5
step fwd-smol-bf16 60 "$T" bench forward --device cuda:0 --dtype bf16 --seq-len 512 --batch 1,8,32 --iters 5
step fwd-8b-bf16 120 "$T" bench forward --device cuda:0 --dtype bf16 --shape llama-3.1-8b --layers 4 --vocab 32000 --seq-len 2048 --batch 1,4,8 --iters 5
step fwd-8b-f32 90 "$T" bench forward --device cuda:0 --dtype f32 --shape llama-3.1-8b --layers 4 --vocab 32000 --seq-len 2048 --batch 1,4 --iters 3
step decode 60 "$T" bench decode --device cuda:0 --dtype bf16 --prompt-len 128 --new-tokens 64
fi
if want eval && [ -n "$SMOLLM2" ]; then
  step eval-f32 60 "$T" eval --model "$SMOLLM2" --data docs/ALGORITHM.md --seq-len 512 --max-tokens 4096 --device cuda:0 --dtype f32
  step eval-bf16 60 "$T" eval --model "$SMOLLM2" --data docs/ALGORITHM.md --seq-len 512 --max-tokens 4096 --device cuda:0 --dtype bf16
  step eval-cpu 120 "$T" eval --model "$SMOLLM2" --data docs/ALGORITHM.md --seq-len 512 --max-tokens 4096
fi

# A random 4-layer model with Llama-3.1-8B's layer shape, in bf16 on the GPU: a 131,072-token
# pool of 4096-token pieces (the paper's largest selection stage), one round, one generation of
# the paper's 128 offspring and selection. Coarser than the paper where the host-side OBS would
# not fit this check: 5 levels per module (initial-step 0.25), one FFN removal pass, top-k 1024.
if want pipe; then
P=$WORK/pipe-8b
rm -rf "$P" && mkdir -p "$P"
: > "$P/calib.txt"
while [ "$(stat -c %s "$P/calib.txt")" -lt 400000 ]; do
  cat docs/*.md README.md src/*/*.rs >> "$P/calib.txt"
done
head -c 200000 "$P/calib.txt" > "$P/eval.txt"
cat > "$P/pipe.toml" <<'EOF'
[pipeline]
name = "llama-8b-shape"
seed = 0
device = "cuda:0"
dtype = "bf16"

[prune]
model = { source = "random", layers = 4, hidden = 4096, head-dim = 128, heads = 32, kv-heads = 8, d-ff = 14336, vocab = 32000, seed = 1 }
calib = { source = "path", path = "calib.txt" }
calib-format = { format = "text" }
eval = { source = "path", path = "eval.txt" }
eval-format = { format = "text" }
seq-len = 4096
calib-tokens = 131072
eval-seq-len = 4096
eval-max-tokens = 16384
target = 0.5
initial-step = 0.25
ffn-removal = { passes = 1 }
rounds = 1
generations = 1
offspring = 128
max-swaps = 4
selection = [[2048, 16], [16384, 4], [131072, 1]]
top-k = 1024
export = false
EOF
TAIL=15 step pipe-8b 280 env RUST_LOG=info "$T" run "$P/pipe.toml" --workdir "$P/w"
grep -h "supernet layer phases" "$RES/pipe-8b.log" | sed 's/.*INFO//' | tee "$RES/phases.txt"
"$T" status "$P/pipe.toml" --workdir "$P/w" > "$RES/pipe-8b-status.txt" 2>&1
head -40 "$RES/pipe-8b-status.txt"
fi

echo "=== summary"
cat "$SUMMARY"
# Every log in one file: the device tool brings back a few files from $OUT.
[ -n "${OUT:-}" ] && tar czf "$OUT/device-check-logs.tgz" -C "$RES" .
exit 0
