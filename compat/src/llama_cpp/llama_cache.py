"""llama-cpp-python's prompt caches: pyinfer's `LlamaRAMCache` (alias `LlamaCache`), and
`LlamaDiskCache`, the same longest-prefix map kept in a `diskcache` directory.

    llm.set_cache(LlamaDiskCache(cache_dir=".cache/llama_cache"))
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from pyinfer.llama_cache import (  # noqa: F401 (re-exported)
    BaseLlamaCache,
    LlamaCache,
    LlamaRAMCache,
    LlamaState,
    longest_token_prefix,
)


class LlamaDiskCache(BaseLlamaCache):
    """States pickled into a diskcache.Cache at `cache_dir` (the `diskcache` package is
    needed); a lookup returns the state whose key shares the longest prefix with the query
    and marks it most recently used; beyond `capacity_bytes` on disk the least recently used
    states go."""

    def __init__(self, cache_dir: str = ".cache/llama_cache", capacity_bytes: int = (2 << 30)):
        super().__init__(capacity_bytes)
        try:
            import diskcache
        except ImportError:
            raise ImportError("LlamaDiskCache keeps its states with the `diskcache` package: "
                              "pip install diskcache") from None
        self.cache = diskcache.Cache(cache_dir)

    @property
    def cache_size(self) -> int:
        return int(self.cache.volume())

    def _find_longest_prefix_key(self, key: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
        best, best_len = None, 0
        for k in self.cache.iterkeys():
            n = longest_token_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        k = self._find_longest_prefix_key(tuple(key))
        if k is None:
            raise KeyError("Key not found")
        value: LlamaState = self.cache.pop(k)
        self.cache[k] = value           # re-inserted: now the most recently used
        return value

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(key)) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        key = tuple(key)
        if key in self.cache:
            del self.cache[key]
        self.cache[key] = value
        while self.cache_size > self.capacity_bytes and len(self.cache) > 0:
            oldest, _ = self.cache.peekitem(last=False)
            del self.cache[oldest]


__all__ = ["BaseLlamaCache", "LlamaCache", "LlamaDiskCache", "LlamaRAMCache"]
