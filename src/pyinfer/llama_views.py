"""Llama's sequences and the public views other modules read (a part of `pyinfer.Llama`).

`Llama.sequence(i)` makes a Sequence on stream i of the model's KV cache; `using(seq)` makes a
thread's calls work on it; llama-cpp-python's `n_tokens` / `input_ids` / `scores` are the
current sequence's. The read-only views (`current_sequence`, `engine`, `vocab`, ...) are what
completion, chat, infill, embeddings, the CLI, the server and the llama_cpp layer use instead
of Llama's private fields.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

from .sequence import Sequence as ModelSequence

if TYPE_CHECKING:
    from .engine import Engine
    from .infill import FimTokens
    from .tokenizer import Tokenizer


class SequenceViews:
    """Mixed into Llama (which sets _engine, _own, _active, _n_ctx, _n_vocab, n_batch,
    _logits_all, _vocab, _fim, _seed, _custom_tokenizer)."""

    # ---- sequences ------------------------------------------------------------------------

    def sequence(self, seq_id: int, runner=None) -> ModelSequence:
        """A new Sequence on stream `seq_id` of this model's KV cache (0..n_seq_max-1;
        Llama(n_seq_max=N)); `runner` replaces the engine's decode for its evaluations
        (pyinfer.sequence). Sequence 0 is this Llama's own unless `using` says otherwise."""
        eng = self._engine
        if eng is not None:
            eng._seq(seq_id)
        return ModelSequence(eng, seq_id, self._n_ctx, self._n_vocab, self.n_batch, self._logits_all, runner)

    @contextmanager
    def using(self, seq: ModelSequence) -> Iterator[ModelSequence]:
        """Inside, in this thread, every method of this Llama (eval, generate, completions,
        chat, state) works on `seq` instead of its own sequence, serialised by seq's own
        lock: threads using different sequences run at the same time."""
        if seq.engine is not self._engine:
            raise ValueError("using: the sequence belongs to another model")
        prev = getattr(self._active, "seq", None)
        self._active.seq = seq
        try:
            yield seq
        finally:
            self._active.seq = prev

    @property
    def _seq(self) -> ModelSequence:
        return getattr(self._active, "seq", None) or self._own

    # ---- pyinfer's public views (what completion, chat, the CLI and the server read) -----

    @property
    def current_sequence(self) -> ModelSequence:
        """The Sequence this thread's calls work on (`using`), else this Llama's own."""
        return self._seq

    @property
    def engine(self) -> "Optional[Engine]":
        """The loaded engine (None with vocab_only=True)."""
        return self._engine

    @property
    def vocab(self) -> "Tokenizer":
        """pyinfer's tokenizer of the model (special tokens, end-of-generation ids)."""
        return self._vocab

    @property
    def fim(self) -> "FimTokens":
        return self._fim

    @property
    def logits_all(self) -> bool:
        """Whether every evaluated position's logits are kept (logits_all or a draft_model)."""
        return self._logits_all

    @property
    def seed(self) -> int:
        """The seed the next sampler starts from (set_seed changes it)."""
        return self._seed

    @property
    def has_custom_tokenizer(self) -> bool:
        """Whether Llama(tokenizer=...) replaced the model's tokenizer."""
        return self._custom_tokenizer

    # the current sequence's state, under llama-cpp-python's names
    def _seq_attr(name: str, doc: str):   # noqa: N805 (a property factory used in the class body)
        return property(lambda self: getattr(self._seq, name),
                        lambda self, value: setattr(self._seq, name, value), doc=doc)

    n_tokens = _seq_attr("n_tokens", "Tokens evaluated in the current sequence.")
    input_ids = _seq_attr("input_ids", "The current sequence's token ids (n_ctx, intc).")
    scores = _seq_attr("scores", "Logits rows of the current sequence (all with logits_all).")
    _logits = _seq_attr("logits", "The logits after the last evaluated token.")
    _requires_eval = _seq_attr("requires_eval", "Whether the last token's logits must be computed again.")
    _sampler = _seq_attr("sampler", "The sampler of the generation under way.")
    _calls = _seq_attr("calls", "The CallLock of the current sequence.")
    del _seq_attr
