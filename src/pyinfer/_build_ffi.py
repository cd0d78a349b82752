"""Generate the cffi (API mode, out-of-line) C source for ggml_sparse.

Run by the CMake build: ``python _build_ffi.py ggml_sparse.h out.c``. The
declarations between the ``cffi-begin`` and ``cffi-end`` markers of the
public header are handed to cffi verbatim, so the binding can never drift
from the header.
"""
import sys
from pathlib import Path

import cffi

BEGIN, END = "/* cffi-begin */", "/* cffi-end */"


def declarations(header: str) -> str:
    text = Path(header).read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:stop]


def make_ffi(header: str) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(declarations(header))
    ffi.set_source("pyinfer._ggml_sparse", '#include "ggml_sparse.h"')
    return ffi


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: _build_ffi.py HEADER OUT.c")
    make_ffi(sys.argv[1]).emit_c_code(sys.argv[2])
