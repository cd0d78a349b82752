#!/usr/bin/env bash
# Build the C library and the cffi extension in-place (pyinfer/_ggml_sparse*.so)
# for development and tests run from the source tree. Usage: scripts/dev_build.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
cmake -S "$root" -B "$build" -DPYINFER_BUILD_PYTHON=ON -DCMAKE_BUILD_TYPE=Release \
      -DPython_EXECUTABLE="$(command -v python3)" > /dev/null
cmake --build "$build" -j "$(nproc)" 2>&1 | grep -vE "^\[|Built target|Scanning|Consolidate" || true
cp "$build"/_ggml_sparse*.so "$root/pyinfer/"
