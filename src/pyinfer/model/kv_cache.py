"""The KV cache: per layer, K and V rows {n_head_kv * head_dim} indexed by slot.

A global layer's slot is the token's position (n_ctx rows). With ``swa_rows``, the
sliding-window layers keep only ``swa_rows`` rows (llama.cpp's ``swa_full=False``: the
window plus a batch, n_swa + n_batch): slot = position - ``swa_base``. Before a batch at
positions lo..hi runs, ``make_room`` moves the rows the window still needs (positions
lo - n_swa + 1 and later) to the front when hi would not fit, and raises ``swa_base``.
Attention reads slots, and a window is relative, so the layer's attention is unchanged:
only rows no query can see again are dropped. RoPE has already turned the cached keys
by their positions.

The rows are F16 (the default), F32, or quantized Q8_0 / Q4_0 (llama.cpp's type_k/type_v
q8_0 and q4_0: 34 or 18 bytes per 32 values instead of 64; head_dim must be a multiple of
32). gs_set_rows quantizes the new rows, the attention op reads them (ops_attention_quant.c).
Rows are moved and saved as raw bytes (``read_rows`` / ``write_rows``), whatever the type.

Several sequences (``n_seq`` > 1, the server's parallel slots): the cache holds one stream
of n_ctx rows per sequence (llama.cpp's non-unified cache), sequence s's position p in row
s * n_ctx + p; the attention op reads a token's own stream only (gs_attention_params
n_stream). Copying a prefix from one stream to another (``copy_prefix``) shares a prompt's
KV without evaluating it again. The short sliding-window cache is one stream only.

What the short cache cannot do is go back: once the rows before ``swa_base`` are
dropped, a sequence cut to n tokens can continue only if position n's window is still
held (``can_resume``); otherwise its tokens must be evaluated again (pyinfer.Llama does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .. import backend
from ..config import ModelConfig
from ..tensor import Context, GGMLType, Tensor, row_size

# cache types and their names (ContextSettings.kv_type)
KV_TYPES = {"f16": GGMLType.F16, "f32": GGMLType.F32, "q8_0": GGMLType.Q8_0, "q4_0": GGMLType.Q4_0}


def kv_type_of(name) -> GGMLType:
    """The cache type named `name` ("f16", "f32", "q8_0", "q4_0") or given as a GGMLType."""
    if isinstance(name, GGMLType):
        t = name
    elif isinstance(name, str) and name.lower() in KV_TYPES:
        return KV_TYPES[name.lower()]
    else:
        raise ValueError(f"KV cache type {name!r}: pyinfer keeps it in {', '.join(KV_TYPES)}")
    if t not in KV_TYPES.values():
        raise ValueError(f"KV cache type {t.name}: pyinfer keeps it in {', '.join(KV_TYPES)}")
    return t


def _placed(t: Tensor) -> bool:
    return backend.tensor_backend(t) is not None


def _byte_rows(a: np.ndarray, t: Tensor) -> np.ndarray:
    """The contiguous array `a` of cache tensor t's data viewed (never copied) as uint8
    (rows, t.nb[1])."""
    return np.ndarray((t.ne[1], t.nb[1]), dtype=np.uint8, buffer=a)


@dataclass
class KVCache:
    k: List[Tensor]
    v: List[Tensor]
    n_ctx: int
    swa_rows: int = 0                   # rows of the sliding-window layers (0: n_ctx, no shifting)
    n_swa: int = 0                      # their window
    short: Tuple[bool, ...] = ()        # per layer: holds swa_rows rows
    swa_base: int = 0                   # the position in slot 0 of the short layers
    n_seq: int = 1                      # sequence streams of n_ctx rows each

    @classmethod
    def allocate(cls, cfg: ModelConfig, n_ctx: int, kv_type=GGMLType.F16,
                 swa_rows: Optional[int] = None, n_seq: int = 1) -> "KVCache":
        """Caches for n_ctx positions in `kv_type` (a GGMLType or its name, see KV_TYPES);
        with `swa_rows` (< n_ctx), the sliding-window layers' hold that many rows (at least
        n_swa); `n_seq` streams of n_ctx rows, one per sequence (not with swa_rows)."""
        kv_type = kv_type_of(kv_type)
        if n_seq < 1:
            raise ValueError(f"n_seq_max must be at least 1, got {n_seq}")
        if n_seq > 1 and swa_rows:
            raise ValueError("a short sliding-window cache (swa_full=False) holds one sequence; "
                             "use swa_full=True with n_seq_max > 1")
        kv_dim = cfg.n_head_kv * cfg.head_dim
        if kv_type in (GGMLType.Q8_0, GGMLType.Q4_0) and cfg.head_dim % 32:
            raise ValueError(f"a {kv_type.name} KV cache needs head_dim to be a multiple of its block "
                             f"size 32; this model's is {cfg.head_dim}")
        short = tuple(bool(swa_rows) and cfg.is_swa(i) for i in range(cfg.n_layer))
        if swa_rows and not any(short) or (swa_rows or 0) >= n_ctx:
            swa_rows, short = 0, (False,) * cfg.n_layer
        if swa_rows and swa_rows < cfg.n_swa:
            raise ValueError(f"a sliding-window cache of {swa_rows} rows cannot hold a window of {cfg.n_swa}")
        rows = [swa_rows if s else n_ctx * n_seq for s in short]
        row_bytes = row_size(kv_type, kv_dim)
        ctx = Context(mem_size=2 * sum(row_bytes * r + 1024 for r in rows) + 4096)
        k = [ctx.new_tensor(kv_type, (kv_dim, r), f"cache_k_l{i}") for i, r in enumerate(rows)]
        v = [ctx.new_tensor(kv_type, (kv_dim, r), f"cache_v_l{i}") for i, r in enumerate(rows)]
        cache = cls(k, v, n_ctx, swa_rows or 0, cfg.n_swa if swa_rows else 0, short, n_seq=n_seq)
        cache._ctx = ctx
        return cache

    def first_needed(self, n_past: int) -> int:
        """The first position a token at position n_past attends to in the short layers."""
        return max(0, n_past - self.n_swa + 1)

    def can_resume(self, n_past: int) -> bool:
        """Whether a sequence cut to n_past tokens can continue on this cache."""
        return not self.swa_rows or n_past == 0 or self.first_needed(n_past) >= self.swa_base

    def resume(self, n_past: int) -> None:
        """Continue at position n_past (can_resume checked); an empty sequence starts over."""
        if n_past == 0:
            self.swa_base = 0

    def make_room(self, lo: int, hi: int) -> None:
        """Make the short layers hold positions lo..hi of a batch and the window before lo."""
        if not self.swa_rows:
            return
        need = self.first_needed(lo)
        if need < self.swa_base:
            raise ValueError(f"position {lo} attends to position {need}, which the sliding-window cache "
                             f"no longer holds (it starts at {self.swa_base})")
        if hi - self.swa_base < self.swa_rows:
            return
        if hi - need >= self.swa_rows:
            raise ValueError(f"a batch at positions {lo}..{hi} and its window need {hi - need + 1} rows; "
                             f"the sliding-window cache has {self.swa_rows}")
        shift, keep = need - self.swa_base, self.swa_rows - (need - self.swa_base)
        for i, s in enumerate(self.short):
            if s:
                for t in (self.k[i], self.v[i]):
                    self.write_rows(t, self.read_rows(t, shift + keep)[shift:])
        self.swa_base = need

    def slots(self, layer: int, n_past: int) -> int:
        """How many leading slots of `layer` hold positions [0, n_past)."""
        return n_past - self.swa_base if self.short and self.short[layer] else n_past

    @property
    def n_stream(self) -> int:
        """The attention op's stream length: n_ctx with several sequences, else 0 (one)."""
        return self.n_ctx if self.n_seq > 1 else 0

    def read_rows(self, t: Tensor, n: int, start: int = 0) -> np.ndarray:
        """A host copy of n rows (slots) from `start` of cache tensor t, wherever it lives,
        as raw bytes: uint8 (n, t.nb[1]) whatever the cache type."""
        if _placed(t):
            return _byte_rows(backend.read(t), t)[start:start + n].copy()
        return _byte_rows(t.numpy(), t)[start:start + n].copy()

    def write_rows(self, t: Tensor, rows: np.ndarray, start: int = 0) -> None:
        """Overwrite len(rows) rows (slots) from `start` of cache tensor t, wherever it
        lives: `rows` holds their bytes (uint8 (n, t.nb[1]), as read_rows returns) or values
        of the cache's own dtype (n, row elements)."""
        raw = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), t.nb[1])
        if _placed(t):
            whole = _byte_rows(backend.read(t), t)
            whole[start:start + len(raw)] = raw
            backend.write(t, whole)
        else:
            _byte_rows(t.numpy(), t)[start:start + len(raw)] = raw

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make sequence dst's first n positions those of sequence src (every layer's K and
        V rows copied between their streams): a shared prompt prefix without evaluating it."""
        if not (0 <= src < self.n_seq and 0 <= dst < self.n_seq and 0 <= n <= self.n_ctx):
            raise ValueError(f"copy_prefix({src}, {dst}, {n}): the cache holds {self.n_seq} sequences "
                             f"of {self.n_ctx} positions")
        if src == dst or n == 0:
            return
        for t in self.k + self.v:
            self.write_rows(t, self.read_rows(t, n, src * self.n_ctx), dst * self.n_ctx)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)

    def close(self) -> None:
        self._ctx.close()
