#!/usr/bin/env bash
# Build the SSD scan kernels for the GPU at hand and run every GPU check and benchmark in one go
# (scripts/gpu_check.py), results in one JSON. Made for a lent H100/H200 (torch, nvcc, CMake; no
# TensorRT, no network), in under five minutes; on a machine without a GPU it builds, says
# "no CUDA device" and why, writes that into the JSON, and exits 0.
#
#   scripts/gpu_check.sh [--out gpu_check.json] [--quick] [--budget-s 150] [--dry-run-cpu]
#   scripts/gpu_check.sh --print-tools      # the nvcc and compute-sanitizer it would use, then exit
#
# nvcc is taken from PATH, else $CUDA_HOME/bin, else /usr/local/cuda/bin; compute-sanitizer from
# PATH or beside that nvcc. When compute-sanitizer and a GPU are there, memcheck and racecheck run
# on two shapes first (gpu_check.py --sanitizer-run, at most 60 s each) and are checks in the JSON.
#
# Environment: BMAMBA_CUDA_ARCH (default 90: H100/H200), PYTHON (default python3),
# BMAMBA_GPU_CHECK_BUILD (build folder, default build/gpu-check, inside the git-ignored build/).
set -uo pipefail
cd "$(dirname "$0")/.."

ARCH="${BMAMBA_CUDA_ARCH:-90}"
BUILD="${BMAMBA_GPU_CHECK_BUILD:-build/gpu-check}"
PYTHON="${PYTHON:-python3}"
SANITIZER_TIMEOUT_S=60

find_nvcc() {
    local candidate
    for candidate in "$(command -v nvcc)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

find_sanitizer() {
    local candidate
    for candidate in "$(command -v compute-sanitizer)" "${NVCC:+$(dirname "$NVCC")/compute-sanitizer}"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

NVCC="$(find_nvcc)"
SANITIZER="$(find_sanitizer)"
if [ "${1:-}" = "--print-tools" ]; then
    echo "nvcc: ${NVCC:-none}"
    echo "compute-sanitizer: ${SANITIZER:-none}"
    exit 0
fi

mkdir -p "$BUILD"
LOG="$BUILD/build.log"
: >"$LOG"
START=$(date +%s)

build_with_cmake() {
    command -v cmake >/dev/null || { echo "cmake not found" >>"$LOG"; return 1; }
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
        ${NVCC:+-DCMAKE_CUDA_COMPILER="$NVCC"} -DBMAMBA_WITH_TRT=OFF >>"$LOG" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" >>"$LOG" 2>&1 &&
        [ -f "$BUILD/libbmamba_ssd.so" ]
}

build_with_nvcc() {  # the same two libraries without CMake
    [ -n "$NVCC" ] || { echo "nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)" >>"$LOG"; return 1; }
    "$NVCC" -std=c++17 -O3 -arch="sm_$ARCH" -shared -Xcompiler -fPIC,-fvisibility=hidden \
        -o "$BUILD/libbmamba_ssd.so" runtime/csrc/ssd_scan.cu >>"$LOG" 2>&1 || return 1
    g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden \
        -o "$BUILD/libbmamba_ssd_cpu.so" runtime/csrc/ssd_scan_cpu.cpp >>"$LOG" 2>&1 || true
}

echo "== building the kernels for sm_$ARCH in $BUILD (nvcc: ${NVCC:-none})"
TOOL=cmake
if ! build_with_cmake; then
    echo "   cmake build failed; trying nvcc directly (log: $LOG)"
    TOOL=nvcc
    build_with_nvcc || TOOL=none
fi
SECONDS_TAKEN=$(( $(date +%s) - START ))
if [ "$TOOL" = none ]; then
    echo "   build FAILED after ${SECONDS_TAKEN}s; last lines of $LOG:"
    tail -n 15 "$LOG"
else
    echo "   built with $TOOL in ${SECONDS_TAKEN}s"
fi

BUILD_JSON="$BUILD/build.json"
BUILD_TOOL="$TOOL" BUILD_SECONDS="$SECONDS_TAKEN" BUILD_ARCH="$ARCH" BUILD_LOG="$LOG" BUILD_NVCC="$NVCC" \
    "$PYTHON" - "$BUILD_JSON" <<'EOF'
import json, os, sys
log = open(os.environ["BUILD_LOG"], errors="replace").read().splitlines()
json.dump({"tool": os.environ["BUILD_TOOL"], "ok": os.environ["BUILD_TOOL"] != "none",
           "seconds": int(os.environ["BUILD_SECONDS"]), "arch": os.environ["BUILD_ARCH"],
           "nvcc": os.environ["BUILD_NVCC"] or None, "log_tail": log[-15:]}, open(sys.argv[1], "w"), indent=2)
EOF

export BMAMBA_SSD_LIB="$PWD/$BUILD"

# compute-sanitizer memcheck and racecheck on two shapes (gpu_check.py --sanitizer-run).
SANITIZER_JSON="$BUILD/sanitizer.json"
HAVE_GPU=no
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_GPU=yes
if [ -z "$SANITIZER" ]; then
    echo '{"skipped": "compute-sanitizer not found (PATH, beside nvcc)"}' >"$SANITIZER_JSON"
elif [ "$HAVE_GPU" = no ] || [ "$TOOL" = none ]; then
    echo '{"skipped": "no CUDA device or no library"}' >"$SANITIZER_JSON"
else
    echo "== compute-sanitizer ($SANITIZER): memcheck, racecheck"
    for TOOL_NAME in memcheck racecheck; do
        timeout "$SANITIZER_TIMEOUT_S" "$SANITIZER" --tool "$TOOL_NAME" --error-exitcode 9 \
            "$PYTHON" scripts/gpu_check.py --sanitizer-run >"$BUILD/sanitizer-$TOOL_NAME.log" 2>&1
        echo "$TOOL_NAME $?" >>"$BUILD/sanitizer.rc"
        echo "   $TOOL_NAME: exit $(tail -n 1 "$BUILD/sanitizer.rc" | cut -d' ' -f2) ($BUILD/sanitizer-$TOOL_NAME.log)"
    done
    "$PYTHON" - "$BUILD" "$SANITIZER_JSON" <<'EOF'
import json, sys
from pathlib import Path
build = Path(sys.argv[1])
runs = []
for line in (build / "sanitizer.rc").read_text().split("\n"):
    if not line.strip():
        continue
    tool, rc = line.split()
    log = (build / f"sanitizer-{tool}.log").read_text(errors="replace").splitlines()
    summary = [l for l in log if "SUMMARY" in l]  # "ERROR SUMMARY: 0 errors", "RACECHECK SUMMARY: ..."
    runs.append({"tool": tool, "rc": int(rc), "summary": " | ".join(summary)[-300:],
                 "log": "\n".join(log[-12:]) if int(rc) else ""})
json.dump(runs, open(sys.argv[2], "w"), indent=2)
EOF
    rm -f "$BUILD/sanitizer.rc"
fi

# The checks and benchmarks get what is left of about 4.5 minutes (unless --budget-s is given).
BUDGET=()
case " $* " in
    *" --budget-s "*) ;;
    *) BUDGET=(--budget-s "$(( 270 - ($(date +%s) - START) > 60 ? 270 - ($(date +%s) - START) : 60 ))") ;;
esac
echo "== running scripts/gpu_check.py"
"$PYTHON" scripts/gpu_check.py --build-json "$BUILD_JSON" --sanitizer-json "$SANITIZER_JSON" "${BUDGET[@]}" "$@"
