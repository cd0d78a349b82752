"""The KV cache: per layer, K and V rows {n_head_kv * head_dim} indexed by slot.

A global layer's slot is the token's position (n_ctx rows). With ``swa_rows``, the
sliding-window layers keep only ``swa_rows`` rows (llama.cpp's ``swa_full=False``: the
window plus a batch, n_swa + n_batch): slot = position - ``swa_base``. Before a batch at
positions lo..hi runs, ``make_room`` moves the rows the window still needs (positions
lo - n_swa + 1 and later) to the front when hi would not fit, and raises ``swa_base``.
Attention reads slots, and a window is relative, so the layer's attention is unchanged:
only rows no query can see again are dropped. RoPE has already turned the cached keys
by their positions.

What the short cache cannot do is go back: once the rows before ``swa_base`` are
dropped, a sequence cut to n tokens can continue only if position n's window is still
held (``can_resume``); otherwise its tokens must be evaluated again (pyinfer.Llama does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..config import ModelConfig
from ..tensor import Context, GGMLType, Tensor


@dataclass
class KVCache:
    k: List[Tensor]
    v: List[Tensor]
    n_ctx: int
    swa_rows: int = 0                   # rows of the sliding-window layers (0: n_ctx, no shifting)
    n_swa: int = 0                      # their window
    short: Tuple[bool, ...] = ()        # per layer: holds swa_rows rows
    swa_base: int = 0                   # the position in slot 0 of the short layers

    @classmethod
    def allocate(cls, cfg: ModelConfig, n_ctx: int, kv_type: GGMLType = GGMLType.F16,
                 swa_rows: Optional[int] = None) -> "KVCache":
        """Caches for n_ctx positions; with `swa_rows` (< n_ctx), the sliding-window layers'
        hold that many rows (at least n_swa)."""
        kv_dim = cfg.n_head_kv * cfg.head_dim
        short = tuple(bool(swa_rows) and cfg.is_swa(i) for i in range(cfg.n_layer))
        if swa_rows and not any(short) or (swa_rows or 0) >= n_ctx:
            swa_rows, short = 0, (False,) * cfg.n_layer
        if swa_rows and swa_rows < cfg.n_swa:
            raise ValueError(f"a sliding-window cache of {swa_rows} rows cannot hold a window of {cfg.n_swa}")
        rows = [swa_rows if s else n_ctx for s in short]
        row_bytes = kv_dim * (2 if kv_type == GGMLType.F16 else 4)
        ctx = Context(mem_size=2 * sum(row_bytes * r + 1024 for r in rows) + 4096)
        k = [ctx.new_tensor(kv_type, (kv_dim, r), f"cache_k_l{i}") for i, r in enumerate(rows)]
        v = [ctx.new_tensor(kv_type, (kv_dim, r), f"cache_v_l{i}") for i, r in enumerate(rows)]
        cache = cls(k, v, n_ctx, swa_rows or 0, cfg.n_swa if swa_rows else 0, short)
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
                    rows = t.numpy()
                    rows[:keep] = rows[shift:shift + keep].copy()
        self.swa_base = need

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)

    def close(self) -> None:
        self._ctx.close()
