#!/usr/bin/env bash
# Build `tyr` with candle's CUDA backend (`--features cuda`) on a machine WITHOUT a GPU or a
# system CUDA install, for carrying to a GPU machine (target: H200, sm_90, driver >= 580 / CUDA 13.0).
#
#   scripts/build-cuda.sh            # -> target-cuda/release/tyr
#   scripts/build-cuda.sh --tests    # also builds the test binaries and prints their paths
#   scripts/build-cuda.sh --test device_path   # only that test binary
#
# Summary (measured on the 2-core dev machine: cold build 17 min, + ~8 min for --tests):
# - Toolchain: CUDA 13.0 from PyPI into .cuda/venv (git-ignored): nvidia-cuda-nvcc, nvidia-nvvm,
#   nvidia-cuda-crt, nvidia-cuda-runtime, nvidia-cuda-cccl (headers); plus nvidia-cublas,
#   nvidia-curand, nvidia-cuda-nvrtc, only to link against. All land in .../nvidia/cu13/.
#   Keep nvcc at 13.0.x: newer nvcc writes PTX that a CUDA 13.0 driver (580.xx) cannot load.
# - Linking: candle-core turns on cudarc's `dynamic-linking`, and cudarc refuses `dynamic-loading`
#   next to it, so the binary links -lcuda -lcublas -lcublasLt -lcurand -lnvrtc -lcudart. The pip
#   wheels ship only lib*.so.N, so we add unversioned symlinks, and pip has no libcuda at all, so
#   we build a stub lib/stubs/libcuda.so (SONAME libcuda.so.1, every driver entry point cudarc
#   declares returns CUDA_ERROR_STUB_LIBRARY) - the same trick as the toolkit's own stubs.
#   At run time the real driver's libcuda.so.1 is used; the stub is never shipped.
# - Kernels: CUDA_COMPUTE_CAP=90 -> cudaforge picks sm_90a: candle's 11 PTX modules (.target
#   sm_90a, PTX ISA 9.0, JIT-compiled by the driver) + 15 MoE/quantized kernels as sm_90a SASS.
#   That runs on compute capability 9.0 (H100/H200) only.
# - Runtime needs (NEEDED): libcuda.so.1 (driver), libcublas.so.13 (finds libcublasLt.so.13 via
#   its $ORIGIN runpath), libcurand.so.10, libcudart.so.13, libstdc++ (GLIBCXX_3.4.21), glibc 2.34+.
#   The binary cannot even start without libcuda.so.1, i.e. not on a machine with no NVIDIA driver.
#   On the GPU machine point LD_LIBRARY_PATH at the venv's nvidia lib folders, e.g.
#     export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib | paste -sd:)
#   (then `ldd target-cuda/release/tyr` must show no "not found").
# - Output goes to target-cuda/ (CARGO_TARGET_DIR) so the CPU build in target/ is untouched.
set -euo pipefail

die() { echo "build-cuda: error: $*" >&2; exit 1; }
say() { echo "build-cuda: $*" >&2; }

[ -f Cargo.toml ] && grep -q '^name = "tyr"' Cargo.toml || die "run this from the tyr repository root"

WANT_TESTS=0
TEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) WANT_TESTS=1 ;;
    --test) WANT_TESTS=1; [ $# -ge 2 ] || die "--test needs a name"; TEST_ARGS+=(--test "$2"); shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (--tests, or --test NAME)" ;;
  esac
  shift
done

ROOT=$PWD
CUDA_DIR=$ROOT/.cuda
VENV=$CUDA_DIR/venv
# Pinned to the CUDA 13.0 release (matching the GPU machine's driver 580 / CUDA 13.0). The link-only
# libraries just have to carry the same SONAMEs (.so.13, curand .so.10) as the GPU machine's.
PKGS=(
  nvidia-cuda-nvcc==13.0.88      # nvcc, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.0.88           # cicc + libdevice, which nvcc drives
  nvidia-cuda-crt==13.0.88       # crt/*.h (host_config.h etc.) included by every .cu
  nvidia-cuda-runtime==13.0.96   # cuda_runtime.h, cuda_fp16/bf16/fp8.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85      # cub/thrust/libcu++ headers (candle's reduce.cu)
  nvidia-cublas==13.0.2.14       # libcublas(Lt).so.13, link time only
  nvidia-curand==10.4.0.35       # libcurand.so.10, link time only
  nvidia-cuda-nvrtc==13.0.88     # libnvrtc.so.13, link time only
)

command -v python3 >/dev/null || die "python3 not found (needed to install the CUDA toolchain from PyPI)"
command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null && command -v c++ >/dev/null || die "a C/C++ compiler (cc, c++) is needed: nvcc uses it as host compiler"

# 1. Toolchain in a private venv: pip merges all wheels into one nvidia/cu13 tree laid out like a
#    CUDA toolkit (bin/, include/, lib/, nvvm/). A stamp skips pip when the pin list is unchanged.
STAMP=$CUDA_DIR/installed.txt
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PKGS[*]}" ]; then
  say "installing CUDA 13.0 toolchain from PyPI (~1.2 GB unpacked)"
  "$VENV/bin/pip" install --disable-pip-version-check -q "${PKGS[@]}" \
    || die "pip install of the CUDA packages failed"
  echo "${PKGS[*]}" > "$STAMP"
fi
CU=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
NVCC=$CU/bin/nvcc
[ -x "$NVCC" ] || die "nvcc not found at $NVCC (pip layout changed?)"
NVCC_VER=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "$NVCC_VER" = 13.0 ] || die "expected nvcc release 13.0, got '$NVCC_VER'"
for h in cuda_fp16.h cuda_bf16.h cuda_runtime.h crt/host_config.h cccl/cub/cub.cuh; do
  [ -f "$CU/include/$h" ] || die "missing header $CU/include/$h"
done

# 2. Link-time files the wheels lack: unversioned lib*.so names for -l, and a libcuda stub.
ln_so() {  # libNAME.so -> libNAME.so.N, as the toolkit's -dev packages have
  local real
  real=$(cd "$CU/lib" && ls "lib$1".so.[0-9]* 2>/dev/null | head -n1) || true
  [ -n "$real" ] || die "no lib$1.so.* in $CU/lib"
  ln -sfn "$real" "$CU/lib/lib$1.so"
}
for l in cublas cublasLt curand nvrtc cudart; do ln_so "$l"; done

# The driver API names come from the cudarc sources that cargo resolved, so the stub covers
# exactly what cudarc can reference.
STUB=$CU/lib/stubs/libcuda.so
CUDARC_DIR=$(cargo metadata --format-version 1 --features cuda | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"])); break') || true
[ -n "$CUDARC_DIR" ] && [ -f "$CUDARC_DIR/src/driver/sys/mod.rs" ] \
  || die "cannot find cudarc's sources ('cargo metadata --features cuda' failed? try 'cargo fetch')"
mkdir -p "$CU/lib/stubs"
grep -oE '\bfn cu[A-Za-z0-9_]+\(' "$CUDARC_DIR/src/driver/sys/mod.rs" | sed 's/^fn //; s/($//' | sort -u \
  | awk '{ print "int " $1 "(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }" }' > "$CUDA_DIR/libcuda_stub.c.new"
[ -s "$CUDA_DIR/libcuda_stub.c.new" ] || die "no driver functions found in cudarc's sources"
if [ ! -f "$STUB" ] || ! cmp -s "$CUDA_DIR/libcuda_stub.c.new" "$CUDA_DIR/libcuda_stub.c"; then
  say "building the link-time stub $STUB"
  mv "$CUDA_DIR/libcuda_stub.c.new" "$CUDA_DIR/libcuda_stub.c"
  cc -shared -fPIC -fno-builtin -Wl,-soname,libcuda.so.1 -o "$STUB" "$CUDA_DIR/libcuda_stub.c" \
    || { rm -f "$STUB"; die "compiling the libcuda stub failed"; }
fi
rm -f "$CUDA_DIR/libcuda_stub.c.new"

# 3. Environment: cudarc's build runs `nvcc --version` (from PATH) to pick its CUDA 13.0 bindings
#    and adds $CUDA_HOME/{lib,lib/stubs} to the link path; candle-kernels (cudaforge) takes nvcc
#    from NVCC/PATH and the target arch from CUDA_COMPUTE_CAP (no nvidia-smi here).
export CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU NVCC
export PATH=$CU/bin:$PATH
export CUDA_COMPUTE_CAP=90
export CARGO_TARGET_DIR=$ROOT/target-cuda
unset CUDARC_CUDA_VERSION

# 4. Build.
say "cargo build --release --features cuda (CARGO_TARGET_DIR=target-cuda; a cold build takes a while)"
cargo build --release --features cuda || die "cargo build --release --features cuda failed"
BIN=$CARGO_TARGET_DIR/release/tyr
[ -x "$BIN" ] || die "no binary at $BIN"
say "built $BIN"

if [ "$WANT_TESTS" = 1 ]; then
  say "cargo test --release --features cuda --no-run"
  json=$(cargo test --release --features cuda --no-run "${TEST_ARGS[@]}" --message-format=json-render-diagnostics) \
    || die "cargo test --release --features cuda --no-run failed"
  say "test binaries:"
  printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])'
fi
