"""One sequence of a loaded model: its tokens, the KV positions it holds, its logits.

A `Sequence` alone owns that state. `Llama` keeps one (sequence 0) and shows it as
llama-cpp-python's `input_ids` / `scores` / `n_tokens`; a server with parallel slots keeps
one per slot, on the streams of one multi-sequence engine (`Llama(n_seq_max=N)`,
`llama.sequence(i)`). Evaluation goes through a *runner*, `runner(seq_id, tokens,
logits_all) -> logits`: by default the engine's own `decode`; a continuous-batching
scheduler passes one that merges the single-token evaluations of all its sequences into
one batched forward (`Engine.decode_batch`, whose results are bit-identical to decoding
alone).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence as Seq

import numpy as np

from .call_lock import CallLock
from .llama_cache import LlamaState, kv_state_bytes, restore_kv_state

# runner(seq_id, tokens, logits_all, rowwise=False) -> the last token's logits (n_vocab,), or
# all (n, n_vocab) with logits_all; rowwise: every token computed exactly as when decoded
# alone (Engine.decode_batch: speculative verification), else the prompt order (Engine.decode)
Runner = Callable[..., np.ndarray]


class Sequence:
    """Tokens (`input_ids[:n_tokens]`), their logits and the KV positions of one sequence.

    `scores` keeps every evaluated token's logits with `logits_all`, else only the last
    batch's; `logits` is the last evaluated token's. `calls` serialises the calls that use
    this sequence (pyinfer.call_lock)."""

    def __init__(self, engine, seq_id: int, n_ctx: int, n_vocab: int, n_batch: int,
                 logits_all: bool = False, runner: Optional[Runner] = None):
        self.engine, self.seq_id = engine, seq_id
        self.n_ctx, self.n_vocab, self.n_batch = n_ctx, n_vocab, n_batch
        self.logits_all = logits_all
        self.runner: Runner = runner or self._decode
        self.calls = CallLock()
        self.n_tokens = 0
        self.requires_eval = True
        self.input_ids = np.zeros((n_ctx,), dtype=np.intc)
        self.scores = np.zeros((n_ctx if logits_all else n_batch, n_vocab), dtype=np.single)
        self.logits: Optional[np.ndarray] = None    # after the last evaluated token
        self.sampler = None                         # the sampler of the generation under way

    def _decode(self, seq_id: int, tokens: List[int], logits_all: bool, rowwise: bool = False) -> np.ndarray:
        if rowwise and len(tokens) > 1:
            rows = self.engine.decode_batch([(seq_id, tokens)])[0]
            return rows if logits_all else rows[-1]
        return self.engine.decode(tokens, logits_all=logits_all, seq=seq_id)

    @property
    def tokens(self) -> List[int]:
        return self.input_ids[:self.n_tokens].tolist()

    def _require_engine(self):
        if self.engine is None:
            raise RuntimeError("this Llama was loaded with vocab_only=True: it has no weights "
                               "to evaluate")
        return self.engine

    def sync(self) -> None:
        """Make the KV cache hold exactly this sequence's n_tokens positions: cut what the
        cache holds beyond (a caller may have lowered n_tokens), or evaluate again what a
        short sliding-window cache can no longer resume from."""
        eng = self._require_engine()
        held = eng.seq_pos[self.seq_id]
        if held == self.n_tokens:
            return
        n_keep = min(self.n_tokens, held)
        if eng.can_resume(n_keep, self.seq_id):
            eng.truncate(n_keep, self.seq_id)
        else:
            eng.truncate(0, self.seq_id)
            if n_keep:
                self.runner(self.seq_id, self.input_ids[:n_keep].tolist(), False)
        if eng.seq_pos[self.seq_id] != self.n_tokens:
            raise RuntimeError(f"the KV cache holds {eng.seq_pos[self.seq_id]} tokens, the sequence "
                               f"{self.n_tokens}: restore a saved state to continue")

    def eval(self, tokens: Seq[int], rowwise: bool = False) -> None:
        """Append `tokens` in n_batch chunks, keeping their logits; `rowwise`: each token's
        logits exactly those of decoding it alone (a speculative draft being verified)."""
        eng = self._require_engine()
        tokens = [int(t) for t in tokens]
        self.calls.sequence = object()
        self.sync()
        if not tokens:
            return
        n_end = self.n_tokens + len(tokens)
        if n_end > self.n_ctx:
            raise ValueError(f"Requested tokens ({n_end}) exceed context window of {self.n_ctx}")
        eng.validate_tokens(tokens)
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            n_past = self.n_tokens
            out = self.runner(self.seq_id, chunk, self.logits_all, rowwise=True) if rowwise \
                else self.runner(self.seq_id, chunk, self.logits_all)
            self.input_ids[n_past:n_past + len(chunk)] = chunk
            if self.logits_all:
                self.scores[n_past:n_past + len(chunk), :] = out
                self.logits = self.scores[n_past + len(chunk) - 1]
            else:
                self.logits = out
            self.n_tokens += len(chunk)
            self.requires_eval = False

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (the cache rows beyond are dropped at the next eval); the
        logits of the last kept token must be evaluated again unless n is all of them."""
        if not 0 <= n <= self.n_tokens:
            raise ValueError(f"cannot truncate to {n} tokens: the sequence holds {self.n_tokens}")
        if n < self.n_tokens:
            self.calls.sequence = object()
            self.n_tokens = n
            self.requires_eval = True

    def reset(self) -> None:
        """Forget the evaluated tokens (the cache is overwritten from position 0)."""
        self.calls.sequence = object()
        self.n_tokens = 0
        self.requires_eval = True

    def copy_prefix_from(self, other: "Sequence", n: int) -> None:
        """Start this sequence from `other`'s first n tokens: their KV rows (copied in the
        cache, not evaluated again: llama.cpp's seq_cp), ids and kept logits rows. `other` is
        only read (it may be running in another thread between forwards): n must lie within
        both its tokens and the positions its cache holds. This sequence's logits must then
        be evaluated again (requires_eval)."""
        if other.engine is not self.engine:
            raise ValueError("copy_prefix_from: the sequences belong to different models")
        eng = self._require_engine()
        held = min(other.n_tokens, eng.seq_pos[other.seq_id])
        if not 0 <= n <= held:
            raise ValueError(f"cannot copy {n} tokens: the sequence holds {held}")
        eng.copy_prefix(other.seq_id, self.seq_id, n)
        self.calls.sequence = object()
        self.input_ids[:n] = other.input_ids[:n]
        if self.logits_all and other.logits_all:
            self.scores[:n] = other.scores[:n]
        self.n_tokens = n
        self.requires_eval = True

    def logits_at(self, idx: Optional[int]) -> np.ndarray:
        """The logits after position idx (default: the last evaluated token)."""
        if idx is None or idx == self.n_tokens - 1:
            if self.logits is None or self.n_tokens == 0:
                raise RuntimeError("no logits to sample from: evaluate tokens first")
            return self.logits
        if self.logits_all and 0 <= idx < self.n_tokens:
            return self.scores[idx]
        raise ValueError(f"no logits kept for position {idx}: only the last evaluated token's "
                         "are kept unless the model is created with logits_all=True")

    # ---- state (Llama.save_state / load_state) -------------------------------------------

    def save_state(self, seed: int) -> LlamaState:
        """The evaluated tokens, their kept logits and KV cache rows, as llama-cpp-python's
        LlamaState (restored by load_state)."""
        eng = self._require_engine()
        self.sync()
        kv = kv_state_bytes(eng, self.n_tokens, self.seq_id)
        if self.logits_all:
            scores = self.scores[:self.n_tokens].copy()
        else:
            scores = (self.logits[None, :] if self.logits is not None and self.n_tokens
                      else np.zeros((0, self.n_vocab), np.single)).copy()
        return LlamaState(input_ids=self.input_ids.copy(), scores=scores, n_tokens=self.n_tokens,
                          llama_state=kv, llama_state_size=len(kv), seed=seed, sequence=self.calls.sequence)

    def load_state(self, state: LlamaState) -> None:
        """Make this sequence what `state` recorded (its KV rows written back)."""
        eng = self._require_engine()
        self.calls.sequence = object()
        n = restore_kv_state(eng, bytes(state.llama_state[:state.llama_state_size]), self.seq_id)
        if n != state.n_tokens:
            raise RuntimeError("Failed to set llama state data: token count mismatch")
        self.input_ids[:] = 0
        m = min(len(state.input_ids), self.n_ctx)
        self.input_ids[:m] = state.input_ids[:m]
        self.n_tokens = n
        rows = np.asarray(state.scores, dtype=np.single)
        if self.logits_all and len(rows) == n:
            self.scores[:n] = rows
            self.scores[n:] = 0.0
        self.logits = (self.scores[n - 1] if self.logits_all else rows[-1].copy()) if n and len(rows) else None
        self.requires_eval = True
        self.calls.sequence = getattr(state, "sequence", None) or object()
