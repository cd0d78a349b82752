"""Layer 1 of the binding: the compiled cffi module and status checking.

Every ggml_sparse call returns a gs_status; :func:`check` turns a non-zero
status into a Python exception carrying the library's own message. The
exception classes also derive from the matching builtin (ValueError,
TypeError, MemoryError) so callers can catch what they would expect.
"""
from __future__ import annotations

from ._ggml_sparse import ffi, lib

__all__ = ["ffi", "lib", "check", "last_error", "GGMLSparseError", "GSValueError", "GSShapeError",
           "GSTypeError", "GSMemoryError", "GSStateError", "GSRuntimeError", "GSUnsupportedError"]


class GGMLSparseError(Exception):
    """An error reported by the ggml_sparse C library; `status` is its gs_status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class GSValueError(GGMLSparseError, ValueError):
    """A bad argument (GS_ERR_INVALID_ARG)."""


class GSShapeError(GSValueError):
    """Shapes that do not fit an op's contract (GS_ERR_SHAPE)."""


class GSTypeError(GGMLSparseError, TypeError):
    """An unsupported type or type combination (GS_ERR_TYPE)."""


class GSMemoryError(GGMLSparseError, MemoryError):
    """An allocation failed or an arena is exhausted (GS_ERR_OOM)."""


class GSStateError(GGMLSparseError, RuntimeError):
    """A call out of order, e.g. compute before plan (GS_ERR_STATE)."""


class GSRuntimeError(GGMLSparseError, RuntimeError):
    """An error found while computing, e.g. an index out of range (GS_ERR_RUNTIME)."""


class GSUnsupportedError(GGMLSparseError, NotImplementedError):
    """A feature not built in or not supported by this CPU (GS_ERR_UNSUPPORTED)."""


_BY_STATUS = {
    lib.GS_ERR_INVALID_ARG: GSValueError,
    lib.GS_ERR_SHAPE: GSShapeError,
    lib.GS_ERR_TYPE: GSTypeError,
    lib.GS_ERR_OOM: GSMemoryError,
    lib.GS_ERR_STATE: GSStateError,
    lib.GS_ERR_RUNTIME: GSRuntimeError,
    lib.GS_ERR_UNSUPPORTED: GSUnsupportedError,
}


def last_error() -> str:
    """The message of the last failed call on this thread."""
    return ffi.string(lib.gs_last_error()).decode("utf-8", "replace")


def check(status: int) -> None:
    """Raise the matching exception when `status` is not GS_OK."""
    if status != lib.GS_OK:
        raise _BY_STATUS.get(status, GGMLSparseError)(status, last_error())
