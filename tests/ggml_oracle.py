"""llama.cpp's CPU kernels through ctypes, for the opt-in comparison tests.

llama-cpp-python ships ggml's shared libraries; `libggml-cpu.so` exports
`ggml_get_type_traits_cpu(type)`, a pointer to
`{from_float, vec_dot, vec_dot_type, nrows}`: the activation conversion and
the dot product its matmul uses for each weight type (on this machine: the
build's own SIMD code), with
`vec_dot(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc)`.
`mul_mat` runs a whole ggml_mul_mat through ggml's graph compute (weights in
plain CPU memory, as llama.cpp keeps them without repacking), so batches
take the kernels llama.cpp picks for them (tinyBLAS, the tiled K-quant
GEMM). Type ids and block layouts are GGUF's, which ours share.
"""
from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np

from pyinfer.tensor import row_size


class _Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
F32 = 0


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GGMLCpu:
    """ggml's CPU type traits and matmul. Buffers are numpy arrays (bytes)."""

    def __init__(self, libdir: Path):
        # libggml-cpu needs libggml-base's symbols global
        self._base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self._cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        self._cpu.ggml_cpu_init()
        self._cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_Traits)
        ptr = ctypes.c_void_p
        base = self._base
        base.ggml_init.restype, base.ggml_init.argtypes = ptr, [_InitParams]
        base.ggml_new_tensor_2d.restype = ptr
        base.ggml_new_tensor_2d.argtypes = [ptr, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        base.ggml_mul_mat.restype, base.ggml_mul_mat.argtypes = ptr, [ptr, ptr, ptr]
        base.ggml_get_data.restype, base.ggml_get_data.argtypes = ptr, [ptr]
        base.ggml_new_graph.restype, base.ggml_new_graph.argtypes = ptr, [ptr]
        base.ggml_build_forward_expand.argtypes = [ptr, ptr]
        base.ggml_free.argtypes = [ptr]
        self._cpu.ggml_graph_compute_with_ctx.argtypes = [ptr, ptr, ctypes.c_int]

    def _traits(self, t: int) -> _Traits:
        return self._cpu.ggml_get_type_traits_cpu(int(t)).contents

    def vec_dot_type(self, t: int) -> int:
        return int(self._traits(t).vec_dot_type)

    def from_float(self, vt: int, x: np.ndarray) -> np.ndarray:
        """x (float32, n elements) converted to activation type vt, as bytes."""
        x = np.ascontiguousarray(x, np.float32).reshape(-1)
        if int(vt) == F32:
            return x.view(np.uint8).copy()
        out = np.zeros(row_size(vt, x.size), np.uint8)
        _FROM_FLOAT(self._traits(vt).from_float)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def vec_dot(self, t: int, w: np.ndarray, y: np.ndarray, n: int) -> np.float32:
        """Dot of weight row w (type t) with activation row y (its vec_dot_type)."""
        assert w.nbytes >= row_size(t, n) and y.nbytes >= row_size(self.vec_dot_type(t), n)
        w, y = np.ascontiguousarray(w), np.ascontiguousarray(y)
        s = ctypes.c_float()
        _VEC_DOT(self._traits(t).vec_dot)(n, ctypes.byref(s), 0, w.ctypes.data, 0, y.ctypes.data, 0, 1)
        return np.float32(s.value)


    def mul_mat(self, t: int, w: np.ndarray, x: np.ndarray, n_threads: int = 2) -> np.ndarray:
        """ggml_mul_mat of weights w (M rows of type t, K elements each, as
        bytes (M, row bytes)) and float32 activations x (N, K): (N, M)."""
        x = np.ascontiguousarray(x, np.float32)
        w = np.ascontiguousarray(w)
        (n, k), m = x.shape, w.shape[0]
        base = self._base
        mem = w.nbytes + 3 * x.nbytes + 4 * m * n + (16 << 20)
        ctx = base.ggml_init(_InitParams(mem, None, False))
        try:
            a = base.ggml_new_tensor_2d(ctx, int(t), k, m)
            b = base.ggml_new_tensor_2d(ctx, F32, k, n)
            ctypes.memmove(base.ggml_get_data(a), w.ctypes.data, w.nbytes)
            ctypes.memmove(base.ggml_get_data(b), x.ctypes.data, x.nbytes)
            c = base.ggml_mul_mat(ctx, a, b)
            graph = base.ggml_new_graph(ctx)
            base.ggml_build_forward_expand(graph, c)
            self._cpu.ggml_graph_compute_with_ctx(ctx, graph, n_threads)
            out = (ctypes.c_float * (m * n)).from_address(base.ggml_get_data(c))
            return np.ctypeslib.as_array(out).copy().reshape(n, m)
        finally:
            base.ggml_free(ctx)


def load() -> GGMLCpu | None:
    """ggml's CPU library from llama-cpp-python, or None when it is not installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        libdir = Path(folder) / "lib"
        if (libdir / "libggml-cpu.so").exists() and (libdir / "libggml-base.so").exists():
            return GGMLCpu(libdir)
    return None
