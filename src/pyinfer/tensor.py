"""Layer 2 of the binding: owned ggml_sparse handles and numpy interop.

Shapes follow ggml's convention (``ne``, innermost dimension first); a
tensor with ``ne == (K, M)`` is seen from numpy as an array of shape
``(M, K)``. Contexts, graphs and thread pools are freed by ``close()`` (or a
``with`` block) and, as a safety net, when garbage-collected.

Threads: ``Graph.compute`` holds its context's ``compute_lock`` and the pool's
``lock``; ``Context.close`` and ``ThreadPool.close`` take them too, so closing
waits for a computation running in another thread and never frees memory
under it (the compute then finished; later ones raise GSStateError). A graph
also reads tensors of other contexts (weights, KV cache): their owner keeps
them open while it computes (the Engine's lock does).
"""
from __future__ import annotations

import enum
import math
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._lib import GSStateError, check, ffi, lib

__all__ = ["GGMLType", "TypeInfo", "type_info", "row_size", "dequantize", "quantize",
           "quantize_activations", "vec_dot", "cpu_info", "set_simd_level", "Unary", "RopeMode",
           "RopeYarn", "yarn_attn_factor", "Context", "Tensor", "Graph", "ThreadPool"]


class GGMLType(enum.IntEnum):
    """Tensor types; values equal GGUF's (``gguf.GGMLQuantizationType``)."""
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    I8 = 24
    I16 = 25
    I32 = 26
    BF16 = 30


class Unary(enum.IntEnum):
    RELU = lib.GS_UNARY_RELU
    SILU = lib.GS_UNARY_SILU
    GELU = lib.GS_UNARY_GELU        # ggml's CPU GELU (F16 table numerics, see ggml_sparse.h)
    SQR_RELU = lib.GS_UNARY_SQR_RELU
    TANH = lib.GS_UNARY_TANH
    SIGMOID = lib.GS_UNARY_SIGMOID  # 1 / (1 + exp(-x)) (MoE routers)


class RopeMode(enum.IntEnum):
    NORMAL = lib.GS_ROPE_NORMAL
    NEOX = lib.GS_ROPE_NEOX


@dataclass(frozen=True)
class RopeYarn:
    """YaRN's blend of interpolated and extrapolated angles (Context.rope's `yarn`):
    n_ctx_orig, the training context; ext_factor, the blend's weight (1: YaRN);
    beta_fast/beta_slow, the correction range in rotations (llama.cpp's defaults)."""
    n_ctx_orig: int
    ext_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0


def yarn_attn_factor(freq_scale: float, file_attn_factor: float = 1.0) -> float:
    """The attn_factor llama.cpp gives its ropes in a YaRN context of scale freq_scale
    (gs_rope_yarn_attn_factor: the magnitude the rope adds, cancelled, times the file's
    rope.scaling.attn_factor)."""
    if not freq_scale > 0 or not math.isfinite(freq_scale):
        raise ValueError(f"yarn_attn_factor: freq_scale must be finite and > 0, got {freq_scale}")
    return float(lib.gs_rope_yarn_attn_factor(freq_scale, file_attn_factor))


_NUMPY_DTYPES = {
    GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I8: np.int8,
    GGMLType.I16: np.int16, GGMLType.I32: np.int32, GGMLType.BF16: np.uint16,
}

_IMPLS = {"auto": lib.GS_IMPL_AUTO, "scalar": lib.GS_IMPL_SCALAR, "avx2": lib.GS_IMPL_AVX2,
          "avx512": lib.GS_IMPL_AVX512}


@dataclass(frozen=True)
class TypeInfo:
    name: str
    blck_size: int
    type_size: int
    is_quantized: bool
    vec_dot_type: int


def type_info(t: int) -> TypeInfo:
    info = ffi.new("gs_type_info *")
    check(lib.gs_type_get_info(int(t), info))
    return TypeInfo(ffi.string(info.name).decode(), info.blck_size, info.type_size,
                    bool(info.is_quantized), int(info.vec_dot_type))


def row_size(t: int, n: int) -> int:
    """Bytes of one row of `n` elements of type `t`."""
    out = ffi.new("size_t *")
    check(lib.gs_row_size(int(t), int(n), out))
    return int(out[0])


def _as_bytes(data) -> np.ndarray:
    arr = np.ascontiguousarray(data)
    return arr.view(np.uint8).reshape(-1)


def dequantize(data, t: int, n: Optional[int] = None) -> np.ndarray:
    """Decode `n` elements (default: all in `data`) of type `t` into float32."""
    raw = _as_bytes(data)
    info = type_info(t)
    if n is None:
        n = raw.nbytes // info.type_size * info.blck_size
    if row_size(t, n) > raw.nbytes:
        raise ValueError(f"{n} elements of {info.name} need {row_size(t, n)} bytes, got {raw.nbytes}")
    out = np.empty(n, dtype=np.float32)
    check(lib.gs_dequantize(int(t), ffi.from_buffer(raw), ffi.from_buffer("float[]", out), n))
    return out


def _quantize_with(fn, x, t: int, out_type: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("cannot quantize a scalar")
    rows = x.reshape(-1, x.shape[-1])
    rs = row_size(out_type, x.shape[-1])
    out = np.empty((rows.shape[0], rs), dtype=np.uint8)
    for i in range(rows.shape[0]):
        check(fn(int(t), ffi.from_buffer("float[]", rows[i]), ffi.from_buffer(out[i]), rows.shape[1]))
    return out.reshape(x.shape[:-1] + (rs,))


def quantize(x, t: int) -> np.ndarray:
    """Quantize float rows (last axis) with the reference quantizer -> uint8 rows."""
    return _quantize_with(lambda ty, s, d, n: lib.gs_quantize(ty, s, d, n, ffi.NULL), x, t, t)


def quantize_activations(x, t: int) -> np.ndarray:
    """Quantize float rows as the matmul does for weight type `t`, into its
    vec_dot_type (an activation type such as Q8_0 is its own vec_dot_type)."""
    return _quantize_with(lib.gs_quantize_activations, x, t, type_info(t).vec_dot_type)


def vec_dot(t: int, x, y, n: int, impl: str = "auto") -> float:
    """Dot of a weight row `x` (type `t`) with an activation row `y` (its vec_dot_type)."""
    xb, yb = _as_bytes(x), _as_bytes(y)
    info = type_info(t)
    if row_size(t, n) > xb.nbytes or row_size(info.vec_dot_type, n) > yb.nbytes:
        raise ValueError("vec_dot: buffers are smaller than n elements")
    out = ffi.new("float *")
    check(lib.gs_vec_dot(int(t), n, ffi.from_buffer(xb), ffi.from_buffer(yb), _IMPLS[impl], out))
    return float(out[0])


def cpu_info() -> dict:
    info = ffi.new("gs_cpu_info *")
    check(lib.gs_cpu_get_info(info))
    fields = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16")
    out = {f: bool(getattr(info, f)) for f in fields}
    out["level"] = {v: k for k, v in _IMPLS.items()}[info.level]
    return out


def set_simd_level(level: str) -> None:
    """Cap the SIMD level used by the kernels ('auto', 'scalar', 'avx2', 'avx512')."""
    check(lib.gs_cpu_set_level(_IMPLS[level]))


class Tensor:
    """A tensor in a :class:`Context`; keeps the context alive."""

    __slots__ = ("_ptr", "_ctx")

    def __init__(self, ptr, ctx: "Context"):
        self._ptr = ptr
        self._ctx = ctx

    @property
    def ptr(self):
        self._ctx._require_open()
        return self._ptr

    @property
    def type(self) -> GGMLType:
        return GGMLType(lib.gs_tensor_type(self.ptr))

    @property
    def ne(self) -> tuple:
        ne = ffi.new("int64_t[4]")
        check(lib.gs_tensor_shape(self.ptr, ne, ffi.NULL))
        return tuple(ne[i] for i in range(lib.gs_tensor_n_dims(self._ptr)))

    @property
    def nb(self) -> tuple:
        nb = ffi.new("size_t[4]")
        check(lib.gs_tensor_shape(self.ptr, ffi.NULL, nb))
        return tuple(nb[i] for i in range(4))

    @property
    def name(self) -> str:
        return ffi.string(lib.gs_tensor_name(self.ptr)).decode()

    @name.setter
    def name(self, value: str) -> None:
        check(lib.gs_tensor_set_name(self.ptr, value.encode()))

    @property
    def nbytes(self) -> int:
        return int(lib.gs_tensor_nbytes(self.ptr))

    def set_output(self) -> "Tensor":
        check(lib.gs_tensor_set_output(self.ptr))
        return self

    def set_data(self, buffer) -> None:
        """Wrap external memory (zero copy). `buffer` must stay alive; the
        context keeps a reference to it."""
        if memoryview(buffer).nbytes < self.nbytes:
            raise ValueError(f"buffer of {memoryview(buffer).nbytes} bytes is smaller than tensor "
                             f"'{self.name}' ({self.nbytes} bytes)")
        check(lib.gs_tensor_set_data(self.ptr, ffi.from_buffer(buffer)))
        self._ctx._keepalive.append(buffer)

    @property
    def can_repack(self) -> bool:
        """Whether :meth:`repack` accepts this tensor (2-D Q4_0 or Q4_K leaf with data, rows % 8 == 0)."""
        return bool(lib.gs_tensor_can_repack(self.ptr))

    @property
    def is_repacked(self) -> bool:
        return bool(lib.gs_tensor_is_repacked(self.ptr))

    def repack(self) -> np.ndarray:
        """Rewrite the data into the interleaved-rows layout (gs_tensor_repack; Q4_K: the
        same bytes, products in llama.cpp's repacked order) in a new 64-byte aligned
        buffer that the context keeps alive, and return that buffer. Afterwards the
        tensor may only be a mul_mat's weights; its old data is no longer read."""
        n = self.nbytes
        store = np.empty(n + 64, dtype=np.uint8)
        start = -store.ctypes.data % 64
        buf = store[start:start + n]
        check(lib.gs_tensor_repack(self.ptr, ffi.from_buffer(buf), n))
        self._ctx._keepalive.append(store)
        return buf

    def _data_ptr(self):
        p = ffi.new("void **")
        check(lib.gs_tensor_get_data(self.ptr, p))
        if p[0] == ffi.NULL:
            raise GSStateError(lib.GS_ERR_STATE, f"tensor '{self.name}' has no data (plan the graph first)")
        return p[0]

    def raw(self) -> np.ndarray:
        """The tensor's bytes as a flat zero-copy uint8 array."""
        return np.frombuffer(ffi.buffer(self._data_ptr(), self.nbytes), dtype=np.uint8)

    def numpy(self) -> np.ndarray:
        """A zero-copy numpy view (shape = reversed ne). Quantized types are
        viewed as uint8 rows of shape (ne3, ne2, ne1, row_bytes)."""
        data = self._data_ptr()
        ne, nb = self.ne + (1,) * (4 - len(self.ne)), self.nb
        t = self.type
        buf = ffi.buffer(data, self.nbytes)
        if t in _NUMPY_DTYPES:
            dtype = np.dtype(_NUMPY_DTYPES[t])
            shape, strides = tuple(reversed(ne[:len(self.ne)])), tuple(reversed(nb[:len(self.ne)]))
        else:
            dtype = np.dtype(np.uint8)
            shape = (ne[3], ne[2], ne[1], row_size(t, ne[0]))
            strides = (nb[3], nb[2], nb[1], 1)
        return np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)

    def __repr__(self) -> str:
        return f"Tensor('{self.name}', {self.type.name}, ne={self.ne})"


def _ne_array(ne: Sequence[int]):
    if not 1 <= len(ne) <= 4:
        raise ValueError(f"tensors have 1 to 4 dimensions, got {len(ne)}")
    return ffi.new("int64_t[4]", [int(x) for x in ne] + [1] * (4 - len(ne)))


def _ptr_or_null(t: Optional[Tensor]):
    return t.ptr if t is not None else ffi.NULL


class Context:
    """An arena for tensors (and the data of those made with new_tensor)."""

    def __init__(self, mem_size: int = 16 << 20, no_alloc: bool = False):
        params = ffi.new("gs_context_params *", {"mem_size": mem_size, "no_alloc": no_alloc})
        out = ffi.new("gs_context **")
        check(lib.gs_context_new(params, out))
        self._ptr = ffi.gc(out[0], lib.gs_context_free, size=mem_size)
        self._keepalive: list = []   # external buffers wrapped by tensors
        self.compute_lock = threading.Lock()   # held while a graph of this context computes

    def _require_open(self) -> None:
        if self._ptr is None:
            raise GSStateError(lib.GS_ERR_STATE, "the context is closed")

    @property
    def ptr(self):
        self._require_open()
        return self._ptr

    def close(self) -> None:
        """Free the arena (its graphs too), after a computation in flight (idempotent)."""
        with self.compute_lock:
            if self._ptr is not None:
                ffi.release(self._ptr)
                self._ptr = None
                self._keepalive.clear()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def mem(self) -> tuple:
        used, total = ffi.new("size_t *"), ffi.new("size_t *")
        check(lib.gs_context_mem(self.ptr, used, total))
        return int(used[0]), int(total[0])

    def _op(self, fn, *args) -> Tensor:
        out = ffi.new("gs_tensor **")
        check(fn(self.ptr, *args, out))
        return Tensor(out[0], self)

    # ---- tensors ----
    def new_tensor(self, t: int, ne: Sequence[int], name: str = "") -> Tensor:
        tensor = self._op(lib.gs_new_tensor, int(t), len(ne), _ne_array(ne))
        if name:
            tensor.name = name
        return tensor

    def from_numpy(self, arr: np.ndarray, name: str = "", t: Optional[int] = None) -> Tensor:
        """A new tensor holding a copy of `arr` (float32/float16/int32...), or,
        with a quantized `t`, the quantized rows of a float array."""
        arr = np.asarray(arr)
        if t is None:
            rev = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items() if k != GGMLType.BF16}
            t = rev[arr.dtype]
            tensor = self.new_tensor(t, arr.shape[::-1], name)
            tensor.numpy()[...] = arr
        else:
            tensor = self.new_tensor(t, arr.shape[::-1], name)
            tensor.raw()[:] = quantize(arr, t).reshape(-1)
        return tensor

    # ---- ops (see ggml_sparse.h for each contract) ----
    def view(self, a: Tensor, ne: Sequence[int], nb: Sequence[int], offset: int = 0) -> Tensor:
        nbs = ffi.new("size_t[4]", [int(x) for x in nb] + [0] * (4 - len(nb)))
        return self._op(lib.gs_view, a.ptr, len(ne), _ne_array(ne), nbs, offset)

    def reshape(self, a: Tensor, ne: Sequence[int]) -> Tensor:
        return self._op(lib.gs_reshape, a.ptr, len(ne), _ne_array(ne))

    def permute(self, a: Tensor, a0: int, a1: int, a2: int, a3: int) -> Tensor:
        return self._op(lib.gs_permute, a.ptr, a0, a1, a2, a3)

    def transpose(self, a: Tensor) -> Tensor:
        return self._op(lib.gs_transpose, a.ptr)

    def cast(self, a: Tensor, t: int) -> Tensor:
        return self._op(lib.gs_cast, a.ptr, int(t))

    def cpy(self, a: Tensor, dst: Tensor) -> Tensor:
        return self._op(lib.gs_cpy, a.ptr, dst.ptr)

    def set_rows(self, dst: Tensor, src: Tensor, idx: Tensor) -> Tensor:
        return self._op(lib.gs_set_rows, dst.ptr, src.ptr, idx.ptr)

    def get_rows(self, a: Tensor, idx: Tensor) -> Tensor:
        return self._op(lib.gs_get_rows, a.ptr, idx.ptr)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._op(lib.gs_add, a.ptr, b.ptr)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return self._op(lib.gs_mul, a.ptr, b.ptr)

    def scale(self, a: Tensor, s: float) -> Tensor:
        return self._op(lib.gs_scale, a.ptr, s)

    def unary(self, a: Tensor, op: Unary) -> Tensor:
        return self._op(lib.gs_unary, a.ptr, int(op))

    def glu(self, a: Tensor, b: Tensor, op: Unary, gate_b: bool = False) -> Tensor:
        return self._op(lib.gs_glu, a.ptr, b.ptr, int(op), gate_b)

    def rms_norm(self, a: Tensor, eps: float) -> Tensor:
        return self._op(lib.gs_rms_norm, a.ptr, eps)

    def norm(self, a: Tensor, eps: float) -> Tensor:
        return self._op(lib.gs_norm, a.ptr, eps)

    def rope(self, a: Tensor, pos: Tensor, n_dims: int, mode: RopeMode = RopeMode.NORMAL,
             freq_base: float = 10000.0, freq_scale: float = 1.0,
             freq_factors: Optional[Tensor] = None, yarn: Optional["RopeYarn"] = None,
             attn_factor: float = 1.0) -> Tensor:
        """freq_factors: None or F32 {n_dims/2}, pair i's angle divided by it (Llama 3.1,
        LongRoPE); attn_factor: cos and sin times it (LongRoPE's magnitude; with YaRN,
        yarn_attn_factor's); yarn: YaRN's blend (gs_rope_params in ggml_sparse.h has the
        formulas)."""
        p = ffi.new("gs_rope_params *", lib.gs_rope_default_params(n_dims))
        p.mode, p.freq_base, p.freq_scale, p.attn_factor = int(mode), freq_base, freq_scale, attn_factor
        if yarn is not None:
            p.ext_factor, p.beta_fast, p.beta_slow = yarn.ext_factor, yarn.beta_fast, yarn.beta_slow
            p.n_ctx_orig = yarn.n_ctx_orig
        ff = freq_factors.ptr if freq_factors is not None else ffi.NULL
        return self._op(lib.gs_rope_ext, a.ptr, pos.ptr, ff, p)

    def soft_max(self, a: Tensor, mask: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
        return self._op(lib.gs_soft_max, a.ptr, mask.ptr if mask is not None else ffi.NULL, scale)

    # products built while True are rowwise (gs_mul_mat_rowwise): a graph over tokens of
    # several sequences sets it, so that no sequence's results depend on the others'
    rowwise_products = False

    def mul_mat(self, a: Tensor, b: Tensor, rowwise: Optional[bool] = None) -> Tensor:
        """a x b (gs_mul_mat); rowwise (default: the context's rowwise_products): every row of b
        in the single-row order (gs_mul_mat_rowwise)."""
        rowwise = self.rowwise_products if rowwise is None else rowwise
        return self._op(lib.gs_mul_mat_rowwise if rowwise else lib.gs_mul_mat, a.ptr, b.ptr)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, scale: float,
                  window: int = 0, softcap: float = 0.0, n_stream: int = 0) -> Tensor:
        """Causal attention over a KV cache (gs_attention_ext): scores scale * q.k;
        window > 0: a query at position p sees slots p - window < j <= p only;
        softcap > 0: scores become softcap * tanh(score / softcap); n_stream > 0: the cache
        holds streams of n_stream slots, one per sequence, and `pos` gives each token's
        slot (stream * n_stream + position): a token sees its own stream only. In a rowwise
        context (rowwise_products) each token is computed as if it were alone."""
        p = ffi.new("gs_attention_params *", {"scale": scale, "n_swa": window, "softcap": softcap,
                                              "n_stream": n_stream, "rowwise": self.rowwise_products})
        return self._op(lib.gs_attention_ext, q.ptr, k.ptr, v.ptr, pos.ptr, p)

    # ---- neuron-sparse FFN (index format: ggml_sparse.h) ----
    def sparse_index(self, score: Tensor, threshold: float) -> Tensor:
        return self._op(lib.gs_sparse_index, score.ptr, threshold)

    def sparse_index_abs(self, act: Tensor, threshold: float) -> Tensor:
        return self._op(lib.gs_sparse_index_abs, act.ptr, threshold)

    def sparse_predict(self, fc1: Tensor, fc2: Tensor, x: Tensor, threshold: float) -> Tensor:
        return self._op(lib.gs_sparse_predict, fc1.ptr, fc2.ptr, x.ptr, threshold)

    def sparse_index_remap(self, idx: Tensor, map: Tensor, n_out: int) -> Tensor:
        """An active-neuron index restricted to a slice, in its compact ids: `map` I32 {M}
        gives each neuron's id in [0, n_out) or -1 (ids ascending with the neuron);
        the result is I32 {n_out + 1, n_tokens}."""
        return self._op(lib.gs_sparse_index_remap, idx.ptr, map.ptr, int(n_out))

    def mul_mat_sparse(self, a: Tensor, b: Tensor, idx: Optional[Tensor] = None,
                       skip: Optional[Tensor] = None) -> Tensor:
        return self._op(lib.gs_mul_mat_sparse, a.ptr, b.ptr, _ptr_or_null(idx), _ptr_or_null(skip))

    def axpy_sparse(self, a: Tensor, act: Tensor, idx: Optional[Tensor] = None,
                    skip: Optional[Tensor] = None) -> Tensor:
        return self._op(lib.gs_axpy_sparse, a.ptr, act.ptr, _ptr_or_null(idx), _ptr_or_null(skip))

    def sparse_ffn_bundle(self, bundle: Tensor, h: Tensor, idx: Optional[Tensor] = None,
                          skip: Optional[Tensor] = None, both_relu: bool = False) -> Tensor:
        """Fused sparse ReLU FFN over neuron records [gate | up | down_t] ({3 E, M})."""
        return self._op(lib.gs_sparse_ffn_bundle, bundle.ptr, h.ptr, _ptr_or_null(idx), _ptr_or_null(skip),
                        bool(both_relu))

    def sparse_ffn_up_down(self, up: Tensor, down_t: Tensor, act: Tensor, h: Tensor,
                           idx: Optional[Tensor] = None, skip: Optional[Tensor] = None) -> Tensor:
        """sum over the active neurons m of act[m] * (up_m . h) * down_t_m ({E, n_tokens}):
        a gated FFN's up and down projections, the gate's activation `act` given."""
        return self._op(lib.gs_sparse_ffn_up_down, up.ptr, down_t.ptr, act.ptr, h.ptr,
                        _ptr_or_null(idx), _ptr_or_null(skip))

    # ---- mixture of experts (contracts: gs_moe.h) ----
    def top_k(self, a: Tensor, k: int) -> Tensor:
        """I32 {k, T}: per row of F32 a {n, T} the indices of its k largest values, by
        descending value; ties: lower index first; NaN ranks below every number."""
        return self._op(lib.gs_top_k, a.ptr, int(k))

    def mul_mat_id(self, as_: Tensor, b: Tensor, ids: Tensor) -> Tensor:
        """F32 {M, n_used, T}: out[t][u] = as_[ids[u][t]] . b[t][u, or 0 when b's ne1 is 1];
        as_ {K, M, n_expert} (any gs_mul_mat weight type), b F32 {K, 1 or n_used, T},
        ids I32 {n_used, T}; an id of -1 gives a row of zeros (the expert runs elsewhere)."""
        return self._op(lib.gs_mul_mat_id, as_.ptr, b.ptr, ids.ptr)

    def map_ids(self, ids: Tensor, map: Tensor) -> Tensor:
        """I32 of ids' shape: map[ids] (map I32 {n_expert}); an id of -1 stays -1."""
        return self._op(lib.gs_map_ids, ids.ptr, map.ptr)

    def moe_weights(self, probs: Tensor, ids: Tensor, norm: bool = False, scale: float = 1.0) -> Tensor:
        """F32 {k, T}: probs[ids[u][t]][t], with norm divided by their sum (llama.cpp's
        double sum, clamped below at 2**-14), then times scale."""
        return self._op(lib.gs_moe_weights, probs.ptr, ids.ptr, bool(norm), float(scale))

    def moe_sum(self, experts: Tensor, weights: Tensor) -> Tensor:
        """F32 {E, T}: sum over u in order of experts[t][u] * weights[u][t] (float)."""
        return self._op(lib.gs_moe_sum, experts.ptr, weights.ptr)


class ThreadPool:
    """A persistent pool of `n_threads` threads (the caller is one).

    The C call releases the GIL; `lock` serialises computations started from
    several Python threads (a pool runs one graph at a time), and close() takes
    it, so it waits for the computation in flight."""

    def __init__(self, n_threads: int):
        out = ffi.new("gs_threadpool **")
        check(lib.gs_threadpool_new(n_threads, out))
        self._ptr = ffi.gc(out[0], lib.gs_threadpool_free)
        self.n_threads = n_threads
        self.lock = threading.Lock()

    @property
    def ptr(self):
        if self._ptr is None:
            raise GSStateError(lib.GS_ERR_STATE, "the thread pool is closed")
        return self._ptr

    def close(self) -> None:
        with self.lock:
            if self._ptr is not None:
                ffi.release(self._ptr)
                self._ptr = None

    def __enter__(self) -> "ThreadPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Graph:
    """A compute graph owned by a context: build, plan once, compute many times."""

    def __init__(self, ctx: Context, max_nodes: int = 4096):
        out = ffi.new("gs_graph **")
        check(lib.gs_graph_new(ctx.ptr, max_nodes, out))
        self._ptr = out[0]
        self._ctx = ctx

    @property
    def ptr(self):
        self._ctx._require_open()
        return self._ptr

    def build(self, *outputs: Tensor) -> "Graph":
        for t in outputs:
            check(lib.gs_graph_build(self.ptr, t.ptr))
        return self

    def plan(self, n_threads: int) -> "Graph":
        check(lib.gs_graph_plan(self.ptr, n_threads))
        return self

    def compute(self, pool: ThreadPool) -> None:
        """Run the planned graph on `pool`; raises GSStateError when the context or the pool
        was closed (close() in another thread waits for a compute in flight)."""
        with self._ctx.compute_lock, pool.lock:
            check(lib.gs_graph_compute(self.ptr, pool.ptr))

    def mem(self) -> tuple:
        """(bytes of intermediates after reuse, scratch bytes)."""
        c, w = ffi.new("size_t *"), ffi.new("size_t *")
        check(lib.gs_graph_mem(self.ptr, c, w))
        return int(c[0]), int(w[0])

    @property
    def nodes(self) -> list:
        out = ffi.new("gs_tensor **")
        nodes = []
        for i in range(lib.gs_graph_n_nodes(self.ptr)):
            check(lib.gs_graph_node(self._ptr, i, out))
            nodes.append(Tensor(out[0], self._ctx))
        return nodes
