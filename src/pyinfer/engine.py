"""The dense inference engine: a loaded model, its KV cache and forward graphs.

``Engine.decode(tokens)`` appends tokens to the sequence, running the prompt
in chunks of ``n_batch`` through the batched (GEMM) path and single tokens
through a cached decode graph: one C call per forward, Python only writes
token ids and positions.

Lifetime: every C computation and every change of the cache runs under the
engine's lock, which `close()` takes too: closing waits for the forward pass
in flight, then frees, and any later call raises `LlamaClosedError`. Results
are copies, never views of memory that `close()` frees. `call_lock.CallLock`
serialises whole calls of one `Llama` across threads.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Sequence, Union

import numpy as np

from .call_lock import LlamaClosedError
from .config import ContextSettings, ModelConfig
from .gguf_model import GGUFFile
from .backend import Backend
from .model.llama import ForwardGraph, KVCache, LlamaWeights
from .offload.execute import attach_hybrid, place_plan, unplace_all
from .model.sparse import make_ffn, predictor_threshold
from .offload import plan_for_engine
from .tensor import Context, ThreadPool

MAX_CACHED_GRAPHS = 4


def default_threads() -> int:
    """One thread per core this process may run on (llama.cpp's default is similar)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Engine:
    def __init__(self, path: Union[str, GGUFFile], settings: ContextSettings):
        """`path`: a GGUF path, or a GGUFFile already opened (its metadata read once)."""
        t0 = time.perf_counter()
        self.file = path if isinstance(path, GGUFFile) else GGUFFile(path)
        md = {**self.file.metadata, **settings.kv_overrides}
        self.cfg = ModelConfig.from_metadata(md, n_vocab=self._vocab_size())
        self.cfg.apply_rope_settings(settings)
        self.settings = settings
        n_ctx = settings.n_ctx or self.cfg.n_ctx_train
        self.n_ctx = n_ctx
        self.n_batch = max(1, min(settings.n_batch, n_ctx))
        self.n_threads = settings.n_threads or default_threads()
        self.n_threads_batch = settings.n_threads_batch or self.n_threads
        n_weights = len(self.file.tensors)
        self._wctx = Context(mem_size=(n_weights + 16) * 512, no_alloc=True)
        self.weights = LlamaWeights.from_gguf(self.file, self.cfg, self._wctx, settings.repack_weights)
        self.ffn, self.ffn_mode = make_ffn(self.cfg, self.weights, md, settings.sparse_threshold,
                                           settings.dense, settings.neuron_bundle, self.file)
        # swa_full=False: the sliding-window layers cache the window plus a batch (llama.cpp's
        # n_swa + n_ubatch), not n_ctx positions
        swa_rows = None if settings.swa_full or not self.cfg.n_swa else self.cfg.n_swa + self.n_batch
        self.kv = KVCache.allocate(self.cfg, n_ctx, settings.kv_type, swa_rows)
        # GPU placement (vram_budget / n_gpu_layers): planned and reported, None without them;
        # carried out on an explicitly given device backend (pyinfer.backend: the stand-in)
        self.device = settings.extra.get("offload_device")
        self.offload_plan = plan_for_engine(self, settings.extra.get("vram_budget"),
                                            settings.extra.get("n_gpu_layers", 0), self.device)
        self.placement, self._backends, self._hot = None, None, None
        if self.device is not None and self.offload_plan is not None:
            self.placement = place_plan(self.offload_plan, self.weights, self.kv, self.device,
                                        self._wctx, self.file)
            self._backends = [Backend.cpu(), self.device]
            sparse = self.ffn is not None and not settings.dense and self.file.is_powerinfer
            ffn, self._hot = attach_hybrid(self, predictor_threshold(md, settings.sparse_threshold)
                                           if sparse else None)
            if ffn is not None:
                self.ffn = ffn
                self.ffn_mode += f"; hybrid: {sum(len(s.hot) for s in self.offload_plan.slices)} hot neurons on " \
                                 f"the {self.device.name} device"
        self.pool = ThreadPool(max(self.n_threads, self.n_threads_batch))
        self._graphs: "OrderedDict[tuple, ForwardGraph]" = OrderedDict()
        self.n_past = 0
        self._lock = threading.Lock()   # held by every computation, cache change and close()
        self.closed = False
        self.load_time = time.perf_counter() - t0

    def _vocab_size(self) -> int:
        emb = self.file.get("token_embd.weight")
        return emb.ne[1] if emb is not None else 0

    # ---- graphs ----
    def _graph(self, n_tokens: int, n_outputs: int, embeddings: bool = False) -> ForwardGraph:
        key = (n_tokens, n_outputs, embeddings)
        g = self._graphs.get(key)
        if g is None:
            if self._backends:
                # the device's memory holds one graph's intermediates (the plan reserved that)
                while self._graphs:
                    self._graphs.popitem()[1].close()
            # as llama.cpp: single-token decode on n_threads, batches on n_threads_batch
            threads = self.n_threads if n_tokens == 1 else self.n_threads_batch
            g = ForwardGraph(self.cfg, self.weights, self.kv, n_tokens, n_outputs,
                             threads, embeddings, self.ffn, self._backends)
            self._graphs[key] = g
            if len(self._graphs) > MAX_CACHED_GRAPHS:
                _, old = self._graphs.popitem(last=False)
                old.close()
        else:
            self._graphs.move_to_end(key)
        return g

    def forward(self, tokens: Sequence[int], n_outputs: int = 1, embeddings: bool = False) -> np.ndarray:
        """Run `tokens` (at most n_batch) at positions n_past.. and return (a copy of) the
        last `n_outputs` rows of logits (or hidden states). Advances n_past."""
        with self._lock:
            return self._forward(tokens, n_outputs, embeddings).copy()

    def _forward(self, tokens: Sequence[int], n_outputs: int, embeddings: bool) -> np.ndarray:
        """forward() under the lock (the caller holds it); the result is the graph's output
        view, valid until the lock is released."""
        self._require_open()
        n = len(tokens)
        if n == 0:
            raise ValueError("forward: no tokens")
        if self.n_past + n > self.n_ctx:
            raise ValueError(f"Requested tokens ({self.n_past + n}) exceed context window of {self.n_ctx}")
        g = self._graph(n, min(n_outputs, n), embeddings)
        g.tokens[:] = tokens
        g.pos[:] = np.arange(self.n_past, self.n_past + n, dtype=np.int32)
        g.run(self.pool)
        self.n_past += n
        return g.out

    def decode(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Append tokens in n_batch chunks; logits of the last token, or of all
        tokens (n, n_vocab) with logits_all. The lock is taken per chunk, so close()
        waits for one chunk, not the whole prompt."""
        tokens = list(tokens)
        n_vocab = self.cfg.n_vocab
        if logits_all:
            out = np.empty((len(tokens), n_vocab), dtype=np.float32)
        last = None
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            with self._lock:
                logits = self._forward(chunk, len(chunk) if logits_all else 1, False)
                if logits_all:
                    out[i:i + len(chunk)] = logits
                else:
                    last = logits[-1].copy()
        return out if logits_all else last

    def can_resume(self, n_past: int) -> bool:
        """Whether the cache, cut to n_past tokens, can go on: always, except in a short
        sliding-window cache (swa_full=False) that has dropped the window of position n_past."""
        return 0 <= n_past <= self.n_past and self.kv.can_resume(n_past)

    def truncate(self, n_past: int) -> None:
        """Forget cached positions >= n_past (they are overwritten when reused)."""
        with self._lock:
            self._require_open()
            if not 0 <= n_past <= self.n_past:
                raise ValueError(f"cannot truncate to {n_past} tokens: the cache holds {self.n_past}")
            if not self.kv.can_resume(n_past):
                raise ValueError(f"cannot truncate to {n_past} tokens: the sliding-window cache no longer "
                                 f"holds position {self.kv.first_needed(n_past)} (swa_full=False); "
                                 "evaluate the tokens again")
            self.kv.resume(n_past)
            self.n_past = n_past

    @contextmanager
    def locked(self) -> Iterator["Engine"]:
        """Hold the lock to read or write the KV cache directly (state save / load);
        raises LlamaClosedError after close()."""
        with self._lock:
            self._require_open()
            yield self

    def release_batch_graphs(self) -> int:
        """Close the cached graphs of more than one token (prompt batches: their scratch is the
        big part of a long prompt's memory); they are rebuilt when needed. Returns how many."""
        with self._lock:
            if self.closed:
                return 0
            big = [key for key in self._graphs if key[0] > 1]
            for key in big:
                self._graphs.pop(key).close()
        return len(big)

    def _require_open(self) -> None:
        if self.closed:
            raise LlamaClosedError()

    def validate_tokens(self, tokens: Sequence[int]) -> None:
        bad = [t for t in tokens if not 0 <= t < self.cfg.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for a vocabulary of {self.cfg.n_vocab}")

    def close(self) -> None:
        """Wait for the forward pass in flight, then free the graphs, threads, KV cache and
        weights context (idempotent); later calls raise LlamaClosedError."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for g in self._graphs.values():
                g.close()
            self._graphs.clear()
            if self._hot is not None:
                self._hot.release()
            if self.placement is not None:
                unplace_all(self.placement, self.weights, self.kv)
            self.pool.close()
            self.kv.close()
            self._wctx.close()
