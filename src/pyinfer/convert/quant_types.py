"""Which GGUF type each tensor gets, and the array -> bytes conversion.

Output types (``--outtype``) and their per-tensor rules:

* ``f32``: every tensor F32.  ``f16`` / ``bf16``: 2-D weights F16 / BF16, the
  rest F32 (as llama.cpp's converter writes them).
* ``q8_0``: every 2-D weight Q8_0 (llama.cpp's converter).
* ``q4_0 q4_1 q5_0 q5_1 q6_k q4_k_m``: llama.cpp's quantize rules — the
  output matrix (or the tied embedding) is Q6_K, or Q8_0 when its rows are not
  a multiple of 256; for ``q4_k_m`` attn_v and ffn_down (ffn_down_t too) are
  Q6_K in the layers ``use_more_bits`` picks, Q4_K elsewhere.
* A K type whose row length is not a multiple of 256 falls back as llama.cpp
  does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 when even that
  block does not divide the row); other block types fall back to F16.

1-D tensors and norms always stay F32.  The quantizers are the C library's
reference quantizers (bit-identical to ``gguf.quants`` for Q4_0..Q8_0/BF16);
large tensors are split over threads (the C call releases the GIL).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pyinfer._lib import check, ffi, lib
from pyinfer.tensor import GGMLType, row_size, type_info

QK_K = 256


@dataclass(frozen=True)
class OutType:
    name: str
    base: GGMLType          # type of an ordinary 2-D weight
    file_type: int          # general.file_type (llama.cpp's llama_ftype)
    quantize_rules: bool    # llama.cpp's quantize-tool rules (output Q6_K, mixes, fallbacks)


OUTTYPES = {t.name: t for t in (
    OutType("f32", GGMLType.F32, 0, False),
    OutType("f16", GGMLType.F16, 1, False),
    OutType("bf16", GGMLType.BF16, 32, False),
    OutType("q8_0", GGMLType.Q8_0, 7, False),
    OutType("q4_0", GGMLType.Q4_0, 2, True),
    OutType("q4_1", GGMLType.Q4_1, 3, True),
    OutType("q5_0", GGMLType.Q5_0, 8, True),
    OutType("q5_1", GGMLType.Q5_1, 9, True),
    OutType("q4_k_m", GGMLType.Q4_K, 15, True),
    OutType("q6_k", GGMLType.Q6_K, 18, True),
)}

_K_FALLBACK = {GGMLType.Q4_K: GGMLType.Q5_0, GGMLType.Q5_K: GGMLType.Q5_1, GGMLType.Q6_K: GGMLType.Q8_0}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.")


def outtype(name: str) -> OutType:
    try:
        return OUTTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown output type {name!r} (choose from {', '.join(OUTTYPES)})") from None


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the *_M mixes: the first and last
    eighth, and every third layer in between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def is_quantizable(name: str, ne: Sequence[int]) -> bool:
    """A matrix weight: 2-D or more, named *.weight, not a norm, a lookup-table of factors or an
    MoE router (ffn_gate_inp, ffn_gate_inp_shexp: F32, as llama.cpp's converter keeps them)."""
    return (len(ne) >= 2 and name.endswith(".weight") and not name.endswith("_norm.weight")
            and not name.startswith(("rope_freqs", "position_embd", "token_types"))
            and ".ffn_gate_inp" not in name)


def tensor_type(name: str, ne: Sequence[int], ot: OutType, n_layer: int, has_output: bool,
                arch: str = "llama", n_expert: int = 0) -> GGMLType:
    """GGUF type of tensor `name` with ggml shape `ne` in a file of output type `ot` (of a
    model with `n_expert` experts per layer: llama.cpp gives 8-expert models more bits in
    attention)."""
    if not is_quantizable(name, ne):
        return GGMLType.F32
    t = ot.base
    if ot.quantize_rules:
        nx = ne[0]
        is_output = name == "output.weight" or (not has_output and name == "token_embd.weight")
        block = _BLOCK_NAME.match(name)
        layer = int(block.group(1)) if block else -1
        if is_output:
            t = GGMLType.Q8_0 if (arch == "falcon" or nx % QK_K) else GGMLType.Q6_K
        elif ot.name == "q4_k_m" and layer >= 0:
            if name.endswith(("attn_v.weight", "attn_k.weight")) and n_expert == 8:
                t = GGMLType.Q8_0
            elif name.endswith("attn_output.weight") and n_expert == 8 and arch != "falcon":
                t = GGMLType.Q5_K
            elif name.endswith("attn_v.weight") and use_more_bits(layer, n_layer):
                t = GGMLType.Q6_K
            elif ".ffn_down" in name:
                if arch == "falcon":
                    t = (GGMLType.Q6_K if layer < n_layer // 16 else
                         GGMLType.Q5_K if use_more_bits(layer, n_layer) else GGMLType.Q4_K)
                elif use_more_bits(layer, n_layer):
                    t = GGMLType.Q6_K
            elif name.endswith("attn_qkv.weight"):
                t = GGMLType.Q5_K
    return fallback_type(t, ne[0])


def fallback_type(t: GGMLType, nx: int) -> GGMLType:
    """`t`, or what llama.cpp uses instead when rows of `nx` elements do not fill its blocks."""
    blck = type_info(t).blck_size
    if nx % blck == 0:
        return t
    if t in _K_FALLBACK:
        t = _K_FALLBACK[t]
        if nx % type_info(t).blck_size == 0:
            return t
    return GGMLType.F16


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# rows per task: big enough that the per-call overhead vanishes, small enough to balance
_CHUNK_ELEMENTS = 1 << 20


def encode(x: np.ndarray, t: GGMLType, n_threads: Optional[int] = None) -> np.ndarray:
    """Float array (rows on the last axis) -> the bytes of type `t`, as a uint8 array
    (F32/F16 are returned as float arrays, which write the same bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if t == GGMLType.F32:
        return x
    if t == GGMLType.F16:
        return x.astype(np.float16)
    nx = x.shape[-1]
    rows = x.reshape(-1, nx)
    rs = row_size(t, nx)
    out = np.empty((rows.shape[0], rs), dtype=np.uint8)
    per_task = max(1, _CHUNK_ELEMENTS // nx)
    starts = range(0, rows.shape[0], per_task)

    def run(r0: int) -> None:
        r1 = min(r0 + per_task, rows.shape[0])
        src, dst = rows[r0:r1], out[r0:r1]
        check(lib.gs_quantize(int(t), ffi.from_buffer("float[]", src), ffi.from_buffer(dst),
                              src.size, ffi.NULL))

    n_threads = n_threads or default_threads()
    if n_threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            list(pool.map(run, starts))
    else:
        for r0 in starts:
            run(r0)
    return out.reshape(x.shape[:-1] + (rs,))


def nbytes(t: GGMLType, ne: Sequence[int]) -> int:
    n_rows = int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
    return row_size(t, ne[0]) * n_rows
