#!/usr/bin/env bash
# Build the SSD scan kernels for the GPU at hand and run every GPU check and benchmark in one go
# (scripts/gpu_check.py), results in one JSON. Made for a lent H100/H200 (torch, nvcc, CMake; no
# TensorRT, no network), in well under five minutes; on a machine without a GPU it builds, says
# "no CUDA device" and why, writes that into the JSON, and exits 0.
#
#   scripts/gpu_check.sh [--out gpu_check.json] [--quick] [--budget-s 200] [--dry-run-cpu]
#
# Environment: BMAMBA_CUDA_ARCH (default 90: H100/H200), PYTHON (default python3),
# BMAMBA_GPU_CHECK_BUILD (build folder, default build/gpu-check, inside the git-ignored build/).
set -uo pipefail
cd "$(dirname "$0")/.."

ARCH="${BMAMBA_CUDA_ARCH:-90}"
BUILD="${BMAMBA_GPU_CHECK_BUILD:-build/gpu-check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BUILD"
LOG="$BUILD/build.log"
: >"$LOG"

build_with_cmake() {
    command -v cmake >/dev/null || { echo "cmake not found" >>"$LOG"; return 1; }
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
        -DBMAMBA_WITH_TRT=OFF >>"$LOG" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" >>"$LOG" 2>&1 &&
        [ -f "$BUILD/libbmamba_ssd.so" ]
}

build_with_nvcc() {  # the same two libraries without CMake
    command -v nvcc >/dev/null || { echo "nvcc not found" >>"$LOG"; return 1; }
    nvcc -std=c++17 -O3 -arch="sm_$ARCH" -shared -Xcompiler -fPIC,-fvisibility=hidden \
        -o "$BUILD/libbmamba_ssd.so" runtime/csrc/ssd_scan.cu >>"$LOG" 2>&1 || return 1
    g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden \
        -o "$BUILD/libbmamba_ssd_cpu.so" runtime/csrc/ssd_scan_cpu.cpp >>"$LOG" 2>&1 || true
}

echo "== building the kernels for sm_$ARCH in $BUILD"
START=$(date +%s)
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
BUILD_TOOL="$TOOL" BUILD_SECONDS="$SECONDS_TAKEN" BUILD_ARCH="$ARCH" BUILD_LOG="$LOG" \
    "$PYTHON" - "$BUILD_JSON" <<'EOF'
import json, os, sys
log = open(os.environ["BUILD_LOG"], errors="replace").read().splitlines()
json.dump({"tool": os.environ["BUILD_TOOL"], "ok": os.environ["BUILD_TOOL"] != "none",
           "seconds": int(os.environ["BUILD_SECONDS"]), "arch": os.environ["BUILD_ARCH"],
           "log_tail": log[-15:]}, open(sys.argv[1], "w"), indent=2)
EOF

echo "== running scripts/gpu_check.py"
export BMAMBA_SSD_LIB="$PWD/$BUILD"
"$PYTHON" scripts/gpu_check.py --build-json "$BUILD_JSON" "$@"
