"""Owned handles on the CUDA section of the C API (layer 2 of the binding).

`compute_node(t)` runs one recorded op on the device (per-op CUDA-vs-CPU tests);
`DeviceBuffer` is a cudaMalloc'd block; `HybridFFN` is one layer's GPU-resident hot-neuron
slice with the hybrid step (GPU hot rows on a stream while the CPU pool computes the cold rows,
partial outputs summed). All of them raise GSUnsupportedError without CUDA.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .._lib import check, ffi, lib
from ..tensor import Graph, Tensor, ThreadPool, Unary

_NP = {0: np.float32, 1: np.float16, 26: np.int32}


def compute_node(t: Tensor, device: int = 0) -> np.ndarray:
    """The result of op node `t` computed on the device: its sources need host data
    (leaves, or a planned and computed graph). Float results as numpy arrays of shape
    reversed(ne); other types as raw bytes."""
    out = np.empty(t.nbytes, dtype=np.uint8)
    check(lib.gs_cuda_compute_node(device, t.ptr, ffi.from_buffer(out), out.nbytes))
    dt = _NP.get(int(t.type))
    return out.view(dt).reshape(tuple(reversed(t.ne))) if dt is not None else out


class DeviceBuffer:
    def __init__(self, size: int, device: int = 0):
        out = ffi.new("gs_cuda_buffer **")
        check(lib.gs_cuda_buffer_new(device, size, out))
        self._ptr = ffi.gc(out[0], lib.gs_cuda_buffer_free)
        self.size = size

    def upload(self, data, offset: int = 0) -> None:
        buf = memoryview(data).cast("B")
        check(lib.gs_cuda_upload(self._ptr, offset, ffi.from_buffer(buf), buf.nbytes))

    def download(self, n: int, offset: int = 0) -> np.ndarray:
        out = np.empty(n, dtype=np.uint8)
        check(lib.gs_cuda_download(self._ptr, offset, ffi.from_buffer(out), n))
        return out

    def close(self) -> None:
        if self._ptr is not None:
            ffi.release(self._ptr)
            self._ptr = None

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HybridFFN:
    """The hot rows `bucket` (ascending neuron ids) of a layer's gate (None: falcon/opt), up
    and ffn_down_t ({n_embd, n_ff} tensors with host data), resident on the device."""

    def __init__(self, gate: Optional[Tensor], up: Tensor, down_t: Tensor, bucket: np.ndarray,
                 act: Unary = Unary.RELU, gate_b: bool = False, device: int = 0):
        self._bucket = np.ascontiguousarray(bucket, dtype=np.int32)
        self.n_embd = up.ne[0]
        out = ffi.new("gs_cuda_ffn **")
        check(lib.gs_cuda_ffn_new(device, gate.ptr if gate is not None else ffi.NULL, up.ptr, down_t.ptr,
                                  ffi.from_buffer("int32_t[]", self._bucket), len(self._bucket),
                                  int(act), gate_b, out))
        self._ptr = ffi.gc(out[0], lib.gs_cuda_ffn_free)

    @property
    def ptr(self):
        if self._ptr is None:
            raise ValueError("the hybrid FFN is closed")
        return self._ptr

    def mem(self) -> tuple:
        """(weight bytes, scratch bytes) on the device."""
        w, s = ffi.new("size_t *"), ffi.new("size_t *")
        check(lib.gs_cuda_ffn_mem(self.ptr, w, s))
        return int(w[0]), int(s[0])

    def gpu_part(self, x: np.ndarray, idx: Optional[np.ndarray] = None) -> np.ndarray:
        """The GPU share alone for one token: x F32 [n_embd], idx I32 [n_ff + 1] or None."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.zeros(self.n_embd, dtype=np.float32)
        ip = ffi.NULL if idx is None else ffi.from_buffer("int32_t[]", np.ascontiguousarray(idx, np.int32))
        check(lib.gs_cuda_ffn_launch(self.ptr, ffi.from_buffer("float[]", x), ip))
        check(lib.gs_cuda_ffn_finish(self.ptr, ffi.from_buffer("float[]", y)))
        return y

    def hybrid(self, x: np.ndarray, idx: Optional[np.ndarray], cold: Graph, pool: ThreadPool,
               cold_out: Tensor) -> np.ndarray:
        """GPU hot rows and the planned CPU graph `cold` (output `cold_out`, F32 [n_embd]) at
        the same time; returns their sum."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty(self.n_embd, dtype=np.float32)
        ip = ffi.NULL if idx is None else ffi.from_buffer("int32_t[]", np.ascontiguousarray(idx, np.int32))
        with pool.lock:
            check(lib.gs_cuda_ffn_hybrid(self.ptr, ffi.from_buffer("float[]", x), ip, cold.ptr, pool.ptr,
                                         cold_out.ptr, ffi.from_buffer("float[]", y)))
        return y

    def close(self) -> None:
        if self._ptr is not None:
            ffi.release(self._ptr)
            self._ptr = None

    def __enter__(self) -> "HybridFFN":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
