"""Saved sequence states (`Llama.save_state` / `load_state`) and a RAM cache of them.

A state holds the evaluated token ids, the logits kept for them and the KV cache rows of
those positions, serialized as:

    header  "PYKV", version, n_layer, K row bytes, V row bytes, n_tokens, swa_rows, swa_base
            (8 x u32, LE; swa_rows 0 unless the sliding-window layers have a short cache)
    then per layer: K rows then V rows of its slots [0, n), raw bytes of the cache's type
    (F16, or Q8_0 / Q4_0 blocks with type_k/type_v; the row bytes tell them apart): n =
    n_tokens, or n_tokens - swa_base in a short sliding-window cache (model/kv_cache.py).

`LlamaRAMCache` maps token sequences to states as llama-cpp-python's does: a lookup returns
the state whose key shares the longest prefix with the query, and the least recently used
states are dropped beyond `capacity_bytes`.
"""
from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import numpy as np

_KV_MAGIC = b"PYKV"
_KV_VERSION = 2
_KV_HEADER = struct.Struct("<4sIIIIIII")


class LlamaState:
    """input_ids: (n_ctx,) intc, the evaluated ids in [:n_tokens]; scores: float32 logits
    rows (all evaluated positions with logits_all, else the last one); llama_state: the KV
    cache bytes (format above); seed: the sampling seed at save time; sequence: the saving
    Llama's name for this sequence (call_lock.CallLock), so that a stream set aside by
    save_state knows its sequence when the state is loaded back."""

    def __init__(self, input_ids: np.ndarray, scores: np.ndarray, n_tokens: int,
                 llama_state: bytes, llama_state_size: int, seed: int,
                 sequence: Optional[object] = None):
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed
        self.sequence = sequence


def kv_state_bytes(engine, n_tokens: int, seq: int = 0) -> bytes:
    """Serialize the KV cache rows of sequence `seq`'s positions [0, n_tokens) (under the
    engine's lock: the rows are read from memory that close() frees)."""
    with engine.locked():
        kv = engine.kv
        if not kv.can_resume(n_tokens):
            raise RuntimeError(f"the sliding-window cache no longer holds the window of position "
                               f"{n_tokens} (swa_full=False): its state cannot be saved")
        head = _KV_HEADER.pack(_KV_MAGIC, _KV_VERSION, len(kv.k), kv.k[0].nb[1], kv.v[0].nb[1],
                               n_tokens, kv.swa_rows, kv.swa_base if n_tokens else 0)
        parts = [head]
        for i, (k, v) in enumerate(zip(kv.k, kv.v)):
            for t in (k, v):
                parts.append(kv.read_rows(t, kv.slots(i, n_tokens), seq * kv.n_ctx).tobytes())
        return b"".join(parts)


def restore_kv_state(engine, data: bytes, seq: int = 0) -> int:
    """Write serialized rows back into sequence `seq`'s rows of the engine's KV cache;
    returns their token count."""
    with engine.locked():
        return _restore_kv_rows(engine, data, seq)


def _restore_kv_rows(engine, data: bytes, seq: int) -> int:
    kv = engine.kv
    if len(data) < _KV_HEADER.size:
        raise RuntimeError("Failed to set llama state data: the state is truncated")
    magic, version, n_layer, k_row, v_row, n_tokens, swa_rows, swa_base = _KV_HEADER.unpack_from(data)
    expect = (_KV_MAGIC, _KV_VERSION, len(kv.k), kv.k[0].nb[1], kv.v[0].nb[1], kv.swa_rows)
    if (magic, version, n_layer, k_row, v_row, swa_rows) != expect:
        raise RuntimeError("Failed to set llama state data: the state was saved from a "
                           "different model or context")
    if n_tokens > kv.n_ctx or swa_base > n_tokens or (swa_rows and n_tokens - swa_base > swa_rows):
        raise RuntimeError(f"Failed to set llama state data: {n_tokens} tokens do not fit a "
                           f"context of {kv.n_ctx}")
    n_rows = sum(n_tokens - swa_base if s else n_tokens for s in (kv.short or (False,) * n_layer))
    if len(data) != _KV_HEADER.size + n_rows * (k_row + v_row):
        raise RuntimeError("Failed to set llama state data: wrong size")
    kv.swa_base = swa_base
    off = _KV_HEADER.size
    for i, (k, v) in enumerate(zip(kv.k, kv.v)):
        for t, row in ((k, k_row), (v, v_row)):
            n = kv.slots(i, n_tokens)
            rows = np.frombuffer(data, dtype=np.uint8, count=n * row, offset=off).reshape(n, row)
            kv.write_rows(t, rows, seq * kv.n_ctx)
            off += n * row
    engine.seq_pos[seq] = n_tokens
    return n_tokens


class BaseLlamaCache:
    """A token-sequence -> LlamaState map bounded in bytes."""

    def __init__(self, capacity_bytes: int = (2 << 30)):
        self.capacity_bytes = capacity_bytes

    @property
    def cache_size(self) -> int:
        raise NotImplementedError

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        raise NotImplementedError

    def __contains__(self, key: Sequence[int]) -> bool:
        raise NotImplementedError

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        raise NotImplementedError


class LlamaRAMCache(BaseLlamaCache):
    """States kept in memory, least recently used dropped first. Safe to share between
    Llamas used from several threads (one lock around each lookup and insertion)."""

    def __init__(self, capacity_bytes: int = (2 << 30)):
        super().__init__(capacity_bytes)
        self.cache_state: "OrderedDict[Tuple[int, ...], LlamaState]" = OrderedDict()
        self._lock = threading.RLock()

    @property
    def cache_size(self) -> int:
        with self._lock:
            return sum(state.llama_state_size for state in self.cache_state.values())

    def _find_longest_prefix_key(self, key: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
        best, best_len = None, 0
        for k in self.cache_state:
            n = longest_token_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        with self._lock:
            k = self._find_longest_prefix_key(tuple(key))
            if k is None:
                raise KeyError("Key not found")
            self.cache_state.move_to_end(k)
            return self.cache_state[k]

    def __contains__(self, key: Sequence[int]) -> bool:
        with self._lock:
            return self._find_longest_prefix_key(tuple(key)) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        key = tuple(key)
        with self._lock:
            self.cache_state.pop(key, None)
            self.cache_state[key] = value
            while self.cache_size > self.capacity_bytes and len(self.cache_state) > 0:
                self.cache_state.popitem(last=False)


LlamaCache = LlamaRAMCache


def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading positions where a and b hold the same token."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
