"""The dense inference engine: a loaded model, its KV cache and forward graphs.

``Engine.decode(tokens)`` appends tokens to the sequence, running the prompt
in chunks of ``n_batch`` through the batched (GEMM) path and single tokens
through a cached decode graph: one C call per forward, Python only writes
token ids and positions.

Several sequences (``n_seq_max`` > 1): the KV cache holds one stream of n_ctx
positions per sequence id, ``decode(tokens, seq=s)`` appends to sequence s, and
``decode_batch`` runs tokens of several sequences in one graph, so N decoding
sequences cost one batched product instead of N matrix-vector passes. A
sequence's results do not depend on what else is in the batch: the matrix
kernels share one accumulation order between one row and many, and the
attention op computes each stream as a cache of its own (gs_attention n_stream),
so its logits are bit-identical alone or batched. Truncation, removal and prefix
copies are cache operations (``truncate``, ``copy_prefix``).

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
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np

from .call_lock import LlamaClosedError
from .config import ContextSettings, ModelConfig
from .gguf_model import GGUFFile
from .backend import Backend
from .model.llama import ForwardGraph, KVCache, LlamaWeights
from .offload.execute import attach_experts, attach_hybrid, place_plan, unplace_all
from .model.sparse import make_ffn, predictor_threshold
from .offload import plan_for_engine
from .tensor import Context, ThreadPool

MAX_CACHED_GRAPHS = 4       # prompt-sized graphs kept
SMALL_GRAPH_TOKENS = 16     # graphs of at most this many tokens are "small" ...
MAX_SMALL_GRAPHS = 16       # ... and this many of them are kept


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
        self.n_seq = settings.n_seq_max
        if not isinstance(self.n_seq, int) or self.n_seq < 1:
            raise ValueError(f"n_seq_max must be a positive integer, got {self.n_seq!r}")
        # swa_full=False: the sliding-window layers cache the window plus a batch (llama.cpp's
        # n_swa + n_ubatch), not n_ctx positions (one sequence only)
        swa_rows = None if settings.swa_full or not self.cfg.n_swa or self.n_seq > 1 \
            else self.cfg.n_swa + self.n_batch
        self.kv = KVCache.allocate(self.cfg, n_ctx, settings.kv_type, swa_rows, self.n_seq)
        # GPU placement (vram_budget / n_gpu_layers): planned and reported, None without them;
        # carried out on an explicitly given device backend (pyinfer.backend: the stand-in)
        self.device = settings.extra.get("offload_device")
        self.offload_plan = plan_for_engine(self, settings.extra.get("vram_budget"),
                                            settings.extra.get("n_gpu_layers", 0), self.device)
        self.placement, self._backends, self._hot = None, None, None
        # called as hook(forward_graph) after every forward, under the lock (the expert cache)
        self.forward_hooks: list = []
        self.expert_slots, self.expert_cache = None, None
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
            ffn, self.expert_slots, self.expert_cache = attach_experts(self)
            if ffn is not None:
                self.ffn = ffn
                self.ffn_mode = (self.ffn_mode + "; " if self.ffn_mode else "") + "hybrid MoE: " \
                    f"{sum(e.n_slots for e in self.offload_plan.experts)} expert slots on the {self.device.name} device"
        self.pool = ThreadPool(max(self.n_threads, self.n_threads_batch))
        self._graphs: "OrderedDict[tuple, ForwardGraph]" = OrderedDict()
        self.seq_pos = [0] * self.n_seq   # per sequence: the positions its stream holds
        self._last_graph: "ForwardGraph | None" = None
        self._lock = threading.Lock()   # held by every computation, cache change and close()
        self.closed = False
        self.load_time = time.perf_counter() - t0

    def _vocab_size(self) -> int:
        emb = self.file.get("token_embd.weight")
        return emb.ne[1] if emb is not None else 0

    @property
    def n_past(self) -> int:
        """Tokens sequence 0 holds (the one sequence of a single-sequence engine)."""
        return self.seq_pos[0]

    def _seq(self, seq: int) -> int:
        if not (isinstance(seq, (int, np.integer)) and 0 <= seq < self.n_seq):
            raise ValueError(f"sequence id {seq!r} is outside 0..{self.n_seq - 1} (n_seq_max={self.n_seq})")
        return int(seq)

    # ---- graphs ----
    def _graph(self, n_tokens: int, n_outputs: int, embeddings: bool = False,
               rowwise: bool = False) -> ForwardGraph:
        key = (n_tokens, n_outputs, embeddings, rowwise)
        g = self._graphs.get(key)
        if g is None:
            if self._backends:
                # the device's memory holds one graph's intermediates (the plan reserved that)
                while self._graphs:
                    self._close_graph(self._graphs.popitem()[1])
            # as llama.cpp: single-token decode on n_threads, batches on n_threads_batch
            threads = self.n_threads if n_tokens == 1 else self.n_threads_batch
            g = ForwardGraph(self.cfg, self.weights, self.kv, n_tokens, n_outputs,
                             threads, embeddings, self.ffn, self._backends, rowwise)
            self._graphs[key] = g
            # small graphs (decode batches of several sequences, speculative verifications:
            # one per size in use, cheap) and the others (prompt chunks) are kept apart, the
            # least recently used of a kind closed when that kind is over its count
            small = n_tokens <= SMALL_GRAPH_TOKENS
            same = [k for k in self._graphs if (k[0] <= SMALL_GRAPH_TOKENS) == small]
            if len(same) > (MAX_SMALL_GRAPHS if small else MAX_CACHED_GRAPHS):
                self._close_graph(self._graphs.pop(same[0]))
        else:
            self._graphs.move_to_end(key)
        return g

    def _close_graph(self, g: ForwardGraph) -> None:
        if g is self._last_graph:
            self._last_graph = None
        g.close()

    def forward(self, tokens: Sequence[int], n_outputs: int = 1, embeddings: bool = False,
                seq: int = 0) -> np.ndarray:
        """Run `tokens` (at most n_batch) at sequence `seq`'s next positions and return (a copy
        of) the last `n_outputs` rows of logits (or hidden states). Advances the sequence."""
        with self._lock:
            return self._run([(self._seq(seq), tokens)], n_outputs, embeddings).copy()

    def _run(self, items, n_outputs: int, embeddings: bool, rowwise: bool = False) -> np.ndarray:
        """One graph over the tokens of items [(seq, tokens), ...] (distinct sequences, each at
        its next positions), under the lock (the caller holds it); the last n_outputs rows of
        the output, a view valid until the lock is released."""
        self._require_open()
        n = sum(len(t) for _, t in items)
        if n == 0:
            raise ValueError("forward: no tokens")
        if n > self.n_batch and len(items) > 1:
            raise ValueError(f"a batch of {n} tokens exceeds n_batch={self.n_batch}")
        for seq, toks in items:
            end = self.seq_pos[seq] + len(toks)
            if end > self.n_ctx:
                raise ValueError(f"Requested tokens ({end}) exceed context window of {self.n_ctx}")
        # decode_batch: rowwise (each token computed as when it is decoded alone); prompt
        # chunks of one sequence: llama.cpp's batched order
        g = self._graph(n, min(n_outputs, n), embeddings, rowwise)
        i = 0
        for seq, toks in items:
            k, p0 = len(toks), self.seq_pos[seq]
            g.tokens[i:i + k] = toks
            g.pos[i:i + k] = np.arange(p0, p0 + k, dtype=np.int32)
            if self.n_seq > 1:
                g.slots[i:i + k] = g.pos[i:i + k] + seq * self.n_ctx
            i += k
        g.run(self.pool)
        self._last_graph = g
        for hook in self.forward_hooks:
            hook(g)
        for seq, toks in items:
            self.seq_pos[seq] += len(toks)
        return g.out

    def decode_batch(self, items: Sequence[Tuple[int, Sequence[int]]]) -> List[np.ndarray]:
        """Append tokens to several sequences in one forward: items [(seq, tokens), ...] with
        distinct sequence ids, n_batch tokens at most in all. Returns each item's logits for
        all its tokens ((len(tokens), n_vocab) copies), in the order given.

        Every token is computed exactly as when it is decoded alone (`decode([t])`: rowwise
        products, gs_attention rowwise), so its logits are bit-identical to plain decoding:
        sequences batched together, or draft tokens verified at once, change no result."""
        items = [(self._seq(s), [int(t) for t in toks]) for s, toks in items]
        if len({s for s, _ in items}) != len(items):
            raise ValueError("decode_batch: a sequence id appears twice in one batch")
        for _, toks in items:
            self.validate_tokens(toks)
        n = sum(len(t) for _, t in items)
        with self._lock:
            out = self._run(items, n, False, rowwise=True)
            res, i = [], 0
            for _, toks in items:
                res.append(out[i:i + len(toks)].copy())
                i += len(toks)
        return res

    def decode(self, tokens: Sequence[int], logits_all: bool = False, seq: int = 0) -> np.ndarray:
        """Append tokens to sequence `seq` in n_batch chunks; logits of the last token, or of
        all tokens (n, n_vocab) with logits_all. The lock is taken per chunk, so close()
        waits for one chunk, not the whole prompt."""
        seq = self._seq(seq)
        tokens = list(tokens)
        n_vocab = self.cfg.n_vocab
        if logits_all:
            out = np.empty((len(tokens), n_vocab), dtype=np.float32)
        last = None
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            with self._lock:
                logits = self._run([(seq, chunk)], len(chunk) if logits_all else 1, False)
                if logits_all:
                    out[i:i + len(chunk)] = logits
                else:
                    last = logits[-1].copy()
        return out if logits_all else last

    def routing(self) -> dict:
        """MoE models: layer -> the experts the tokens of the last forward chose, int32
        (n_tokens, k) copies (row t: token t's ids by descending router probability; in the
        last layer only the rows whose outputs were kept). {} for dense models."""
        from .model.moe import routing_ids
        with self._lock:
            if self._last_graph is None or self.cfg.n_expert == 0:
                return {}
            return {layer: ids.copy() for layer, ids in routing_ids(self._last_graph.graph).items()}

    def can_resume(self, n_past: int, seq: int = 0) -> bool:
        """Whether sequence `seq`, cut to n_past tokens, can go on: always, except in a short
        sliding-window cache (swa_full=False) that has dropped the window of position n_past."""
        return 0 <= n_past <= self.seq_pos[self._seq(seq)] and self.kv.can_resume(n_past)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make sequence dst hold sequence src's first n positions (their K and V rows copied
        in the cache: llama.cpp's seq_cp for a shared prompt prefix), replacing dst's."""
        src, dst = self._seq(src), self._seq(dst)
        with self._lock:
            self._require_open()
            if not 0 <= n <= self.seq_pos[src]:
                raise ValueError(f"cannot copy {n} positions: sequence {src} holds {self.seq_pos[src]}")
            self.kv.copy_prefix(src, dst, n)
            self.seq_pos[dst] = n

    def truncate(self, n_past: int, seq: int = 0) -> None:
        """Forget sequence `seq`'s positions >= n_past (llama.cpp's seq_rm; the rows are
        overwritten when reused). truncate(0, s) removes sequence s."""
        seq = self._seq(seq)
        with self._lock:
            self._require_open()
            if not 0 <= n_past <= self.seq_pos[seq]:
                raise ValueError(f"cannot truncate to {n_past} tokens: the cache holds {self.seq_pos[seq]}")
            if not self.kv.can_resume(n_past):
                raise ValueError(f"cannot truncate to {n_past} tokens: the sliding-window cache no longer "
                                 f"holds position {self.kv.first_needed(n_past)} (swa_full=False); "
                                 "evaluate the tokens again")
            self.kv.resume(n_past)
            self.seq_pos[seq] = n_past

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
                self._close_graph(self._graphs.pop(key))
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
            self._last_graph = None
            for g in self._graphs.values():
                g.close()
            self._graphs.clear()
            if self._hot is not None:
                self._hot.release()
            if self.expert_slots is not None:
                self.expert_slots.release()
            if self.placement is not None:
                unplace_all(self.placement, self.weights, self.kv)
            self.pool.close()
            self.kv.close()
            self._wctx.close()
