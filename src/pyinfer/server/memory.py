"""Giving memory back after big requests.

A request with a long prompt leaves three kinds of memory behind in a server process:

- logits rows: with logits_all a `Llama` keeps an (n_ctx, n_vocab) float32 array `scores`
  (n_ctx x n_vocab x 4 bytes: 384 MiB for SmolLM2 at n_ctx 2048), whose pages become
  resident as rows are written. Rows past `n_tokens` belong to no sequence any more (a
  shorter request came after the long one), yet stay resident;
- compute graphs: the engine caches the graphs of its last few batch shapes, and a
  prompt batch of n tokens with logits_all holds n x n_vocab output floats besides its
  activations (about 120 MiB for a 512-token batch of SmolLM2), kept until evicted;
- the heap: a multi-megabyte prompt, its token list or JSON held by a reference cycle (an
  exception's traceback and its frames) waits for the cyclic garbage collector's rare
  full collection; freed, it leaves glibc arenas (one per worker thread) that are only
  handed back to the system by `malloc_trim`.

`trim(llama)` releases all three: the dead rows' pages are dropped with
madvise(MADV_DONTNEED) (private anonymous memory reads back as zeros, so the rows are simply
unused memory again), the cached prompt-batch graphs are closed (the one-token decode graph
stays; a graph is rebuilt in about 3 ms when next needed), cycles are collected and the heap
is trimmed. Rows of the
cached sequence are kept: a following request may reuse its prefix, logits included. Linux
only for the rows and the heap; elsewhere those steps do nothing. The hub calls it when the
model goes idle after use (`ModelHub.trim`, from the app's janitor task).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Optional

import numpy as np

_MADV_DONTNEED = 4          # Linux: the pages of a private anonymous mapping read back as 0
_PAGE = 4096


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def release_rows(scores: np.ndarray, first_row: int) -> int:
    """Drop the resident pages of rows `first_row`.. of a C-contiguous 2-D array that owns
    anonymous memory (they read back as zeros); returns the bytes released (0 when not
    possible). Only whole pages inside those rows are touched."""
    if (_LIBC is None or scores.ndim != 2 or not scores.flags.c_contiguous
            or not 0 <= first_row < scores.shape[0] or scores.base is not None):
        return 0
    start = scores.ctypes.data + first_row * scores.strides[0]
    end = scores.ctypes.data + scores.nbytes
    start = (start + _PAGE - 1) // _PAGE * _PAGE
    end = end // _PAGE * _PAGE
    if end <= start:
        return 0
    if _LIBC.madvise(start, end - start, _MADV_DONTNEED) != 0:
        return 0
    return end - start


def malloc_trim() -> None:
    """glibc: hand free heap memory of every arena back to the system."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is not None:
        fn(0)


def release_graphs(engine) -> int:
    """Close the engine's cached prompt-batch graphs; returns how many."""
    return engine.release_batch_graphs() if engine is not None else 0


def trim(llama) -> int:
    """Release the logits rows past `llama.n_tokens`, the prompt-batch graphs and free heap
    memory; returns the bytes released from the rows. Call only while no generation runs on
    `llama` (hold its lease)."""
    released = 0
    scores = getattr(llama, "scores", None)
    n_tokens = getattr(llama, "n_tokens", None)
    if isinstance(scores, np.ndarray) and isinstance(n_tokens, int):
        released = release_rows(scores, n_tokens)
    release_graphs(getattr(llama, "_engine", None))
    gc.collect()
    malloc_trim()
    return released
