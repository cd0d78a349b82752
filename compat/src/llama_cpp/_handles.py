"""The addresses that stand for llama.cpp's opaque pointers (model, vocab, context, memory).

llama-cpp-python hands its clients raw C pointers as Python ints (`Llama.model`,
`llama_model_get_vocab(...)`, `Llama.ctx`), and clients pass them back to the low-level
functions, or, as llguidance does, to C code that calls a function pointer with them. Here
each such pointer is the address of a small ctypes record owned by the compat `Llama`:

    struct { uint64 magic; uint32 kind; PyObject *target; }

The record's `target` is the Python object the pointer stands for, so a function given the
address reads the record back and gets its object: no registry, no global table. Like a
real llama.cpp pointer, an address is valid while its `Llama` is alive; one that was never
handed out (or whose Llama was closed) is refused with a ValueError, as far as the magic
number can tell.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable

_MAGIC = 0x21_72_65_66_6E_69_79_70    # b"pyinfer!" little-endian
_CLOSED = 0

MODEL, VOCAB, CONTEXT, MEMORY = 1, 2, 3, 4
KIND_NAMES = {MODEL: "llama_model", VOCAB: "llama_vocab", CONTEXT: "llama_context",
              MEMORY: "llama_memory"}


class _Record(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint64), ("kind", ctypes.c_uint32),
                ("target", ctypes.py_object)]


class Handle:
    """One opaque pointer: `address` (an int, as llama-cpp-python's pointers are) whose
    record holds a weak reference to `target` (the handle must not keep its owner alive)."""

    def __init__(self, kind: int, target: Any):
        self.kind = kind
        self._record = _Record(_MAGIC, kind, weakref.ref(target))
        self.address: int = ctypes.addressof(self._record)

    def close(self) -> None:
        """Later lookups of this address raise (the record stays allocated while the handle
        lives, so a stale address reads a closed record, not freed memory)."""
        self._record.magic = _CLOSED


def address_of(pointer: Any) -> int:
    """The integer address of what a client passed as a pointer: an int, a ctypes
    c_void_p (or other pointer), or None (NULL, returned as 0)."""
    if pointer is None:
        return 0
    if isinstance(pointer, int):
        return pointer
    if isinstance(pointer, ctypes.c_void_p):
        return pointer.value or 0
    if isinstance(pointer, (ctypes._Pointer, ctypes.Array)):       # noqa: SLF001
        return ctypes.cast(pointer, ctypes.c_void_p).value or 0
    raise TypeError(f"expected a pointer (an int address), not {type(pointer).__name__}")


def resolve(pointer: Any, kind: int) -> Any:
    """The object behind `pointer`, which must be a live handle of `kind`."""
    what = KIND_NAMES[kind]
    addr = address_of(pointer)
    if addr == 0:
        raise ValueError(f"{what} pointer is NULL")
    record = _Record.from_address(addr)
    if record.magic == _CLOSED and record.kind == kind:
        raise ValueError(f"{what} {addr:#x} belongs to a Llama that was closed")
    if record.magic != _MAGIC or record.kind != kind:
        raise ValueError(f"{addr:#x} is not a {what} pointer handed out by pyinfer's llama_cpp")
    target = record.target()
    if target is None:
        raise ValueError(f"{what} {addr:#x} belongs to a Llama that no longer exists")
    return target


def resolver(kind: int) -> Callable[[Any], Any]:
    return lambda pointer: resolve(pointer, kind)
