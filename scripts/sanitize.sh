#!/usr/bin/env bash
# Build ggml_sparse and its Python extension with a sanitizer, and run a command against it.
#
#   bash scripts/sanitize.sh address|thread|undefined [OUT_DIR] [-- COMMAND ARGS...]
#
# CMake with -DGS_SANITIZE=KIND -DPYINFER_BUILD_PYTHON=ON -DGS_CUDA=OFF builds into
# OUT_DIR/build (default OUT_DIR: build/sanitize-KIND; rebuilds are incremental), then
# OUT_DIR/pkg is assembled: a copy of src/pyinfer with the sanitized extension, and a
# sitecustomize.py that keeps an editable install of this clone from shadowing that copy.
# Without a command the environment to use it is printed; after `--` COMMAND runs in it:
#   PYTHONPATH=OUT_DIR/pkg   the sanitized package first
#   LD_PRELOAD=<runtime>     Python is not instrumented, so the compiler's libasan/libtsan
#                            must be loaded before anything else
#   ASAN_OPTIONS             detect_leaks=0: CPython does not free everything at exit
#   TSAN_OPTIONS             halt_on_error=0: every report is printed
# ThreadSanitizer runs with address-space randomisation off (setarch -R), which older
# runtimes need on kernels with wide mmap randomisation.
# PYTHON (default python3) is the interpreter that generates the cffi binding and runs.
# Example:
#   bash scripts/sanitize.sh address -- python3 -m pytest -q -p no:cacheprovider tests/test_lifetime.py
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KIND="${1:-}"
case "$KIND" in
  address|thread|undefined) shift ;;
  *) echo "usage: $0 address|thread|undefined [OUT_DIR] [-- COMMAND ARGS...]" >&2; exit 2 ;;
esac
OUT="$ROOT/build/sanitize-$KIND"
if [[ $# -gt 0 && "$1" != "--" ]]; then OUT="$(mkdir -p "$1" && cd "$1" && pwd)"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
PYTHON="$(command -v "${PYTHON:-python3}")"

cmake -S "$ROOT" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DPYINFER_BUILD_PYTHON=ON \
  -DGS_SANITIZE="$KIND" -DGS_CUDA=OFF -DPython_EXECUTABLE="$PYTHON" > "$OUT/configure.log"
cmake --build "$OUT/build" -j "${JOBS:-2}" > "$OUT/build.log"

rm -rf "$OUT/pkg"
mkdir -p "$OUT/pkg"
cp -r "$ROOT/src/pyinfer" "$OUT/pkg/pyinfer"
find "$OUT/pkg" \( -name '__pycache__' -o -name '_ggml_sparse*.so' \) -prune -exec rm -rf {} +
cp "$OUT"/build/_ggml_sparse*.so "$OUT/pkg/pyinfer/"
cat > "$OUT/pkg/sitecustomize.py" <<'EOF'
"""Written by scripts/sanitize.sh: `import pyinfer` finds the sanitized copy beside this file,
not an editable install of the clone (whose import hook is placed before sys.path)."""
import sys

sys.meta_path[:] = [f for f in sys.meta_path
                    if "pyinfer" not in (getattr(f, "known_source_files", None) or {})]
EOF

ENV=(PYTHONPATH="$OUT/pkg${PYTHONPATH:+:$PYTHONPATH}")
RUN=()
case "$KIND" in
  address) ENV+=(LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
                 ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}") ;;
  thread)  ENV+=(LD_PRELOAD="$(gcc -print-file-name=libtsan.so)"
                 TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0}")
           RUN=(setarch "$(uname -m)" -R) ;;
  undefined) ENV+=(UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}") ;;
esac
if [[ $# -eq 0 ]]; then
  echo "built $OUT/pkg/pyinfer with -fsanitize=$KIND; run with:"
  echo "  env ${ENV[*]} ${RUN[*]} $PYTHON ..."
  exit 0
fi
exec env "${ENV[@]}" "${RUN[@]}" "$@"
