"""Backends, placing tensors and planning graphs over several backends.

A thin layer over ``ggml_sparse/include/gs_backend.h`` (read it for the
assignment rules and the copies). A :class:`Backend` is the CPU or a device;
the stand-in device (:meth:`Backend.standin`) is made of the CPU - its own
memory arena, worker thread and kernel threads - and counts every copy, so
offload runs and is checked without a GPU. Nothing selects it implicitly.

    with Backend.standin(64 << 20, n_threads=1) as dev, Context(...) as ctx:
        place(weight, dev)                        # weight's bytes now live on dev
        g = Graph(ctx).build(out)
        plan_backends(g, [Backend.cpu(), dev], n_threads=2)
        g.compute(pool)                           # device splits run while the CPU goes on
        splits(g), copy_bytes(g), dev.stats()

Host code must not read a placed tensor's memory (``Tensor.numpy()`` would
look at the device's memory directly): :func:`read` and :func:`write` go
through the counted copies. Graph outputs computed on a device are copied to
the host, so their ``numpy()`` is host memory.

Concurrency: ``compute`` queues each device split on its device and goes on
with the CPU splits after it, waiting for it only before the first node (or
split) that needs it finished, and at the end; :class:`Split`'s
``start_ns``/``end_ns`` show when each split last ran. The bits are those of
running the splits one after another.

Lifetimes: closing a context gives back the device memory of its placed
tensors and backend-planned graphs (as :func:`unplace` and :func:`release`
do earlier), so a device must outlive the contexts that use it. Such a
context keeps its backends alive: :meth:`Backend.close` on a backend that an
open context still uses only drops this handle, and the device is freed with
the last of those contexts.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._lib import GSStateError, check, ffi, lib
from .tensor import _NUMPY_DTYPES, GGMLType, Graph, Tensor

__all__ = ["Backend", "Split", "place", "unplace", "tensor_backend", "read", "write", "plan_backends", "release",
           "splits", "copy_bytes", "backend_mem"]

_STATS = ("h2d_bytes", "h2d_copies", "d2h_bytes", "d2h_copies", "splits", "syncs", "arena_bytes",
          "arena_used", "arena_peak", "busy_ns", "last_job_start_ns", "last_job_end_ns")


class Backend:
    """The CPU (:meth:`cpu`) or a device (:meth:`standin`, :meth:`cuda`). Context-managed;
    ``close()`` waits for queued work and frees the device and its memory."""

    def __init__(self, ptr, owned: bool):
        self._ptr = ffi.gc(ptr, lib.gs_backend_free) if owned else ptr
        self._owned = owned
        self.lock = threading.Lock()        # serialises close() with submit/synchronize
        self._inflight: list = []           # (graph, its context's compute_lock) queued by submit()

    @classmethod
    def cpu(cls) -> "Backend":
        """The CPU backend (shared and immutable; close() does nothing)."""
        return cls(lib.gs_backend_cpu(), owned=False)

    @classmethod
    def standin(cls, arena_bytes: int, n_threads: int = 1) -> "Backend":
        """A stand-in device with an arena of exactly `arena_bytes` and `n_threads` kernel threads."""
        out = ffi.new("gs_backend **")
        check(lib.gs_backend_standin_new(int(arena_bytes), int(n_threads), out))
        return cls(out[0], owned=True)

    @classmethod
    def cuda(cls, device: int = 0, arena_bytes: int = 256 << 20) -> "Backend":
        """CUDA device `device` with one device allocation of exactly `arena_bytes`: every
        placement and plan on it is carved from that budget. Raises GSError
        (GS_ERR_UNSUPPORTED) "CUDA not built" in a build without CUDA and "no CUDA
        device: ..." where no GPU can be used."""
        out = ffi.new("gs_backend **")
        check(lib.gs_backend_cuda_new(int(device), int(arena_bytes), out))
        return cls(out[0], owned=True)

    @property
    def ptr(self):
        if self._ptr is None:
            raise GSStateError(lib.GS_ERR_STATE, "the backend is closed")
        return self._ptr

    @property
    def name(self) -> str:
        return ffi.string(lib.gs_backend_name(self.ptr)).decode()

    @property
    def is_host(self) -> bool:
        return bool(lib.gs_backend_is_host(self.ptr))

    def stats(self) -> dict:
        """Counters (gs_backend_stats): copies each way (bytes and count), splits run,
        synchronisations, arena size / in use / peak, busy time and the last job's
        CLOCK_MONOTONIC interval in ns (comparable with ``time.monotonic_ns()``)."""
        out = ffi.new("gs_backend_stats *")
        check(lib.gs_backend_get_stats(self.ptr, out))
        return {k: int(getattr(out, k)) for k in _STATS}

    def alloc(self, nbytes: int):
        """A raw block of the backend's memory (for tests of its allocator); give it back with release()."""
        out = ffi.new("void **")
        check(lib.gs_backend_alloc(self.ptr, int(nbytes), out))
        return out[0]

    def release(self, block) -> None:
        check(lib.gs_backend_release(self.ptr, block))

    def submit(self, graph: Graph) -> None:
        """Queue `graph` (planned to run entirely on this device) and return at once; its
        context stays locked until :meth:`synchronize`, so keep other graphs that run
        meanwhile in other contexts."""
        lock = graph._ctx.compute_lock
        if not lock.acquire(blocking=False):
            raise GSStateError(lib.GS_ERR_STATE, "submit: the graph's context is busy (a graph of it computes or "
                               "is queued); give concurrent graphs their own contexts")
        try:
            with self.lock:
                check(lib.gs_backend_submit(self.ptr, graph.ptr))
                self._inflight.append(lock)
        except BaseException:
            lock.release()
            raise

    def synchronize(self) -> None:
        """Wait for every queued job; raises the first error of a submitted graph."""
        with self.lock:
            try:
                check(lib.gs_backend_synchronize(self.ptr))
            finally:
                for lock in self._inflight:
                    lock.release()
                self._inflight.clear()

    def close(self) -> None:
        """Wait for queued work, then free the device (idempotent; no-op for the CPU); while
        open contexts still hold tensors placed on it or graphs planned with it, the device
        is freed after the last of them closes (the context gives its blocks back first)."""
        if self._ptr is None:
            return
        if self._inflight:
            try:
                self.synchronize()
            except Exception:
                pass                         # closing anyway; the error had no one to go to
        with self.lock:
            self._ptr = None        # the last reference to the device handle frees it (ffi.gc)

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Backend({self.name if self._ptr is not None else 'closed'})"


def _keep(ctx, backend: Backend) -> None:
    """Keep `backend`'s device alive while `ctx` is open: freeing the context gives blocks back
    to it. The context holds the device handle itself (the cdata whose release frees it)."""
    if backend._owned and not any(k is backend._ptr for k in ctx._keepalive):
        ctx._keepalive.append(backend._ptr)


def place(tensor: Tensor, backend: Optional[Backend]) -> None:
    """Move a leaf tensor with data to `backend` (a counted copy; GSMemoryError when its
    memory cannot hold it), or back to host memory with ``None`` / the CPU (copied back:
    that memory must be writable). Re-plan graphs that read it."""
    ptr = backend.ptr if backend is not None else ffi.NULL
    check(lib.gs_tensor_set_backend(tensor.ptr, ptr))
    if backend is not None:
        _keep(tensor._ctx, backend)


def unplace(tensor: Tensor) -> None:
    """Give a placed tensor's device memory back without copying anything back: its data is
    again its host memory as it was (for weights whose host bytes are a read-only file
    map, and caches being freed; use :func:`read` first to keep device-side changes).
    No-op for host tensors."""
    check(lib.gs_tensor_release_backend(tensor.ptr))


def tensor_backend(tensor: Tensor) -> Optional[str]:
    """Name of the backend a tensor was placed on, None for host memory."""
    b = lib.gs_tensor_backend(tensor.ptr)
    return None if b == ffi.NULL else ffi.string(lib.gs_backend_name(b)).decode()


def read(tensor: Tensor) -> np.ndarray:
    """A host copy of a tensor's bytes wherever it lives (a counted copy for a placed
    one): a numpy array shaped like ``tensor.numpy()`` for contiguous float/int
    tensors, else the raw bytes."""
    n = tensor.nbytes
    buf = np.empty(n, dtype=np.uint8)
    check(lib.gs_tensor_read(tensor.ptr, 0, ffi.from_buffer(buf), n))
    t = tensor.type
    if t in _NUMPY_DTYPES and t != GGMLType.BF16 and lib.gs_tensor_is_contiguous(tensor.ptr):
        return buf.view(_NUMPY_DTYPES[t]).reshape(tuple(reversed(tensor.ne)))
    return buf


def write(tensor: Tensor, data) -> None:
    """Overwrite a tensor's bytes (all of them) wherever it lives (counted when placed)."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if raw.nbytes != tensor.nbytes:
        raise ValueError(f"write: {raw.nbytes} bytes for tensor '{tensor.name}' of {tensor.nbytes} bytes")
    check(lib.gs_tensor_write(tensor.ptr, 0, ffi.from_buffer(raw), raw.nbytes))


def plan_backends(graph: Graph, backends: Sequence[Backend], n_threads: int) -> Graph:
    """Plan `graph` over `backends` (the CPU first); GSMemoryError names the backend and
    the bytes when a device cannot hold the plan."""
    arr = ffi.new("gs_backend *[]", [b.ptr for b in backends])
    check(lib.gs_graph_plan_backends(graph.ptr, arr, len(backends), int(n_threads)))
    for b in backends:
        _keep(graph._ctx, b)
    return graph


def release(graph: Graph) -> None:
    """Give back the device memory of a backend plan (the graph is then unplanned)."""
    check(lib.gs_graph_release_backends(graph.ptr))


@dataclass(frozen=True)
class Split:
    """One split of a planned graph (gs_split_info)."""
    backend: str
    first_node: int
    n_nodes: int
    copies_in: int
    bytes_in: int
    copies_out: int
    bytes_out: int
    start_ns: int = 0           # CLOCK_MONOTONIC interval of its last run (time.monotonic_ns()):
    end_ns: int = 0             #   a CPU split on the calling thread, a device split's job


def splits(graph: Graph) -> list:
    out = ffi.new("gs_split_info *")
    result = []
    for i in range(lib.gs_graph_n_splits(graph.ptr)):
        check(lib.gs_graph_split_info(graph.ptr, i, out))
        result.append(Split(ffi.string(lib.gs_backend_name(out.backend)).decode(), out.first_node, out.n_nodes,
                            out.n_copies_in, out.bytes_in, out.n_copies_out, out.bytes_out, int(out.start_ns),
                            int(out.end_ns)))
    return result


def copy_bytes(graph: Graph) -> int:
    """Bytes copied between backends by one compute of the graph."""
    return int(lib.gs_graph_copy_bytes(graph.ptr))


def backend_mem(graph: Graph, backend: Backend) -> tuple:
    """(intermediates and copies, scratch) bytes the graph's plan holds in `backend`'s memory."""
    c, w = ffi.new("size_t *"), ffi.new("size_t *")
    check(lib.gs_graph_backend_mem(graph.ptr, backend.ptr, c, w))
    return int(c[0]), int(w[0])
