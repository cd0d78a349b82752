"""Draft models for speculative decoding (llama-cpp-python's `llama_speculative` names).

A draft model is called with the token ids so far and returns the tokens it guesses come
next; the main model verifies them all in one forward pass (pyinfer.generate.generate_step,
every position computed exactly as when decoded alone) and keeps the guesses up to the first
one its own sampling disagrees with, so the output is exactly what the main model alone
produces, greedy or not.

    from pyinfer import Llama
    from pyinfer.speculative import LlamaPromptLookupDecoding, LlamaDraftLlama
    llm = Llama("model.gguf", draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
    llm = Llama("big.gguf", draft_model=LlamaDraftLlama(Llama("small.gguf"), num_pred_tokens=6))

`LlamaPromptLookupDecoding` guesses by prompt lookup: the last few tokens (an n-gram) are
looked up earlier in the sequence, and what followed their first earlier occurrence is the
guess. It costs no model and pays off when the output repeats the input (editing code,
quoting, summarising). `LlamaDraftLlama` asks a smaller model with the same vocabulary for
its greedy continuation.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from .generate import reuse_prefix


class LlamaDraftModel(abc.ABC):
    """Called as draft(input_ids) -> int array of guessed next tokens (possibly empty)."""

    @abc.abstractmethod
    def __call__(self, input_ids: np.ndarray, /, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """Prompt-lookup drafts: up to `num_pred_tokens` tokens that followed the first earlier
    occurrence of the sequence's last n-gram, trying n = max_ngram_size down to 1."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10):
        if max_ngram_size < 1 or num_pred_tokens < 1:
            raise ValueError("max_ngram_size and num_pred_tokens must be at least 1")
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    @staticmethod
    def find_candidate_pred_tokens(input_ids: np.ndarray, max_ngram_size: int,
                                   num_pred_tokens: int) -> np.ndarray:
        """The draft for `input_ids` (a 1-D int array): for n from min(max_ngram_size,
        len - 1) down to 1, the earliest earlier occurrence of the last n tokens that has
        tokens after it gives up to num_pred_tokens of them; none found: an empty array."""
        ids = np.asarray(input_ids)
        length = ids.shape[0]
        for n in range(min(max_ngram_size, length - 1), 0, -1):
            tail = ids[length - n:]
            # starts s < length - n (the tail itself has nothing after it) where ids[s:s+n] == tail
            hits = np.ones(length - n, dtype=bool)
            for k in range(n):
                hits &= ids[k:length - n + k] == tail[k]
            starts = np.flatnonzero(hits)
            if starts.size:
                begin = int(starts[0]) + n
                return ids[begin:min(begin + num_pred_tokens, length)]
        return np.array([], dtype=np.intc)

    def __call__(self, input_ids: np.ndarray, /, **kwargs: Any) -> np.ndarray:
        return self.find_candidate_pred_tokens(input_ids, self.max_ngram_size,
                                               self.num_pred_tokens)


class LlamaDraftLlama(LlamaDraftModel):
    """A smaller model's greedy guesses: `num_pred_tokens` tokens it would generate after
    input_ids (its KV cache keeps the shared prefix between calls, so each call evaluates
    only what changed). The draft model must share the main model's vocabulary."""

    def __init__(self, model, num_pred_tokens: int = 6):
        if num_pred_tokens < 1:
            raise ValueError("num_pred_tokens must be at least 1")
        self.model, self.num_pred_tokens = model, num_pred_tokens

    def check_vocab(self, n_vocab: int) -> None:
        if self.model.n_vocab() != n_vocab:
            raise ValueError(f"the draft model's vocabulary ({self.model.n_vocab()} tokens) is not the "
                             f"main model's ({n_vocab})")

    def __call__(self, input_ids: np.ndarray, /, **kwargs: Any) -> np.ndarray:
        seq = self.model._own
        ids = [int(t) for t in input_ids]
        room = seq.n_ctx - len(ids)
        if room <= 1:
            return np.array([], dtype=np.intc)
        todo = reuse_prefix(seq, ids)
        if todo:
            seq.eval(todo)
        out = []
        for _ in range(min(self.num_pred_tokens, room - 1)):
            t = int(np.argmax(seq.logits))
            out.append(t)
            seq.eval([t])
        return np.array(out, dtype=np.intc)


__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding", "LlamaDraftLlama"]
