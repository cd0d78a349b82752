"""llama.cpp's decoding calls (`llama_batch_*`, `llama_decode`, `llama_get_logits*`,
`llama_memory_*`) on a pyinfer `Llama`'s one sequence.

A pyinfer Llama holds one sequence in its KV cache: `input_ids[:n_tokens]`. `llama_decode`
appends a batch to it through `Llama.eval`, so the high-level state (`n_tokens`,
`input_ids`, the prefix reuse of `generate`) stays true whichever API a client uses; the
logits of the batch positions marked for output are kept in one buffer that
`llama_get_logits` points into (valid until a later decode needs a larger one). A Llama made
with logits_all=True (guidance makes it so) keeps every row of one eval; otherwise a batch
with several outputs is evaluated in pieces that end at each output, whose logits are those
of `Llama.eval` on the same pieces (pyinfer's one-token forward is not bit-identical to its
batched one: on SmolLM2 Q4_1 single-token rows differ from batched rows by up to ~0.9 in a
logit). The memory calls can drop the sequence's tail (`llama_memory_seq_rm(mem, -1 or 0,
p0, -1)`, what guidance does before each decode) or all of it; a removal from the middle
returns false, as llama.cpp does for memories that cannot remove a range.

What pyinfer cannot do raises ValueError with the reason: several sequences in one batch
(seq_id other than 0), embeddings as input, positions that do not continue the sequence.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Dict, List

import numpy as np

from . import _handles

llama_token = ctypes.c_int32
llama_pos = ctypes.c_int32
llama_seq_id = ctypes.c_int32


class llama_batch(ctypes.Structure):    # noqa: N801 (llama.cpp's name)
    """struct llama_batch: n_tokens entries of token (or embd), pos, n_seq_id, seq_id and
    logits (non-zero: output the logits of that position)."""
    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(llama_token)),
        ("embd", ctypes.POINTER(ctypes.c_float)),
        ("pos", ctypes.POINTER(llama_pos)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(llama_seq_id))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


def batch_init(n_tokens: int, embd: int, n_seq_max: int) -> llama_batch:
    """A batch with room for n_tokens (arrays owned by the batch, left zeroed)."""
    n_tokens, embd, n_seq_max = int(n_tokens), int(embd), int(n_seq_max)
    if n_tokens <= 0 or n_seq_max <= 0:
        raise ValueError(f"llama_batch_init: n_tokens ({n_tokens}) and n_seq_max ({n_seq_max}) "
                         "must be positive")
    b = llama_batch()
    if embd:
        b.embd = (ctypes.c_float * (n_tokens * embd))()
    else:
        b.token = (llama_token * n_tokens)()
    b.pos = (llama_pos * n_tokens)()
    b.n_seq_id = (ctypes.c_int32 * n_tokens)()
    seq = (ctypes.POINTER(llama_seq_id) * (n_tokens + 1))()     # NULL-terminated, as llama.cpp
    for i in range(n_tokens):
        seq[i] = (llama_seq_id * n_seq_max)()
    b.seq_id = seq
    b.logits = (ctypes.c_int8 * n_tokens)()
    return b


def batch_free(batch: llama_batch) -> None:
    for name in ("token", "embd", "pos", "n_seq_id", "seq_id", "logits"):
        setattr(batch, name, None)
    batch.n_tokens = 0


def batch_get_one(tokens: Any, n_tokens: int) -> llama_batch:
    """A batch over the caller's token array: positions follow the sequence, seq 0, only
    the last token's logits."""
    b = llama_batch()
    b.n_tokens = int(n_tokens)
    b.token = ctypes.cast(tokens, ctypes.POINTER(llama_token))
    return b


class Decoder:
    """The `llama_context` of one Llama: decodes batches into its sequence and keeps the
    logits of the last batch."""

    def __init__(self, llama):
        self._llama = weakref.ref(llama)
        self.context = _handles.Handle(_handles.CONTEXT, self)     # Llama.ctx
        self.memory = _handles.Handle(_handles.MEMORY, self)       # llama_get_memory(ctx)
        self._buffer = np.zeros((0, 0), dtype=np.float32)
        self._rows: Dict[int, int] = {}     # batch index -> row of _buffer
        self._n_out = 0

    @property
    def llama(self):
        llama = self._llama()
        if llama is None:
            raise ValueError("llama_context: its Llama no longer exists")
        return llama

    # ---- decoding ------------------------------------------------------------------------

    def decode(self, batch: llama_batch) -> int:
        llama = self.llama
        if llama.engine is None:
            raise RuntimeError("this Llama was loaded with vocab_only=True: it has no weights to evaluate")
        n = int(batch.n_tokens)
        if n <= 0:
            raise ValueError("llama_decode: the batch has no tokens")
        if not batch.token:
            raise ValueError("llama_decode: pyinfer decodes token ids, not embeddings (embd)")
        tokens = [int(batch.token[j]) for j in range(n)]
        self._check_sequences(batch, n)
        start = llama.n_tokens
        if batch.pos:
            positions = [int(batch.pos[j]) for j in range(n)]
            if positions != list(range(positions[0], positions[0] + n)) or positions[0] != start:
                raise ValueError(
                    f"llama_decode: positions {positions[0]}..{positions[-1]} do not continue the "
                    f"sequence, which holds {start} tokens: remove its tail first "
                    "(llama_memory_seq_rm) or give positions from its end")
        if start + n > llama.n_ctx():
            return 1            # llama.cpp: no KV slot for the batch
        outputs = [j for j in range(n) if batch.logits[j]] if batch.logits else [n - 1]
        rows = self._evaluate(llama, tokens, outputs)
        self._store(outputs, rows, llama.n_vocab())
        return 0

    @staticmethod
    def _check_sequences(batch: llama_batch, n: int) -> None:
        if not batch.seq_id:
            return
        for j in range(n):
            k = int(batch.n_seq_id[j]) if batch.n_seq_id else 1
            ids = {int(batch.seq_id[j][i]) for i in range(k)}
            if ids != {0}:
                raise ValueError(f"llama_decode: token {j} is in sequence(s) {sorted(ids)}; "
                                 "pyinfer's llama_cpp holds one sequence, seq_id 0")

    @staticmethod
    def _evaluate(llama, tokens: List[int], outputs: List[int]) -> List[np.ndarray]:
        """Append tokens; the logits rows of the output positions. With logits_all every row
        is kept by Llama.eval; otherwise the batch is cut after each output position."""
        start = llama.n_tokens
        if llama.logits_all:
            llama.eval(tokens)
            return [llama.scores[start + j].copy() for j in outputs]
        rows, done = [], 0
        for j in outputs:
            llama.eval(tokens[done:j + 1])
            rows.append(llama.current_sequence.logits_at(llama.n_tokens - 1).copy())
            done = j + 1
        if done < len(tokens):
            llama.eval(tokens[done:])
        return rows

    def _store(self, outputs: List[int], rows: List[np.ndarray], n_vocab: int) -> None:
        if self._buffer.shape[0] < len(rows) or self._buffer.shape[1] != n_vocab:
            self._buffer = np.zeros((max(len(rows), 1), n_vocab), dtype=np.float32)
        for i, row in enumerate(rows):
            self._buffer[i] = row
        self._rows = {j: i for i, j in enumerate(outputs)}
        self._n_out = len(rows)

    # ---- logits --------------------------------------------------------------------------

    def logits(self):
        """float * to the output rows of the last decode, in batch order."""
        if self._n_out == 0:
            return ctypes.POINTER(ctypes.c_float)()
        return self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def logits_ith(self, i: int):
        """float * to the row of batch index i (negative: counted from the last output);
        NULL when that position had no output."""
        i = int(i)
        row = (self._n_out + i if -self._n_out <= i < 0 else None) if i < 0 else self._rows.get(i)
        if row is None:
            return ctypes.POINTER(ctypes.c_float)()
        addr = self._buffer.ctypes.data + row * self._buffer.strides[0]
        return ctypes.cast(addr, ctypes.POINTER(ctypes.c_float))

    # ---- memory --------------------------------------------------------------------------

    def clear(self) -> None:
        self.llama.reset()

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        """Remove positions [p0, p1) of the sequence (p0 < 0: from 0, p1 < 0: to the end).
        Only a tail (or everything) can go: true then, false for a range in the middle."""
        llama = self.llama
        if seq_id not in (-1, 0):
            return True             # no other sequence holds anything
        n = llama.n_tokens
        p0 = max(int(p0), 0)
        p1 = n if int(p1) < 0 else int(p1)
        if p0 >= min(p1, n):
            return True
        if p1 < n:
            return False
        truncate(llama, p0)
        return True

    def seq_pos_max(self, seq_id: int) -> int:
        return self.llama.n_tokens - 1 if seq_id == 0 else -1

    def seq_pos_min(self, seq_id: int) -> int:
        return 0 if seq_id == 0 and self.llama.n_tokens else -1


def truncate(llama, n: int) -> None:
    """Keep the first n evaluated tokens of `llama` (the KV cache beyond them is overwritten
    by the next eval, as Llama.generate does when it reuses a prefix)."""
    if n <= 0:
        llama.reset()
        return
    seq = llama.current_sequence      # a suspended stream must not resume on this state
    seq.truncate(min(n, seq.n_tokens))
    seq.calls.sequence = object()
    seq.requires_eval = True
