"""`llama_cpp.Llama` served by pyinfer (llama-cpp-python's `llama` module).

`Llama` is pyinfer's `Llama` (same constructor, methods, dicts and streams) with llama.cpp's
pointers on top: `Llama.model` and `Llama.ctx` are ints, as llama-cpp-python's, that the
low-level functions of `llama_cpp.llama_cpp` take (`llama_model_get_vocab(llm.model)`,
`llama_decode(llm.ctx, batch)`). The rest of what `from llama_cpp.llama import *` gives in
llama-cpp-python is re-exported: LlamaState, the caches, LlamaGrammar, the tokenizers, the
logits-processor and stopping-criteria lists, LlamaDraftModel and the llama_types names.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from pyinfer.llama import Llama as _PyinferLlama
from pyinfer.llama_cache import LlamaState  # noqa: F401 (re-exported)
from pyinfer.sampling import LogitsProcessorList, StoppingCriteriaList  # noqa: F401

from . import _handles
from ._context import Decoder
from .llama_cache import BaseLlamaCache, LlamaCache, LlamaDiskCache, LlamaRAMCache  # noqa: F401
from .llama_grammar import LlamaGrammar  # noqa: F401 (re-exported)
from .llama_speculative import LlamaDraftModel  # noqa: F401 (re-exported)
from .llama_tokenizer import BaseLlamaTokenizer, LlamaTokenizer  # noqa: F401 (re-exported)
from .llama_types import *  # noqa: F401,F403 (llama-cpp-python's llama module has them)
from .llama_types import __all__ as _TYPE_NAMES

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
StoppingCriteria = Callable[[np.ndarray, np.ndarray], bool]


class Llama(_PyinferLlama):
    """A pyinfer Llama whose `model` and `ctx` are llama.cpp-style pointers (ints)."""

    @functools.wraps(_PyinferLlama.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._model_pointer = _handles.Handle(_handles.MODEL, self)
        self._decoder = Decoder(self)

    @property
    def model(self) -> int:
        """The llama_model pointer (for llama_model_get_vocab and the llama_model_* calls)."""
        return self._model_pointer.address

    @property
    def ctx(self) -> int:
        """The llama_context pointer (for llama_decode, llama_get_logits, llama_get_memory)."""
        return self._decoder.context.address


class MinTokensLogitsProcessor:
    """Forbid EOS until `min_tokens` tokens have been generated (counted from the length of
    the first input_ids seen)."""

    def __init__(self, min_tokens: int, token_eos: int):
        self.min_tokens = min_tokens
        self.token_eos = token_eos
        self.prompt_tokens = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if len(input_ids) - self.prompt_tokens < self.min_tokens:
            scores[self.token_eos] = -np.inf
        return scores


__all__ = ["BaseLlamaCache", "BaseLlamaTokenizer", "Llama", "LlamaCache", "LlamaDiskCache",
           "LlamaDraftModel", "LlamaGrammar", "LlamaRAMCache", "LlamaState", "LlamaTokenizer",
           "LogitsProcessor", "LogitsProcessorList", "MinTokensLogitsProcessor",
           "StoppingCriteria", "StoppingCriteriaList", *_TYPE_NAMES]
