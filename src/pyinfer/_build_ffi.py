"""Generate the cffi (API mode, out-of-line) C source for ggml_sparse.

Run by the CMake build: ``python _build_ffi.py ggml_sparse.h gs_backend.h
gs_cuda.h gs_moe.h out.c``. The declarations between the ``cffi-begin`` and
``cffi-end`` markers of each public header are handed to cffi verbatim, in
the order the headers are given (the others use ggml_sparse.h's types), so
the binding can never drift from the headers.
"""
import sys
from pathlib import Path

import cffi

BEGIN, END = "/* cffi-begin */", "/* cffi-end */"


def declarations(header: str) -> str:
    text = Path(header).read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:stop]


def make_ffi(*headers: str) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef("\n".join(declarations(h) for h in headers))
    includes = "".join(f'#include "{Path(h).name}"\n' for h in headers)
    ffi.set_source("pyinfer._ggml_sparse", includes)
    return ffi


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: _build_ffi.py HEADER [HEADER ...] OUT.c")
    make_ffi(*sys.argv[1:-1]).emit_c_code(sys.argv[-1])
