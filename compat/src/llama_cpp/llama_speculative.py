"""Draft models for speculative decoding (llama-cpp-python's `llama_speculative`).

A draft model is called with the token ids so far and returns the tokens it guesses come
next; the main model then verifies them all in one forward pass and keeps the longest
prefix it agrees with, so the output is what the main model alone would produce.

    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    llm = Llama("model.gguf", draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))

`LlamaPromptLookupDecoding` guesses by prompt lookup: the last few tokens (an n-gram) are
looked up earlier in the sequence, and what followed their first earlier occurrence is the
guess. It costs no model and pays off when the output repeats the input (editing code,
quoting, summarising).

pyinfer's `Llama` accepts a draft model but does not verify drafts yet: it decodes token by
token, which gives the same output (a draft never changes the main model's choices).
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np


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


__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]
